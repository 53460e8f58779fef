"""fastdet::nms and fastdet::batched_nms against torchvision and the pure-PyTorch reference."""

import pytest
import torch
import torchvision

from fastdet import ops
from fastdet.ops._reference import nms as ref
from fastdet.testing import adversarial_boxes, clustered_boxes, random_boxes

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tie_free_scores(n, dtype=torch.float32, device="cpu", seed=0):
    """Distinct scores, exactly representable in dtype (integers below 2^8 for bf16, 2^11 for fp16)."""
    return torch.randperm(n, generator=gen(seed)).to(dtype=dtype, device=device)


def problem(kind, n, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    if kind == "random":
        boxes = random_boxes(n, generator=g, max_size=300.0)
    else:
        boxes, _ = clustered_boxes(n, generator=g)
    return boxes.to(dtype=dtype, device=device), tie_free_scores(n, dtype, device, seed)


def assert_keep_equal(actual, expected):
    assert actual.dtype == torch.int64
    assert actual.device == expected.device
    assert actual.tolist() == expected.tolist()


# ---- nms values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_nms_matches_torchvision(kind, dtype, threshold, device):
    boxes, scores = problem(kind, 1500, dtype, device, seed=1)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert_keep_equal(ops.nms(boxes, scores, threshold), expected)
    if threshold == 0.5:
        assert 0 < len(expected) < len(boxes)  # the comparison is not trivial


def test_nms_clustered_detector_scores_match_torchvision():
    # Continuous random scores as a detector emits them (checked tie-free here).
    boxes, scores = clustered_boxes(4000, generator=gen(2))
    assert scores.unique().numel() == scores.numel()
    for t in (0.45, 0.6):
        assert_keep_equal(ops.nms(boxes, scores, t), torchvision.ops.nms(boxes, scores, t))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nms_matches_reference(dtype, device):
    boxes, scores = problem("clustered", 300, dtype, device, seed=3)
    scores = (scores.float() % 37).to(dtype)  # many ties
    for t in (0.0, 0.5, 0.9):
        assert_keep_equal(ops.nms(boxes, scores, t), ref.nms(boxes, scores, t))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_nms_half_equals_fp32_on_rounded_values(dtype, device):
    n = 1000 if dtype == torch.float16 else 250
    boxes, scores = problem("clustered", n, torch.float32, device, seed=4)
    boxes, scores = boxes.to(dtype), tie_free_scores(n, dtype, device, seed=4)
    for t in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(boxes.float(), scores.float(), t)
        assert_keep_equal(ops.nms(boxes, scores, t), expected)


def test_nms_fp16_huge_coordinates_use_fp32_math():
    # Areas overflow fp16 (2.5e7 > 65504) but not the fp32 math: the duplicate is suppressed.
    boxes = torch.tensor([[60000.0, 60000.0, 65000.0, 65000.0]] * 2 + [[0, 0, 10, 10]], dtype=torch.float16)
    scores = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float16)
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 2]


def test_ties_broken_by_lower_index(device):
    # Three identical boxes with equal scores: the lowest index survives.
    boxes = torch.tensor([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]] * 2, dtype=torch.float32, device=device)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.9], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [3, 0]
    # Disjoint boxes, all scores equal: every box kept, in index order.
    disjoint = torch.arange(20, dtype=torch.float32, device=device).repeat_interleave(4).view(20, 4) * 10
    disjoint[:, 2:] += 5
    assert ops.nms(disjoint, torch.ones(20, device=device), 0.5).tolist() == list(range(20))
    # -0.0 and 0.0 are equal scores.
    zeros = torch.tensor([0.0, -0.0, 0.0], device=device)
    assert ops.nms(boxes[:3] + torch.arange(3, device=device).view(3, 1) * 100, zeros[[1, 0, 2]], 0.5).tolist() == [0, 1, 2]


def test_threshold_compared_exactly(device):
    # IoU 1.0 (exact in fp32) is > 0.99999999999 as a double, though the threshold rounds to 1.0 in
    # fp32; infinite thresholds and ones beyond the fp32 range work too.
    boxes = torch.tensor([[0, 0, 10, 10]] * 2, dtype=torch.float32, device=device)
    scores = torch.tensor([1.0, 2.0], device=device)
    for t, expected in ((0.99999999999, [1]), (1.0, [1, 0]), (1e300, [1, 0]), (float("inf"), [1, 0]),
                        (-1e300, [1]), (float("-inf"), [1])):
        assert ops.nms(boxes, scores, t).tolist() == expected
        if device == "cpu":  # torchvision's CUDA kernel rounds the threshold to fp32 first
            assert torchvision.ops.nms(boxes, scores, t).tolist() == expected


