"""fastdet::soft_nms against the pure-PyTorch reference loop, torchvision's nms (the hard-NMS limit)
and hand-computed decays."""

import math

import pytest
import torch
import torchvision

from conftest import tol
from fastdet import ops
from fastdet.ops._reference import soft_nms as ref
from fastdet.testing import adversarial_boxes, clustered_boxes

METHODS = ["linear", "gaussian"]
NAN = float("nan")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def detections(n, dtype=torch.float64, device="cpu", seed=0, num_classes=None):
    boxes, scores = clustered_boxes(n, generator=gen(seed), dtype=dtype, device=device)
    idxs = None
    if num_classes is not None:
        idxs = torch.randint(0, num_classes, (n,), generator=gen(seed + 100)).to(device)
    return boxes, scores, idxs


def assert_same(out, expected, dtype=torch.float64):
    (k1, s1), (k2, s2) = out, expected
    assert k1.dtype == torch.int64 and s1.dtype == s2.dtype
    assert k1.tolist() == k2.tolist()
    torch.testing.assert_close(s1, s2, **tol(dtype))


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("classes", [None, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(method, classes, dtype, device):
    b, s, c = detections(300, dtype=dtype, device=device, seed=1, num_classes=classes)
    for thr, sigma, min_score in ((0.3, 0.5, 1e-3), (0.6, 0.1, 0.05), (0.0, 2.0, 0.2)):
        kw = dict(iou_threshold=thr, sigma=sigma, min_score=min_score, method=method, idxs=c)
        out = ops.soft_nms(b, s, **kw)
        assert_same(out, ref.soft_nms(b, s, **kw), dtype)
        assert out[0].device == b.device and out[1].device == b.device
        assert len(set(out[0].tolist())) == out[0].numel()  # each box at most once
        assert bool((out[1] >= min_score).all())


def test_default_arguments():
    b, s, _ = detections(200, seed=2)
    k, sc = ops.soft_nms(b, s)
    assert_same((k, sc), ref.soft_nms(b, s, 0.3, 0.5, 0.001, "linear"))
    assert_same(torch.ops.fastdet.soft_nms(b, s), (k, sc))


def test_scores_non_increasing_without_classes():
    b, s, _ = detections(400, seed=3)
    for method in METHODS:
        _, sc = ops.soft_nms(b, s, method=method)
        assert bool((sc[1:] <= sc[:-1]).all()), "a decay never raises a score, so selections come in order"


def test_hard_nms_limit_matches_torchvision(device):
    # Scores in [0.9, 1] and min_score 0.9: any linear decay with iou >= 0.5 leaves <= 0.5 and drops
    # the box, any smaller overlap is untouched: exactly hard NMS (iou > thr vs >= differs only on ties).
    b, s, _ = detections(500, dtype=torch.float32, device=device, seed=4)
    s = 0.9 + 0.1 * s
    k, sc = ops.soft_nms(b, s, iou_threshold=0.5, min_score=0.9, method="linear")
    expected = torchvision.ops.nms(b, s, 0.5)
    assert k.tolist() == expected.tolist()
    torch.testing.assert_close(sc, s[expected], rtol=0, atol=0)


def test_linear_decay_is_exactly_one_minus_iou(device):
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [1, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float64, device=device)
    s = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64, device=device)
    k, sc = ops.soft_nms(b, s, iou_threshold=0.5, method="linear")
    iou = torchvision.ops.box_iou(b, b)
    # 0 first; then 1 decayed to 0.8 * 0.1 = 0.08 and 2 to 0.7 * 0.1 = 0.07, both below box 3.
    s1 = 0.8 * (1 - iou[0, 1].item())
    s2 = 0.7 * (1 - iou[0, 2].item())
    # after box 3 (no overlap), box 1 is next (0.08 > 0.07) and decays box 2 once more.
    iou12 = iou[1, 2].item()
    s2b = s2 * (1 - iou12) if iou12 >= 0.5 else s2
    assert k.tolist() == [0, 3, 1, 2]
    torch.testing.assert_close(sc, torch.tensor([0.9, 0.6, s1, s2b], dtype=torch.float64, device=device), rtol=1e-15, atol=0)


def test_gaussian_decay_value(device):
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float64, device=device)  # iou 0.5
    s = torch.tensor([0.9, 0.8], dtype=torch.float64, device=device)
    for sigma in (0.5, 0.1, 3.0):
        k, sc = ops.soft_nms(b, s, sigma=sigma, method="gaussian", iou_threshold=0.99)  # threshold unused
        assert k.tolist() == [0, 1]
        assert sc[1].item() == pytest.approx(0.8 * math.exp(-0.25 / sigma), rel=1e-14)


