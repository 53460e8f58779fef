"""Backbones of the zoo's detectors: torchvision's own modules, composed the way torchvision's
detection builders compose them, so that ``backbone.*`` state-dict keys, frozen layers and numerics
are identical."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .._weights import load_weights

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


def resnet_fpn(fn: str, depth: int, backbone_path: Path | None, trainable_layers: int, *, body_norm_layer,
               fpn_norm_layer=None, returned_layers: list[int] | None = None, extra_blocks: nn.Module | None = None,
               out_channels: int = 256) -> BackboneWithFPN:
    """ResNet-``depth`` body (its classification weights from ``backbone_path`` when given) + FPN.

    trainable_layers: how many of layer4, layer3, layer2, layer1, conv1 (from the top; 5 also
    trains bn1) keep requires_grad. body_norm_layer: the body's norm (FrozenBatchNorm2d for trained
    weights, else BatchNorm2d); fpn_norm_layer: a norm in the FPN blocks (Faster R-CNN v2) or None;
    returned_layers: the body stages feeding the FPN (default 1-4; [2, 3, 4] for P3-P7 detectors);
    extra_blocks: LastLevelMaxPool (default) or LastLevelP6P7 (RetinaNet, FCOS); out_channels:
    the FPN's channels (torchvision: 256).
    """
    body = _RESNETS[depth](weights=None, norm_layer=body_norm_layer)
    if backbone_path is not None:
        load_weights(fn, body, backbone_path)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for name, p in body.named_parameters():
        if not name.startswith(tuple(train)):
            p.requires_grad_(False)
    returned_layers = returned_layers or [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # the channels of layer1's output
    return BackboneWithFPN(body, {f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
                           [stage2 * 2 ** (k - 1) for k in returned_layers], out_channels,
                           extra_blocks=extra_blocks or LastLevelMaxPool(), norm_layer=fpn_norm_layer)
