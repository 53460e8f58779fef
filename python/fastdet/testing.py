"""Box generators for tests and benchmarks: random, detector-like (clustered) and adversarial."""

from __future__ import annotations

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
