"""fastdet::simota_cost / simota_assign against the step-by-step loop reference and the yolox
package (YOLOXHead.get_assignments, release 0.3.0) on random and crowded scenes."""

import importlib.util

import pytest
import torch

from fastdet import ops
from fastdet.bench.simota import YoloxHeadMethods, xyxy_to_cxcywh, yolox_grid
from fastdet.ops._reference import simota as ref

HAS_YOLOX = importlib.util.find_spec("yolox") is not None


def make_priors(image_size):
    return yolox_grid(image_size, dtype=torch.float64)


def make_scene(batch=3, image_size=160, num_classes=6, max_gt=12, crowded=False, seed=0, dtype=torch.float64):
    """Tie-free random scene: continuous GT boxes (padded to max_gt with the mask set at random
    positions; image 0 has no GT), predicted boxes around the anchor points, YOLOX-style scores
    sqrt(sigmoid(cls) * sigmoid(obj)) computed in float32 as YOLOX does. Also returns the raw
    logits for the yolox comparison."""
    g = torch.Generator().manual_seed(seed)
    priors, *_ = make_priors(image_size)
    A = priors.shape[0]
    sizes = (4.0, 40.0) if crowded else (8.0, 110.0)
    centers = torch.rand(batch, max_gt, 2, generator=g, dtype=torch.float64) * image_size
    wh = sizes[0] + torch.rand(batch, max_gt, 2, generator=g, dtype=torch.float64) * (sizes[1] - sizes[0])
    gt_boxes = torch.cat([centers - wh / 2, centers + wh / 2], -1)
    gt_labels = torch.randint(0, num_classes, (batch, max_gt), generator=g)
    gt_mask = torch.zeros(batch, max_gt, dtype=torch.bool)
    for b in range(1, batch):
        n = max_gt if crowded else int(torch.randint(1, max_gt + 1, (1,), generator=g))
        gt_mask[b, torch.randperm(max_gt, generator=g)[:n]] = True
    gt_labels = torch.where(gt_mask, gt_labels, torch.full_like(gt_labels, -7))  # padding labels are ignored
    pc = priors[:, :2] + torch.randn(batch, A, 2, generator=g, dtype=torch.float64) * priors[:, 2:] * 0.5
    pwh = priors[:, 2:] * 4 * torch.exp(torch.randn(batch, A, 2, generator=g, dtype=torch.float64) * 0.6)
    pred_boxes = torch.cat([pc - pwh / 2, pc + pwh / 2], -1)
    cls_logits = torch.randn(batch, A, num_classes, generator=g, dtype=torch.float64) * 2
    obj_logits = torch.randn(batch, A, 1, generator=g, dtype=torch.float64) * 2
    scores = (cls_logits.float().sigmoid() * obj_logits.float().sigmoid()).sqrt()
    inputs = [scores.to(dtype), pred_boxes.to(dtype), priors.to(dtype), gt_boxes.to(dtype), gt_labels, gt_mask]
    return inputs, (cls_logits, obj_logits)


def to(inputs, device):
    return [t.to(device) for t in inputs]


def assert_assign_equal(out, expected, iou_tol=None):
    names = ("assigned_gt", "assigned_labels", "assigned_ious", "num_fg")
    for name, a, e in zip(names, out, expected):
        a, e = a.cpu(), e.cpu()
        assert a.shape == e.shape, name
        if name == "assigned_ious":
            torch.testing.assert_close(a.double(), e.double(), **(iou_tol or {"rtol": 1e-12, "atol": 1e-12}))
        else:
            assert torch.equal(a, e), f"{name}: {(a != e).sum()} differ"


