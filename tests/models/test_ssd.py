"""fastdet.models SSD300 VGG-16 and SSDlite320 MobileNetV3 against torchvision: state-dict keys,
default boxes and matching, eval-mode detections and training losses with the same weights, local
weights, fastdet's small-input extensions, and errors."""

from __future__ import annotations

import warnings

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models import detection as tvd  # noqa: E402
from torchvision.models.detection import _utils as tv_utils  # noqa: E402
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TvDefaultBoxes  # noqa: E402
from torchvision.models.detection.image_list import ImageList as TvImageList  # noqa: E402

from fastdet import models  # noqa: E402
from fastdet.models.detection import _utils as fd_utils  # noqa: E402
from fastdet.models.detection.anchors import DefaultBoxGenerator  # noqa: E402
from fastdet.testing import assert_input_errors, assert_same_detections, calibrate_batchnorm  # noqa: E402
from fastdet.testing import detection_images as images  # noqa: E402
from fastdet.testing import detection_targets  # noqa: E402

NAMES = ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]


def build_both(name, **kwargs):
    torch.manual_seed(0)
    kw = dict(weights=None, weights_backbone=None, **{"num_classes": 5, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tv = getattr(tvd, name)(**kw)
    return tv, getattr(models, name)(**kw)


def pair(name, **kwargs):
    """A seeded torchvision model and a fastdet model holding its weights (both in eval mode).

    SSDlite's BatchNorm statistics are set from a batch of images first and SSD300's classifier
    weights scaled by 0.1, so that random-weight scores vary from box to box instead of tying (at 0.2
    or saturated near 1)."""
    tv, ours = build_both(name, **kwargs)
    calibrate_batchnorm(tv, 160, num_images=2)
    state = tv.state_dict()
    if name == "ssd300_vgg16":
        for k in state:
            if k.startswith("head.classification_head.") and k.endswith(".weight"):
                state[k] = state[k] * 0.1
        tv.load_state_dict(state)
    ours.load_state_dict(state)
    return tv.eval(), ours.eval()


def make_targets(ims, empty=()):
    return detection_targets(ims, masks=False, empty=empty)


# ---- registry and state dicts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_torchvision(name):
    assert name in models.list_models() and not models.is_mask_model(name)
    tv, ours = build_both(name, num_classes=91 if "lite" in name else 7)
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(our_sd) == list(tv_sd)
    assert all(our_sd[k].shape == v.shape and our_sd[k].dtype == v.dtype for k, v in tv_sd.items())
    ours.load_state_dict(tv_sd)  # strict
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in tv.named_parameters() if p.requires_grad}
    assert ours.anchor_generator.num_anchors_per_location() == tv.anchor_generator.num_anchors_per_location()
    assert (ours.score_thresh, ours.nms_thresh, ours.detections_per_img, ours.topk_candidates) == \
        (tv.score_thresh, tv.nms_thresh, tv.detections_per_img, tv.topk_candidates)
    assert ours.transform.image_mean == tv.transform.image_mean and ours.transform.image_std == tv.transform.image_std


# ---- components against torchvision's ------------------------------------------------------------------


@pytest.mark.parametrize("args, size, grids", [
    (dict(aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
          steps=[8, 16, 32, 64, 100, 300]), (300, 300), [38, 19, 10, 5, 3, 1]),
    (dict(aspect_ratios=[[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95), (320, 320), [20, 10, 5, 3, 2, 1]),
    (dict(aspect_ratios=[[2, 3]] * 3, min_ratio=0.1, max_ratio=0.8, clip=False), (96, 128), [(12, 16), (6, 8), (3, 4)]),
    (dict(aspect_ratios=[[3]], min_ratio=0.3, max_ratio=0.9), (64, 64), [4]),
])
def test_default_boxes_match_torchvision(args, size, grids):
    feats = [torch.zeros(1, 8, *(g if isinstance(g, tuple) else (g, g))) for g in grids]
    batch = torch.zeros(2, 3, *size)
    for dtype in (torch.float32, torch.float64):
        f = [x.to(dtype) for x in feats]
        expected = TvDefaultBoxes(**args)(TvImageList(batch, [size] * 2), f)
        gen = DefaultBoxGenerator(**args)
        got = gen(fd_utils.ImageList(batch, [size] * 2), f)
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected))  # bit-identical
        cells = [g[0] * g[1] if isinstance(g, tuple) else g * g for g in grids]
        assert got[0].shape[0] == sum(c * n for c, n in zip(cells, gen.num_anchors_per_location()))
    with pytest.raises(ValueError, match="DefaultBoxGenerator: steps"):
        DefaultBoxGenerator([[2], [2]], steps=[8])
    with pytest.raises(ValueError, match="got 1 feature maps but default boxes are defined for 6"):
        DefaultBoxGenerator([[2]] * 6)(fd_utils.ImageList(batch, [size] * 2), feats[:1])


def test_ssd_matcher_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        iou = torch.rand(4, 60, generator=g) * 0.7
        iou[1, 7] = iou[2, 7] = 0.9  # two ground truths share their best prediction: the later one wins
        iou[3, 9] = iou[3, 12] = iou[3].max() + 0.01  # a tie for a ground truth's best prediction
        for threshold in (0.5, 0.3):
            expected = tv_utils.SSDMatcher(threshold)(iou)
            got = fd_utils.SSDMatcher(threshold)(iou)
            assert torch.equal(got, expected)
            assert got.dtype == torch.int64 and set(got.unique().tolist()) <= {-1, 0, 1, 2, 3}
            assert got[7] in (1, 2) and 3 in (got[9], got[12]) and (got >= 0).sum() >= 4


# ---- the acceptance tests: same detections and losses as torchvision with the same weights ------------


@pytest.mark.parametrize("name", NAMES)
def test_eval_parity_with_torchvision(name):
    # detections_per_img above the candidates: no cut through tied scores
    tv, ours = pair(name, score_thresh=0.01, detections_per_img=2000)
    ims = images()
    with torch.no_grad():
        expected, got = tv(ims), ours(ims)
    for im, a, b in zip(ims, expected, got):
        assert_same_detections(a, b, min_count=100)
        assert b["boxes"][:, 0::2].max() <= im.shape[2] and b["boxes"][:, 1::2].max() <= im.shape[1]
        assert b["labels"].min() >= 1 and b["labels"].max() <= 4 and b["scores"].min() > 0.01


@pytest.mark.parametrize("name, num_images, empty", [("ssd300_vgg16", 1, ()),  # 1 image: VGG at 300 px is slow
                                                     ("ssdlite320_mobilenet_v3_large", 2, ()),
                                                     ("ssdlite320_mobilenet_v3_large", 2, (1,)),
                                                     ("ssdlite320_mobilenet_v3_large", 2, (0, 1))])
def test_training_losses_match_torchvision(name, num_images, empty):
    """Same inputs -> the same matches, hard negatives and losses (nothing is random); then the
    gradients reach the parameters. With no object at all, both give zero losses (no positives, so
    no negatives are mined) that still backpropagate."""
    tv, ours = pair(name)
    tv.train(), ours.train()
    ims = images()[:num_images]
    targets = make_targets(ims, empty=empty)
    expected, got = tv(ims, targets), ours(ims, targets)
    assert list(got) == list(expected) == ["bbox_regression", "classification"]
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
        assert torch.isfinite(got[k]) and got[k].dim() == 0
    sum(got.values()).backward()
    if len(empty) == len(ims):
        assert all(v == 0 for v in got.values())
        return
    assert all(v > 0 for v in got.values())
    missing = [n for n, p in ours.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    for head in (ours.head.classification_head, ours.head.regression_head):
        assert sum(p.grad.abs().sum() for p in head.parameters()) > 0


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    """The classification loss counts the positives and exactly 3x as many negatives, the ones with
    the largest loss: recomputed here from the head's outputs."""
    ours = models.ssdlite320_mobilenet_v3_large(num_classes=5, size=(128, 128)).train()
    ims = images()
    targets = make_targets(ims)
    batch, resized = ours.transform(ims, targets)
    features = list(ours.backbone(batch.tensors).values())
    out = ours.head(features)
    anchors = ours.anchor_generator(batch, features)
    matched = ours.match(resized, anchors)
    losses = ours.compute_loss(resized, out, anchors, matched)
    total, count = 0.0, 0
    for logits, m, t in zip(out["cls_logits"], matched, resized):
        labels = torch.where(m >= 0, t["labels"][m.clamp(min=0)], 0)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        pos = labels > 0
        hardest = ce[~pos].sort(descending=True).values[: 3 * int(pos.sum())]
        assert 3 * int(pos.sum()) <= int((~pos).sum())
        total = total + ce[pos].sum() + hardest.sum()
        count += int((m >= 0).sum())
    torch.testing.assert_close(losses["classification"], total / count, rtol=1e-5, atol=1e-6)


# ---- weights= / weights_backbone= ---------------------------------------------------------------------


def test_weights_from_local_file(tmp_path):
    _, ours = build_both("ssdlite320_mobilenet_v3_large", num_classes=4)
    sd = ours.state_dict()
    raw, wrapped = tmp_path / "raw.pth", tmp_path / "ckpt.pth"
    torch.save(sd, raw)
    torch.save({"model": sd, "epoch": 3}, wrapped)
    for path in (raw, str(wrapped)):
        m = models.ssdlite320_mobilenet_v3_large(weights=path)  # num_classes read from the checkpoint (4)
        assert m.head.classification_head.num_columns == 4
        assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    with pytest.raises(RuntimeError, match=r"ssdlite320_mobilenet_v3_large: .* does not match the model"):
        models.ssdlite320_mobilenet_v3_large(weights=raw, num_classes=9)
    partial_sd = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("head.regression")}, partial_sd)
    with pytest.raises(RuntimeError, match=r"missing keys: head\.regression_head"):
        models.ssdlite320_mobilenet_v3_large(weights=partial_sd)


