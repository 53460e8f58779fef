"""fastdet ops inside real graphs: torch.compile(fullgraph=True) and torch.export of detection
post-processing (decode anchors + deltas -> multiclass_nms) and of a RoI head
(MultiScaleRoIAlign -> flatten -> MLP); the compiled / exported results equal eager."""

import math

import pytest
import torch
from torch import nn

from fastdet import ops


def decode(anchors, deltas, clip=math.log(1000.0 / 16)):
    """Faster R-CNN box decoding (Girshick et al.): anchors [N, 4] + deltas [B, N, 4] -> boxes [B, N, 4]."""
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + 0.5 * wa, anchors[:, 1] + 0.5 * ha
    dx, dy = deltas[..., 0], deltas[..., 1]
    dw, dh = deltas[..., 2].clamp(max=clip), deltas[..., 3].clamp(max=clip)
    x, y, w, h = xa + dx * wa, ya + dy * ha, wa * dw.exp(), ha * dh.exp()
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


class PostProcess(nn.Module):
    """Dense-detector head output -> padded detections."""

    def __init__(self, class_agnostic=False):
        super().__init__()
        self.class_agnostic = class_agnostic

    def forward(self, anchors, deltas, logits):
        boxes = decode(anchors, deltas)
        scores = logits.sigmoid()
        return ops.multiclass_nms(boxes, scores, 0.3, 0.5, 10, 16, self.class_agnostic)


class RoIHead(nn.Module):
    """Two-level FPN RoI head: MultiScaleRoIAlign -> flatten -> 2-layer MLP -> class logits + box deltas."""

    def __init__(self, channels=4, pool=3, hidden=16, classes=3):
        super().__init__()
        self.pool = ops.MultiScaleRoIAlign(["p2", "p3"], pool, sampling_ratio=2)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels * pool * pool, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.cls = nn.Linear(hidden, classes)
        self.box = nn.Linear(hidden, 4 * classes)

    def forward(self, p2, p3, boxes0, boxes1):
        feats = self.mlp(self.pool({"p2": p2, "p3": p3}, [boxes0, boxes1], [(64, 64), (64, 64)]))
        return self.cls(feats), self.box(feats)


def post_inputs(seed=0, b=2, n=48, c=3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 24], 1)
    deltas = torch.randn(b, n, 4, generator=g) * 0.2
    logits = torch.randn(b, n, c, generator=g)
    return anchors, deltas, logits


def roi_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    p2, p3 = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 8, 8, generator=g)

    def boxes(k, size):
        xy = torch.rand(k, 2, generator=g) * 40
        return torch.cat([xy, xy + 2 + torch.rand(k, 2, generator=g) * size], 1)

    # FPN level = floor(4 + log2(sqrt(area) / 224)): sides < 112 pool p2, larger ones p3
    return p2, p3, boxes(5, 40), torch.cat([boxes(2, 40), boxes(3, 40) + torch.tensor([0, 0, 120, 120])])


def assert_same(got, expected):
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_postprocess_compile_fullgraph(class_agnostic):
    model = PostProcess(class_agnostic)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seed in (0, 1):  # a second input reuses the compiled graph
        args = post_inputs(seed)
        expected = model(*args)
        assert expected[0].sum() > 0
        assert_same(compiled(*args), expected)


def test_postprocess_compile_inductor():
    model = PostProcess()
    args = post_inputs(2)
    assert_same(torch.compile(model, fullgraph=True)(*args), model(*args))


def test_postprocess_export_dynamic_batch():
    model = PostProcess()
    args = post_inputs(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    prog = torch.export.export(model, args, dynamic_shapes=({}, {0: batch}, {0: batch}))
    names = {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}
    assert "fastdet.multiclass_nms.default" in names
    assert_same(prog.module()(*args), model(*args))
    other = post_inputs(3, b=5)
    assert_same(prog.module()(*other), model(*other))


def test_roi_head_compile_fullgraph_with_backward():
    torch.manual_seed(0)
    model = RoIHead()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    p2, p3, b0, b1 = roi_inputs()
    pe, pc = [p2.clone().requires_grad_(), p3.clone().requires_grad_()], [p2.clone().requires_grad_(),
                                                                        p3.clone().requires_grad_()]
    expected = model(pe[0], pe[1], b0, b1)
    got = compiled(pc[0], pc[1], b0, b1)
    assert_same(got, expected)
    (expected[0].sum() + expected[1].square().sum()).backward()
    (got[0].sum() + got[1].square().sum()).backward()
    for a, e in zip(pc, pe):
        assert e.grad.abs().sum() > 0  # both levels pooled
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-6)


def test_roi_head_export():
    torch.manual_seed(0)
    model = RoIHead().eval()
    args = roi_inputs()
    prog = torch.export.export(model, args)
    names = {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}
    assert "fastdet.multi_scale_roi_align.default" in names
    with torch.no_grad():
        assert_same(prog.module()(*args), model(*args))
