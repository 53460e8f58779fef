"""sigmoid_focal_loss benchmarks: forward + backward of the fused kernels against torchvision's composite."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from fastdet import ops

from ._harness import Case

NUM_CLASSES = 80


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    """RetinaNet-style classification loss, fwd + bwd with reduction 'sum' (then divided by the
    number of positives, as RetinaNet does), A anchors x 80 classes, ~1% positives. CPU: 100k
    anchors (one image); CUDA: 1.6M anchors (16 images), fp32 and bf16. Dense targets against
    torchvision on the same targets; class-index targets against torchvision fed the one-hot
    targets it needs (built inside the timed call, as mmdet's Python path does)."""
    cuda = device.startswith("cuda")
    if sizes is None:
        sizes = [20_000] if quick else ([1_600_000] if cuda else [100_000])
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    g = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        labels[torch.rand(n, generator=g) > 0.01] = NUM_CLASSES  # background
        labels = labels.to(device)
        for dtype in dtypes:
            es = torch.finfo(dtype).bits // 8
            x = (torch.randn(n, NUM_CLASSES, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
            dense = F.one_hot(labels, NUM_CLASSES + 1)[:, :NUM_CLASSES].to(dtype)
            num_pos = max(int((labels < NUM_CLASSES).sum()), 1)
            name = str(dtype).removeprefix("torch.")

            def step(loss_fn, targets, x=x):
                x.grad = None
                (loss_fn(x, targets, reduction="sum") / num_pos).backward()

            def tv_index(x, lab, reduction):
                t = F.one_hot(lab, NUM_CLASSES + 1)[:, :NUM_CLASSES].to(x.dtype)
                return torchvision.ops.sigmoid_focal_loss(x, t, reduction=reduction)

            numel = n * NUM_CLASSES
            out.append(Case("sigmoid_focal_loss", f"fwd+bwd {n}x{NUM_CLASSES} dense {name}", n, device,
                            fastdet=lambda f=step, t=dense: f(ops.sigmoid_focal_loss, t),
                            peer=lambda f=step, t=dense: f(torchvision.ops.sigmoid_focal_loss, t),
                            # fwd reads x, t; bwd reads x, t and writes grad x
                            bytes_moved=5 * es * numel))
            out.append(Case("sigmoid_focal_loss", f"fwd+bwd {n}x{NUM_CLASSES} class-index {name}", n, device,
                            fastdet=lambda f=step: f(ops.sigmoid_focal_loss, labels),
                            peer=lambda f=step: f(tv_index, labels),
                            peer_name="torchvision (+ one_hot)",
                            bytes_moved=3 * es * numel + 2 * 8 * n))
    return out
