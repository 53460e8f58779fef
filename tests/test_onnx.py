"""ONNX export (fastdet.onnx.onnx_translation_table) checked in onnxruntime against fastdet on CPU."""

import pytest
import torch

from fastdet import ops

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import fastdet.onnx as fonnx  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def export(model, args, **kw):
    return torch.onnx.export(model, args, dynamo=True, opset_version=19,
                             custom_translation_table=fonnx.onnx_translation_table(), **kw)


def run_ort(prog, args):
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def op_types(prog):
    return {n.op_type for n in prog.model_proto.graph.node}


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def random_boxes(*shape, generator, size=40.0):
    xy = torch.rand(*shape, 2, generator=generator) * size
    wh = torch.rand(*shape, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], -1)


@pytest.mark.parametrize("max_output", [-1, 3])
def test_nms_matches_onnxruntime(max_output):
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(60, generator=g), torch.rand(60, generator=g)
    scores[2] = scores[7] = 0.999  # a tie between overlapping boxes: the lower index is visited first
    boxes[2] += 1000.0  # isolated from the others
    boxes[7] = boxes[2]
    scores[20] = scores[40]
    model = Fn(lambda b, s: ops.nms(b, s, 0.45, max_output))
    prog = export(model, (boxes, scores))
    assert "NonMaxSuppression" in op_types(prog)
    (got,) = run_ort(prog, (boxes, scores))
    expected = ops.nms(boxes, scores, 0.45, max_output)
    assert 2 in expected.tolist() and 7 not in expected.tolist()
    assert torch.equal(got, expected)


def test_nms_threshold_is_strict():
    # IoU exactly 0.5 (areas 2 and 1, intersection 1, union 2): suppressed only when IoU > threshold.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    for thr in (0.5, 0.49):
        prog = export(Fn(lambda b, s, t=thr: ops.nms(b, s, t)), (boxes, scores))
        (got,) = run_ort(prog, (boxes, scores))
        assert torch.equal(got, ops.nms(boxes, scores, thr))
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("per_class_boxes", [False, True])
@pytest.mark.parametrize("agnostic", [False, True])
def test_multiclass_nms_matches_onnxruntime(per_class_boxes, agnostic):
    g = torch.Generator().manual_seed(1)
    b, n, c = 2, 40, 3
    scores = torch.rand(b, n, c, generator=g)
    scores[0, 5, 1] = scores[0, 9, 1] = scores[0, 9, 2]  # ties across and within classes
    scores[1, :, :] = torch.where(scores[1] > 0.96, scores[1], torch.zeros(()))  # few detections in image 1
    boxes = random_boxes(b, n, c, generator=g) if per_class_boxes else random_boxes(b, n, generator=g)
    # max_total 12 > detections of image 1 (padding rows) and < those of image 0 (truncation)
    model = Fn(lambda bx, sc: ops.multiclass_nms(bx, sc, 0.3, 0.5, 6, 12, agnostic))
    prog = export(model, (boxes, scores))
    assert "NonMaxSuppression" in op_types(prog)
    got = run_ort(prog, (boxes, scores))
    expected = model(boxes, scores)
    assert 0 < expected[0][1] < 12 and expected[0][0] == 12
    for x, y in zip(got, expected):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_multiclass_nms_no_detections_and_fp64():
    g = torch.Generator().manual_seed(2)
    boxes, scores = random_boxes(1, 10, generator=g).double(), torch.rand(1, 10, 2, generator=g).double()
    model = Fn(lambda bx, sc: ops.multiclass_nms(bx, sc, 0.5, 0.5, 3, 4))
    prog = export(model, (boxes, scores))
    num, out_boxes, out_scores, labels, indices = run_ort(prog, (boxes, scores))
    expected = model(boxes, scores)
    assert out_boxes.dtype == torch.float64
    # NonMaxSuppression runs in float32: the kept set matches; values are the float32-rounded inputs
    torch.testing.assert_close(out_scores, expected[2], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out_boxes, expected[1], rtol=1e-6, atol=1e-5)
    assert torch.equal(num, expected[0]) and torch.equal(labels, expected[3]) and torch.equal(indices, expected[4])
    # every score below the threshold: all rows are padding
    got = run_ort(prog, (boxes, scores * 0.1))
    assert got[0].tolist() == [0] and (got[3] == -1).all() and (got[4] == -1).all() and (got[1] == 0).all()


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_matches_onnxruntime(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, 13, generator=g)
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 18.0], [1, 4.0, 3.5, 5.0, 4.0], [1, -3.0, -2.0, 30.0, 9.0],
                         [0, 6.0, 6.0, 6.0, 6.0]])  # a zero-size RoI: legacy 1x1 rule / empty grid
    model = ops.RoIAlign((3, 2), 0.5, sampling_ratio, aligned)
    prog = export(model, (x, rois))
    assert "RoiAlign" in op_types(prog)
    (got,) = run_ort(prog, (x, rois))
    torch.testing.assert_close(got, model(x, rois), rtol=1e-5, atol=1e-5)