def test_adversarial_boxes(device):
    boxes = adversarial_boxes(device=device)
    scores = tie_free_scores(len(boxes), device=device, seed=5)
    for t in (0.0, 0.5, 1.0):
        keep = ops.nms(boxes, scores, t)
        assert_keep_equal(keep, torchvision.ops.nms(boxes, scores, t))
        assert_keep_equal(keep, ref.nms(boxes, scores, t))
    # The duplicate pair (rows 0 and 1): only the higher-scored one survives at t = 0.5.
    keep = set(ops.nms(boxes, scores, 0.5).tolist())
    assert len(keep & {0, 1}) == 1
    # Zero-area boxes (rows 2, 3) have IoU 0 or 0/0 = NaN with everything: never suppressed at t >= 0.
    assert {2, 3} <= keep


def test_huge_coordinates_fp64(device):
    boxes = random_boxes(200, generator=gen(6), dtype=torch.float64, device=device) * 1e30
    scores = tie_free_scores(200, torch.float64, device, seed=6)
    assert_keep_equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_nan_scores_sort_first(device):
    boxes, scores = problem("random", 50, device=device, seed=7)
    scores[[10, 3]] = float("nan")
    keep = ops.nms(boxes, scores, 1.0)  # nothing suppressed: the result is the visiting order
    assert keep[:2].tolist() == [3, 10]
    expected_rest = torch.argsort(torch.where(scores.isnan(), -1.0, scores), descending=True)[:48]
    assert keep[2:].tolist() == expected_rest.tolist()
    assert_keep_equal(ops.nms(boxes, scores, 0.3), ref.nms(boxes, scores, 0.3))


def test_nan_and_inf_coordinates_never_suppress(device):
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, float("nan"), 10], [1, 1, 9, 9],
                          [0, 0, float("inf"), 10], [0, 0, float("inf"), 10]], device=device)
    scores = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.8, 0.7], device=device)
    keep = ops.nms(boxes, scores, 0.5)
    # NaN box (2): kept, suppresses nothing. Infinite boxes (4, 5): IoU 100 / inf = 0 with finite
    # boxes and inf / (inf + inf - inf) = NaN with each other, so neither suppresses. Box 3 (IoU 0.64
    # with 0 and 1) suppresses both.
    assert keep.tolist() == [2, 4, 5, 3]
    assert_keep_equal(keep, ref.nms(boxes, scores, 0.5))


def test_max_output(device):
    boxes, scores = problem("clustered", 500, device=device, seed=8)
    full = ops.nms(boxes, scores, 0.5)
    for k in (0, 1, 7, len(full), len(full) + 10):
        assert_keep_equal(ops.nms(boxes, scores, 0.5, k), full[:k])
    assert_keep_equal(ops.nms(boxes, scores, 0.5, 7), ref.nms(boxes, scores, 0.5, 7))


def test_empty_inputs(device):
    for dtype in DTYPES:
        e = torch.zeros(0, 4, dtype=dtype, device=device)
        s = torch.zeros(0, dtype=dtype, device=device)
        for out in (ops.nms(e, s, 0.5), ops.nms(e, s, 0.5, 3),
                    ops.batched_nms(e, s, torch.zeros(0, dtype=torch.int64, device=device), 0.5)):
            assert out.shape == (0,) and out.dtype == torch.int64 and out.device.type == device


def test_non_contiguous(device):
    boxes, scores = problem("clustered", 400, device=device, seed=9)
    boxes_nc = boxes.t().contiguous().t()
    scores_nc = torch.stack([scores, scores], 1)[:, 1]
    idxs = torch.randint(0, 5, (800,), generator=gen(9)).to(device)[::2]
    assert not boxes_nc.is_contiguous() and not scores_nc.is_contiguous() and not idxs.is_contiguous()
    assert_keep_equal(ops.nms(boxes_nc, scores_nc, 0.5), ops.nms(boxes, scores, 0.5))
    assert_keep_equal(ops.batched_nms(boxes_nc, scores_nc, idxs, 0.5), ops.batched_nms(boxes, scores, idxs.contiguous(), 0.5))


