"""Pieces shared by the semantic segmenters: the backbone -> classifier (+ auxiliary classifier)
model, the FCN head, and the builders' weight handling.

Call contract (torchvision's segmentation models): forward(images Tensor[B, 3, H, W], normalised
with the ImageNet mean and std) -> {"out": logits Tensor[B, C, H, W], "aux": Tensor[B, C, H, W]
when the model has an auxiliary classifier}, in train and eval mode alike; the loss is computed
outside the model (fastdet.models.segmentation.losses).
"""

from __future__ import annotations

from collections import OrderedDict
import torch.nn.functional as F
from torch import Tensor, nn

from .._weights import load_weights, local_path, num_classes_from, read_state_dict


def check_images(name: str, images) -> None:
    """A clear error for anything but a float Tensor[B, C, H, W]."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: images must be a Tensor[B, 3, H, W] (stack the images of a batch), got {got}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: images must be floating point (normalised), got {images.dtype}")


class SegmentationModel(nn.Module):
    """backbone (returns {"out": features[, "aux": features]}) -> classifier / aux_classifier,
    each upsampled bilinearly to the input size (torchvision's _SimpleSegmentationModel layout, so
    the state-dict keys are ``backbone.*``, ``classifier.*``, ``aux_classifier.*``)."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_images(type(self).__name__, images)
        size = images.shape[-2:]
        features = self.backbone(images)
        result = OrderedDict(out=upsample(self.classifier(features["out"]), size))
        if self.aux_classifier is not None:
            result["aux"] = upsample(self.aux_classifier(features["aux"]), size)
        return result


def upsample(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNHead(nn.Sequential):
    """3x3 conv to in_channels / 4, BatchNorm, ReLU, dropout 0.1, 1x1 conv to the classes (the FCN
    head of torchvision, also the auxiliary head of every ResNet / MobileNet segmenter)."""

    def __init__(self, in_channels: int, channels: int):
        inter = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
                         nn.Dropout(0.1), nn.Conv2d(inter, channels, 1))


class BuildArgs:
    """The checked builder arguments common to the torchvision-style segmenters.

    weights: a local state dict file (or None); then weights_backbone is ignored, num_classes
    defaults to the checkpoint's (``classifier_key``) and aux_loss to whether it holds
    ``aux_classifier.*`` keys. Without weights: num_classes 21 (Pascal VOC with background) and no
    auxiliary classifier unless asked for."""

    def __init__(self, fn: str, weights, weights_backbone, num_classes, aux_loss, classifier_key: str, kwargs: dict):
        if kwargs:
            raise ValueError(f"{fn}: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        self.fn = fn
        self.path = local_path(fn, "weights", weights)
        self.backbone_path = None if self.path is not None else local_path(fn, "weights_backbone", weights_backbone)
        self.num_classes = num_classes_from(fn, self.path, num_classes, classifier_key, default=21)
        if int(self.num_classes) < 1:
            raise ValueError(f"{fn}: num_classes must be >= 1, got {num_classes}")
        if aux_loss is None and self.path is not None:
            aux_loss = any(k.startswith("aux_classifier.") for k in read_state_dict(fn, self.path))
        self.aux_loss = bool(aux_loss)

    def load_backbone(self, body: nn.Module) -> nn.Module:
        if self.backbone_path is not None:
            load_weights(self.fn, body, self.backbone_path)
        return body

    def finish(self, model: nn.Module) -> nn.Module:
        if self.path is not None:
            load_weights(self.fn, model, self.path)
        return model


# ---- backbones (torchvision's modules, built the way its segmentation builders build them) ---------------


def dilated_resnet(args: BuildArgs, depth: int) -> nn.Module:
    """ResNet-50/101 with layer3 and layer4 dilated instead of strided (output stride 8), returning
    {"out": layer4 (2048 ch)[, "aux": layer3 (1024 ch)]}."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
    body = args.load_backbone(ctor(weights=None, replace_stride_with_dilation=[False, True, True]))
    layers = {"layer4": "out", **({"layer3": "aux"} if args.aux_loss else {})}
    return IntermediateLayerGetter(body, return_layers=layers)


def dilated_mobilenet_v3(args: BuildArgs, names: dict[str, str]) -> tuple[nn.Module, dict[str, int]]:
    """MobileNetV3-Large features with the last stage dilated (output stride 16). ``names`` maps
    "C2" (the output-stride-8 block) and "C5" (the last block) to the returned keys. Returns the
    feature getter and the channels of each returned key."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    features = args.load_backbone(torchvision.models.mobilenet_v3_large(weights=None, dilated=True)).features
    # the first block, the blocks that start a stage (torchvision marks them _is_cn) and the last one
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    index = {"C2": stages[-4], "C5": stages[-1]}
    layers = {str(index[stage]): key for stage, key in names.items()}
    channels = {key: features[index[stage]].out_channels for stage, key in names.items()}
    return IntermediateLayerGetter(features, return_layers=layers), channels
