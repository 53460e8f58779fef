"""Lite R-ASPP (Howard et al. 2019, "Searching for MobileNetV3", section 6.4) on MobileNetV3-Large:
torchvision's builder, keyword arguments and state-dict keys."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ._base import BuildArgs, check_images, dilated_mobilenet_v3, upsample


class LRASPPHead(nn.Module):
    """high features -> 1x1 conv + BN + ReLU, gated by a squeeze (global pool, 1x1 conv, sigmoid),
    upsampled to the low features' size; class logits = low_classifier(low) + high_classifier(high)."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        low, high = features["low"], features["high"]
        x = upsample(self.cbr(high) * self.scale(high), low.shape[-2:])
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """backbone ({"low": stride-8 features, "high": stride-16 features}) -> LRASPPHead -> bilinear
    upsampling to the input size. forward(images) -> {"out": Tensor[B, C, H, W]} (no auxiliary output)."""

    def __init__(self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.classifier = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_images(type(self).__name__, images)
        return OrderedDict(out=upsample(self.classifier(self.backbone(images)), images.shape[-2:]))


def lraspp_mobilenet_v3_large(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                              **kwargs) -> LRASPP:
    """Lite R-ASPP with a MobileNetV3-Large backbone (last stage dilated).

    Keyword arguments as torchvision's builder:
        weights: None or a local state dict file (nothing downloads); num_classes then defaults to
            the checkpoint's.
        progress: accepted for compatibility (nothing downloads).
        num_classes: classes including the background (default 21, Pascal VOC).
        weights_backbone: None or a local MobileNetV3-Large classification state dict.
        aux_loss: only False/None is accepted (the model has no auxiliary classifier).
    Returns an LRASPP: forward(images Tensor[B, 3, H, W]) -> {"out": Tensor[B, C, H, W]}.
    """
    fn = "lraspp_mobilenet_v3_large"
    if kwargs.pop("aux_loss", None):
        raise ValueError(f"{fn}: aux_loss=True is not supported (the model has no auxiliary classifier)")
    args = BuildArgs(fn, weights, weights_backbone, num_classes, False, "classifier.low_classifier.weight", kwargs)
    backbone, channels = dilated_mobilenet_v3(args, {"C2": "low", "C5": "high"})
    return args.finish(LRASPP(backbone, channels["low"], channels["high"], args.num_classes))


BUILDERS = {"lraspp_mobilenet_v3_large": lraspp_mobilenet_v3_large}