def test_roi_pool_matches_onnxruntime():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 10, generator=g)
    rois = torch.tensor([[0, 0.0, 0.0, 17.0, 15.0], [1, 4.0, 3.0, 9.0, 12.0], [1, 2.0, 2.0, 2.0, 2.0]])
    model = ops.RoIPool((2, 3), 0.5)
    prog = export(model, (x, rois))
    assert "MaxRoiPool" in op_types(prog)
    (got,) = run_ort(prog, (x, rois))
    assert torch.equal(got, model(x, rois))


def test_batched_nms_matches_onnxruntime():
    g = torch.Generator().manual_seed(10)
    n = 80
    boxes, scores = random_boxes(n, generator=g), torch.rand(n, generator=g)
    idxs = torch.tensor([-5, 0, 7, 10**12])[torch.randint(0, 4, (n,), generator=g)]  # any int64 ids
    boxes[1] = boxes[0]
    idxs[0], idxs[1] = 7, -5                      # the same box in two classes: both kept
    scores[3] = scores[4] = scores[5] = 0.5       # ties within and across classes: lower index first
    idxs[3], idxs[4], idxs[5] = 0, 7, 0
    boxes[4] = boxes[3] + 100.0
    model = Fn(lambda b, s, i: ops.batched_nms(b, s, i, 0.4))
    prog = export(model, (boxes, scores, idxs))
    assert "NonMaxSuppression" in op_types(prog)
    expected = model(boxes, scores, idxs)
    assert {0, 1} <= set(expected.tolist())
    (got,) = run_ort(prog, (boxes, scores, idxs))
    assert torch.equal(got, expected)
    # one exported model serves other inputs of the same shape, e.g. a single class (= nms)
    one_class = torch.zeros_like(idxs)
    (got,) = run_ort(prog, (boxes, scores, one_class))
    assert torch.equal(got, ops.nms(boxes, scores, 0.4))


def test_batched_nms_empty_and_fp64():
    model = Fn(lambda b, s, i: ops.batched_nms(b, s, i, 0.5))
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    (got,) = run_ort(export(model, empty), empty)
    assert got.shape == (0,) and got.dtype == torch.int64
    g = torch.Generator().manual_seed(11)
    args = (random_boxes(30, generator=g).double(), torch.rand(30, generator=g).double(),
            torch.randint(0, 3, (30,), generator=g))
    (got,) = run_ort(export(model, args), args)
    assert torch.equal(got, model(*args))


@pytest.mark.parametrize("aligned", [False, True])
def test_multi_scale_roi_align_matches_onnxruntime(aligned):
    g = torch.Generator().manual_seed(12)
    feats = [torch.randn(2, 3, 16, 20, generator=g), torch.randn(2, 3, 8, 10, generator=g),
             torch.randn(2, 3, 4, 5, generator=g)]
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 18.0], [1, 4.0, 3.5, 50.0, 40.0], [1, -3.0, -2.0, 30.0, 9.0],
                         [0, 6.0, 6.0, 60.0, 70.0], [1, 5.0, 5.0, 5.0, 5.0]])
    levels = torch.tensor([0, 1, 0, 1, 0])  # level 2 has no RoI
    model = Fn(lambda a, b, c, r, lv: ops.multi_scale_roi_align([a, b, c], r, lv, [1.0, 0.5, 0.25], (3, 2), -1,
                                                               aligned))
    args = (*feats, rois, levels)
    prog = export(model, args)
    assert "RoiAlign" in op_types(prog)
    (got,) = run_ort(prog, args)
    torch.testing.assert_close(got, model(*args), rtol=1e-5, atol=1e-5)
    # the same model with the levels permuted: every RoI is pooled from its own level
    other = torch.tensor([2, 2, 1, 0, 1])
    (got,) = run_ort(prog, (*feats, rois, other))
    torch.testing.assert_close(got, model(*feats, rois, other), rtol=1e-5, atol=1e-5)


