"""DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation"):
atrous spatial pyramid pooling over a dilated ResNet or MobileNetV3-Large, torchvision's builders,
keyword arguments and state-dict keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._base import BuildArgs, FCNHead, SegmentationModel, dilated_mobilenet_v3, dilated_resnet, upsample


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, broadcast back to [H, W]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return upsample(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """Parallel branches on one feature map - a 1x1 conv, one 3x3 conv per atrous rate and image
    pooling - concatenated and projected to out_channels (then dropout 0.5)."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256):
        super().__init__()
        branches = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, int(r))) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP (rates 12, 24, 36) -> 3x3 conv 256 + BN + ReLU -> 1x1 conv to the classes."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)):
        super().__init__(ASPP(in_channels, atrous_rates), *_conv_bn_relu(256, 256, 3), nn.Conv2d(256, num_classes, 1))


class DeepLabV3(SegmentationModel):
    """backbone -> DeepLabHead, plus an FCNHead auxiliary classifier when aux_loss."""


def _args(fn, weights, weights_backbone, num_classes, aux_loss, kwargs) -> BuildArgs:
    return BuildArgs(fn, weights, weights_backbone, num_classes, aux_loss, "classifier.4.weight", kwargs)


def _deeplabv3_resnet(fn: str, depth: int, weights, weights_backbone, num_classes, aux_loss, kwargs) -> DeepLabV3:
    args = _args(fn, weights, weights_backbone, num_classes, aux_loss, kwargs)
    backbone = dilated_resnet(args, depth)
    aux = FCNHead(1024, args.num_classes) if args.aux_loss else None
    return args.finish(DeepLabV3(backbone, DeepLabHead(2048, args.num_classes), aux))


_DOC = """DeepLabV3 with a {backbone} backbone ({note}).

    Keyword arguments as torchvision's builder:
        weights: None or a local state dict file (nothing downloads); num_classes and aux_loss then
            default to the checkpoint's.
        progress: accepted for compatibility (nothing downloads).
        num_classes: classes including the background (default 21, Pascal VOC).
        aux_loss: add the auxiliary FCNHead (output "aux") on {aux}.
        weights_backbone: None or a local {backbone} classification state dict.
    Returns a DeepLabV3: forward(images Tensor[B, 3, H, W]) -> {{"out": Tensor[B, C, H, W][, "aux": ...]}}.
    """


def deeplabv3_resnet50(*, weights=None, progress: bool = True, num_classes=None, aux_loss=None,
                       weights_backbone=None, **kwargs) -> DeepLabV3:
    return _deeplabv3_resnet("deeplabv3_resnet50", 50, weights, weights_backbone, num_classes, aux_loss, kwargs)


def deeplabv3_resnet101(*, weights=None, progress: bool = True, num_classes=None, aux_loss=None,
                        weights_backbone=None, **kwargs) -> DeepLabV3:
    return _deeplabv3_resnet("deeplabv3_resnet101", 101, weights, weights_backbone, num_classes, aux_loss, kwargs)


def deeplabv3_mobilenet_v3_large(*, weights=None, progress: bool = True, num_classes=None, aux_loss=None,
                                 weights_backbone=None, **kwargs) -> DeepLabV3:
    args = _args("deeplabv3_mobilenet_v3_large", weights, weights_backbone, num_classes, aux_loss, kwargs)
    backbone, channels = dilated_mobilenet_v3(args, {"C5": "out", **({"C2": "aux"} if args.aux_loss else {})})
    aux = FCNHead(channels["aux"], args.num_classes) if args.aux_loss else None
    return args.finish(DeepLabV3(backbone, DeepLabHead(channels["out"], args.num_classes), aux))


_RESNET = dict(note="layer3/layer4 dilated, output stride 8", aux="layer3")
deeplabv3_resnet50.__doc__ = _DOC.format(backbone="ResNet-50", **_RESNET)
deeplabv3_resnet101.__doc__ = _DOC.format(backbone="ResNet-101", **_RESNET)
deeplabv3_mobilenet_v3_large.__doc__ = _DOC.format(
    backbone="MobileNetV3-Large", note="last stage dilated, output stride 16", aux="the output-stride-8 block")

BUILDERS = {f.__name__: f for f in (deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3_mobilenet_v3_large)}
