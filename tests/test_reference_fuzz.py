"""Randomised differential tests: every op against its pure-PyTorch reference (fastdet.ops._reference,
itself checked against torchvision in the per-op tests) in float64 on CPU, over random shapes
(empty included) and adversarial values: zero-size, inverted, duplicate and NaN/inf boxes, tied and
NaN scores, offsets on grid lines, features with NaN/inf. Each op gets CASES seeded cases; a failure
names the case's seed, so `_run(<case>, seed)` reproduces it."""

import random

import pytest
import torch

from fastdet import ops
from fastdet.ops._reference import border_align as ref_border_align
from fastdet.ops._reference import box_iou as ref_box_iou
from fastdet.ops._reference import corner_pool as ref_corner_pool
from fastdet.ops._reference import deform_conv2d as ref_deform_conv2d
from fastdet.ops._reference import nms as ref_nms
from fastdet.ops._reference import roi_align as ref_roi_align
from fastdet.ops._reference import roi_pool as ref_roi_pool
from fastdet.ops._reference import sigmoid_focal_loss as ref_focal
from fastdet.ops._reference import simota as ref_simota
from fastdet.ops._reference import soft_nms as ref_soft_nms
from fastdet.testing import random_boxes

D = torch.float64
CASES = 300


def random_adversarial_boxes(n: int, r: random.Random, scale: float = 20.0) -> torch.Tensor:
    """fastdet.testing.random_boxes (shifted so that some lie partly outside the map), about 20% of
    them made zero-size, inverted, NaN/inf or duplicated."""
    b = random_boxes(n, image_size=scale, max_size=scale / 2, dtype=D) - 2
    for i in range(n):
        u = r.random()
        if u < 0.05:
            b[i, 2:] = b[i, :2]  # zero size
        elif u < 0.08:
            b[i] = b[i, [2, 3, 0, 1]]  # inverted
        elif u < 0.10:
            b[i, r.randrange(4)] = float("nan")
        elif u < 0.12:
            b[i, r.randrange(4)] = r.choice([float("inf"), -float("inf"), 1e12])
        elif u < 0.20 and i > 0:
            b[i] = b[i - 1]  # duplicate
    return b


def tied_scores(n: int, r: random.Random) -> torch.Tensor:
    s = torch.rand(n, dtype=D)
    if r.random() < 0.3:
        s = (s * 4).floor() / 4
    if n and r.random() < 0.1:
        s[r.randrange(n)] = float("nan")
    return s


def rois_for(n: int, k: int, h: int, w: int, r: random.Random) -> torch.Tensor:
    return torch.cat([torch.randint(0, n, (k, 1)).to(D), random_adversarial_boxes(k, r, scale=max(h, w) * 2.0)], 1)


def same(got, want, what: str, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    if isinstance(got, (tuple, list)):
        for i, (a, b) in enumerate(zip(got, want)):
            same(a, b, f"{what}[{i}]", rtol, atol)
        return
    if not got.is_floating_point():
        assert torch.equal(got, want.to(got.dtype)), f"{what}: {got.tolist()} != {want.tolist()}"
        return
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol, equal_nan=True, msg=what)


def box_iou_case(r):
    mode, aligned = r.choice(["iou", "giou", "diou", "ciou"]), r.random() < 0.4
    n, m = r.randrange(0, 8), r.randrange(0, 8)
    a, b = random_adversarial_boxes(n, r), random_adversarial_boxes(n if aligned else m, r)
    same(ops.box_iou(a, b, mode=mode, aligned=aligned), ref_box_iou.box_iou(a, b, mode, aligned),
         f"box_iou {mode} aligned={aligned}", rtol=1e-7)


def nms_case(r):
    n = r.randrange(0, 30)
    b, s = random_adversarial_boxes(n, r), tied_scores(n, r)
    t, cap = r.choice([0.0, 0.3, 0.5, 0.7, 1.0]), r.choice([-1, -1, 0, 1, 5])
    same(torch.ops.fastdet.nms(b, s, t, cap), ref_nms.nms(b, s, t, cap), f"nms iou_threshold={t} max_output={cap}")


