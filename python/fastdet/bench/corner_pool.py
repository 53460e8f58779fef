"""corner_pool benchmarks: the one-pass kernels against the flip + cummax + flip formulation
(mmcv's CornerPool), forward + backward as in training a CornerNet corner module."""

from __future__ import annotations

import torch

from fastdet import ops
from fastdet.ops._reference import corner_pool as ref

from ._harness import Case


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    """[N, 128, S, S] fp32 feature maps (S = 96: a 384-pixel input at stride 4; CornerNet's
    hourglass head pools 128 channels), N = 4 (quick: N = 1): the fused top-left module
    corner_pool_sum(a, b) = top(a) + left(b), and the top and left pools separately."""
    if sizes is None:
        sizes = [96]
    batch = 1 if quick else 4
    g = torch.Generator().manual_seed(0)
    out = []
    for s in sizes:
        shape = (batch, 128, s, s)
        a = torch.randn(shape, generator=g).to(device).requires_grad_()
        b = torch.randn(shape, generator=g).to(device).requires_grad_()
        grad = torch.randn(shape, generator=g).to(device)
        numel = a.numel()
        label = "x".join(map(str, shape))

        def fused(fn, a=a, b=b, grad=grad):
            return torch.autograd.grad(fn(a, b, "top_left"), (a, b), grad)

        # forward reads a, b and writes out; backward reads grad, a, b and writes grad_a, grad_b
        out.append(Case("corner_pool", f"top_left sum fwd+bwd {label} fp32", s, device,
                        fastdet=lambda f=fused: f(ops.corner_pool_sum),
                        peer=lambda f=fused: f(ref.corner_pool_sum), peer_name="flip+cummax+flip",
                        bytes_moved=8 * numel * a.element_size()))
        for mode in ("top", "left"):
            def single(fn, mode=mode, a=a, grad=grad):
                return torch.autograd.grad(fn(a, mode), (a,), grad)

            # forward reads input, writes out; backward reads grad and input, writes grad_input
            out.append(Case("corner_pool", f"{mode} fwd+bwd {label} fp32", s, device,
                            fastdet=lambda f=single: f(ops.corner_pool),
                            peer=lambda f=single: f(ref.corner_pool), peer_name="flip+cummax+flip",
                            bytes_moved=5 * numel * a.element_size()))
    return out
