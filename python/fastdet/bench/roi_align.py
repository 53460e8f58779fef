"""Benchmark cases of fastdet.ops.roi_align and MultiScaleRoIAlign against torchvision.

CPU: the FPN box-head shape on one level (2 images, 1024 RoIs, 256 channels, 100 x 152 map, 7 x 7,
sampling 2), forward and forward + backward, NCHW and channels-last.
CUDA: the training box head (8 images x 512 RoIs, 256 channels, 4 FPN levels of an 800 x 1216
batch, 7 x 7, sampling 2) through MultiScaleRoIAlign, fp32 and bf16 (torchvision has no bf16
kernel: its peer runs in fp32), forward + backward and forward only; the mask head (14 x 14); the
deterministic backward. `size` is the number of RoIs.
"""

from __future__ import annotations

import torch

from ._harness import Case

FPN_SIZES = ((200, 304), (100, 152), (50, 76), (25, 38))  # P2..P5 of an 800 x 1216 image
IMAGE = (800, 1216)


def _proposals(n_images: int, per_image: int, g: torch.Generator, image=IMAGE) -> list[torch.Tensor]:
    """Detector-like proposals: centres anywhere, sides log-uniform in [16, 600] pixels."""
    out = []
    for _ in range(n_images):
        centre = torch.rand(per_image, 2, generator=g) * torch.tensor([image[1], image[0]], dtype=torch.float32)
        side = torch.exp(torch.empty(per_image, 2).uniform_(2.77, 6.4, generator=g))
        out.append(torch.cat([centre - side / 2, centre + side / 2], 1).clamp(min=0))
    return out


def _step(fn, feats, grad):
    """forward + backward of fn(feats) with a fixed output gradient."""
    def run():
        for f in feats:
            f.grad = None
        fn().backward(grad)
    return run


def _cpu_cases(device: str, quick: bool) -> list[Case]:
    import torchvision

    from fastdet import ops

    k, c = (256, 64) if quick else (1024, 256)
    g = torch.Generator().manual_seed(0)
    boxes = [b / 8 for b in _proposals(2, k // 2, g)]  # P3 (stride 8) coordinates: spatial_scale 1
    x = torch.randn(2, c, 100, 152, generator=g)
    out = []
    for cl in (False, True):
        xi = (x.to(memory_format=torch.channels_last) if cl else x.clone()).requires_grad_()
        layout = "channels-last" if cl else "NCHW"
        args = (7, 1.0, 2)
        label = f"N=2 K={k} C={c} 100x152 7x7 sr=2 fp32 {layout}"
        if not cl:
            out.append(Case("roi_align", "fwd " + label, k, device,
                            fastdet=lambda xi=xi: ops.roi_align(xi.detach(), boxes, *args),
                            peer=lambda xi=xi: torchvision.ops.roi_align(xi.detach(), boxes, *args)))
        grad = torch.randn(k, c, 7, 7, generator=g)
        if cl:
            grad = grad.contiguous(memory_format=torch.channels_last)
        out.append(Case("roi_align", "fwd+bwd " + label, k, device,
                        fastdet=_step(lambda xi=xi: ops.roi_align(xi, boxes, *args), [xi], grad),
                        peer=_step(lambda xi=xi: torchvision.ops.roi_align(xi, boxes, *args), [xi], grad)))
    return out


def _cuda_cases(device: str, quick: bool) -> list[Case]:
    import torchvision

    from fastdet import ops

    n, per_image, c = (2, 128, 64) if quick else (8, 512, 256)
    g = torch.Generator().manual_seed(1)
    boxes = [b.to(device) for b in _proposals(n, per_image, g)]
    k = n * per_image
    shapes = [IMAGE] * n
    names = ["p2", "p3", "p4", "p5"]
    feats32 = {nm: torch.randn(n, c, h, w, generator=g).to(device) for nm, (h, w) in zip(names, FPN_SIZES)}
    feat_bytes = sum(f.numel() for f in feats32.values())
    out = []
    for dtype, pooled, label_extra in ((torch.float32, 7, "box head"), (torch.bfloat16, 7, "box head"),
                                       (torch.float32, 14, "mask head")):
        ours = ops.MultiScaleRoIAlign(names, pooled, 2)
        theirs = torchvision.ops.MultiScaleRoIAlign(names, pooled, 2)
        fa = {nm: f.to(dtype).requires_grad_() for nm, f in feats32.items()}
        fb = {nm: f.clone().requires_grad_() for nm, f in feats32.items()}  # torchvision: fp32
        ga = torch.randn(k, c, pooled, pooled, generator=g).to(device=device, dtype=dtype)
        gb = ga.float()
        elem = torch.finfo(dtype).bits // 8
        out_bytes = k * c * pooled * pooled * elem
        tag = f"{n}x{per_image} RoIs C={c} 4 levels {pooled}x{pooled} sr=2 {str(dtype)[6:]}"
        out.append(Case("roi_align", f"MultiScaleRoIAlign fwd+bwd {label_extra} {tag}", k, device,
                        fastdet=_step(lambda fa=fa, o=ours: o(fa, boxes, shapes), list(fa.values()), ga),
                        peer=_step(lambda fb=fb, t=theirs: t(fb, boxes, shapes), list(fb.values()), gb),
                        peer_name="torchvision (fp32)" if dtype != torch.float32 else "torchvision",
                        # features read + feature gradient written, output written + its gradient read
                        bytes_moved=2 * feat_bytes * elem + 2 * out_bytes))
        if pooled == 7:
            out.append(Case("roi_align", f"MultiScaleRoIAlign fwd {label_extra} {tag}", k, device,
                            fastdet=lambda fa=fa, o=ours: o({kk: v.detach() for kk, v in fa.items()}, boxes, shapes),
                            peer=lambda fb=fb, t=theirs: t({kk: v.detach() for kk, v in fb.items()}, boxes, shapes),
                            peer_name="torchvision (fp32)" if dtype != torch.float32 else "torchvision",
                            bytes_moved=out_bytes))
    # one level (P3, stride 8): atomic and deterministic backward, NCHW and channels-last
    x = feats32["p3"]
    grad = torch.randn(k, c, 7, 7, generator=g).to(device)
    for cl in (False, True):
        xi = (x.to(memory_format=torch.channels_last) if cl else x.clone()).requires_grad_()
        gi = grad.contiguous(memory_format=torch.channels_last) if cl else grad
        layout = "channels-last" if cl else "NCHW"
        args = (7, 0.125, 2)
        for det in (False, True):
            def fd(xi=xi, gi=gi, det=det):
                torch.use_deterministic_algorithms(det)
                try:
                    _step(lambda: ops.roi_align(xi, boxes, *args), [xi], gi)()
                finally:
                    torch.use_deterministic_algorithms(False)
            out.append(Case("roi_align", f"fwd+bwd{' deterministic' if det else ''} P3 100x152 K={k} C={c} 7x7 fp32 "
                            f"{layout}", k, device, fastdet=fd,
                            peer=_step(lambda xi=xi: torchvision.ops.roi_align(xi, boxes, *args), [xi], gi),
                            peer_name="torchvision (atomic)",
                            bytes_moved=2 * x.numel() * 4 + 2 * k * c * 49 * 4))
    return out


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    found = _cuda_cases(device, quick) if device.startswith("cuda") else _cpu_cases(device, quick)
    return [c for c in found if sizes is None or c.size in sizes]