def batched_nms_case(r):
    n = r.randrange(0, 30)
    b, s, idx = random_adversarial_boxes(n, r), tied_scores(n, r), torch.randint(0, 3, (n,))
    t = r.choice([0.0, 0.3, 0.5, 1.0])
    same(ops.batched_nms(b, s, idx, t), ref_nms.batched_nms(b, s, idx, t), f"batched_nms iou_threshold={t}")


def soft_nms_case(r):
    n = r.randrange(0, 25)
    b, s = random_adversarial_boxes(n, r), tied_scores(n, r).nan_to_num(0.5)
    args = (r.choice([0.0, 0.3, 0.5]), r.choice([0.5, 0.1]), r.choice([0.0, 0.001, 0.3]), r.choice(["linear", "gaussian"]))
    same(ops.soft_nms(b, s, *args), ref_soft_nms.soft_nms(b, s, *args), f"soft_nms {args}")


def roi_align_case(r):
    n, c, h, w = r.randrange(1, 3), r.randrange(1, 4), r.randrange(1, 9), r.randrange(1, 9)
    x = torch.randn(n, c, h, w, dtype=D)
    if r.random() < 0.3:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = rois_for(n, r.randrange(0, 6), h, w, r)
    args = ((r.randrange(1, 4), r.randrange(1, 4)), r.choice([1.0, 0.5, 0.25]), r.choice([-1, 0, 1, 2]),
            r.random() < 0.5)
    same(ops.roi_align(x, rois, *args), ref_roi_align.roi_align(x, rois, *args), f"roi_align {args}")


def roi_pool_case(r):
    n, c, h, w = r.randrange(1, 3), r.randrange(1, 4), r.randrange(1, 9), r.randrange(1, 9)
    x = torch.randn(n, c, h, w, dtype=D)
    if r.random() < 0.3:
        x = (x * 2).round()  # ties for the max
    rois = rois_for(n, r.randrange(0, 6), h, w, r)
    args = ((r.randrange(1, 4), r.randrange(1, 4)), r.choice([1.0, 0.5, 0.25]))
    same(ops.roi_pool(x, rois, *args), ref_roi_pool.roi_pool(x, rois, *args), f"roi_pool {args}")


