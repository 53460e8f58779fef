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
    table = fonnx.onnx_translation_table()
    names = {o.name().split("::")[1].split(".")[0] for o in table}
    public = {"nms", "multiclass_nms", "roi_align", "roi_pool", "deform_conv2d", *fonnx.UNSUPPORTED_OPS}
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


@pytest.mark.parametrize("name, fn", [
    ("soft_nms", lambda b, s: ops.soft_nms(b, s)[0]),
    ("batched_nms", lambda b, s: ops.batched_nms(b, s, (s > 0.5).long(), 0.5)),
    ("box_iou", lambda b, s: ops.box_iou(b, b) * s),
])
def test_unsupported_op_fails_with_its_name(name, fn):
    g = torch.Generator().manual_seed(5)
    boxes, scores = random_boxes(8, generator=g), torch.rand(8, generator=g)
    with pytest.raises(Exception) as info:
        export(Fn(fn), (boxes, scores))
    text = _error_text(info.value)
    assert f"fastdet.onnx: fastdet::{name} has no standard ONNX operator" in text
