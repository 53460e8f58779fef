"""Reference RoIPool, written from the definition with plain torch ops (autograd-friendly, slow).

For RoI k = (b, x1, y1, x2, y2) and bin (ph, pw):
    start_w = round(x1 * scale), end_w = round(x2 * scale)   (round half away from zero)
    roi_w = max(end_w - start_w + 1, 1), bin_w = roi_w / PW   (in fp32, or fp64 for fp64 inputs)
    columns [floor(pw * bin_w), ceil((pw + 1) * bin_w)) + start_w, clipped to [0, W)
(the same along y); output = max over the bin (first maximum in row-major order, NaN wins as in
torch.max), 0 for an empty bin. A NaN coordinate or a batch index outside [0, N) empties the RoI;
coordinates are clamped to +-2^30 after rounding. The gradient flows to the input only through
the maximum (boxes get none).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LIMIT = 2.0**30


def _round_half_away(v: float) -> float:
    a = abs(v)
    f = math.floor(a)
    r = f + 1.0 if a - f >= 0.5 else f  # a - f is exact in floating point
    return math.copysign(r, v)


def _scaled(v: Tensor, scale: Tensor) -> float | None:
    """round(v * scale) in the math dtype, clamped; None for NaN."""
    s = float(v * scale)
    if math.isnan(s):
        return None
    return int(_round_half_away(min(max(s, -_LIMIT), _LIMIT)))  # the limit is an integer: clamp, then round


def _bins(start: int, length: int, pooled: int, size: int, dtype: torch.dtype) -> list[tuple[int, int]]:
    bin_size = torch.tensor(float(length), dtype=dtype) / torch.tensor(float(pooled), dtype=dtype)
    out = []
    for p in range(pooled):
        lo = math.floor(float(torch.tensor(float(p), dtype=dtype) * bin_size)) + start
        hi = math.ceil(float(torch.tensor(float(p + 1), dtype=dtype) * bin_size)) + start
        out.append((min(max(lo, 0), size), min(max(hi, 0), size)))
    return out


def roi_pool(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, return_argmax: bool = False):
    """Same contract as fastdet.ops.roi_pool with rois Tensor[K, 5]: input [N, C, H, W] ->
    output [K, C, PH, PW]. With return_argmax, also the int32 index h * W + w of each maximum
    (-1 for an empty bin), as the op's second output."""
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = input.shape
    math_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    scale = torch.tensor(spatial_scale, dtype=math_dtype)
    flat = input.reshape(n, c, h * w)
    outs, args = [], []
    for roi in rois.to(math_dtype):
        coords = [_scaled(v, scale) for v in roi[1:]]
        bi = float(roi[0])
        valid = all(v is not None for v in coords) and 0 <= bi < n
        out = input.new_zeros(c, ph_n, pw_n)
        arg = torch.full((c, ph_n, pw_n), -1, dtype=torch.int32, device=input.device)
        if valid:
            sw, sh, ew, eh = coords
            b = int(bi)
            rows = _bins(sh, max(eh - sh + 1, 1), ph_n, h, math_dtype)
            cols = _bins(sw, max(ew - sw + 1, 1), pw_n, w, math_dtype)
            cells = []
            for ph, (h0, h1) in enumerate(rows):
                for pw, (w0, w1) in enumerate(cols):
                    if h1 <= h0 or w1 <= w0:
                        continue
                    idx = torch.tensor([y * w + x for y in range(h0, h1) for x in range(w0, w1)], device=input.device)
                    local = flat[b][:, idx].detach().to(math_dtype).max(dim=1).indices  # first max, NaN wins
                    cells.append((ph, pw, idx[local]))
            if cells:
                ph_i = torch.tensor([ph for ph, _, _ in cells], device=input.device)
                pw_i = torch.tensor([pw for _, pw, _ in cells], device=input.device)
                gidx = torch.stack([g for _, _, g in cells], 1)  # [C, cells]
                vals = flat[b].gather(1, gidx)  # differentiable
                out = _scatter(out, ph_i, pw_i, vals)
                arg[:, ph_i, pw_i] = gidx.to(torch.int32)
        outs.append(out)
        args.append(arg)
    if outs:
        output, argmax = torch.stack(outs), torch.stack(args)
    else:
        output = input.new_zeros(0, c, ph_n, pw_n)
        argmax = torch.zeros(0, c, ph_n, pw_n, dtype=torch.int32, device=input.device)
    return (output, argmax) if return_argmax else output


def _scatter(out: Tensor, ph_i: Tensor, pw_i: Tensor, vals: Tensor) -> Tensor:
    """out[:, ph_i, pw_i] = vals, out of place (keeps autograd through vals)."""
    c, ph_n, pw_n = out.shape
    flat = out.reshape(c, ph_n * pw_n).index_copy(1, ph_i * pw_n + pw_i, vals)
    return flat.reshape(c, ph_n, pw_n)
