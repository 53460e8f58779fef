"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation"): a contracting path of double 3x3 convolutions and 2x2 max pooling, an expanding
path that upsamples and concatenates the encoder features of the same scale (skip connections).
Unlike the paper the convolutions are padded (padding=1, with BatchNorm), so the output has the
input's size; inputs of any size work: they are zero-padded to a multiple of the total stride
inside the model and the logits cropped back.

``unet`` is the original layout with configurable depth and width; ``unet_resnet18`` /
``unet_resnet34`` use a torchvision ResNet as the encoder (its stem and four stages as the skip
features), which can start from ImageNet weights (``weights_backbone=``, a local file).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import BuildArgs, check_images


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, padding 1 -> BatchNorm -> ReLU) x 2."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """Upsample x2 (bilinear, or a 2x2 transposed conv), concatenate the skip features, double conv.

    in_channels: channels of the coarse input; skip_channels: of the skip features (0: none); the bilinear
    variant keeps in_channels through the upsampling, the transposed conv halves them (the paper)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            up_channels = in_channels // 2
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        self.conv = double_conv(up_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        # inputs are padded to a multiple of the total stride, so the sizes always match
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


def _check_mode(name: str, upsampling: str) -> str:
    if upsampling not in ("bilinear", "transpose"):
        raise ValueError(f"{name}: upsampling must be 'bilinear' or 'transpose', got {upsampling!r}")
    return upsampling


def _padded_forward(model: nn.Module, images: Tensor, stride: int, run) -> dict[str, Tensor]:
    """Zero-pad images on the right / bottom to a multiple of ``stride``, run, crop the logits back."""
    check_images(type(model).__name__, images)
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % stride, -w % stride
    x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    return OrderedDict(out=run(x)[..., :h, :w])


class UNet(nn.Module):
    """The U-Net encoder-decoder.

    Args:
        num_classes: output channels (classes including the background).
        in_channels: input channels (3 for RGB).
        depth: number of 2x downsamplings (the encoder has depth + 1 levels; the paper uses 4).
        base_width: channels of the first level, doubled at every level (the paper: 64).
        upsampling: "bilinear" (parameter-free, then the double conv) or "transpose" (2x2 transposed
            conv halving the channels, the paper's up-convolution).

    forward(images Tensor[B, in_channels, H, W]) -> {"out": Tensor[B, num_classes, H, W]}, any H, W.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 4, base_width: int = 64,
                 upsampling: str = "bilinear"):
        super().__init__()
        name = type(self).__name__
        for arg, value, low in (("num_classes", num_classes, 1), ("in_channels", in_channels, 1),
                                ("depth", depth, 1), ("base_width", base_width, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {arg} must be an int >= {low}, got {value!r}")
        mode = _check_mode(name, upsampling)
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([double_conv(in_channels, widths[0])] +
                                     [double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.decoder = nn.ModuleList([UpBlock(widths[i + 1], widths[i], widths[i], mode) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _logits(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return _padded_forward(self, images, 2**self.depth, self._logits)


class ResNetUNet(nn.Module):
    """U-Net with a torchvision ResNet-18/34 encoder: skip features at strides 2 (stem), 4 (layer1),
    8, 16 (layer2, layer3) and the bottleneck at 32 (layer4); four UpBlocks back to stride 2, one
    more upsampling + double conv to full resolution. Decoder widths: base_width * (16, 8, 4, 2, 1).

    forward(images Tensor[B, 3, H, W]) -> {"out": Tensor[B, num_classes, H, W]}, any H, W.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, base_width: int = 16, upsampling: str = "bilinear"):
        super().__init__()
        mode = _check_mode(type(self).__name__, upsampling)
        if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 2:
            raise ValueError(f"{type(self).__name__}: base_width must be an int >= 2, got {base_width!r}")
        self.encoder = encoder
        skips = [64, 64, 128, 256]  # stem, layer1, layer2, layer3 of ResNet-18/34; layer4 has 512
        widths = [base_width * m for m in (16, 8, 4, 2)]
        ins = [512] + widths[:-1]
        self.decoder = nn.ModuleList([UpBlock(i, s, o, mode) for i, s, o in zip(ins, reversed(skips), widths)])
        self.final = UpBlock(widths[-1], 0, base_width, mode)
        self.head = nn.Conv2d(base_width, num_classes, 1)

    def _logits(self, x: Tensor) -> Tensor:
        e = self.encoder
        stem = e.relu(e.bn1(e.conv1(x)))
        c1 = e.layer1(e.maxpool(stem))
        c2 = e.layer2(c1)
        c3 = e.layer3(c2)
        y = e.layer4(c3)
        for block, skip in zip(self.decoder, (c3, c2, c1, stem)):
            y = block(y, skip)
        return self.head(self.final(y))  # no skip at full resolution

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return _padded_forward(self, images, 32, self._logits)


def unet(*, weights=None, progress: bool = True, num_classes=None, in_channels: int = 3, depth: int = 4,
         base_width: int = 64, upsampling: str = "bilinear", **kwargs) -> UNet:
    """U-Net (Ronneberger et al. 2015) with padded convolutions and BatchNorm.

    Args:
        weights: None or a local state dict file of this architecture (num_classes then defaults
            to the checkpoint's).
        progress: accepted for compatibility (nothing downloads).
        num_classes: classes including the background (default 21).
        in_channels, depth, base_width, upsampling: see UNet.
    """
    args = BuildArgs("unet", weights, None, num_classes, False, "head.weight", kwargs)
    return args.finish(UNet(args.num_classes, in_channels, depth, base_width, upsampling))


def _resnet_unet(fn: str, depth: int, weights, weights_backbone, num_classes, base_width, upsampling, kwargs):
    import torchvision

    args = BuildArgs(fn, weights, weights_backbone, num_classes, False, "head.weight", kwargs)
    ctor = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    encoder = args.load_backbone(ctor(weights=None))
    encoder.fc = nn.Identity()  # the classifier is not part of the encoder: no unused parameters
    return args.finish(ResNetUNet(encoder, args.num_classes, base_width, upsampling))


_RESNET_DOC = """U-Net with a ResNet-{depth} encoder (see ResNetUNet).

    Args:
        weights: None or a local state dict file of this architecture.
        progress: accepted for compatibility (nothing downloads).
        num_classes: classes including the background (default 21).
        weights_backbone: None or a local torchvision ResNet-{depth} classification state dict
            (its ``fc.*`` keys are required by the strict load and then dropped with the classifier).
        base_width: decoder width at full resolution (x16 at the bottleneck).
        upsampling: "bilinear" or "transpose".
    """


def unet_resnet18(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                  base_width: int = 16, upsampling: str = "bilinear", **kwargs) -> ResNetUNet:
    return _resnet_unet("unet_resnet18", 18, weights, weights_backbone, num_classes, base_width, upsampling, kwargs)


def unet_resnet34(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                  base_width: int = 16, upsampling: str = "bilinear", **kwargs) -> ResNetUNet:
    return _resnet_unet("unet_resnet34", 34, weights, weights_backbone, num_classes, base_width, upsampling, kwargs)


unet_resnet18.__doc__ = _RESNET_DOC.format(depth=18)
unet_resnet34.__doc__ = _RESNET_DOC.format(depth=34)

BUILDERS = {f.__name__: f for f in (unet, unet_resnet18, unet_resnet34)}