def test_linear_threshold_one_never_decays_distinct_boxes(device):
    b, s, _ = detections(300, device=device, seed=5)
    k, sc = ops.soft_nms(b, s, iou_threshold=1.0, method="linear", min_score=0.0)
    order = torch.sort(s, descending=True, stable=True).indices
    assert k.tolist() == order.tolist()
    torch.testing.assert_close(sc, s[order], rtol=0, atol=0)


def test_ties_broken_by_lower_index(device):
    # Equal scores, disjoint boxes: pure index order.
    b = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], dtype=torch.float32, device=device)
    s = torch.tensor([0.5, 0.7, 0.5, 0.7], device=device)
    k, _ = ops.soft_nms(b, s)
    assert k.tolist() == [1, 3, 0, 2]
    # Exact duplicates with equal scores: the lower index wins and decays the other (iou 1 -> 0).
    d = torch.tensor([[0, 0, 10, 10]] * 3, dtype=torch.float32, device=device)
    k, sc = ops.soft_nms(d, torch.full((3,), 0.5, device=device), method="linear")
    assert k.tolist() == [0] and sc.tolist() == [0.5]
    k, sc = ops.soft_nms(d, torch.full((3,), 0.5, device=device), method="gaussian", sigma=1.0)
    assert k.tolist() == [0, 1, 2]
    torch.testing.assert_close(sc, torch.tensor([0.5, 0.5 * math.exp(-1), 0.5 * math.exp(-2)], device=device))


def test_min_score_drops_initial_and_decayed(device):
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.5], [30, 30, 40, 40], [60, 60, 70, 70]], dtype=torch.float64, device=device)
    s = torch.tensor([0.9, 0.8, 0.05, 0.3], dtype=torch.float64, device=device)
    # Box 2 starts below min_score: never selected (mmcv could still select it); box 1 decays below it.
    k, sc = ops.soft_nms(b, s, iou_threshold=0.3, min_score=0.1, method="linear")
    assert k.tolist() == [0, 3]
    torch.testing.assert_close(sc, s[[0, 3]], rtol=0, atol=0)
    # A score exactly at min_score is kept.
    k, _ = ops.soft_nms(b, s, min_score=0.05)
    assert 2 in k.tolist()
    # Everything below min_score: empty.
    k, sc = ops.soft_nms(b, s, min_score=2.0)
    assert k.shape == (0,) and sc.shape == (0,) and sc.dtype == s.dtype


def test_classes_never_decay_each_other(device):
    d = torch.tensor([[0, 0, 10, 10]] * 4, dtype=torch.float32, device=device)
    s = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 1, 0, 1], device=device)
    k, sc = ops.soft_nms(d, s, idxs=idxs)
    assert k.tolist() == [0, 1]  # one survivor per class; identical boxes across classes untouched
    torch.testing.assert_close(sc, s[:2], rtol=0, atol=0)
    # Per-class results equal running each class alone, interleaved by score.
    b, s2, c = detections(300, seed=6, num_classes=5)
    k, sc = ops.soft_nms(b, s2, method="gaussian", idxs=c)
    for cls in range(5):
        m = (c == cls).nonzero().squeeze(1)
        kc, scc = ops.soft_nms(b[m], s2[m], method="gaussian")
        sel = c[k] == cls
        assert k[sel].tolist() == m[kc].tolist()
        torch.testing.assert_close(sc[sel], scc)