def deform_conv2d_case(r):
    g, og = r.choice([1, 2]), r.choice([1, 2])
    n, c, cout = r.randrange(0, 3), g * og * r.randrange(1, 3), g * r.randrange(1, 3)
    kh, kw, h, w = r.choice([1, 2, 3]), r.choice([1, 3]), r.randrange(1, 7), r.randrange(1, 7)
    s, p, d = r.choice([1, 2]), r.choice([0, 1, 2]), r.choice([1, 2])
    ho, wo = (h + 2 * p - (d * (kh - 1) + 1)) // s + 1, (w + 2 * p - (d * (kw - 1) + 1)) // s + 1
    if ho < 1 or wo < 1:
        return
    x = torch.randn(n, c, h, w, dtype=D)
    offset = torch.randn(n, 2 * og * kh * kw, ho, wo, dtype=D) * r.choice([0.5, 2.0, 10.0])
    if r.random() < 0.3:
        offset = offset.round()  # points on grid lines
    if offset.numel() and r.random() < 0.1:
        offset.view(-1)[r.randrange(offset.numel())] = float("nan")
    weight = torch.randn(cout, c // g, kh, kw, dtype=D)
    mask = torch.rand(n, og * kh * kw, ho, wo, dtype=D) if r.random() < 0.5 else None
    bias = torch.randn(cout, dtype=D) if r.random() < 0.5 else None
    same(ops.deform_conv2d(x, offset, weight, bias, s, p, d, mask=mask),
         ref_deform_conv2d.deform_conv2d(x, offset, weight, bias, s, p, d, mask=mask), "deform_conv2d")


def border_align_case(r):
    n, c, h, w = r.randrange(1, 3), r.randrange(1, 3), r.randrange(1, 6), r.randrange(1, 6)
    x = torch.randn(n, 4 * c, h, w, dtype=D)
    boxes = random_adversarial_boxes(n * h * w, r, scale=max(h, w) * 1.5).view(n, h * w, 4)
    pool_size = r.randrange(1, 6)
    same(torch.ops.fastdet.border_align(x, boxes, pool_size),
         ref_border_align.border_align(x, boxes, pool_size, return_argmax=True), f"border_align pool_size={pool_size}")


def corner_pool_case(r):
    x = torch.randn(r.randrange(0, 3), r.randrange(1, 3), r.randrange(0, 7), r.randrange(0, 7), dtype=D)
    if x.numel() and r.random() < 0.2:
        x.view(-1)[r.randrange(x.numel())] = r.choice([float("nan"), float("inf"), -float("inf")])
    mode = r.choice(["top", "bottom", "left", "right"])
    same(ops.corner_pool(x, mode), ref_corner_pool.corner_pool(x, mode), f"corner_pool {mode}")


def sigmoid_focal_loss_case(r):
    n, k = r.randrange(0, 6), r.randrange(1, 5)
    x = torch.randn(n, k, dtype=D) * r.choice([1, 10, 100])
    t = torch.rand(n, k, dtype=D) if r.random() < 0.5 else (torch.rand(n, k, dtype=D) > 0.5).to(D)
    args = (r.choice([0.25, -1.0, 0.5]), r.choice([0.0, 1.0, 1.5, 2.0]), r.choice(["none", "mean", "sum"]))
    same(ops.sigmoid_focal_loss(x, t, *args), ref_focal.sigmoid_focal_loss(x, t, *args), f"sigmoid_focal_loss {args}",
         rtol=1e-7)


def simota_case(r):
    b, a, g, c = r.randrange(1, 3), r.randrange(1, 20), r.randrange(0, 4), r.randrange(1, 4)
    priors = torch.cat([torch.rand(a, 2, dtype=D) * 32, torch.full((a, 2), 8.0, dtype=D)], 1)
    scores = torch.rand(b, a, c, dtype=D)
    pred = random_adversarial_boxes(b * a, r, 32).view(b, a, 4).nan_to_num(1.0).clamp(-100, 100)
    corners = torch.rand(b, g, 4, dtype=D) * 32
    gt = torch.cat([torch.minimum(corners[..., :2], corners[..., 2:]), torch.maximum(corners[..., :2], corners[..., 2:]) + 1], -1)
    labels, present = torch.randint(0, c, (b, g)), torch.rand(b, g) > 0.3
    center_only = r.random() < 0.3
    args = (scores, pred, priors, gt, labels, present)
    same(ops.simota_cost(*args, center_only=center_only), ref_simota.simota_cost(*args, center_only=center_only),
         "simota_cost", rtol=1e-7, atol=1e-7)
    got, want = ops.simota_assign(*args, center_only=center_only), ref_simota.simota_assign(*args, center_only=center_only)
    same((got[0], got[3]), (want[0], want[3]), "simota_assign (assigned gt, num_fg)")


CASE_FUNCTIONS = [box_iou_case, nms_case, batched_nms_case, soft_nms_case, roi_align_case, roi_pool_case,
                  deform_conv2d_case, border_align_case, corner_pool_case, sigmoid_focal_loss_case, simota_case]


def _run(case, seed: int) -> None:
    torch.manual_seed(seed)
    case(random.Random(seed))


@pytest.mark.parametrize("case", CASE_FUNCTIONS, ids=lambda f: f.__name__.removesuffix("_case"))
def test_matches_reference_on_random_adversarial_inputs(case):
    for seed in range(CASES):
        try:
            _run(case, seed)
        except AssertionError as e:
            raise AssertionError(f"{case.__name__} seed {seed}: {e}") from None
