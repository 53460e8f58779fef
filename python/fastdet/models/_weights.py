"""Weights for zoo models: local files only (nothing is ever downloaded), strict loading with
readable errors, and torchvision's rules for frozen BatchNorm and trainable backbone layers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


def local_path(fn: str, arg: str, value) -> Path | None:
    """The checked local file a `weights=` style argument names (None stays None); URLs, torchvision
    weight enums and missing files are errors naming the builder `fn` and the argument `arg`."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if "://" in text:
            raise ValueError(f"{fn}: {arg} must be None or a local file path; nothing is downloaded (got the URL {text!r})")
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{fn}: {arg} file not found: {path}")
        return path
    raise ValueError(f"{fn}: {arg} must be None or a local file path (str or Path); nothing is downloaded, so "
                     f"torchvision weight enums are not accepted (got {value!r}). Save the state dict to a file "
                     f"and pass its path.")


def read_state_dict(fn: str, path: Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint file: a raw state dict, or a dict holding one under "model"
    (fastdet / torchvision reference training checkpoints)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{fn}: cannot read {path} as a PyTorch checkpoint: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RuntimeError(f"{fn}: {path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return dict(obj)


def load_weights(fn: str, module: nn.Module, path: Path, frozen_bn_eps: float | None = None,
                 missing_ok: str | None = None) -> None:
    """Load a local state dict strictly (old-style torchvision key names accepted); a mismatch is a
    RuntimeError naming the missing and unexpected keys. ``frozen_bn_eps``: then set the eps of every
    FrozenBatchNorm2d (0 for the checkpoints torchvision loads with ``overwrite_eps(model, 0.0)``).
    ``missing_ok``: the checkpoint may lack the keys containing this text (they keep their
    initialisation), e.g. the offset predictors of a DCN backbone loading a plain ResNet's weights."""
    state = read_state_dict(fn, path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise RuntimeError(f"{fn}: {path} does not match the model: {e}") from e
    if missing_ok is not None:
        result.missing_keys[:] = [k for k in result.missing_keys if missing_ok not in k]
    if result.missing_keys or result.unexpected_keys:
        def show(keys):
            return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "") if keys else "none"
        raise RuntimeError(f"{fn}: {path} does not match the model: missing keys: {show(result.missing_keys)}; "
                           f"unexpected keys: {show(result.unexpected_keys)}")
    if frozen_bn_eps is not None:
        set_frozen_bn_eps(module, frozen_bn_eps)


def num_classes_from(fn: str, path: Path | None, num_classes, key: str, default: int = 91, per_class: int = 1) -> int:
    """num_classes: as given, else the first dimension of the checkpoint's classifier weight ``key``
    divided by ``per_class`` (the outputs per class, e.g. anchors per location of a dense head),
    else ``default`` (91: COCO with background)."""
    if num_classes is not None or path is None:
        return default if num_classes is None else num_classes
    w = read_state_dict(fn, path).get(key)
    return int(w.shape[0]) // per_class if w is not None else default


def trainable_layers(fn: str, is_trained: bool, value, max_value: int, default: int) -> int:
    # torchvision's rule: without any pretrained weights every layer trains
    if not is_trained:
        if value is not None and value != max_value:
            warnings.warn(f"{fn}: trainable_backbone_layers has no effect without weights or weights_backbone; "
                          f"all {max_value} layers are trainable", stacklevel=3)
        value = max_value
    if value is None:
        value = default
    if not 0 <= int(value) <= max_value:
        raise ValueError(f"{fn}: trainable_backbone_layers must be in [0, {max_value}], got {value}")
    return int(value)


def set_frozen_bn_eps(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps


class WeightsPlan(NamedTuple):
    """What a builder's weights arguments resolve to (see resolve_weights)."""

    path: Path | None           # the whole model's checkpoint
    backbone_path: Path | None  # the backbone body's classification checkpoint (None when path is given)
    num_classes: int
    is_trained: bool            # either checkpoint given: torchvision then freezes BatchNorm and layers
    trainable_layers: int


def resolve_weights(fn: str, *, weights, weights_backbone, num_classes, trainable_backbone_layers,
                    classifier_key: str, per_class: int = 1, max_layers: int = 5, default_layers: int = 3
                    ) -> WeightsPlan:
    """torchvision's builder preamble: weights win over weights_backbone, num_classes defaults to the
    checkpoint's (classifier weight ``classifier_key``, ``per_class`` rows per class) or 91,
    trainable layers checked."""
    path = local_path(fn, "weights", weights)
    backbone_path = None if path is not None else local_path(fn, "weights_backbone", weights_backbone)
    is_trained = path is not None or backbone_path is not None
    num_classes = num_classes_from(fn, path, num_classes, classifier_key, per_class=per_class)
    layers = trainable_layers(fn, is_trained, trainable_backbone_layers, max_layers, default_layers)
    return WeightsPlan(path, backbone_path, num_classes, is_trained, layers)