def test_multi_scale_roi_align_module_matches_onnxruntime():
    g = torch.Generator().manual_seed(13)
    pooler = ops.MultiScaleRoIAlign(["p2", "p3", "p4"], 3, 2)

    class Head(torch.nn.Module):
        def forward(self, p2, p3, p4, boxes):
            return pooler({"p2": p2, "p3": p3, "p4": p4}, [boxes[:3], boxes[3:]], [(64, 80), (60, 80)])

    feats = [torch.randn(2, 4, 16 // s, 20 // s, generator=g) for s in (1, 2, 4)]
    boxes = torch.tensor([[1.0, 2.0, 20.0, 18.0], [4.0, 3.5, 60.0, 50.0], [0.0, 0.0, 64.0, 80.0],
                          [3.0, 3.0, 5.0, 5.0], [10.0, 4.0, 70.0, 62.0]]) / 4  # small boxes: several levels
    boxes[2] *= 4
    args = (*feats, boxes)
    prog = export(Head(), args)
    assert {"RoiAlign", "ScatterND"} <= op_types(prog)
    (got,) = run_ort(prog, args)
    torch.testing.assert_close(got, Head()(*args), rtol=1e-5, atol=1e-5)


IOU_MODES = ("iou", "giou", "diou", "ciou")


def all_modes(aligned, eps=1e-7):
    return Fn(lambda x, y: tuple(ops.box_iou(x, y, mode, aligned, eps) for mode in IOU_MODES))


@pytest.mark.parametrize("aligned", [False, True])
def test_box_iou_matches_onnxruntime(aligned):
    g = torch.Generator().manual_seed(14)
    a, b = random_boxes(2, 7, generator=g), random_boxes(2, 5 if not aligned else 7, generator=g)
    a[0, 0] = b[0, 0] = torch.tensor([3.0, 3.0, 3.0, 3.0])   # 0 x 0 boxes: iou 0 with eps, CIoU angle 0
    a[0, 1] = torch.tensor([1.0, 1.0, 1.0, 6.0])              # zero width
    a[1, 2] = torch.tensor([5.0, 5.0, 2.0, 1.0])              # inverted
    a[1, 3, 0] = float("nan")
    model = all_modes(aligned)
    prog = export(model, (a, b))
    assert "Atan" in op_types(prog)
    for mode, got, expected in zip(IOU_MODES, run_ort(prog, (a, b)), model(a, b)):
        assert torch.equal(got.isnan(), expected.isnan()) and expected.isnan().any(), mode
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True, msg=mode)
    # pairwise [N, 4] x [M, 4], float64 with eps = 0 (torchvision's values; exact eps and atan in double)
    x, y = a[0].double(), b[1].double()
    model = all_modes(aligned, eps=0.0)
    for mode, got, expected in zip(IOU_MODES, run_ort(export(model, (x, y)), (x, y)), model(x, y)):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True, msg=mode)


def test_iou_losses_and_fp16_match_onnxruntime():
    g = torch.Generator().manual_seed(15)
    a, b = random_boxes(9, generator=g), random_boxes(9, generator=g)
    model = Fn(lambda x, y: ops.giou_loss(x, y, "mean") + ops.ciou_loss(x, y, "sum"))
    (got,) = run_ort(export(model, (a, b)), (a, b))
    torch.testing.assert_close(got, model(a, b), rtol=1e-6, atol=1e-6)
    h1, h2 = a.half(), b.half()
    model = Fn(lambda x, y: ops.box_iou(x, y, "diou"))
    (got,) = run_ort(export(model, (h1, h2)), (h1, h2))
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, model(h1, h2), rtol=1e-3, atol=1e-3)  # both fp32 math, rounded once


def corner_input(*shape, generator, dtype=torch.float32):
    x = torch.randint(-4, 5, shape, generator=generator).to(dtype)  # many ties
    x.view(-1)[3] = float("nan")
    x.view(-1)[10] = float("-inf")
    x.view(-1)[17] = float("inf")
    return x


def assert_equal_nan(got, expected):
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.nan_to_num(), expected.nan_to_num())