def test_adversarial_boxes(device):
    adv = adversarial_boxes(dtype=torch.float64, device=device)
    s = torch.linspace(1.0, 0.45, adv.shape[0], dtype=torch.float64, device=device)
    for method in METHODS:
        out = ops.soft_nms(adv, s, method=method, iou_threshold=0.1)
        assert_same(out, ref.soft_nms(adv, s, method=method, iou_threshold=0.1))
        assert bool(torch.isfinite(out[1]).all())
    # Duplicates (rows 0, 1): linear decay by iou 1 drops the second one.
    k, _ = ops.soft_nms(adv, s, method="linear")
    assert 0 in k.tolist() and 1 not in k.tolist()
    # Two identical zero-area boxes: union 0, IoU NaN -> weight 1, no decay (documented).
    z = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5]], dtype=torch.float64, device=device)
    for method in METHODS:
        k, sc = ops.soft_nms(z, torch.tensor([0.9, 0.8], dtype=torch.float64, device=device), method=method)
        assert k.tolist() == [0, 1] and sc.tolist() == [0.9, 0.8]


def test_nan_and_inf(device):
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, NAN], [0, 0, 10, 9], [0, 0, 10, 10], [0, 0, 9, 10]],
                     dtype=torch.float32, device=device)
    s = torch.tensor([0.9, 0.8, NAN, 0.7, float("inf")], device=device)
    for method in METHODS:
        k, sc = ops.soft_nms(b, s, method=method)
        kr, scr = ref.soft_nms(b, s, method=method)
        assert k.tolist() == kr.tolist()
        torch.testing.assert_close(sc, scr, equal_nan=True)
        assert 2 not in k.tolist()  # NaN score: never selected
        assert k[0].item() == 4  # +inf score first
        assert 1 in k.tolist() and sc[k.tolist().index(1)].item() == pytest.approx(0.8)  # NaN box: never decayed


def test_huge_coordinates_fp16():
    b = torch.tensor([[60000.0, 60000.0, 65000.0, 65000.0], [60000.0, 60000.0, 65000.0, 64000.0]], dtype=torch.float16)
    k, sc = ops.soft_nms(b, torch.tensor([0.9, 0.8], dtype=torch.float16), iou_threshold=0.5)
    assert k.tolist() == [0, 1]
    # 65000 rounds to 64992 in fp16: iou = 4000 / 4992. The areas (~2.5e7) overflow fp16 but not the fp32 math.
    expected = torch.tensor(0.8, dtype=torch.float16).item() * (1 - 4000 / 4992)
    assert sc[1].item() == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_uses_fp32_math(dtype, method, device):
    b, s, c = detections(200, dtype=torch.float32, device=device, seed=7, num_classes=3)
    bh, sh = b.to(dtype), s.to(dtype)
    k, sc = ops.soft_nms(bh, sh, method=method, idxs=c)
    assert sc.dtype == dtype
    k32, sc32 = ops.soft_nms(bh.float(), sh.float(), method=method, idxs=c)  # fp32 on the rounded inputs
    assert k.tolist() == k32.tolist()
    torch.testing.assert_close(sc, sc32.to(dtype), rtol=0, atol=0)
    kr, scr = ref.soft_nms(bh, sh, method=method, idxs=c)
    assert k.tolist() == kr.tolist()


def test_non_contiguous(device):
    b, s, c = detections(100, device=device, seed=8, num_classes=2)
    b_nc = torch.stack([b, b], -1)[..., 0]
    s_nc = torch.stack([s, s], -1)[..., 1]
    c_nc = torch.stack([c, c], -1)[..., 0]
    assert not (b_nc.is_contiguous() or s_nc.is_contiguous() or c_nc.is_contiguous())
    assert_same(ops.soft_nms(b_nc, s_nc, idxs=c_nc), ops.soft_nms(b, s, idxs=c))


def test_empty(device):
    for dtype in (torch.float32, torch.float16):
        k, sc = ops.soft_nms(torch.zeros(0, 4, dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device),
                             idxs=torch.zeros(0, dtype=torch.long, device=device))
        assert k.shape == (0,) and k.dtype == torch.int64 and sc.shape == (0,) and sc.dtype == dtype


