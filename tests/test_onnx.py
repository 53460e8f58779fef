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