def test_weights_backbone_from_local_file(tmp_path):
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    m = models.ssd300_vgg16(weights_backbone=path, num_classes=3)
    torch.testing.assert_close(m.backbone.features[0].weight, vgg.features[0].weight)
    torch.testing.assert_close(m.backbone.extra[0][5].weight, vgg.features[28].weight)  # conv5_3
    # default 4 trainable stages: conv1 frozen, conv2 on trained
    assert not m.backbone.features[0].weight.requires_grad and m.backbone.features[5].weight.requires_grad
    m = models.ssd300_vgg16(weights_backbone=path, trainable_backbone_layers=0)
    assert not any(p.requires_grad for n, p in m.backbone.named_parameters() if n.startswith("features."))
    assert m.backbone.scale_weight.requires_grad and m.backbone.extra[1][0].weight.requires_grad
    with pytest.raises(ValueError, match=r"trainable_backbone_layers must be in \[0, 5\]"):
        models.ssd300_vgg16(weights_backbone=path, trainable_backbone_layers=6)

    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)  # full tail, as torchvision's weights
    path = tmp_path / "mnv3.pth"
    torch.save(mobilenet.state_dict(), path)
    m = models.ssdlite320_mobilenet_v3_large(weights_backbone=path, trainable_backbone_layers=1, num_classes=3)
    torch.testing.assert_close(m.backbone.features[0][0][0].weight, mobilenet.features[0][0].weight)
    assert m.backbone.out_channels == [672, 960, 512, 256, 256, 128]  # not the reduced tail
    assert not m.backbone.features[0][0][0].weight.requires_grad and m.backbone.features[1][-1][0].weight.requires_grad


