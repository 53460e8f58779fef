"""Weights for zoo models: local files only (nothing is ever downloaded), strict loading with
readable errors, and torchvision's rules for frozen BatchNorm and trainable backbone layers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

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


def load_weights(fn: str, module: nn.Module, path: Path) -> None:
    """Load a local state dict strictly (old-style torchvision key names accepted); a mismatch is a
    RuntimeError naming the missing and unexpected keys."""
    state = read_state_dict(fn, path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise RuntimeError(f"{fn}: {path} does not match the model: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        def show(keys):
            return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "") if keys else "none"
        raise RuntimeError(f"{fn}: {path} does not match the model: missing keys: {show(result.missing_keys)}; "
                           f"unexpected keys: {show(result.unexpected_keys)}")


def num_classes_from(fn: str, path: Path | None, num_classes, key: str, default: int = 91,
                     rows_per_class: int = 1) -> int:
    """num_classes: as given, else the first dimension of the checkpoint's classifier weight ``key``
    divided by ``rows_per_class`` (SSD's classifiers have one row per class and default box of a
    location), else ``default`` (91: COCO with background)."""
    if num_classes is not None or path is None:
        return default if num_classes is None else num_classes
    w = read_state_dict(fn, path).get(key)
    return int(w.shape[0]) // rows_per_class if w is not None else default


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
