"""fastdet::multiclass_nms against the per-image reference loop and a torchvision batched_nms loop."""

import pytest
import torch
import torchvision

from fastdet import ops
from fastdet.ops._reference import multiclass_nms as ref
from fastdet.testing import adversarial_boxes, clustered_boxes

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_inputs(b=3, n=80, c=5, per_class=False, seed=0, dtype=torch.float32, device="cpu"):
    """Detector-like inputs: clustered boxes [B, N, 4] (or per-class jittered copies [B, N, C, 4])
    and tie-free random scores [B, N, C]."""
    g = gen(seed)
    boxes = torch.stack([clustered_boxes(n, num_clusters=max(1, n // 10), dtype=torch.float64, generator=g)[0]
                         for _ in range(b)]) if n > 0 else torch.zeros(b, 0, 4, dtype=torch.float64)
    if per_class:
        boxes = boxes[:, :, None, :] + torch.randn(b, n, c, 4, generator=g, dtype=torch.float64) * 3
    scores = torch.randperm(b * n * c, generator=g).reshape(b, n, c).to(torch.float64) / max(1, b * n * c)
    return boxes.to(dtype=dtype, device=device), scores.to(dtype=dtype, device=device)


def assert_same(out, expected):
    names = ("num_dets", "boxes", "scores", "labels", "indices")
    for name, a, e in zip(names, out, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        torch.testing.assert_close(a.cpu(), e.cpu(), rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


def tv_loop(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total, class_agnostic=False):
    """The usual post-processing: per image, score filter + torchvision batched_nms (or nms) +
    per-class top-k + top-k; padded like multiclass_nms."""
    B, N, C = scores.shape
    K = max_total
    nd = torch.zeros(B, dtype=torch.int64)
    ob, os_ = torch.zeros(B, K, 4, dtype=scores.dtype), torch.zeros(B, K, dtype=scores.dtype)
    ol, oi = torch.full((B, K), -1), torch.full((B, K), -1)
    for b in range(B):
        n_idx, c_idx = torch.nonzero(scores[b] > score_threshold).unbind(1)
        bx = boxes[b, n_idx, c_idx] if boxes.dim() == 4 else boxes[b, n_idx]
        sc = scores[b, n_idx, c_idx]
        if class_agnostic:
            keep = torchvision.ops.nms(bx, sc, iou_threshold)
        else:
            keep = torchvision.ops.batched_nms(bx, sc, c_idx, iou_threshold)
            per_class = torch.zeros(C, dtype=torch.int64)
            sel = []
            for k in keep.tolist():
                if per_class[c_idx[k]] < max_per_class:
                    per_class[c_idx[k]] += 1
                    sel.append(k)
            keep = torch.tensor(sel, dtype=torch.int64)
        keep = keep[:K]
        m = keep.numel()
        nd[b] = m
        ob[b, :m], os_[b, :m], ol[b, :m], oi[b, :m] = bx[keep], sc[keep], c_idx[keep], n_idx[keep]
    return nd, ob, os_, ol, oi


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_class", [False, True], ids=["shared", "per_class"])
@pytest.mark.parametrize("agnostic", [False, True], ids=["by_class", "agnostic"])
def test_matches_torchvision_loop(per_class, agnostic, device):
    boxes, scores = make_inputs(b=3, n=120, c=6, per_class=per_class, seed=1, device=device)
    assert scores.unique().numel() == scores.numel()  # tie-free
    for thr, iou, mpc, mt in [(0.3, 0.5, 1000, 1000), (0.5, 0.3, 4, 15), (0.1, 0.7, 10, 50)]:
        out = ops.multiclass_nms(boxes, scores, thr, iou, mpc, mt, agnostic)
        expected = tv_loop(boxes.cpu(), scores.cpu(), thr, iou, mpc, mt, agnostic)
        assert expected[0].min() > 0
        assert_same(out, expected)


@pytest.mark.parametrize("per_class", [False, True], ids=["shared", "per_class"])
@pytest.mark.parametrize("agnostic", [False, True], ids=["by_class", "agnostic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_reference(per_class, agnostic, dtype, device):
    boxes, scores = make_inputs(b=2, n=70, c=4, per_class=per_class, seed=2, dtype=dtype, device=device)
    # Coarse scores: many exact ties, which the reference and the kernels must break the same way.
    scores = (scores * 8).floor() / 8
    for thr, iou, mpc, mt in [(0.2, 0.5, 100, 100), (0.4, 0.4, 3, 7), (-1.0, 0.6, 5, 12)]:
        out = ops.multiclass_nms(boxes, scores, thr, iou, mpc, mt, agnostic)
        assert_same(out, ref.multiclass_nms(boxes, scores, thr, iou, mpc, mt, agnostic))


def test_ties_resolve_to_lower_index_and_class():
    # Two identical boxes with equal scores in two classes: per class the lower n wins; the merge
    # puts class 0 before class 1.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]])
    scores = torch.tensor([[[0.9, 0.9], [0.9, 0.9], [0.8, 0.2]]])
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 0.5, 0.5, 10, 10)
    assert nd.tolist() == [3]
    assert lab[0, :3].tolist() == [0, 1, 0] and idx[0, :3].tolist() == [0, 0, 2]
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 0.5, 0.5, 10, 10, class_agnostic=True)
    assert nd.tolist() == [2] and lab[0, :2].tolist() == [0, 0] and idx[0, :2].tolist() == [0, 2]


def test_caps_and_padding(device):
    boxes, scores = make_inputs(b=2, n=100, c=5, seed=3, device=device)
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 0.0, 0.5, 3, 200)
    assert nd.tolist() == [15, 15]  # 5 classes x 3, far below max_total
    for i in range(2):
        assert torch.bincount(lab[i, :15].cpu(), minlength=5).tolist() == [3] * 5
        assert (s[i, :15].diff() <= 0).all()
        assert (lab[i, 15:] == -1).all() and (idx[i, 15:] == -1).all()
        assert (s[i, 15:] == 0).all() and (b[i, 15:] == 0).all()
        torch.testing.assert_close(b[i, :15], boxes[i, idx[i, :15]], rtol=0, atol=0)
        torch.testing.assert_close(s[i, :15], scores[i, idx[i, :15], lab[i, :15]], rtol=0, atol=0)
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 0.0, 0.5, 3, 4)
    assert nd.tolist() == [4, 4] and b.shape == (2, 4, 4)
    nd, *_ = ops.multiclass_nms(boxes, scores, 0.0, 0.5, 1000, 7, class_agnostic=True)
    assert nd.tolist() == [7, 7]
    # class_agnostic ignores max_per_class: the only cap is max_total.
    nd, _, _, lab, _ = ops.multiclass_nms(boxes, scores, 0.0, 1.0, 1, 30, class_agnostic=True)
    assert nd.tolist() == [30, 30] and torch.bincount(lab[0].cpu(), minlength=5).max() > 1


def test_empty_inputs(device):
    for shape, bshape in [((0, 10, 3), (0, 10, 4)), ((2, 0, 3), (2, 0, 4)), ((2, 5, 0), (2, 5, 0, 4))]:
        scores = torch.rand(shape, device=device)
        boxes = torch.rand(bshape, device=device)
        for agnostic in (False, True):
            nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 0.1, 0.5, 5, 6, agnostic)
            B = shape[0]
            assert nd.shape == (B,) and b.shape == (B, 6, 4) and s.shape == (B, 6)
            assert (nd == 0).all() and (lab == -1).all() and (idx == -1).all() and (b == 0).all()


def test_all_scores_below_threshold(device):
    boxes, scores = make_inputs(b=2, n=30, c=3, device=device)
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, scores, 1.0, 0.5, 5, 6)
    assert nd.tolist() == [0, 0] and (lab == -1).all() and (s == 0).all()