def test_weights_never_download():
    from torchvision.models.detection import SSD300_VGG16_Weights

    with pytest.raises(ValueError, match="nothing is downloaded"):
        models.ssd300_vgg16(weights=SSD300_VGG16_Weights.DEFAULT)
    with pytest.raises(ValueError, match="URL"):
        models.ssdlite320_mobilenet_v3_large(weights_backbone="https://download.pytorch.org/models/x.pth")


# ---- fastdet's extensions for small inputs ------------------------------------------------------------


def test_ssdlite_small_input_size_and_scales():
    m = models.ssdlite320_mobilenet_v3_large(num_classes=4, size=(128, 96), min_ratio=0.1, max_ratio=0.8)
    assert m.transform.fixed_size == (128, 96)
    assert m.anchor_generator.scales[0] == pytest.approx(0.1) and m.anchor_generator.scales[-2] == pytest.approx(0.8)
    m.eval()
    ims = images()
    with torch.no_grad():
        out = m(ims)
    for im, r in zip(ims, out):
        assert r["boxes"].shape[0] > 0 and r["boxes"][:, 2].max() <= im.shape[2]
    # 96 x 128 input: feature maps 6x8, 3x4, 2x2, 1x1, 1x1, 1x1 with 6 boxes each
    assert m.anchor_generator._cache and next(iter(m.anchor_generator._cache.values())).shape[0] == 6 * (48 + 12 + 4 + 3)