SCENES = {
    "random": dict(batch=4, max_gt=12, seed=1),
    "crowded": dict(batch=2, max_gt=100, crowded=True, seed=2),
}
RULES = {
    "yolox-0.3.0": dict(),
    "yolox": dict(center_radius=1.5, center_only=True, outside_cost=1e6),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("scene", SCENES)
def test_cost_matches_reference(scene, rule, device):
    inputs, _ = make_scene(**SCENES[scene])
    out = ops.simota_cost(*to(inputs, device), **RULES[rule])
    expected = ref.simota_cost(*inputs, **RULES[rule])
    assert out.dtype == torch.float64 and out.shape == expected.shape
    assert torch.equal(torch.isinf(out.cpu()), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert finite.any()
    torch.testing.assert_close(out.cpu()[finite], expected[finite], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("scene", SCENES)
def test_assign_matches_reference(scene, rule, dtype, device):
    inputs, _ = make_scene(**SCENES[scene], dtype=dtype)
    out = ops.simota_assign(*to(inputs, device), **RULES[rule])
    expected = ref.simota_assign(*inputs, **RULES[rule])
    assert out[2].dtype == dtype
    assert int(expected[3].sum()) > 0 and int(expected[3][0]) == 0  # image 0 has no GT
    assert_assign_equal(out, expected, None if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-6})


@pytest.mark.parametrize("topk", [1, 3, 64])
def test_candidate_topk_and_weights(topk, device):
    inputs, _ = make_scene(batch=3, max_gt=20, seed=3)
    kwargs = dict(candidate_topk=topk, iou_weight=1.5, cls_weight=0.7, center_radius=2.0)
    assert_assign_equal(ops.simota_assign(*to(inputs, device), **kwargs), ref.simota_assign(*inputs, **kwargs))


def yolox_assign(inputs, logits, image_size):
    """YOLOXHead.get_assignments per image, as YOLOXHead.get_losses calls it (mode="gpu": its
    "cpu" mode moves results to CUDA), translated to simota_assign's padded outputs."""
    scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask = inputs
    cls_logits, obj_logits = logits
    B, A, C = scores.shape
    head = YoloxHeadMethods(C)
    _, x_shifts, y_shifts, strides = make_priors(image_size)
    xywh = xyxy_to_cxcywh
    out_gt = torch.full((B, A), -1)
    out_labels = torch.full((B, A), -1)
    out_ious = torch.zeros(B, A, dtype=torch.float64)
    num_fg = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        valid = torch.nonzero(gt_mask[b]).flatten()
        if valid.numel() == 0:
            continue
        classes, fg_mask, ious, matched, n = head.get_assignments(
            b, valid.numel(), A, xywh(gt_boxes[b, valid]), gt_labels[b, valid].double(), xywh(pred_boxes[b]),
            strides, x_shifts, y_shifts, cls_logits, xywh(pred_boxes), obj_logits, None, None, mode="gpu")
        out_gt[b, fg_mask] = valid[matched]
        out_labels[b, fg_mask] = classes.long()
        out_ious[b, fg_mask] = ious.double()
        num_fg[b] = n
    return out_gt, out_labels, out_ious, num_fg


@pytest.mark.skipif(not HAS_YOLOX, reason="yolox is not installed")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("scene", SCENES)
def test_matches_yolox_package(scene, device):
    inputs, logits = make_scene(**SCENES[scene])
    expected = yolox_assign(inputs, logits, 160)
    out = ops.simota_assign(*to(inputs, device))
    assert int(expected[3].sum()) > 0
    assert_assign_equal(out, expected, {"rtol": 1e-9, "atol": 1e-9})
    assert_assign_equal(ref.simota_assign(*inputs), expected, {"rtol": 1e-9, "atol": 1e-9})


def test_outputs_are_consistent(device):
    inputs, _ = make_scene(batch=4, max_gt=30, seed=5)
    gt, labels, ious, num_fg = ops.simota_assign(*to(inputs, device))
    gt, labels, ious, num_fg = gt.cpu(), labels.cpu(), ious.cpu(), num_fg.cpu()
    fg = gt >= 0
    assert torch.equal(num_fg, fg.sum(1))
    assert torch.equal(labels, torch.where(fg, inputs[4].gather(1, gt.clamp(min=0)), torch.full_like(labels, -1)))
    assert bool(inputs[5].gather(1, gt.clamp(min=0))[fg].all())  # only valid GTs are assigned
    assert bool((ious[~fg] == 0).all()) and bool((ious[fg] >= 0).all()) and bool((ious <= 1).all())


def test_images_without_gt_are_background(device):
    inputs, _ = make_scene(batch=2, max_gt=5, seed=6)
    inputs[5] = torch.zeros_like(inputs[5])
    gt, labels, ious, num_fg = ops.simota_assign(*to(inputs, device))
    assert bool((gt == -1).all()) and bool((labels == -1).all()) and bool((ious == 0).all())
    assert num_fg.tolist() == [0, 0]
    assert bool(torch.isinf(ops.simota_cost(*to(inputs, device))).all())


def test_no_candidate_anchor_is_background(device):
    inputs, _ = make_scene(batch=1, max_gt=2, seed=7)
    inputs[3] = torch.tensor([[[1000.0, 1000.0, 1010.0, 1010.0], [-500.0, -500.0, -490.0, -490.0]]], dtype=torch.float64)
    inputs[4] = torch.tensor([[0, 1]])
    inputs[5] = torch.tensor([[True, True]])
    gt, _, _, num_fg = ops.simota_assign(*to(inputs, device))
    assert bool((gt == -1).all()) and num_fg.tolist() == [0]


@pytest.mark.parametrize("shape", [(0, 20, 4, 3), (2, 0, 4, 3), (2, 20, 0, 3), (2, 20, 4, 0)],
                         ids=["B0", "A0", "G0", "C0"])
def test_empty_inputs(shape, device):
    B, A, G, C = shape
    inputs = [torch.rand(B, A, C), torch.rand(B, A, 4), torch.rand(A, 4), torch.rand(B, G, 4),
              torch.zeros(B, G, dtype=torch.int64), torch.zeros(B, G, dtype=torch.bool)]
    gt, labels, ious, num_fg = ops.simota_assign(*to(inputs, device))
    assert gt.shape == (B, A) and labels.shape == (B, A) and ious.shape == (B, A) and num_fg.shape == (B,)
    assert bool((gt == -1).all()) and bool((num_fg == 0).all())
    assert ops.simota_cost(*to(inputs, device)).shape == (B, G, A)


def test_nan_and_out_of_range_inputs_stay_defined(device):
    inputs, _ = make_scene(batch=2, max_gt=10, seed=8)
    scores, pred_boxes = inputs[0].clone(), inputs[1].clone()
    scores[1, :50] = float("nan")
    scores[1, 50:100] = 1.5  # clamped to 1
    scores[1, 100:150] = -0.5  # clamped to 0
    pred_boxes[1, 150:200] = float("nan")
    gt_boxes = inputs[3].clone()
    first_valid = int(torch.nonzero(inputs[5][1]).flatten()[0])
    gt_boxes[1, first_valid] = float("nan")
    inputs[0], inputs[1], inputs[3] = scores, pred_boxes, gt_boxes
    gt, labels, ious, num_fg = ops.simota_assign(*to(inputs, device))
    gt, ious = gt.cpu(), ious.cpu()
    assert bool((ious[1][gt[1] == first_valid] == 0).all())  # a NaN GT's IoUs count as 0
    assert bool(torch.isfinite(ious).all()) and bool((ious[1, 150:200] == 0).all())
    assert torch.equal(num_fg.cpu(), (gt >= 0).sum(1))
    clean = [t.clone() for t in inputs]
    clean[0][1, 50:100] = 1.0
    clean[0][1, 100:150] = 0.0
    cost = ops.simota_cost(*to(inputs, device)).cpu()
    cost_clean = ops.simota_cost(*to(clean, device)).cpu()
    torch.testing.assert_close(cost[:, :, 50:150], cost_clean[:, :, 50:150])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_equals_fp32_of_rounded_inputs(dtype, device):
    inputs, _ = make_scene(batch=3, max_gt=15, seed=9, dtype=torch.float32)
    half = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    out = ops.simota_assign(*to(half, device))
    expected = ops.simota_assign(*[t.float() if t.is_floating_point() else t for t in to(half, device)])
    assert out[2].dtype == dtype
    assert_assign_equal(out, (expected[0], expected[1], expected[2].to(dtype), expected[3]), {"rtol": 0, "atol": 0})
    cost = ops.simota_cost(*to(half, device))
    assert cost.dtype == torch.float32
    assert torch.equal(cost, ops.simota_cost(*[t.float() if t.is_floating_point() else t for t in to(half, device)]))


def test_non_contiguous_inputs(device):
    inputs, _ = make_scene(batch=3, max_gt=10, seed=10)
    nc = [inputs[0].transpose(1, 2).contiguous().transpose(1, 2), inputs[1].transpose(0, 1).contiguous().transpose(0, 1),
          inputs[2].t().contiguous().t(), inputs[3], inputs[4].t().contiguous().t(), inputs[5]]
    assert not nc[0].is_contiguous() and not nc[2].is_contiguous()
    assert_assign_equal(ops.simota_assign(*to(nc, device)), ops.simota_assign(*to(inputs, device)))


def test_module_presets(device):
    inputs, _ = make_scene(batch=2, max_gt=10, seed=11)
    x = to(inputs, device)
    assert_assign_equal(ops.SimOTAAssigner()(*x), ops.simota_assign(*x))
    current = ops.SimOTAAssigner(rule="yolox")
    assert "center_only=True" in repr(current)
    assert_assign_equal(current(*x), ops.simota_assign(*x, center_radius=1.5, center_only=True, outside_cost=1e6))
    assert_assign_equal(ops.SimOTAAssigner(rule="yolox", center_radius=2.0)(*x),
                        ops.simota_assign(*x, center_radius=2.0, center_only=True, outside_cost=1e6))
    with pytest.raises(RuntimeError, match="rule must be one of"):
        ops.SimOTAAssigner(rule="mmdet-3")


def _bad(**over):
    inputs, _ = make_scene(batch=2, max_gt=4, seed=12, dtype=torch.float32)
    names = ["pred_scores", "pred_boxes", "priors", "gt_boxes", "gt_labels", "gt_mask"]
    args = dict(zip(names, inputs))
    kwargs = {k: v for k, v in over.items() if k not in names}
    args.update({k: v for k, v in over.items() if k in names})
    return args, kwargs


BAD = [
    (dict(pred_scores=torch.rand(2, 525)), "pred_scores must have shape"),
    (dict(pred_scores=torch.ones(2, 525, 6, dtype=torch.int64)), "pred_scores must be a floating-point"),
    (dict(pred_boxes=torch.rand(2, 524, 4)), "pred_boxes must have shape"),
    (dict(pred_boxes=torch.rand(3, 525, 4)), "pred_boxes must have shape"),
    (dict(priors=torch.rand(525, 2)), "priors must have shape"),
    (dict(gt_boxes=torch.rand(3, 4, 4)), "gt_boxes must have shape"),
    (dict(gt_labels=torch.zeros(2, 5, dtype=torch.int64)), "gt_labels must have shape"),
    (dict(gt_labels=torch.zeros(2, 4, dtype=torch.int32)), "gt_labels must be an int64"),
    (dict(gt_mask=torch.ones(2, 4, dtype=torch.uint8)), "gt_mask must be a bool"),
    (dict(gt_mask=torch.ones(2, 3, dtype=torch.bool)), "gt_mask must have shape"),
    (dict(priors=torch.rand(525, 4, dtype=torch.float64)), "pred_scores and priors must have the same dtype"),
    (dict(gt_labels=torch.full((2, 4), 6)), r"gt_labels must be in \[0, C\)"),
    (dict(gt_labels=torch.full((2, 4), -1)), r"gt_labels must be in \[0, C\)"),
    (dict(candidate_topk=0), r"candidate_topk must be in \[1, 64\]"),
    (dict(candidate_topk=65), r"candidate_topk must be in \[1, 64\]"),
    (dict(center_radius=-1.0), "center_radius must be a finite number"),
    (dict(center_radius=float("nan")), "center_radius must be a finite number"),
    (dict(iou_weight=float("inf")), "iou_weight must be finite"),
    (dict(outside_cost=float("nan")), "outside_cost must be a number"),
]


@pytest.mark.parametrize("over, match", BAD, ids=[m.split(" must")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_inputs_raise_clear_errors(over, match):
    args, kwargs = _bad(**over)
    if "gt_labels" in over and over["gt_labels"].shape == (2, 4) and over["gt_labels"].dtype == torch.int64:
        args["gt_mask"] = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="fastdet::simota_assign: " + match):
        ops.simota_assign(**args, **kwargs)
    kwargs.pop("candidate_topk", None)
    if "candidate_topk" not in over:
        with pytest.raises(RuntimeError, match="fastdet::simota_cost: " + match):
            ops.simota_cost(**args, **kwargs)


def test_padding_labels_are_ignored():
    args, _ = _bad()
    args["gt_mask"] = torch.tensor([[True, False, False, True], [False, False, False, False]])
    args["gt_labels"] = torch.tensor([[1, 99, -5, 2], [-1, -1, -1, -1]])
    gt, labels, _, _ = ops.simota_assign(**args)
    assert set(gt.unique().tolist()) <= {-1, 0, 3} and set(labels.unique().tolist()) <= {-1, 1, 2}


@pytest.mark.cuda
def test_device_mismatch_raises():
    args, _ = _bad()
    args["gt_mask"] = args["gt_mask"].cuda()
    with pytest.raises(RuntimeError, match="pred_scores and gt_mask must be on the same device"):
        ops.simota_assign(**args)
    args, _ = _bad()
    args = {k: v.cuda() for k, v in args.items()}
    args["gt_labels"] = args["gt_labels"].cpu()
    with pytest.raises(RuntimeError, match="pred_scores and gt_labels must be on the same device"):
        ops.simota_assign(**args)


def test_opcheck(device):
    inputs, _ = make_scene(batch=2, max_gt=6, seed=13, dtype=torch.float32)
    x = to(inputs, device)
    torch.library.opcheck(torch.ops.fastdet.simota_assign.default, (*x, 2.5, 10, 3.0, 1.0, False, 1e5))
    torch.library.opcheck(torch.ops.fastdet.simota_cost.default, (*x, 1.5, 3.0, 1.0, True, 1e6))
    empty = [torch.rand(2, 7, 3), torch.rand(2, 7, 4), torch.rand(7, 4), torch.rand(2, 0, 4),
             torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool)]
    torch.library.opcheck(torch.ops.fastdet.simota_assign.default, tuple(to(empty, device)))


def test_torch_compile_fullgraph():
    inputs, _ = make_scene(batch=2, max_gt=6, seed=14, dtype=torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def targets(scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask):
        gt, labels, ious, num_fg = ops.simota_assign(scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask)
        onehot = torch.nn.functional.one_hot(labels.clamp(min=0), scores.shape[-1]) * (gt >= 0)[..., None]
        return onehot * ious[..., None], num_fg.sum()

    cls_target, n = targets(*inputs)
    gt, labels, ious, num_fg = ops.simota_assign(*inputs)
    assert int(n) == int(num_fg.sum())
    torch.testing.assert_close(cls_target.sum(-1), ious * (gt >= 0))


def test_autocast_runs_in_fp32():
    inputs, _ = make_scene(batch=2, max_gt=6, seed=15, dtype=torch.float32)
    low = [t.bfloat16() if t.is_floating_point() else t for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.simota_assign(*low)
    assert out[2].dtype == torch.float32
    assert_assign_equal(out, ops.simota_assign(*[t.float() if t.is_floating_point() else t for t in low]))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("scene", SCENES)
def test_cuda_matches_cpu(scene, dtype):
    inputs, _ = make_scene(**SCENES[scene], dtype=dtype)
    out = ops.simota_assign(*to(inputs, "cuda"))
    assert_assign_equal(out, ops.simota_assign(*inputs), {"rtol": 0, "atol": 0})
    cost = ops.simota_cost(*to(inputs, "cuda")).cpu()
    cost_tol = {"rtol": 1e-12, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(cost, ops.simota_cost(*inputs), **cost_tol)


@pytest.mark.cuda
def test_cuda_graph_capture():
    inputs, _ = make_scene(batch=2, max_gt=10, seed=16, dtype=torch.float32)
    x = to(inputs, "cuda")
    expected = ops.simota_assign(*x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.simota_assign(*x)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.simota_assign(*x)
    graph.replay()
    torch.cuda.synchronize()
    assert_assign_equal(out, expected, {"rtol": 0, "atol": 0})