def test_nan_scores_never_pass(device):
    boxes, scores = make_inputs(b=2, n=50, c=3, seed=4, device=device)
    nan_scores = scores.clone()
    nan_scores[:, ::3, 1] = float("nan")
    nan_scores[0, 5:9] = float("nan")
    dropped = scores.masked_fill(nan_scores.isnan(), -1.0)
    out = ops.multiclass_nms(boxes, nan_scores, 0.2, 0.5, 10, 25)
    assert_same(out, ops.multiclass_nms(boxes, dropped, 0.2, 0.5, 10, 25))
    assert_same(out, ref.multiclass_nms(boxes, nan_scores, 0.2, 0.5, 10, 25))
    out = ops.multiclass_nms(boxes, nan_scores, 0.2, 0.5, 10, 25, True)
    assert_same(out, ref.multiclass_nms(boxes, nan_scores, 0.2, 0.5, 10, 25, True))
    # +inf scores pass and rank first.
    inf_scores = scores.clone()
    inf_scores[1, 7, 2] = float("inf")
    nd, b, s, lab, idx = ops.multiclass_nms(boxes, inf_scores, 0.2, 0.5, 10, 25)
    assert s[1, 0] == float("inf") and lab[1, 0] == 2 and idx[1, 0] == 7


def test_adversarial_boxes(device):
    # Duplicates, zero-area, inverted, huge, touching, nested boxes plus NaN and fp16-huge ones.
    boxes = adversarial_boxes(dtype=torch.float64)
    boxes = torch.cat([boxes, torch.tensor([[float("nan"), 0, 5, 5], [0, 0, 6e4, 6e4], [1e30, 1e30, 3e30, 3e30]],
                                           dtype=torch.float64)])
    n = boxes.shape[0]
    g = gen(5)
    scores = torch.randint(0, 4, (2, n, 3), generator=g).to(torch.float64) / 4  # heavy ties
    for dtype in (torch.float32, torch.float64):
        bx = boxes.to(dtype).expand(2, n, 4).contiguous().to(device)
        sc = scores.to(dtype).to(device)
        for agnostic in (False, True):
            for iou in (0.0, 0.3, 0.99):
                out = ops.multiclass_nms(bx, sc, 0.1, iou, 20, 30, agnostic)
                assert_same(out, ref.multiclass_nms(bx, sc, 0.1, iou, 20, 30, agnostic))
    # The NaN box (row 12) is never suppressed and never suppresses.
    bx = boxes.float().expand(1, n, 4).contiguous().to(device)
    sc = torch.ones(1, n, 1, device=device)
    nd, b, s, lab, idx = ops.multiclass_nms(bx, sc, 0.5, 0.0, 100, 100)
    assert 12 in idx[0, : nd[0]].tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per_class", [False, True], ids=["shared", "per_class"])