# ---- batched_nms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 7, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_batched_matches_torchvision(num_classes, dtype, device):
    boxes, scores = problem("clustered", 2000, dtype, device, seed=10)
    idxs = torch.randint(0, num_classes, (2000,), generator=gen(10)).to(device)
    for t in (0.0, 0.5, 0.8):
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, t)
        assert_keep_equal(ops.batched_nms(boxes, scores, idxs, t), expected)
    # Small inputs take torchvision's coordinate-offset path.
    b, s, i = boxes[:200], scores[:200], idxs[:200]
    assert_keep_equal(ops.batched_nms(b, s, i, 0.5), torchvision.ops.batched_nms(b, s, i, 0.5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_matches_reference(dtype, device):
    boxes, scores = problem("clustered", 300, dtype, device, seed=11)
    scores = (scores.float() % 23).to(dtype)  # ties across and within classes
    idxs = torch.tensor([-5, 3, 3, 1000, 7] * 60, device=device)[torch.randperm(300, generator=gen(11)).to(device)]
    for t in (0.0, 0.5):
        assert_keep_equal(ops.batched_nms(boxes, scores, idxs, t), ref.batched_nms(boxes, scores, idxs, t))


def test_batched_is_union_of_per_class_nms(device):
    boxes, scores = problem("clustered", 600, device=device, seed=12)
    idxs = torch.randint(0, 4, (600,), generator=gen(12)).to(device)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    union = set()
    for c in range(4):
        members = torch.nonzero(idxs == c).flatten()
        union |= set(members[ops.nms(boxes[members], scores[members], 0.5)].tolist())
    assert set(keep.tolist()) == union and len(keep) == len(union)
    assert (scores[keep][:-1] >= scores[keep][1:]).all()
    # Classes are independent: with one class everywhere it is plain nms.
    assert_keep_equal(ops.batched_nms(boxes, scores, torch.zeros_like(idxs), 0.5), ops.nms(boxes, scores, 0.5))


def test_batched_fp16_large_coordinates_where_offset_trick_fails(device):
    # Small boxes near x = 3000 in 4 classes: torchvision's trick adds class * (max_coordinate + 1),
    # i.e. coordinates up to ~12000, where fp16's spacing (8) collapses the boxes to zero width, so
    # duplicates are no longer suppressed. Per-class NMS in fp32 math on the fp16 values is right.
    g = gen(13)
    n = 400
    base = torch.tensor([3000.0, 3000.0, 3006.0, 3006.0]) + torch.randint(0, 3, (n, 1), generator=g) * 20.0
    boxes = (base + torch.rand(n, 4, generator=g) * 0.5).to(device=device, dtype=torch.float16)
    scores = tie_free_scores(n, torch.float16, device, seed=13)
    idxs = torch.randint(0, 4, (n,), generator=g).to(device)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert_keep_equal(keep, ref.batched_nms(boxes, scores, idxs, 0.5))
    assert len(keep) <= 12  # at most one box per (class, location)
    offsets = (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    trick = torchvision.ops.nms((boxes + offsets).float(), scores.float(), 0.5)
    assert len(trick) > 2 * len(keep), "the offset trick should lose suppressions in fp16"


# ---- PyTorch integration ---------------------------------------------------------------------------


def test_opcheck(device):
    boxes, scores = problem("clustered", 64, device=device, seed=14)
    idxs = torch.randint(0, 3, (64,), generator=gen(14)).to(device)
    for args in ((boxes, scores, 0.5, -1), (boxes, scores, 0.3, 5), (boxes.double(), scores.double(), 0.5, -1)):
        torch.library.opcheck(torch.ops.fastdet.nms.default, args)
    torch.library.opcheck(torch.ops.fastdet.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.fastdet.nms.default, (boxes[:0], scores[:0], 0.5, -1))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(boxes, scores, idxs):
        keep = ops.nms(boxes, scores, 0.5)
        kept_b = ops.batched_nms(boxes, scores, idxs, 0.5)
        return boxes[keep].sum() + scores[kept_b].sum()

    boxes, scores = problem("clustered", 200, seed=15)
    idxs = torch.randint(0, 3, (200,), generator=gen(15))
    expected = boxes[ops.nms(boxes, scores, 0.5)].sum() + scores[ops.batched_nms(boxes, scores, idxs, 0.5)].sum()
    torch.testing.assert_close(f(boxes, scores, idxs), expected)


def test_autocast_runs_in_fp32(device):
    boxes, scores = problem("clustered", 300, device=device, seed=16)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        keep = ops.nms(boxes.to(torch.bfloat16), scores, 0.5)  # mixed dtypes unified to fp32
    assert_keep_equal(keep, ops.nms(boxes.to(torch.bfloat16).float(), scores, 0.5))


# ---- input validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    boxes, scores = problem("random", 5)
    idxs = torch.zeros(5, dtype=torch.int64)
    cases = [
        (lambda: ops.nms(boxes[:, :3], scores, 0.5), r"fastdet::nms: boxes must have shape \[N, 4\]"),
        (lambda: ops.nms(boxes.view(1, 5, 4), scores, 0.5), r"fastdet::nms: boxes must have shape"),
        (lambda: ops.nms(boxes, scores[:4], 0.5), r"fastdet::nms: scores must have shape \[N\]"),
        (lambda: ops.nms(boxes, scores.view(5, 1), 0.5), r"fastdet::nms: scores must have shape"),
        (lambda: ops.nms(boxes, scores.double(), 0.5), r"fastdet::nms: boxes and scores must have the same dtype"),
        (lambda: ops.nms(boxes.long(), scores.long(), 0.5), r"fastdet::nms: boxes must be a floating-point"),
        (lambda: ops.nms(boxes, scores, float("nan")), r"fastdet::nms: iou_threshold must be a number, got NaN"),
        (lambda: ops.nms(boxes, scores, 0.5, -2), r"fastdet::nms: max_output must be -1 \(keep all\) or >= 0, got -2"),
        (lambda: ops.batched_nms(boxes, scores, idxs.int(), 0.5), r"fastdet::batched_nms: idxs must be an int64"),
        (lambda: ops.batched_nms(boxes, scores, idxs[:3], 0.5), r"fastdet::batched_nms: idxs must have shape \[N\]"),
        (lambda: ops.batched_nms(boxes, scores, idxs, float("nan")), r"fastdet::batched_nms: iou_threshold must be"),
        (lambda: ops.batched_nms(boxes[:, :2], scores, idxs, 0.5), r"fastdet::batched_nms: boxes must have shape"),
    ]
    for fn, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            fn()


@pytest.mark.cuda
def test_device_mismatch_raises():
    boxes, scores = problem("random", 5)
    with pytest.raises(RuntimeError, match=r"fastdet::nms: boxes and scores must be on the same device"):
        ops.nms(boxes.cuda(), scores, 0.5)
    with pytest.raises(RuntimeError, match=r"fastdet::batched_nms: boxes and idxs must be on the same device"):
        ops.batched_nms(boxes.cuda(), scores.cuda(), torch.zeros(5, dtype=torch.int64), 0.5)


# ---- CUDA agrees with CPU exactly --------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_exactly(dtype):
    boxes, scores = clustered_boxes(20000, generator=gen(17))
    boxes, scores = boxes.to(dtype), (scores * 100).round().to(dtype)  # heavy ties
    idxs = torch.randint(0, 80, (20000,), generator=gen(17))
    for t in (0.0, 0.5, 0.7):
        assert_keep_equal(ops.nms(boxes.cuda(), scores.cuda(), t).cpu(), ops.nms(boxes, scores, t))
        assert_keep_equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), t).cpu(),
                          ops.batched_nms(boxes, scores, idxs, t))
    for k in (1, 100, 5000):
        assert_keep_equal(ops.nms(boxes.cuda(), scores.cuda(), 0.5, k).cpu(), ops.nms(boxes, scores, 0.5, k))


@pytest.mark.cuda
def test_cuda_one_box_per_class_and_single_big_class():
    boxes, scores = clustered_boxes(3000, generator=gen(18))
    for idxs in (torch.arange(3000), torch.zeros(3000, dtype=torch.int64), torch.arange(3000) % 2):
        assert_keep_equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(),
                          ops.batched_nms(boxes, scores, idxs, 0.5))