def test_corner_pool_matches_onnxruntime():
    g = torch.Generator().manual_seed(16)
    x = corner_input(2, 3, 9, 6, generator=g)
    modes = ("top", "bottom", "left", "right")
    model = Fn(lambda x: tuple(ops.corner_pool(x, mode) for mode in modes))
    prog = export(model, (x,))
    assert "Max" in op_types(prog)
    for got, expected in zip(run_ort(prog, (x,)), model(x)):
        assert expected.isnan().any()  # NaN propagates along the scan, in ONNX too
        assert_equal_nan(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_corner_pool_sum_matches_onnxruntime(dtype):
    g = torch.Generator().manual_seed(17)
    a, b = torch.randn(1, 2, 7, 5, generator=g).to(dtype), torch.randn(1, 2, 7, 5, generator=g).to(dtype)
    corners = ("top_left", "bottom_right", "top_right", "bottom_left")
    model = Fn(lambda a, b: tuple(ops.corner_pool_sum(a, b, corner) for corner in corners))
    for got, expected in zip(run_ort(export(model, (a, b)), (a, b)), model(a, b)):
        assert got.dtype == dtype and torch.equal(got, expected)


def test_corner_pool_dynamic_shape():
    x = torch.randn(1, 2, 6, 5)
    h, w = torch.export.Dim("h", min=2, max=4096), torch.export.Dim("w", min=2, max=4096)
    prog = export(ops.CornerPool("right"), (x,), dynamic_shapes=({2: h, 3: w},))
    g = torch.Generator().manual_seed(18)
    for shape in [(1, 2, 6, 5), (1, 2, 3, 300), (1, 2, 70, 2)]:
        y = corner_input(*shape, generator=g)
        (got,) = run_ort(prog, (y,))
        assert_equal_nan(got, ops.corner_pool(y, "right"))


def test_translation_table_covers_every_op():
    for custom_domain in (False, True):
        table = fonnx.onnx_translation_table(custom_domain=custom_domain)
        names = {o.name().split("::")[1].split(".")[0] for o in table}
        public = {"nms", "batched_nms", "multiclass_nms", "roi_align", "multi_scale_roi_align", "roi_pool",
                  "deform_conv2d", "box_iou", "corner_pool", "corner_pool_sum", *fonnx.UNSUPPORTED_OPS}
        assert public <= names
        registered = {n for n in dir(torch.ops.fastdet) if not n.startswith("_")
                      and isinstance(getattr(torch.ops.fastdet, n), torch._ops.OpOverloadPacket)}
        assert registered <= names, f"ops with no ONNX entry: {registered - names}"


def test_deform_conv2d_in_merged_table():
    model = ops.DeformConv2dPack(2, 3, 3, padding=1).eval()
    x = torch.randn(1, 2, 6, 5)
    prog = export(model, (x,))
    assert "DeformConv" in op_types(prog)
    (got,) = run_ort(prog, (x,))
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)


def _error_text(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


_CUSTOM_CASES = {
    "soft_nms": lambda b, s: ops.soft_nms(b, s)[0],
    "sigmoid_focal_loss": lambda b, s: ops.sigmoid_focal_loss(b, (s > 0.5).float()[:, None].expand(-1, 4)),
    "border_align": lambda b, s: ops.border_align(b.reshape(1, 4, 2, 4), b.reshape(1, 8, 4).abs().cumsum(-1), 2),
}


@pytest.mark.parametrize("name", sorted(_CUSTOM_CASES))
def test_unsupported_op_fails_with_its_name(name):
    g = torch.Generator().manual_seed(5)
    boxes, scores = random_boxes(8, generator=g), torch.rand(8, generator=g)
    with pytest.raises(Exception) as info:
        export(Fn(_CUSTOM_CASES[name]), (boxes, scores))
    text = _error_text(info.value)
    assert f"fastdet.onnx: fastdet::{name} has no standard ONNX operator" in text
    assert "custom_domain=True" in text


def export_custom(model, args):
    with pytest.warns(fonnx.CustomDomainWarning) as record:
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=19,
                                 custom_translation_table=fonnx.onnx_translation_table(custom_domain=True))
    messages = [str(w.message) for w in record if issubclass(w.category, fonnx.CustomDomainWarning)]
    return prog, messages