def test_ssd_resnet18_small_configuration(tmp_path):
    """fastdet's own configuration (no torchvision counterpart): builds, trains, round-trips weights."""
    m = models.build_model("ssd_resnet18", num_classes=5, size=(128, 128))
    assert m.backbone.out_channels == [128, 256, 512, 256, 256]
    assert all(p.requires_grad for p in m.parameters())  # from scratch: everything trains
    ims = images()
    losses = m(ims, make_targets(ims))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert m.backbone.stem[0].weight.grad.abs().sum() > 0 and m.backbone.stem[1].weight.grad.abs().sum() > 0
    assert m.backbone.extra[1][1][0].weight.grad is not None  # (zero here: no box matches the 1x1 map's)
    path = tmp_path / "ssd_r18.pth"
    torch.save(m.state_dict(), path)
    loaded = models.ssd_resnet18(weights=path, size=(128, 128)).eval()  # num_classes 5 from the checkpoint
    assert loaded.head.classification_head.num_columns == 5
    assert not loaded.backbone.stem[0].weight.requires_grad and loaded.backbone.stages[0][0].conv1.weight.requires_grad
    m.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():  # the same weights and BatchNorm statistics (frozen after loading)
        torch.testing.assert_close(loaded.head(list(loaded.backbone(x).values()))["cls_logits"],
                                   m.head(list(m.backbone(x).values()))["cls_logits"], rtol=1e-4, atol=1e-4)


# ---- errors ---------------------------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="ssd300_vgg16: the input size is fixed at 300x300"):
        models.ssd300_vgg16(size=(128, 128))
    with pytest.raises(ValueError, match="SSD: min_size does not apply"):
        models.ssdlite320_mobilenet_v3_large(min_size=128)
    with pytest.raises(ValueError, match="num_classes counts the background"):
        models.ssdlite320_mobilenet_v3_large(num_classes=1)
    with pytest.raises(ValueError, match=r"size must be \(width, height\)"):
        models.ssdlite320_mobilenet_v3_large(size=(0, 128))
    with pytest.raises(ValueError, match="positive_fraction must be in"):
        models.ssdlite320_mobilenet_v3_large(positive_fraction=0.0)


def test_bad_inputs():
    assert_input_errors(models.ssdlite320_mobilenet_v3_large(num_classes=5, size=(128, 128)))
