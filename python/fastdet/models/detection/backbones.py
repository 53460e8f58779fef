"""Backbones of the zoo's detectors: torchvision's own modules, built the way torchvision's detection
builders build them, so that ``backbone.*`` state-dict keys and numerics are identical."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

from .._weights import load_weights

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


def resnet_fpn(fn: str, depth: int, backbone_path: Path | None, trainable_layers: int, *, body_norm_layer,
               fpn_norm_layer=None, returned_layers: list[int] | None = None, extra_blocks: nn.Module | None = None
               ) -> nn.Module:
    """ResNet-``depth`` body (its classification weights from ``backbone_path`` when given) + FPN.

    body_norm_layer: the body's norm (FrozenBatchNorm2d for trained weights, else BatchNorm2d);
    fpn_norm_layer: a norm in the FPN blocks (Faster R-CNN v2) or None; returned_layers: the body
    stages feeding the FPN (default 1-4; [2, 3, 4] for P3-P7 detectors); extra_blocks: e.g.
    LastLevelMaxPool (default) or LastLevelP6P7 (RetinaNet, FCOS). out_channels is 256.
    """
    body = _RESNETS[depth](weights=None, norm_layer=body_norm_layer)
    if backbone_path is not None:
        load_weights(fn, body, backbone_path)
    return _resnet_fpn_extractor(body, trainable_layers, returned_layers=returned_layers, extra_blocks=extra_blocks,
                                 norm_layer=fpn_norm_layer)