# ---- PyTorch integration ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_opcheck(method, device):
    b, s, c = detections(40, dtype=torch.float32, device=device, seed=9, num_classes=3)
    torch.library.opcheck(torch.ops.fastdet.soft_nms.default, (b, s, 0.3, 0.5, 0.001, method, None))
    torch.library.opcheck(torch.ops.fastdet.soft_nms.default, (b, s, 0.5, 0.2, 0.01, method, c))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(b, s, c):
        keep, sc = ops.soft_nms(b, s, method="gaussian", idxs=c)
        return b[keep], sc * 2

    b, s, c = detections(120, dtype=torch.float32, seed=10, num_classes=3)
    kept_boxes, sc = f(b, s, c)
    keep, sc_eager = ops.soft_nms(b, s, method="gaussian", idxs=c)
    torch.testing.assert_close(kept_boxes, b[keep])
    torch.testing.assert_close(sc, sc_eager * 2)


def test_autocast_mixed_dtypes():
    b, s, _ = detections(50, dtype=torch.float32, seed=11)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        k, sc = ops.soft_nms(b, s.to(torch.bfloat16))  # unified to fp32 under autocast
    assert sc.dtype == torch.float32
    assert k.tolist() == ops.soft_nms(b, s.to(torch.bfloat16).float())[0].tolist()


# ---- input validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    b, s, c = detections(5, dtype=torch.float32, num_classes=2)
    cases = [
        (dict(method="cubic"), r"fastdet::soft_nms: method must be 'linear' or 'gaussian', got 'cubic'"),
        (dict(sigma=0.0), r"fastdet::soft_nms: sigma must be > 0"),
        (dict(sigma=NAN), r"fastdet::soft_nms: sigma must be > 0"),
        (dict(iou_threshold=NAN), r"fastdet::soft_nms: iou_threshold must be a number"),
        (dict(min_score=NAN), r"fastdet::soft_nms: min_score must be a number"),
    ]
    for kw, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            ops.soft_nms(b, s, **kw)
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes must have shape \[N, 4\]"):
        ops.soft_nms(b[:, :3], s)
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes must have shape \[N, 4\]"):
        ops.soft_nms(b.view(1, 5, 4), s)
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: scores must have shape \[N\]"):
        ops.soft_nms(b, s[:4])
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: scores must have shape \[N\]"):
        ops.soft_nms(b, s.view(5, 1))
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes and scores must have the same dtype"):
        ops.soft_nms(b, s.double())
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes must be a floating-point"):
        ops.soft_nms(b.long(), s.long())
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: idxs must have shape \[N\]"):
        ops.soft_nms(b, s, idxs=c[:3])
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: idxs must be an int64 tensor"):
        ops.soft_nms(b, s, idxs=c.int())


@pytest.mark.cuda
def test_device_mismatch_raises():
    b, s, c = detections(5, dtype=torch.float32, num_classes=2)
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes and scores must be on the same device"):
        ops.soft_nms(b, s.cuda())
    with pytest.raises(RuntimeError, match=r"fastdet::soft_nms: boxes and idxs must be on the same device"):
        ops.soft_nms(b.cuda(), s.cuda(), idxs=c)


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [5000, 20000])  # 20000 boxes do not fit in shared memory: global fallback
@pytest.mark.parametrize("classes", [None, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_cuda_matches_cpu_large(method, n, classes, dtype):
    b, s, c = detections(n, dtype=dtype, seed=12, num_classes=classes)
    k_cpu, s_cpu = ops.soft_nms(b, s, method=method, idxs=c)
    k_gpu, s_gpu = ops.soft_nms(b.cuda(), s.cuda(), method=method, idxs=None if c is None else c.cuda())
    assert k_gpu.device.type == "cuda" and s_gpu.dtype == dtype
    # Selections agree except where the rounding of the two compilers (nvcc contracts to FMA) flips a
    # near-tie or a score right at min_score.
    common = len(set(k_gpu.cpu().tolist()) & set(k_cpu.tolist()))
    assert common >= 0.99 * max(k_gpu.numel(), k_cpu.numel()) and k_cpu.numel() > 0
    if dtype == torch.float64:
        assert k_gpu.cpu().tolist() == k_cpu.tolist()
        torch.testing.assert_close(s_gpu.cpu(), s_cpu)
