"""SSDlite (Sandler et al. 2018, "MobileNetV2", section 6.2) on MobileNetV3-Large (Howard et al.
2019, "Searching for MobileNetV3", section 6.3) with torchvision's builder
``ssdlite320_mobilenet_v3_large``, state-dict keys and numerics.

The MobileNetV3 layers are torchvision's module; the feature extractor split at C4, the extra
layers and the depthwise-separable heads are fastdet's, on the SSD model of ``ssd.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn

from .._weights import load_weights, resolve_weights
from .anchors import DefaultBoxGenerator
from .ssd import SSD, SSDHead

try:
    import torchvision
    from torchvision.ops.misc import Conv2dNormActivation
except ImportError as e:  # pragma: no cover - torchvision is a declared dependency of the zoo
    raise ImportError("fastdet.models needs torchvision for its backbones: pip install 'fastdet[zoo]'") from e


def normal_init(module: nn.Module) -> None:
    """N(0, 0.03) weights and zero biases for every convolution (SSDlite's initialisation from
    scratch, as TensorFlow's object detection API and torchvision)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _separable_predictor(in_channels: int, out_channels: int, norm_layer) -> nn.Sequential:
    """SSDlite's predictor: 3x3 depthwise convolution + norm + ReLU6, then a 1x1 convolution."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, kernel_size=3, groups=in_channels, norm_layer=norm_layer,
                             activation_layer=nn.ReLU6),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def _extra_block(in_channels: int, out_channels: int, norm_layer) -> nn.Sequential:
    """An extra feature layer at half the resolution: 1x1 to out/2 channels, 3x3 depthwise stride 2,
    1x1 to out channels, each with norm and ReLU6."""
    mid = out_channels // 2
    conv = partial(Conv2dNormActivation, norm_layer=norm_layer, activation_layer=nn.ReLU6)
    return nn.Sequential(conv(in_channels, mid, kernel_size=1),
                         conv(mid, mid, kernel_size=3, stride=2, groups=mid),
                         conv(mid, out_channels, kernel_size=1))


class SSDLiteHead(SSDHead):
    """SSDHead with SSDlite's depthwise-separable predictors, initialised N(0, 0.03)."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int, norm_layer):
        super().__init__(in_channels, num_anchors, num_classes,
                         predictor=partial(_separable_predictor, norm_layer=norm_layer), init=normal_init)


class SSDLiteFeatureExtractorMobileNet(nn.Module):
    """Six feature maps from MobileNet ``features`` (a Sequential of InvertedResidual blocks with
    ``_is_cn`` on the strided ones), torchvision's module names.

    ``features.0``: up to and including the expansion 1x1 convolution of the C4 block (stride 16,
    the MobileNetV3 paper's "C4 expansion" output); ``features.1``: the rest of the network (stride
    32); ``extra``: four extra blocks (strides 64 .. 512) with 512, 256, 256, 128 channels times
    ``width_mult`` (at least ``min_depth``).
    """

    def __init__(self, mobilenet_features: nn.Sequential, c4_pos: int, norm_layer, width_mult: float = 1.0,
                 min_depth: int = 16):
        super().__init__()
        c4 = mobilenet_features[c4_pos]
        if getattr(c4, "use_res_connect", True):
            raise ValueError(f"{type(self).__name__}: block {c4_pos} (C4) must be a strided block without a "
                             f"residual connection")
        self.features = nn.Sequential(
            nn.Sequential(*mobilenet_features[:c4_pos], c4.block[0]),
            nn.Sequential(c4.block[1:], *mobilenet_features[c4_pos + 1:]),
        )
        depths = [max(min_depth, int(d * width_mult)) for d in (512, 256, 256, 128)]
        last = mobilenet_features[-1].out_channels
        self.extra = nn.ModuleList(_extra_block(i, o, norm_layer) for i, o in zip([last, *depths[:-1]], depths))
        normal_init(self.extra)
        self.out_channels = [c4.block[0].out_channels, last, *depths]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = []
        for block in (*self.features, *self.extra):
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def _mobilenet_extractor(mobilenet_features: nn.Sequential, trainable: int, norm_layer
                         ) -> SSDLiteFeatureExtractorMobileNet:
    """Freeze all but the last ``trainable`` stages (the stem, the strided blocks, the last conv),
    then split at the last strided block (C4)."""
    stages = [0] + [i for i, b in enumerate(mobilenet_features) if getattr(b, "_is_cn", False)]
    stages.append(len(mobilenet_features) - 1)
    first_trained = len(mobilenet_features) if trainable == 0 else stages[len(stages) - trainable]
    for p in mobilenet_features[:first_trained].parameters():
        p.requires_grad_(False)
    return SSDLiteFeatureExtractorMobileNet(mobilenet_features, stages[-2], norm_layer)


def ssdlite320_mobilenet_v3_large(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                                  trainable_backbone_layers=None, norm_layer=None, size=(320, 320), min_ratio=0.2,
                                  max_ratio=0.95, **kwargs) -> SSD:
    """SSDlite320 with a MobileNetV3-Large backbone.

    Keyword arguments as torchvision's builder of the same name:
        weights: None or a local checkpoint path (a state dict, or a dict with one under "model"),
            loaded strictly; num_classes defaults to the checkpoint's. Never downloads.
        num_classes: classes including the background (default 91, COCO).
        weights_backbone: None or a local path to a torchvision MobileNetV3-Large state dict. Without
            it the backbone has the reduced tail (MobileNetV3 paper, Table 6) and N(0, 0.03) weights.
        trainable_backbone_layers: stages (from the top) to train when weights are loaded (0..6,
            default 6).
        norm_layer: default BatchNorm2d(eps=0.001, momentum=0.03).
        **kwargs: SSD arguments (score_thresh 0.001, nms_thresh 0.55, detections_per_img 300,
            topk_candidates 300, image_mean/std 0.5 by default).
    fastdet's extensions (torchvision fixes them): ``size`` (width, height), default (320, 320), e.g.
    (128, 128) for small images; ``min_ratio`` / ``max_ratio``, default 0.2 / 0.95: the smallest
    and largest default boxes' scales as fractions of the input size.

    Returns an SSD in training mode.
    """
    fn = "ssdlite320_mobilenet_v3_large"
    # progress: torchvision's download progress bar; accepted for compatibility (nothing downloads)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=min_ratio, max_ratio=max_ratio)
    num_anchors = anchor_generator.num_anchors_per_location()
    plan = resolve_weights(fn, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                           trainable_backbone_layers=trainable_backbone_layers,
                           classifier_key="head.classification_head.module_list.0.1.weight",
                           per_class=num_anchors[0], max_layers=6, default_layers=6)
    path, backbone_path, num_classes, layers = plan.path, plan.backbone_path, plan.num_classes, plan.trainable_layers
    if norm_layer is None:
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm_layer,
                                                      reduced_tail=backbone_path is None)
    if backbone_path is not None:
        load_weights(fn, mobilenet, backbone_path)
    else:
        normal_init(mobilenet)
    backbone = _mobilenet_extractor(mobilenet.features, layers, norm_layer)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # inputs in [-1, 1]
    head = SSDLiteHead(backbone.out_channels, num_anchors, num_classes, norm_layer)
    model = SSD(backbone, anchor_generator, size, num_classes, head=head, **{**defaults, **kwargs})
    if path is not None:
        load_weights(fn, model, path)
    return model


BUILDERS = {"ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large}