def test_half_precision_equals_fp32_of_rounded_inputs(dtype, per_class, device):
    boxes, scores = make_inputs(b=2, n=90, c=4, per_class=per_class, seed=6, device=device)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    for agnostic in (False, True):
        out = ops.multiclass_nms(boxes, scores, 0.25, 0.45, 8, 20, agnostic)
        expected = ops.multiclass_nms(boxes.float(), scores.float(), 0.25, 0.45, 8, 20, agnostic)
        assert out[1].dtype == dtype and out[2].dtype == dtype
        assert_same((out[0], out[1].float(), out[2].float(), out[3], out[4]), expected)
        assert_same(out, ref.multiclass_nms(boxes, scores, 0.25, 0.45, 8, 20, agnostic))


def test_non_contiguous(device):
    boxes, scores = make_inputs(b=2, n=40, c=3, seed=7, device=device)
    expected = ops.multiclass_nms(boxes, scores, 0.2, 0.5, 5, 10)
    b_nc = boxes.transpose(1, 2).contiguous().transpose(1, 2)
    s_nc = scores.transpose(0, 2).contiguous().transpose(0, 2)
    assert not b_nc.is_contiguous() and not s_nc.is_contiguous()
    assert_same(ops.multiclass_nms(b_nc, s_nc, 0.2, 0.5, 5, 10), expected)
    pb, _ = make_inputs(b=2, n=40, c=3, per_class=True, seed=7, device=device)
    pb_nc = pb.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    assert not pb_nc.is_contiguous()
    assert_same(ops.multiclass_nms(pb_nc, s_nc, 0.2, 0.5, 5, 10), ops.multiclass_nms(pb, scores, 0.2, 0.5, 5, 10))


