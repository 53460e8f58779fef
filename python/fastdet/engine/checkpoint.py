"""Training checkpoints: one file holds everything `fastdet eval/detect` and `--resume` need.

A checkpoint is a dict saved with `torch.save`:
    format        "fastdet-checkpoint", version 1
    model_name    a name from `fastdet.models.list_models()`
    model_kwargs  the builder's keyword arguments (num_classes, min_size, ...)
    classes       class names, index 0 = "__background__"
    label_to_cat_id  contiguous label -> dataset category id
    model         the model's state dict (unwrapped from DDP)
    optimizer, lr_scheduler, scaler, epoch (epochs completed), config (the training options)
Saved atomically (temporary file + rename), so an interrupted save never leaves a broken file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "fastdet-checkpoint"
VERSION = 1


def save(path: str | Path, *, model, model_name: str, model_kwargs: dict, classes: list[str],
         label_to_cat_id: dict[int, int], epoch: int, optimizer=None, lr_scheduler=None, scaler=None,
         config: dict | None = None) -> Path:
    import fastdet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # DDP
    state = {
        "format": FORMAT, "version": VERSION, "fastdet_version": fastdet.__version__,
        "model_name": model_name, "model_kwargs": dict(model_kwargs), "classes": list(classes),
        "label_to_cat_id": {int(k): int(v) for k, v in label_to_cat_id.items()},
        "model": model.state_dict(), "epoch": int(epoch), "config": dict(config or {}),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict:
    """Reads a fastdet checkpoint (on CPU). FileNotFoundError / ValueError with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise ValueError(f"checkpoint {str(path)!r} could not be read by torch.load: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a fastdet checkpoint (written by `fastdet train`); a plain "
                         "state dict of a model loads through the model builders' `weights=` argument")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format version {state['version']}; this fastdet "
                         f"reads up to {VERSION}")
    return state


def load_model_state(model, state_dict: dict, *, source: str) -> None:
    """Strict load with an error that names the first missing/unexpected/mismatched keys."""
    model = getattr(model, "module", model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {head(shapes)}")
        raise ValueError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def build_model(state: dict, *, model_name: str | None = None):
    """The model a checkpoint was trained as, with its weights. `model_name`, when given, must agree."""
    name = state["model_name"]
    if model_name is not None and model_name != name:
        raise ValueError(f"the checkpoint holds a {name!r} model, not {model_name!r}")
    from fastdet import models

    model = models.build_model(name, **state["model_kwargs"])
    load_model_state(model, state["model"], source=f"checkpoint of {name!r}")
    return model
