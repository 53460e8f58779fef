"""CSPDarknet backbone and PAFPN neck of YOLOX (Ge et al. 2021, "YOLOX: Exceeding YOLO Series in
2021"; CSP: Wang et al. 2020, PANet: Liu et al. 2018).

Sub-module names follow the official YOLOX code (Megvii-BaseDetection/YOLOX, the ``yolox`` 0.3.0
package), so the official checkpoints' ``backbone.*`` keys load unchanged: every convolution is a
``conv``/``bn`` pair (BatchNorm eps 1e-3, momentum 0.03, the official ``init_yolo`` settings)
followed by SiLU; depthwise-separable convolutions (YOLOX-nano) are ``dconv`` + ``pconv``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class ConvBNAct(nn.Module):
    """Conv2d (no bias, "same" padding) -> BatchNorm2d -> SiLU (YOLOX's ``BaseConv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k ConvBNAct then pointwise 1 x 1 ConvBNAct (YOLOX's ``DWConv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.dconv = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pconv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pconv(self.dconv(x))


def conv_block(depthwise: bool):
    """The 3 x 3 convolution of a stage: depthwise-separable for YOLOX-nano, plain otherwise."""
    return DepthwiseSeparableConv if depthwise else ConvBNAct


class Bottleneck(nn.Module):
    """1 x 1 then 3 x 3 convolution, plus the input when ``shortcut`` and the widths agree."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool, depthwise: bool):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 1)
        self.conv2 = conv_block(depthwise)(out_channels, out_channels, 3)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Cross-stage partial block (YOLOv5's C3): two 1 x 1 branches of half width, ``n`` bottlenecks
    on the first, concatenated and fused by a 1 x 1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, n: int, shortcut: bool = True, depthwise: bool = False):
        super().__init__()
        hidden = int(out_channels * 0.5)
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.conv2 = ConvBNAct(in_channels, hidden, 1)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, depthwise) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (He et al. 2014, as in YOLOv3-SPP): stride-1 max pools of sizes 5, 9,
    13 concatenated with their input between two 1 x 1 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes=(5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))


class Focus(nn.Module):
    """Space-to-depth (each 2 x 2 pixel block into channels) then a convolution. The channel order
    (top-left, bottom-left, top-right, bottom-right patches) is the official one, which the stem's
    weights depend on. H and W must be even."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = ConvBNAct(in_channels * 4, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        patches = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(patches, dim=1))


class CSPDarknet(nn.Module):
    """CSPDarknet-53 scaled by depth and width multipliers; returns the stride 8, 16 and 32 features
    (``dark3``, ``dark4``, ``dark5``) with 4, 8 and 16 times ``int(64 * width)`` channels."""

    def __init__(self, depth: float, width: float, depthwise: bool = False):
        super().__init__()
        c = int(width * 64)
        n = max(round(depth * 3), 1)
        conv = conv_block(depthwise)
        self.stem = Focus(3, c, kernel_size=3)
        self.dark2 = nn.Sequential(conv(c, c * 2, 3, 2), CSPLayer(c * 2, c * 2, n, depthwise=depthwise))
        self.dark3 = nn.Sequential(conv(c * 2, c * 4, 3, 2), CSPLayer(c * 4, c * 4, n * 3, depthwise=depthwise))
        self.dark4 = nn.Sequential(conv(c * 4, c * 8, 3, 2), CSPLayer(c * 8, c * 8, n * 3, depthwise=depthwise))
        self.dark5 = nn.Sequential(conv(c * 8, c * 16, 3, 2), SPPBottleneck(c * 16, c * 16),
                                   CSPLayer(c * 16, c * 16, n, shortcut=False, depthwise=depthwise))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return c3, c4, self.dark5(c4)


class PAFPN(nn.Module):
    """CSPDarknet followed by YOLOX's path-aggregation FPN: a top-down pass (1 x 1 lateral
    convolutions, nearest 2x upsampling, CSP fusion) then a bottom-up pass (stride-2 convolutions,
    CSP fusion). Returns the stride 8, 16 and 32 maps with ``int(c * width)`` channels for c in
    ``in_channels``."""

    def __init__(self, depth: float, width: float, depthwise: bool = False, in_channels=(256, 512, 1024)):
        super().__init__()
        c3, c4, c5 = (int(c * width) for c in in_channels)
        n = round(3 * depth)
        conv = conv_block(depthwise)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = ConvBNAct(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, shortcut=False, depthwise=depthwise)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, shortcut=False, depthwise=depthwise)
        self.bu_conv2 = conv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, shortcut=False, depthwise=depthwise)
        self.bu_conv1 = conv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, shortcut=False, depthwise=depthwise)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x3, x4, x5 = self.backbone(x)
        top5 = self.lateral_conv0(x5)                                                     # stride 32
        top4 = self.reduce_conv1(self.C3_p4(torch.cat((self.upsample(top5), x4), 1)))     # stride 16
        out3 = self.C3_p3(torch.cat((self.upsample(top4), x3), 1))                        # stride 8
        out4 = self.C3_n3(torch.cat((self.bu_conv2(out3), top4), 1))                      # stride 16
        out5 = self.C3_n4(torch.cat((self.bu_conv1(out4), top5), 1))                      # stride 32
        return out3, out4, out5
