"""deform_conv2d benchmarks: forward and forward + backward (also in deterministic mode) against
torchvision.ops.deform_conv2d, and the dense conv2d of the same shape (note: the cost of
deformability)."""

from __future__ import annotations

import torch

from fastdet import ops
from fastdet.testing import deterministic_algorithms

from ._harness import Case


def _case(device, n, c, cout, h, w, dtype, g):
    x = torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype)
    off = (torch.randn(n, 18, h, w, generator=g) * 2).to(device=device, dtype=dtype)
    mask = torch.rand(n, 9, h, w, generator=g).to(device=device, dtype=dtype)
    wt = (torch.randn(cout, c, 3, 3, generator=g) * 0.05).to(device=device, dtype=dtype)
    b = torch.randn(cout, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(n, cout, h, w, generator=g).to(device=device, dtype=dtype)
    return x, off, mask, wt, b, grad


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    """DCNv2 3x3 (with mask), padding 1. CPU: 2 x 64 x 64 x 64, 64 -> 64. CUDA: a ResNet stage
    (16 x 256 -> 256, 50 x 84) in fp32 and bf16. Forward, forward + backward, forward + backward
    under torch.use_deterministic_algorithms (not with --quick), and the forward against the dense
    conv2d of the same shape. size = the feature map height."""
    import torchvision

    g = torch.Generator().manual_seed(0)
    if device.startswith("cuda"):
        shapes = [(16, 256, 256, 50, 84, torch.float32), (16, 256, 256, 50, 84, torch.bfloat16)]
    else:
        shapes = [(2, 64, 64, 64, 64, torch.float32)]
    out = []
    for n, c, cout, h, w, dtype in shapes:
        if sizes and h not in sizes:
            continue
        x, off, mask, wt, b, grad = _case(device, n, c, cout, h, w, dtype, g)
        leaves = [t.clone().requires_grad_() for t in (x, off, wt, b, mask)]

        def fwd(fn, x=x, off=off, wt=wt, b=b, mask=mask):
            with torch.no_grad():
                fn(x, off, wt, b, padding=(1, 1), mask=mask)

        def fwd_bwd(fn, leaves=leaves, grad=grad):
            for t in leaves:
                t.grad = None
            xx, oo, ww, bb, mm = leaves
            fn(xx, oo, ww, bb, padding=(1, 1), mask=mm).backward(grad)

        # torchvision has no bf16 kernels: its users upcast, so its bf16 figure is the fp32 run
        # (inputs converted outside the timing).
        peer_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
        px, poff, pmask, pwt, pb, pgrad = (t.to(peer_dtype) for t in (x, off, mask, wt, b, grad))
        pleaves = [t.clone().requires_grad_() for t in (px, poff, pwt, pb, pmask)]
        peer_name = "torchvision" + (" (fp32)" if peer_dtype != dtype else "")

        label = f"N={n} {c}->{cout} {h}x{w} 3x3 v2 {str(dtype).replace('torch.', '')}"
        tv = torchvision.ops.deform_conv2d
        # The GEMM arithmetic, against the math peak of the dtype (the fraction of the tensor-core
        # peak for bf16): the forward is one [COUT, C*9] x [C*9, N*H*W] product, the backward two more
        # (grad columns, grad weight); the bilinear sampling is not counted.
        gemm = dict(flops=2 * n * h * w * cout * c * 9, math_dtype=dtype)
        out.append(Case("deform_conv2d", "fwd " + label, h, device, fastdet=lambda f=fwd: f(ops.deform_conv2d),
                        peer=lambda f=fwd, a=(px, poff, pwt, pb, pmask): f(tv, *a), peer_name=peer_name, **gemm))
        out.append(Case("deform_conv2d", "fwd+bwd " + label, h, device,
                        fastdet=lambda f=fwd_bwd: f(ops.deform_conv2d),
                        peer=lambda f=fwd_bwd, pl=pleaves, pg=pgrad: f(tv, pl, pg), peer_name=peer_name,
                        flops=3 * gemm["flops"], math_dtype=dtype))
        if not quick:  # the cost of torch.use_deterministic_algorithms (grad_input by a gather)
            def fwd_bwd_deterministic(f=fwd_bwd):
                with deterministic_algorithms():
                    f(ops.deform_conv2d)

            out.append(Case("deform_conv2d", "fwd+bwd deterministic " + label, h, device,
                            fastdet=fwd_bwd_deterministic,
                            peer=lambda f=fwd_bwd, pl=pleaves, pg=pgrad: f(tv, pl, pg),
                            peer_name=peer_name + (" (atomic)" if device.startswith("cuda") else ""),
                            flops=3 * gemm["flops"], math_dtype=dtype))
        # the price of deformability: the dense conv2d of the same shape as the "peer" (ratio < 1)
        out.append(Case("deform_conv2d", "fwd vs dense conv2d " + label, h, device,
                        fastdet=lambda f=fwd: f(ops.deform_conv2d),
                        peer=lambda f=fwd: f(lambda x, off, wt, b, padding, mask: torch.nn.functional.conv2d(
                            x, wt, b, padding=padding)),
                        peer_name="dense conv2d (same shape)", **gemm))
    return out