def test_autocast_runs_in_fp32():
    boxes, scores = make_inputs(b=1, n=30, c=2, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.multiclass_nms(boxes.bfloat16(), scores.bfloat16(), 0.2, 0.5, 5, 10)
    assert out[1].dtype == torch.float32
    assert_same(out, ops.multiclass_nms(boxes.bfloat16().float(), scores.bfloat16().float(), 0.2, 0.5, 5, 10))


# ---- errors ----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    boxes, scores = make_inputs(b=2, n=10, c=3)
    f = ops.multiclass_nms
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes must have shape \[B, N, 4\]"):
        f(boxes[..., :3], scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes must have shape"):
        f(boxes[0], scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: scores must have shape \[B, N, C\]"):
        f(boxes, scores[0], 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes and scores must agree"):
        f(boxes[:, :9], scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes and scores must agree"):
        f(boxes[:1], scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes and scores must agree"):
        f(boxes[:, :, None].expand(2, 10, 4, 4), scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes and scores must have the same dtype"):
        f(boxes.double(), scores, 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes must be a floating-point"):
        f(boxes.long(), scores.long(), 0.1, 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: score_threshold must be a number, got NaN"):
        f(boxes, scores, float("nan"), 0.5, 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: iou_threshold must be a number, got NaN"):
        f(boxes, scores, 0.1, float("nan"), 5, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: max_per_class must be >= 1, got 0"):
        f(boxes, scores, 0.1, 0.5, 0, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: max_total must be >= 1, got -2"):
        f(boxes, scores, 0.1, 0.5, 5, -2)


@pytest.mark.cuda
def test_device_mismatch_raises():
    boxes, scores = make_inputs(b=2, n=10, c=3)
    with pytest.raises(RuntimeError, match=r"fastdet::multiclass_nms: boxes and scores must be on the same device"):
        ops.multiclass_nms(boxes.cuda(), scores, 0.1, 0.5, 5, 5)


# ---- PyTorch integration ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_class", [False, True], ids=["shared", "per_class"])
def test_opcheck(per_class, device):
    boxes, scores = make_inputs(b=2, n=25, c=3, per_class=per_class, seed=9, device=device)
    for agnostic in (False, True):
        torch.library.opcheck(torch.ops.fastdet.multiclass_nms.default, (boxes, scores, 0.2, 0.5, 4, 9, agnostic))
    empty_b, empty_s = make_inputs(b=2, n=0, c=3, device=device)
    torch.library.opcheck(torch.ops.fastdet.multiclass_nms.default, (empty_b, empty_s, 0.2, 0.5, 4, 9, False))


def test_torch_compile_fullgraph():
    boxes, scores = make_inputs(b=2, n=40, c=3, seed=10)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def postprocess(boxes, scores):
        nd, b, s, lab, idx = ops.multiclass_nms(boxes * 2.0, scores, 0.2, 0.5, 5, 12)
        return nd, b / 2.0, s, lab, idx

    expected = ops.multiclass_nms(boxes * 2.0, scores, 0.2, 0.5, 5, 12)
    out = postprocess(boxes, scores)
    assert_same(out, (expected[0], expected[1] / 2.0, *expected[2:]))


def test_torch_export_static_shapes():
    class Post(torch.nn.Module):
        def forward(self, boxes, scores):
            return ops.multiclass_nms(boxes, scores, 0.25, 0.45, 10, 20)

    boxes, scores = make_inputs(b=2, n=40, c=3, seed=11)
    ep = torch.export.export(Post(), (boxes, scores))
    shapes = [tuple(n.meta["val"].shape) for n in ep.graph.nodes if n.op == "output" for n in n.args[0]]
    assert shapes == [(2,), (2, 20, 4), (2, 20), (2, 20), (2, 20)]
    b2, s2 = make_inputs(b=2, n=40, c=3, seed=12)
    assert_same(ep.module()(b2, s2), ops.multiclass_nms(b2, s2, 0.25, 0.45, 10, 20))


# ---- CUDA against CPU -------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_class", [False, True], ids=["shared", "per_class"])
def test_cuda_matches_cpu(dtype, per_class):
    # Big enough for several chunks per segment and for the global-memory kept list (max_per_class 3000).
    boxes, scores = make_inputs(b=3, n=1500, c=7, per_class=per_class, seed=13, dtype=dtype)
    for agnostic in (False, True):
        for thr, iou, mpc, mt in [(0.05, 0.5, 100, 300), (0.0, 0.7, 3000, 3000), (0.3, 0.3, 1, 5)]:
            out = ops.multiclass_nms(boxes.cuda(), scores.cuda(), thr, iou, mpc, mt, agnostic)
            assert_same(out, ops.multiclass_nms(boxes, scores, thr, iou, mpc, mt, agnostic))


@pytest.mark.cuda
def test_cuda_graph_capture():
    boxes, scores = make_inputs(b=4, n=500, c=10, seed=14, device="cuda")
    expected = ops.multiclass_nms(boxes, scores, 0.25, 0.45, 50, 100)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.multiclass_nms(boxes, scores, 0.25, 0.45, 50, 100)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.multiclass_nms(boxes, scores, 0.25, 0.45, 50, 100)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(out, expected)
