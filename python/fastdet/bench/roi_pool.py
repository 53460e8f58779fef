"""roi_pool benchmarks against torchvision.ops.roi_pool on the same inputs, same run.

Shape of a Fast/Faster R-CNN box head on one stride-8 map of an 800 x 1216 image
(100 x 152 cells, 256 channels, 7 x 7 output), proposals of 16-512 pixels:
CPU 2 images x 512 RoIs; CUDA 8 images x 512 RoIs (training batch), fp32 and bf16 (torchvision has
no bf16 kernel: its side runs on the same values in fp32). `size` = total RoIs.
"""

from __future__ import annotations

import torch

from ._harness import Case

CHANNELS, HEIGHT, WIDTH, STRIDE, POOLED = 256, 100, 152, 8, 7


def _inputs(images: int, rois_per_image: int, g: torch.Generator):
    feat = torch.randn(images, CHANNELS, HEIGHT, WIDTH, generator=g)
    k = images * rois_per_image
    size = torch.exp(torch.empty(k, 2).uniform_(torch.log(torch.tensor(16.0)).item(), torch.log(torch.tensor(512.0)).item(), generator=g))
    centre = torch.rand(k, 2, generator=g) * torch.tensor([WIDTH * STRIDE, HEIGHT * STRIDE])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    idx = torch.arange(images).repeat_interleave(rois_per_image).unsqueeze(1).float()
    return feat, torch.cat([idx, boxes], 1)


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    import torchvision

    from fastdet import ops

    cuda = device.startswith("cuda")
    images = 8 if cuda else 2
    if sizes is None:
        sizes = [images * 512]
    dtypes = [torch.float32, torch.bfloat16] if cuda and not quick else [torch.float32]
    scale = 1.0 / STRIDE
    out = []
    for k in sizes:
        g = torch.Generator().manual_seed(k)
        feat, rois = _inputs(images, max(1, k // images), g)
        k = rois.shape[0]
        for dtype in dtypes:
            x = feat.to(device=device, dtype=dtype)
            r = rois.to(device=device, dtype=dtype)
            x32, r32 = x.float(), r.float()  # torchvision's side: the same values in fp32
            grad = torch.randn(k, CHANNELS, POOLED, POOLED, generator=g).to(device=device, dtype=dtype)
            name = str(dtype).replace("torch.", "")
            elem = x.element_size()
            # input read once + output (values, int32 argmax) written once
            fwd_bytes = x.numel() * elem + k * CHANNELS * POOLED * POOLED * (elem + 4)
            label = f"{images} img x {k // images} RoIs C={CHANNELS} {HEIGHT}x{WIDTH} {POOLED}x{POOLED} {name}"
            out.append(Case("roi_pool", f"fwd {label}", k, device,
                            fastdet=lambda x=x, r=r: ops.roi_pool(x, r, POOLED, scale),
                            peer=lambda x=x32, r=r32: torchvision.ops.roi_pool(x, r, POOLED, scale),
                            peer_name="torchvision" + (" (fp32)" if dtype != torch.float32 else ""),
                            bytes_moved=fwd_bytes))
            if quick and not cuda:
                continue
            xg, xg32 = x.clone().requires_grad_(), x32.clone().requires_grad_()

            def step(fn, x, r, grad):
                x.grad = None
                fn(x, r, POOLED, scale).backward(grad)

            out.append(Case("roi_pool", f"fwd+bwd {label}", k, device,
                            fastdet=lambda x=xg, r=r, gr=grad: step(ops.roi_pool, x, r, gr),
                            peer=lambda x=xg32, r=r32, gr=grad.float(): step(torchvision.ops.roi_pool, x, r, gr),
                            peer_name="torchvision" + (" (fp32)" if dtype != torch.float32 else "")))
            if not cuda:  # channels-last input (torchvision copies it to NCHW)
                xc = x.to(memory_format=torch.channels_last)
                out.append(Case("roi_pool", f"fwd channels-last {label}", k, device,
                                fastdet=lambda x=xc, r=r: ops.roi_pool(x, r, POOLED, scale),
                                peer=lambda x=xc, r=r: torchvision.ops.roi_pool(x, r, POOLED, scale)))
    return out
