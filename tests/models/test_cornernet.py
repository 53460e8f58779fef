"""fastdet.models CornerNet: the hourglass's structure, the Gaussian radius, targets, the focal and
pull/push losses against per-object references, the corner pooling module against
fastdet.ops.corner_pool, decoding of hand-made maps, gradients, empty targets, errors and weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fastdet import models, ops
from fastdet.models.detection.cornernet import (
    _CONFIGS,
    CornerMaps,
    CornerNet,
    CornerPooling,
    corner_targets,
    cornernet_loss,
    decode_corners,
    embedding_losses,
    focal_heatmap_loss,
    gaussian_radius,
)
from fastdet.models.detection.hourglass import HourglassModule, Residual, StackedHourglass


def tiny(num_stacks=1, **kwargs):
    """A CornerNet small enough for many tests: 2 levels (size divisor 16), width 8."""
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 3)
    return CornerNet(num_stacks=num_stacks, channels=(8, 8, 16), blocks=(1, 1, 1), stem_channels=8, out_channels=8,
                     pool_channels=8, min_size=64, max_size=64, **kwargs)


def test_registry():
    names = set(models.list_models("detection"))
    assert {"cornernet_hourglass104", "cornernet_hourglass_light"} <= names


def test_hourglass104_structure():
    stacks, channels, blocks, stem, out, pool, size = _CONFIGS["cornernet_hourglass104"]
    assert (stacks, channels, blocks, stem, out, pool) == (2, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4),
                                                          128, 256, 128)
    with torch.device("meta"):  # no memory: shapes only
        model = models.build_model("cornernet_hourglass104", num_classes=80)
    body = model.backbone
    assert body.size_divisor == 128 and len(body.hourglasses) == 2 and len(body.inters) == 1
    assert body.stem[0][0].kernel_size == (7, 7) and body.stem[0][0].stride == (2, 2)
    assert body.stem[0][0].out_channels == 128 and body.stem[1].conv1[0].stride == (2, 2)
    # walk down one hourglass: widths and blocks per level, 4 residual blocks at the bottom
    level, widths = body.hourglasses[0], []
    while isinstance(level, HourglassModule):
        widths.append(level.down[0].conv1[0].out_channels)
        assert len(level.up) == 2 and len(level.down) == 2 and len(level.back) == 2
        assert level.down[0].conv1[0].stride == (2, 2)
        level = level.inner
    assert widths == [256, 384, 384, 384, 512] and len(level) == 4 and all(isinstance(b, Residual) for b in level)
    with torch.device("meta"):
        features = body(torch.empty(1, 3, 256, 384))
    assert [tuple(f.shape) for f in features] == [(1, 256, 64, 96)] * 2
    assert len(model.heads) == 2 and model.heads[0].heatmaps[0][1].bias.shape == (80,)


def test_hourglass_rejects_unpadded_input():
    body = StackedHourglass(1, (8, 8, 16), (1, 1, 1), 8, 8)
    with pytest.raises(ValueError, match="StackedHourglass: input height and width must be multiples of 16"):
        body(torch.rand(1, 3, 40, 32))
    with pytest.raises(ValueError, match="StackedHourglass: need num_stacks >= 1"):
        StackedHourglass(0, (8, 8), (1, 1), 8, 8)


# ---- Gaussian radius ------------------------------------------------------------------------------------


def box_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def worst_iou(w, h, r):
    """The lowest IoU with the box (0, 0, w, h) of a box whose corners each moved by r in x and y."""
    worst = 1.0
    for sx1, sy1, sx2, sy2 in itertools.product((-r, r), repeat=4):
        moved = (sx1, sy1, w + sx2, h + sy2)
        worst = min(worst, box_iou((0, 0, w, h), moved) if moved[2] > moved[0] and moved[3] > moved[1] else 0.0)
    return worst


@pytest.mark.parametrize("w,h", [(5, 5), (10, 3), (40, 20), (3, 30), (100, 100), (2, 2)])
def test_gaussian_radius(w, h):
    r = float(gaussian_radius(torch.tensor(w, dtype=torch.float64), torch.tensor(h, dtype=torch.float64), 0.3))
    # the paper's condition: corners anywhere within r still give IoU >= 0.3; just beyond r, not
    assert worst_iou(w, h, r) >= 0.3 - 1e-9
    assert worst_iou(w, h, r * 1.01) < 0.3
    if w == h:  # both corners moving inwards: (w - 2r)^2 = 0.3 w^2
        assert r == pytest.approx(w * (1 - math.sqrt(0.3)) / 2, rel=1e-6)


# ---- targets --------------------------------------------------------------------------------------------


def test_corner_targets():
    boxes = torch.tensor([[[2.25, 3.5, 14.75, 12.0], [5.0, 5.0, 19.0, 19.0], [0, 0, 0, 0]]])  # output cells
    labels = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[True, True, False]])
    gt = corner_targets(boxes, labels, mask, num_classes=3, size=(20, 24))
    assert gt.heatmaps.shape == (1, 2, 3, 20, 24)
    assert gt.index.tolist() == [[[3 * 24 + 2, 5 * 24 + 5, 0], [12 * 24 + 14, 19 * 24 + 19, 0]]]
    torch.testing.assert_close(gt.offsets[0, 0, 0], torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(gt.offsets[0, 1, 0], torch.tensor([0.75, 0.0]))
    heat = gt.heatmaps[0]
    assert heat[:, 0].abs().sum() == 0 and heat[:, 2].abs().sum() == 0   # class 0 only holds padding
    assert heat[0, 1, 3, 2] == 1 and heat[1, 1, 12, 14] == 1 and heat[0, 1, 5, 5] == 1 and heat[1, 1, 19, 19] == 1
    assert int((heat == 1).sum()) == 4
    # the first box: 13 x 9 cells after ceil, radius floor(gaussian_radius) = 2, sigma 5 / 6
    r = int(gaussian_radius(torch.tensor(13.0), torch.tensor(9.0)))
    assert r == 2
    sigma = (2 * r + 1) / 6
    assert float(heat[0, 1, 3 - 1, 2 - 1]) == pytest.approx(math.exp(-2 / (2 * sigma ** 2)), rel=1e-6)
    assert float(heat[0, 1, 3 - 3, 2]) == 0                                  # beyond the radius
    # the second box (14 x 14 cells, radius 3) overlaps the first's bump at the top-left: max, not sum
    r2 = int(gaussian_radius(torch.tensor(14.0), torch.tensor(14.0)))
    s2 = (2 * r2 + 1) / 6
    cell = (4, 4)  # dy, dx = (1, 2) from (3, 2) and (-1, -1) from (5, 5)
    first, second = math.exp(-5 / (2 * sigma ** 2)), math.exp(-2 / (2 * s2 ** 2))
    assert float(heat[0, 1, cell[0], cell[1]]) == pytest.approx(max(first, second), rel=1e-6)


# ---- losses ---------------------------------------------------------------------------------------------


def test_focal_heatmap_loss_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 6, 7, dtype=torch.float64)
    target = torch.rand(2, 2, 3, 6, 7, dtype=torch.float64) * 0.9
    target[0, 0, 1, 2, 3] = target[1, 1, 2, 5, 6] = target[1, 0, 0, 0, 0] = 1
    got = focal_heatmap_loss(logits, target, torch.tensor(3.0, dtype=torch.float64))
    total = 0.0
    for x, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        total += (1 - p) ** 2 * math.log(p) if y == 1 else (1 - y) ** 4 * p ** 2 * math.log(1 - p)
    assert float(got) == pytest.approx(-total / 3, rel=1e-10)
    # no objects: normalised by 1
    assert float(focal_heatmap_loss(logits, target * 0, torch.tensor(0.0))) > 0


def test_embedding_losses_match_per_object_reference():
    torch.manual_seed(0)
    tl, br = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    pull, push = embedding_losses(tl, br, mask)
    pulls, pushes = [], []
    for b in range(3):
        objects = [k for k in range(4) if mask[b, k]]
        means = {k: (tl[b, k] + br[b, k]) / 2 for k in objects}
        pulls += [float((tl[b, k] - means[k]) ** 2 + (br[b, k] - means[k]) ** 2) for k in objects]
        pushes += [max(0.0, 1 - abs(float(means[k] - means[j]))) for k in objects for j in objects if k != j]
    assert len(pulls) == 4 and len(pushes) == 6
    assert float(pull) == pytest.approx(sum(pulls) / len(pulls), rel=1e-10)
    assert float(push) == pytest.approx(sum(pushes) / len(pushes), rel=1e-10)
    zero = embedding_losses(tl, br, torch.zeros_like(mask))
    assert float(zero[0]) == 0 and float(zero[1]) == 0


def test_cornernet_loss_offsets_and_weights():
    b, c, h, w = 1, 2, 8, 8
    boxes = torch.tensor([[[1.5, 2.25, 6.5, 7.75]]])
    gt = corner_targets(boxes, torch.tensor([[1]]), torch.tensor([[True]]), c, (h, w))
    offsets = torch.zeros(b, 2, 2, h, w)
    offsets[0, 0, :, 2, 1] = torch.tensor([0.5, 0.25])   # exact at the top-left corner
    offsets[0, 1, :, 7, 6] = torch.tensor([2.5, 0.75])   # x off by 2 at the bottom-right: smooth-L1 1.5
    maps = CornerMaps(torch.zeros(b, 2, c, h, w), torch.zeros(b, 2, h, w), offsets)
    losses = cornernet_loss(maps, gt, offset_weight=2.0)
    assert float(losses["loss_offset"]) == pytest.approx(2 * 1.5)
    assert float(losses["loss_pull"]) == 0 and float(losses["loss_push"]) == 0  # one object: no pairs


# ---- corner pooling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("corner,modes", [("top_left", ("top", "left")), ("bottom_right", ("bottom", "right"))])
def test_corner_pooling_module(corner, modes):
    torch.manual_seed(0)
    module = CornerPooling(6, corner, pool_channels=5).eval()
    x = torch.randn(2, 6, 9, 11)
    with torch.no_grad():
        pooled = ops.corner_pool(module.vertical(x), modes[0]) + ops.corner_pool(module.horizontal(x), modes[1])
        expected = module.out(F.relu(module.pool_conv(pooled) + module.skip(x)))
        torch.testing.assert_close(module(x), expected)
    with pytest.raises(ValueError, match="CornerPooling: corner must be one of"):
        CornerPooling(6, "top_right")


# ---- decoding ---------------------------------------------------------------------------------------------


def handmade_maps(c=3, h=16, w=16):
    """Logit -10 everywhere except the corners placed by the tests."""
    return CornerMaps(torch.full((1, 2, c, h, w), -10.0), torch.zeros(1, 2, h, w), torch.zeros(1, 2, 2, h, w))


def put(maps, corner, cls, y, x, logit, embed=0.0, offset=(0.0, 0.0)):
    maps.heatmaps[0, corner, cls, y, x] = logit
    maps.embeddings[0, corner, y, x] = embed
    maps.offsets[0, corner, :, y, x] = torch.tensor(offset)


def valid_pairs(cand):
    """The pairs decode_corners did not reject. (Only the placed corners may be in its top_k: the flat
    background is a local maximum everywhere, and a strong corner paired with a background one
    still scores about half its own score, in CornerNet too.)"""
    keep = cand.scores[0] > -1
    return cand.boxes[0][keep], cand.scores[0][keep], cand.labels[0][keep]


def test_decode_recovers_boxes_and_rejects_bad_pairs():
    maps = handmade_maps()
    put(maps, 0, 1, 3, 2, 2.0, embed=1.0, offset=(0.25, 0.5))     # box A (class 1)
    put(maps, 1, 1, 12, 10, 1.0, embed=1.2, offset=(0.5, 0.75))
    put(maps, 0, 2, 5, 5, 3.0, embed=5.0)                          # class 2 top-left ...
    put(maps, 1, 0, 14, 14, 3.0, embed=5.0)                        # ... and class 0 bottom-right: classes differ
    put(maps, 0, 0, 1, 1, 3.0, embed=-3.0)                         # class 0 top-left, embedding 8 away: rejected
    put(maps, 1, 1, 1, 1, 1.5, embed=1.0)                          # class 1 bottom-right above-left of A's tl
    cand = decode_corners(maps, top_k=3, embedding_threshold=0.5, num_candidates=16)
    assert cand.boxes.shape == (1, 9, 4) and cand.scores.shape == (1, 9)
    boxes, scores, labels = valid_pairs(cand)
    torch.testing.assert_close(boxes, torch.tensor([[2.25, 3.5, 10.5, 12.75]]))
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(1.0))) / 2
    torch.testing.assert_close(scores, expected[None])
    assert labels.tolist() == [1]
    # a looser embedding threshold pairs the class-0 corners too
    boxes, _, labels = valid_pairs(decode_corners(maps, top_k=3, embedding_threshold=9.0, num_candidates=16))
    assert sorted(labels.tolist()) == [0, 1] and [1.0, 1.0, 14.0, 14.0] in boxes.tolist()


def test_decode_keeps_local_maxima_only():
    maps = handmade_maps(c=1)
    put(maps, 0, 0, 3, 3, 4.0)
    put(maps, 0, 0, 3, 4, 3.0)   # next to a stronger corner: suppressed
    put(maps, 1, 0, 10, 10, 4.0)
    cand = decode_corners(maps, top_k=2)  # the second top-left is a background cell, not (3, 4)
    boxes, _, _ = valid_pairs(cand)
    assert cand.boxes[0, 0].tolist() == [3.0, 3.0, 10.0, 10.0] and [4.0, 3.0, 10.0, 10.0] not in boxes.tolist()
    assert cand.scores[0, 0] > 0.9 and (cand.scores[0, 1:] < 0.5).all()


def test_detect_scales_boxes_and_offsets_labels():
    model = tiny(label_offset=1).eval()
    maps = handmade_maps(c=3, h=16, w=16)
    put(maps, 0, 2, 2, 3, 3.0, offset=(0.5, 0.0))
    put(maps, 1, 2, 9, 12, 3.0)
    model.top_k = 1
    model.heads[-1].forward = lambda feature: maps
    (det,) = model.detect(torch.zeros(1, 8, 16, 16), [(64, 40)])
    torch.testing.assert_close(det["boxes"], torch.tensor([[14.0, 8.0, 40.0, 36.0]]))  # x2 clipped at width 40
    assert det["labels"].tolist() == [3]
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0])))


# ---- the model --------------------------------------------------------------------------------------------


def targets_for(n_images=2):
    ts = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
          {"boxes": torch.tensor([[10.0, 10.0, 50.0, 30.0]]), "labels": torch.tensor([0])}]
    return ts[:n_images]


def test_training_sums_stacks_and_gradients_flow():
    model = tiny(num_stacks=2)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    losses = model(images, targets_for())
    assert set(losses) == {"loss_heatmap", "loss_pull", "loss_push", "loss_offset"}
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone.stem[0][0].weight.grad.abs().sum() > 0
    assert all(h.heatmaps[0][1].weight.grad.abs().sum() > 0 for h in model.heads)
    # intermediate supervision: the sum of each stack's losses on the same targets
    with torch.no_grad():
        batch, targets = model.transform(images, targets_for())
        features = model.backbone(batch.tensors)
        from fastdet.models.detection._utils import pad_targets
        boxes, labels, mask = pad_targets(targets, torch.float32, "cpu")
        gt = corner_targets(boxes / 4, labels, mask, 3, features[0].shape[-2:])
        per_stack = [cornernet_loss(head(f), gt) for head, f in zip(model.heads, features)]
        again = model(images, targets_for())
    for key in losses:
        torch.testing.assert_close(again[key], per_stack[0][key] + per_stack[1][key])


def test_empty_targets():
    model = tiny()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)] * 2, [empty, empty])
    values = {k: v.item() for k, v in losses.items()}
    assert values["loss_heatmap"] > 0
    assert values["loss_pull"] == values["loss_push"] == values["loss_offset"] == 0
    sum(losses.values()).backward()
    mixed = model([torch.rand(3, 64, 64)] * 2, [empty, targets_for(1)[0]])
    assert all(torch.isfinite(v) for v in mixed.values())


def test_eval_pads_and_maps_back_and_zero_detections():
    model = tiny(score_thresh=0.0).eval()
    images = [torch.rand(3, 50, 37), torch.rand(3, 64, 64)]  # padded to multiples of 16, nothing cropped
    with torch.no_grad():
        dets = model(images)
    for det, im in zip(dets, images):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 100
        if len(det["boxes"]):
            assert (det["boxes"][:, 2] <= im.shape[2]).all() and (det["boxes"][:, 3] <= im.shape[1]).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
    # heatmaps far below the score threshold: no detections, empty outputs of the right shapes
    for head in model.heads:
        torch.nn.init.constant_(head.heatmaps[0][1].bias, -30.0)
        torch.nn.init.constant_(head.heatmaps[1][1].bias, -30.0)
    model.score_thresh = 0.001
    with torch.no_grad():
        dets = model(images)
    for det in dets:
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].dtype == torch.int64


def test_bad_inputs():
    model = tiny(label_offset=1)
    image = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match=r"CornerNet: targets\[0\]\['labels'\] must be in \[1, 4\)"):
        model(image, [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="no positive width and height"):
        model(image, [{"boxes": torch.tensor([[1.0, 1, 1, 9]]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="CornerNet: targets are required"):
        model(image)
    with pytest.raises(ValueError, match="CornerNet: images must be a list"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="CornerNet: num_classes must be >= 1"):
        tiny(num_classes=0)
    with pytest.raises(ValueError, match="CornerNet: top_k must be >= 1"):
        tiny(top_k=0)
    with pytest.raises(ValueError, match=r"CornerNet: score_thresh must be in \[0, 1\]"):
        tiny(score_thresh=-1.0)
    with pytest.raises(ValueError, match="cornernet_hourglass_light: weights must be None or a local file path"):
        models.build_model("cornernet_hourglass_light", weights="https://example.com/w.pth")


def test_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("cornernet_hourglass_light", num_classes=2, min_size=64, max_size=64,
                               score_thresh=0.0).eval()
    path = tmp_path / "cornernet.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    loaded = models.build_model("cornernet_hourglass_light", weights=str(path), min_size=64, max_size=64,
                                score_thresh=0.0).eval()
    assert loaded.num_classes == 2
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model(images)[0], loaded(images)[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(RuntimeError, match="cornernet_hourglass_light: .* does not match the model"):
        models.build_model("cornernet_hourglass_light", weights=str(path), num_classes=3)
