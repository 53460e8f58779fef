"""Helpers for tests and benchmarks: box generators (random, detector-like (clustered), adversarial),
CUDA graph replay, deterministic mode, and the zoo's parity helpers (BatchNorm calibration of
random-weight models, tie-robust comparison of detections)."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor


def random_boxes(n: int, *, image_size: float = 1000.0, max_size: float = 200.0, dtype=torch.float32,
                 device="cpu", generator: torch.Generator | None = None, batch: tuple = ()) -> Tensor:
    """[*batch, n, 4] well-formed boxes (x1 < x2, y1 < y2) uniformly placed in the image."""
    xy = torch.rand(*batch, n, 2, generator=generator, dtype=torch.float64) * image_size
    wh = torch.rand(*batch, n, 2, generator=generator, dtype=torch.float64) * max_size + 1.0
    return torch.cat([xy, xy + wh], -1).to(dtype=dtype, device=device)


def clustered_boxes(n: int, *, num_clusters: int | None = None, image_size: float = 1000.0, jitter: float = 0.1,
                    dtype=torch.float32, device="cpu", generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """What a detector emits before NMS: n boxes around num_clusters objects (default n // 20),
    each a jittered copy of its object's box, with random scores. Returns (boxes [n, 4], scores [n])."""
    k = max(1, num_clusters if num_clusters is not None else n // 20)
    centres = random_boxes(k, image_size=image_size, max_size=image_size / 8, generator=generator, dtype=torch.float64)
    owner = torch.randint(0, k, (n,), generator=generator)
    base = centres[owner]
    wh = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    boxes = base + (torch.rand(n, 4, generator=generator, dtype=torch.float64) - 0.5) * jitter * wh
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    return boxes.to(dtype=dtype, device=device), scores.to(dtype=dtype, device=device)


def adversarial_boxes(dtype=torch.float32, device="cpu") -> Tensor:
    """Edge cases every geometry op must survive: duplicates, zero-area, inverted, huge,
    touching and nested boxes."""
    rows = [
        [0, 0, 10, 10], [0, 0, 10, 10],          # exact duplicates
        [5, 5, 5, 5], [3, 3, 3, 9],              # zero area (point, line)
        [10, 10, 0, 0], [8, 2, 2, 8],            # inverted
        [0, 0, 1e4, 1e4], [-1e4, -1e4, 1e4, 1e4],  # huge
        [10, 0, 20, 10], [2, 2, 4, 4],           # touching, nested
        [0.5, 0.5, 9.5, 9.5], [-5, -5, 0, 0],    # nearly duplicate, corner-touching
    ]
    return torch.tensor(rows, dtype=dtype, device=device)


def cuda_graph_replay(fn, inputs, new_inputs, grad_inputs: tuple[int, ...] = (), warmup: int = 3):
    """Captures ``out = fn(*inputs)`` in a CUDA graph (with ``out.sum().backward()`` when
    ``grad_inputs`` names inputs to differentiate), copies ``new_inputs`` into the captured input
    tensors, replays the graph, and runs ``fn`` eagerly on ``new_inputs``.

    The capture fails (a RuntimeError from CUDA) if ``fn`` synchronises with the host. Returns
    ``((replayed_out, replayed_grads), (eager_out, eager_grads))``, grads in ``grad_inputs`` order.
    Follows the whole-network capture recipe of the torch.cuda.graph documentation: warm-up on a
    side stream, gradients set to None before capture so the backward allocates them in the graph.
    """
    static = [x.clone() for x in inputs]
    leaves = [static[i].requires_grad_() for i in grad_inputs]

    def step():
        for x in leaves:
            x.grad = None
        out = fn(*static)
        if leaves:
            out.sum().backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for x in leaves:
        x.grad = None
    with torch.cuda.graph(graph):
        out = fn(*static)
        if leaves:
            out.sum().backward()
    with torch.no_grad():
        for s, n in zip(static, new_inputs):
            s.copy_(n)
    graph.replay()
    torch.cuda.synchronize()
    replayed = (out.detach().clone(), [x.grad.clone() for x in leaves])

    fresh = [x.clone() for x in new_inputs]
    eager_leaves = [fresh[i].requires_grad_() for i in grad_inputs]
    eager_out = fn(*fresh)
    if eager_leaves:
        eager_out.sum().backward()
    return replayed, (eager_out.detach(), [x.grad for x in eager_leaves])


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) inside the block, with the fixed cuBLAS workspace
    configuration that mode requires of CUDA GEMMs; both restored on exit."""
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    saved_mode = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved_mode[0], warn_only=saved_mode[1])
        if saved_env is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env


def calibrate_batchnorm(model, size: int, num_images: int = 1) -> None:
    """Set a detector's BatchNorm statistics from ``num_images`` random images (``size`` px high, 4/3
    as wide; SSDlite's 1x1 maps need 2), through its ``transform`` and ``backbone``: random-weight
    models otherwise have vanishing or saturated features, so nearly every score ties or is 0,
    parity checks compare tie orders and post-processing (NMS over ~90 classes, mask pasting) does
    far less work than with trained weights. Leaves the model in training mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        batch, _ = model.transform([torch.rand(3, size, size * 4 // 3, generator=g) for _ in range(num_images)])
        model.backbone(batch.tensors)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def assert_same_detections(a: dict, b: dict, mask_atol: float = 1e-4, min_count: int = 10) -> None:
    """Same detections (a: expected, b: got; dicts of boxes/labels/scores[/masks]) up to fp32
    rounding, robust to near-tied scores being listed in another order: every detection of one list
    has a partner in the other with the same label, a score within 1e-5 and a box within 1e-3 px (and
    mask within mask_atol); the scores agree position by position. Both hold more than min_count."""
    assert a["boxes"].shape == b["boxes"].shape and a["boxes"].shape[0] > min_count
    assert b["boxes"].dtype == torch.float32 and b["labels"].dtype == torch.int64
    same = ((a["labels"][:, None] == b["labels"][None, :])
            & ((a["scores"][:, None] - b["scores"][None, :]).abs() <= 1e-5)
            & ((a["boxes"][:, None, :] - b["boxes"][None, :, :]).abs().amax(-1) <= 1e-3))
    assert same.any(dim=1).all() and same.any(dim=0).all(), f"{(~same.any(1)).sum().item()} detections unmatched"
    if "masks" in a:
        assert b["masks"].shape == a["masks"].shape
        partner = same.to(torch.uint8).argmax(dim=1)  # a box/score partner (near-identical boxes paste alike)
        torch.testing.assert_close(b["masks"][partner], a["masks"], rtol=0, atol=mask_atol)
    torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-5)


def detection_images(seed: int = 1) -> list[Tensor]:
    """Two random images of different sizes (3x120x150, 3x97x88), the zoo tests' standard input."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 120, 150, generator=g), torch.rand(3, 97, 88, generator=g)]


def detection_targets(images: list[Tensor], masks: bool = True, empty: tuple[int, ...] = (),
                      num_labels: int = 4) -> list[dict]:
    """Training targets for ``images``: three random boxes (at least 8 px) per image with labels in
    1..num_labels (none for the indices in ``empty``), masks (the left half of each box) when asked,
    and the extra keys fastdet.data.CocoDetection adds, which the models pass over."""
    g = torch.Generator().manual_seed(5)
    targets = []
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        n = 0 if i in empty else 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        boxes = torch.cat([xy, xy + wh], dim=1)
        t = {"boxes": boxes, "labels": torch.randint(1, num_labels + 1, (n,), generator=g),
             "image_id": i, "area": wh.prod(dim=1), "iscrowd": torch.zeros(n, dtype=torch.int64)}
        if masks:
            m = torch.zeros(n, h, w, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                m[j, y0:y1, x0 : (x0 + x1) // 2 + 1] = 1
            t["masks"] = m
        targets.append(t)
    return targets


def assert_input_errors(model, masks: bool = False) -> None:
    """The call-contract errors every zoo detector raises, each naming the model class: missing or
    malformed targets in training (boxes not [N, 4], an empty box, float labels, one dict short),
    malformed images in eval. Leaves the model in eval mode."""
    import pytest

    name = type(model).__name__
    ims = detection_images()
    model.train()
    with pytest.raises(ValueError, match=f"{name}: targets are required in training mode"):
        model(ims)
    bad = detection_targets(ims, masks)
    bad[0]["boxes"] = bad[0]["boxes"][:, :3]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must have shape \[N, 4\], got \[3, 3\]"):
        model(ims, bad)
    bad = detection_targets(ims, masks)
    bad[1]["boxes"][0, 2] = bad[1]["boxes"][0, 0]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\] has a box with no positive width"):
        model(ims, bad)
    bad = detection_targets(ims, masks)
    bad[0]["labels"] = bad[0]["labels"].float()
    with pytest.raises(TypeError, match=r"labels'\] must be int64"):
        model(ims, bad)
    with pytest.raises(ValueError, match="one dict per image"):
        model(ims, detection_targets(ims, masks)[:1])
    model.eval()
    with pytest.raises(ValueError, match=r"images\[1\] must have shape \[C, H, W\]"):
        model([ims[0], ims[1][None]])
    with pytest.raises(ValueError, match="images is empty"):
        model([])
    with pytest.raises(ValueError, match="images must be a list"):
        model(torch.stack([ims[0], ims[0]]))
    with pytest.raises(TypeError, match="floating point"):
        model([(ims[0] * 255).to(torch.uint8)])
