"""GFL and BorderDet (FCOS family, no torchvision counterpart): QFL / DFL on hand-made cases, head
shapes and gradients, border_align's boxes, valid eval outputs, and a short overfit on 2 generated
images."""

from __future__ import annotations

import math

import pytest
import torch

from fastdet import models, ops
from fastdet.data import build_coco_dataset, generate_shapes
from fastdet.models.detection import borderdet
from fastdet.models.detection.gfl import distribution_expectation, distribution_focal_loss, quality_focal_loss
from fastdet.testing import detection_images as images
from fastdet.testing import detection_targets as make_targets

TINY = dict(num_classes=5, min_size=64, max_size=96, num_convs=1, fpn_channels=32)
NAMES = ["gfl_resnet18_fpn", "borderdet_resnet18_fpn"]


def build(name, **kwargs):
    torch.manual_seed(0)
    return models.build_model(name, **{**TINY, **kwargs})


# ---- losses ---------------------------------------------------------------------------------------------


def test_quality_focal_loss_matches_formula():
    x = torch.tensor([0.0, 0.0, math.log(3.0), -2.0])  # sigmoid: 0.5, 0.5, 0.75, 0.119
    y = torch.tensor([0.5, 1.0, 0.25, 0.0])
    s = torch.sigmoid(x)
    expected = [0.0, 0.25 * math.log(2.0), 0.25 * -(0.75 * math.log(0.25) + 0.25 * math.log(0.75)),
                float(s[3]) ** 2 * -math.log(1 - float(s[3]))]
    torch.testing.assert_close(quality_focal_loss(x, y), torch.tensor(expected))
    assert quality_focal_loss(x, y, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-6)
    # why QFL is not fastdet's soft-target focal loss: at y = sigmoid(x) = 0.5 QFL is 0, the focal loss is not
    assert ops.sigmoid_focal_loss(x[:1], y[:1], alpha=-1).item() > 0.1


def test_distribution_focal_loss_matches_formula():
    probs = torch.tensor([0.2, 0.5, 0.3])
    logits = probs.log().expand(4, 3)
    y = torch.tensor([1.4, 0.0, 2.0, 0.5])
    expected = [-(0.6 * math.log(0.5) + 0.4 * math.log(0.3)), -math.log(0.2), -math.log(0.3),
                -(0.5 * math.log(0.2) + 0.5 * math.log(0.5))]
    torch.testing.assert_close(distribution_focal_loss(logits, y), torch.tensor(expected))
    assert distribution_expectation(probs.log()).item() == pytest.approx(0.5 + 0.6)


def test_loss_errors():
    with pytest.raises(ValueError, match="quality_focal_loss: targets"):
        quality_focal_loss(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="distribution_focal_loss: logits"):
        distribution_focal_loss(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        distribution_focal_loss(torch.zeros(2, 3), torch.zeros(2), reduction="avg")
    with pytest.raises(ValueError, match="GFL: reg_max"):
        build("gfl_resnet18_fpn", reg_max=0)
    with pytest.raises(ValueError, match="BorderDet: border_channels"):
        build("borderdet_resnet18_fpn", border_channels=48)
    with pytest.raises(ValueError, match="num_classes"):
        build("borderdet_resnet18_fpn", num_classes=1)


# ---- models ---------------------------------------------------------------------------------------------


def test_border_deltas_round_trip():
    coarse = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    gt = torch.tensor([[12.0, 18.0, 46.0, 45.0]])
    deltas = borderdet.border_deltas(coarse, gt)
    torch.testing.assert_close(deltas, torch.tensor([[2 / 20, -2 / 10, -4 / 20, 5 / 10]]))  # size * 0.5
    torch.testing.assert_close(borderdet.refine_boxes(coarse, deltas), gt)


@pytest.mark.parametrize("name", NAMES)
def test_train_shapes_and_gradients(name):
    model = build(name)
    ims = images()
    outputs = {}
    model.head.register_forward_hook(lambda m, i, o: outputs.update(o))
    losses = model(ims, make_targets(ims, masks=False, empty=(1,)))
    expected = ({"classification", "bbox_regression", "bbox_distribution"} if name.startswith("gfl") else
                {"classification", "bbox_regression", "bbox_ctrness", "border_classification", "border_regression"})
    assert set(losses) == expected and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    n = outputs["cls_logits"].shape[1]
    assert outputs["cls_logits"].shape == (2, n, 5) and outputs["bbox_regression"].shape == (2, n, 4)
    if name.startswith("gfl"):
        assert outputs["bbox_distribution"].shape == (2, n, 4, 17)
    sum(losses.values()).backward()
    grads = {k: p.grad for k, p in model.head.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for k, g in grads.items() if "border" in k or "bbox_reg" in k)


def test_border_align_gets_valid_boxes(monkeypatch):
    calls = []
    border_align = ops.border_align

    def record(input, boxes, pool_size):
        calls.append((input.shape, boxes.detach().clone(), pool_size))
        return border_align(input, boxes, pool_size)

    monkeypatch.setattr(borderdet.ops, "border_align", record)
    model = build("borderdet_resnet18_fpn").eval()
    with torch.no_grad():
        model(images())
    assert len(calls) == 2 * 5  # two branches x P3-P7
    for shape, boxes, pool_size in calls:
        b, c, h, w = shape
        assert pool_size == 10 and c == 4 * 32 and boxes.shape == (b, h * w, 4)
        assert torch.isfinite(boxes).all() and (boxes[..., 2:] >= boxes[..., :2]).all()
        # every box contains its own point (FCOS distances are >= 0), in feature-map coordinates
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # anchor centres i * stride
        centre = torch.stack((xs.flatten(), ys.flatten()), dim=1)
        assert (boxes[..., :2] <= centre + 1e-4).all() and (boxes[..., 2:] >= centre - 1e-4).all()


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_valid(name):
    model = build(name, score_thresh=0.0, detections_per_img=20).eval()
    ims = images()
    with torch.no_grad():
        out = model(ims)
    for o, im in zip(out, ims):
        h, w = im.shape[1:]
        k = o["boxes"].shape[0]
        assert 0 < k <= 20 and o["boxes"].shape == (k, 4) and o["scores"].shape == (k,) and o["labels"].dtype == torch.int64
        assert (o["boxes"][:, 2:] >= o["boxes"][:, :2]).all() and (o["boxes"] >= 0).all()
        assert (o["boxes"][:, 0::2] <= w).all() and (o["boxes"][:, 1::2] <= h).all()
        assert ((o["scores"] >= 0) & (o["scores"] <= 1)).all() and (o["scores"].diff() <= 0).all()
        assert ((o["labels"] >= 0) & (o["labels"] < 5)).all()


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_images=2, image_size=64, min_objects=2, max_objects=2)
    data = build_coco_dataset(root)
    return [data[i] for i in range(2)]


@pytest.mark.parametrize("name", NAMES)
def test_overfits_two_images(name, two_images):
    """30 Adam steps (lr 3e-3) on 2 generated 64 px images: the total loss falls at least 2x (measured:
    GFL 0.696 -> 0.221, 3.1x; BorderDet 2.840 -> 1.135, 2.5x)."""
    model = build(name, num_classes=4)
    ims = [im for im, _ in two_images]
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in two_images]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(30):
        loss = sum(model(ims, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0] / 2, totals