def custom_nodes(prog):
    import onnx

    model = prog.model_proto
    onnx.checker.check_model(model)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("fastdet", 1), ("", 19)}
    graph_inputs = [i.name for i in model.graph.input]
    return [(n.op_type, [graph_inputs.index(i) if i in graph_inputs else i for i in n.input], len(n.output),
             {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
            for n in model.graph.node if n.domain == "fastdet"]


def test_custom_domain_soft_nms():
    g = torch.Generator().manual_seed(6)
    boxes, scores, idxs = random_boxes(8, generator=g), torch.rand(8, generator=g), torch.arange(8) % 3
    prog, messages = export_custom(Fn(lambda b, s, i: ops.soft_nms(b, s, 0.4, 0.25, 0.01, "gaussian", i)),
                                   (boxes, scores, idxs))
    assert any("runtime implementation of fastdet::soft_nms" in m for m in messages)
    ((op_type, inputs, n_out, attrs),) = custom_nodes(prog)
    assert (op_type, inputs, n_out) == ("soft_nms", [0, 1, 2], 2)
    assert attrs["method"] == b"gaussian"
    for k, v in {"iou_threshold": 0.4, "sigma": 0.25, "min_score": 0.01}.items():
        assert attrs[k] == pytest.approx(v)
    # the optional idxs omitted: two inputs, defaults written as attributes
    prog, _ = export_custom(Fn(lambda b, s: ops.soft_nms(b, s)), (boxes, scores))
    ((_, inputs, _, attrs),) = custom_nodes(prog)
    assert inputs == [0, 1] and attrs["method"] == b"linear" and attrs["iou_threshold"] == pytest.approx(0.3)


def test_custom_domain_sigmoid_focal_loss_and_border_align():
    g = torch.Generator().manual_seed(7)
    logits, labels, weight = torch.randn(6, 4, generator=g), torch.randint(0, 5, (6,), generator=g), torch.rand(6, 1)
    model = Fn(lambda x, t, w: ops.sigmoid_focal_loss(x, t, 0.5, 1.5, "sum", w) * 2)
    prog, messages = export_custom(model, (logits, labels, weight))
    assert any("fastdet::sigmoid_focal_loss" in m and "custom ONNX domain 'fastdet'" in m for m in messages)
    ((op_type, inputs, n_out, attrs),) = custom_nodes(prog)
    assert (op_type, inputs, n_out) == ("sigmoid_focal_loss", [0, 1, 2], 1)
    assert attrs == {"alpha": 0.5, "gamma": 1.5, "reduction": b"sum"}
    # the rest of the graph stays standard ONNX
    assert {n.domain for n in prog.model_proto.graph.node} == {"", "fastdet"}

    x, boxes = torch.randn(1, 8, 3, 4, generator=g), random_boxes(1, 12, generator=g)
    prog, _ = export_custom(ops.BorderAlign(3), (x, boxes))
    ((op_type, inputs, n_out, attrs),) = custom_nodes(prog)
    assert (op_type, inputs, n_out, attrs) == ("border_align", [0, 1], 2, {"pool_size": 3})


def test_custom_domain_simota():
    g = torch.Generator().manual_seed(8)
    b, a, c, m = 2, 16, 3, 4
    priors = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2) * 8 + 4
    priors = torch.cat([priors, torch.full((a, 2), 8.0)], 1)
    inputs = (torch.rand(b, a, c, generator=g), random_boxes(b, a, generator=g, size=32.0), priors,
              random_boxes(b, m, generator=g, size=32.0), torch.randint(0, c, (b, m), generator=g),
              torch.rand(b, m, generator=g) > 0.3)
    model = Fn(lambda *x: ops.simota_assign(*x, candidate_topk=5, center_only=True))
    prog, messages = export_custom(model, inputs)
    assert any("fastdet::simota_assign" in m for m in messages)
    ((op_type, ins, n_out, attrs),) = custom_nodes(prog)
    assert (op_type, ins, n_out) == ("simota_assign", [0, 1, 2, 3, 4, 5], 4)
    assert attrs["candidate_topk"] == 5 and attrs["center_only"] == 1 and attrs["center_radius"] == 2.5
    prog, _ = export_custom(Fn(lambda *x: ops.simota_cost(*x)), inputs)
    ((op_type, ins, n_out, attrs),) = custom_nodes(prog)
    assert (op_type, ins, n_out, attrs["center_only"]) == ("simota_cost", [0, 1, 2, 3, 4, 5], 1, 0)
