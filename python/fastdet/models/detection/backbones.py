"""Backbones of the zoo's detectors: torchvision's own modules, composed the way torchvision's
detection builders compose them, so that ``backbone.*`` state-dict keys, frozen layers and numerics
are identical."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fastdet.ops import ModulatedDeformConv2dPack

from .._weights import load_weights

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}

# the text in every key a DCN backbone adds to a plain ResNet (layerX.Y.conv2.conv_offset.weight / .bias):
# checkpoints of plain ResNets and plain detectors may lack these keys
DCN_OFFSET_KEYS = ".conv_offset."


def check_stage_with_dcn(fn: str, stage_with_dcn) -> tuple[bool, bool, bool, bool] | None:
    """``stage_with_dcn`` as a tuple of four bools (res2..res5, i.e. layer1..layer4), or None when
    no stage has DCN; anything else is a ValueError naming ``fn`` and the argument."""
    if stage_with_dcn is None:
        return None
    if (not isinstance(stage_with_dcn, (tuple, list)) or len(stage_with_dcn) != 4
            or not all(isinstance(v, bool) for v in stage_with_dcn)):
        raise ValueError(f"{fn}: stage_with_dcn must be None or 4 bools for res2..res5 (layer1..layer4), e.g. "
                         f"(False, True, True, True); got {stage_with_dcn!r}")
    return tuple(stage_with_dcn) if any(stage_with_dcn) else None


def _use_dcn(body: nn.Module, stage_with_dcn: tuple[bool, bool, bool, bool]) -> None:
    """Make the last 3x3 convolution (conv2) of every block in the chosen stages a DCNv2 layer
    (Zhu et al., CVPR 2019; stage choice as mmdetection's ``stage_with_dcn``): in a Bottleneck the
    (strided) 3x3, in a BasicBlock (ResNet-18/34) the second, unstrided 3x3. ``conv2.weight``
    keeps its key; the offset/mask predictor ``conv2.conv_offset`` starts at zero with mask scale
    2, so the layer starts exactly as the plain convolution it replaces."""
    for stage, dcn in enumerate(stage_with_dcn, start=1):
        if not dcn:
            continue
        for block in getattr(body, f"layer{stage}"):
            conv = block.conv2
            block.conv2 = ModulatedDeformConv2dPack(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                    conv.padding, conv.dilation, conv.groups, bias=False,
                                                    mask_scale=2.0)


def resnet_fpn(fn: str, depth: int, backbone_path: Path | None, trainable_layers: int, *, body_norm_layer,
               fpn_norm_layer=None, returned_layers: list[int] | None = None, extra_blocks: nn.Module | None = None,
               out_channels: int = 256, stage_with_dcn=None) -> BackboneWithFPN:
    """ResNet-``depth`` body (its classification weights from ``backbone_path`` when given) + FPN.

    trainable_layers: how many of layer4, layer3, layer2, layer1, conv1 (from the top; 5 also
    trains bn1) keep requires_grad. body_norm_layer: the body's norm (FrozenBatchNorm2d for trained
    weights, else BatchNorm2d); fpn_norm_layer: a norm in the FPN blocks (Faster R-CNN v2) or None;
    returned_layers: the body stages feeding the FPN (default 1-4; [2, 3, 4] for P3-P7 detectors);
    extra_blocks: LastLevelMaxPool (default) or LastLevelP6P7 (RetinaNet, FCOS); out_channels:
    the FPN's channels (torchvision: 256); stage_with_dcn: None or 4 bools (layer1..layer4), the
    stages whose blocks get a DCNv2 conv2 (see _use_dcn; a plain ResNet checkpoint at
    ``backbone_path`` then loads with only the offset predictors missing, and the body starts
    equal to the plain one).
    """
    body = _RESNETS[depth](weights=None, norm_layer=body_norm_layer)
    stage_with_dcn = check_stage_with_dcn(fn, stage_with_dcn)
    if stage_with_dcn is not None:
        _use_dcn(body, stage_with_dcn)
    if backbone_path is not None:
        load_weights(fn, body, backbone_path, missing_ok=DCN_OFFSET_KEYS)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for name, p in body.named_parameters():
        if not name.startswith(tuple(train)):
            p.requires_grad_(False)
    returned_layers = returned_layers or [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # the channels of layer1's output
    return BackboneWithFPN(body, {f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
                           [stage2 * 2 ** (k - 1) for k in returned_layers], out_channels,
                           extra_blocks=extra_blocks or LastLevelMaxPool(), norm_layer=fpn_norm_layer)
