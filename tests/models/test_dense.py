"""fastdet.models RetinaNet and FCOS against torchvision: state-dict keys (also old-style), eval-mode
detections and training losses with the same weights, anchor matching, weights files, errors; and
the ATSS assigner on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models import detection as tvd  # noqa: E402
from torchvision.models.detection import _utils as tv_utils  # noqa: E402
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

from fastdet import models  # noqa: E402
from fastdet.models.detection import _utils as fd_utils  # noqa: E402
from fastdet.models.detection.anchors import AnchorGenerator  # noqa: E402
from fastdet.models.detection.fcos import atss_assign, fcos_assign  # noqa: E402

from fastdet.testing import assert_same_detections  # noqa: E402
from fastdet.testing import detection_images as images  # noqa: E402
from fastdet.testing import detection_targets as make_targets  # noqa: E402
from test_rcnn import assert_same_losses_and_backward, assert_same_state_dict_layout  # noqa: E402  (tests/models on sys.path)
from test_rcnn import pair as rcnn_pair  # noqa: E402

SMALL = dict(min_size=128, max_size=160)  # as test_rcnn's
NAMES = ["retinanet_resnet18_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet18_fpn",
         "fcos_resnet50_fpn"]


def tv_builder(name):
    """torchvision's builder of the same architecture (its ResNet-18 ones composed the way its
    ResNet-50 v1 builders are)."""
    if "resnet18" not in name:
        return getattr(tvd, name)

    def build(weights=None, weights_backbone=None, num_classes=91, **kwargs):
        body = torchvision.models.resnet18(weights=None, norm_layer=torch.nn.BatchNorm2d)
        backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        cls = tvd.RetinaNet if name.startswith("retinanet") else tvd.FCOS
        return cls(backbone, num_classes, **kwargs)

    return build


def pair(name, **kwargs):
    """(torchvision model, fastdet model) with the same weights, in eval mode (see test_rcnn.pair)."""
    return rcnn_pair(name, tv_builder=tv_builder, **kwargs)


def targets_for(ims, empty=()):
    return make_targets(ims, masks=False, empty=empty)


# ---- registry and state dicts ---------------------------------------------------------------------------


def test_registry():
    assert set(NAMES) <= set(models.list_models())
    m = models.build_model("fcos_resnet18_fpn", num_classes=3)
    assert isinstance(m, models.FCOS) and m.head.classification_head.cls_logits.out_channels == 3
    assert isinstance(models.build_model("retinanet_resnet18_fpn", num_classes=3), models.RetinaNet)
    assert not models.is_mask_model("retinanet_resnet18_fpn")


@pytest.mark.parametrize("num_classes", [91, 7])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_torchvision(name, num_classes):
    assert_same_state_dict_layout(name, num_classes, tv_builder=tv_builder)


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "retinanet_resnet50_fpn_v2"])
def test_old_style_head_keys_load(name):
    """Checkpoints from before torchvision 0.13 (RetinaNet head towers as flat conv.<2i>, FPN blocks
    without the inner .0) load into the current layout."""
    _, ours = pair(name, calibrate=False)
    current = ours.state_dict()
    old = {}
    for k, v in current.items():
        k2 = k
        for i in range(4):
            for branch in ("classification_head", "regression_head"):
                if "v2" not in name:  # v1 towers have no norm: conv.<i>.0 was conv.<2i>
                    k2 = k2.replace(f"head.{branch}.conv.{i}.0.", f"head.{branch}.conv.{2 * i}.")
            k2 = k2.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
        old[k2] = v.clone() + (0.5 if v.is_floating_point() else 0)
    renamed = set(old) - set(current)
    assert "backbone.fpn.inner_blocks.0.weight" in renamed
    assert ("head.classification_head.conv.6.weight" in renamed) == ("v2" not in name)
    fresh = getattr(models, name)(num_classes=5)
    fresh.load_state_dict(old)  # a plain dict: no version metadata, as in an old checkpoint; strict
    for k, v in fresh.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, current[k] + 0.5)


def test_fcos_tower_keys_are_not_renamed():
    # FCOS's flat tower (conv.0, conv.1 GroupNorm, conv.3, ...) must not be mistaken for old RetinaNet keys
    _, ours = pair("fcos_resnet18_fpn", calibrate=False)
    sd = dict(ours.state_dict())
    fresh = models.fcos_resnet18_fpn(num_classes=5)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.head.classification_head.conv[3].weight, ours.head.classification_head.conv[3].weight)


# ---- eval: the same detections as torchvision ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_eval_parity_with_torchvision(name):
    tv, ours = pair(name, score_thresh=0.01)
    ims = images()
    with torch.no_grad():
        expected, got = tv(ims), ours(ims)
    for im, a, b in zip(ims, expected, got):
        assert_same_detections(a, b)
        assert b["boxes"][:, 0::2].max() <= im.shape[2] and b["boxes"][:, 1::2].max() <= im.shape[1]


def test_eval_postprocessing_settings_and_no_detections():
    tv, ours = pair("fcos_resnet18_fpn", score_thresh=0.05, detections_per_img=7, topk_candidates=5, nms_thresh=0.3)
    with torch.no_grad():
        expected, got = tv(images()), ours(images())
    for a, b in zip(expected, got):
        assert len(b["scores"]) == 7
        assert_same_detections(a, b, min_count=6)
    _, ours = pair("retinanet_resnet18_fpn", calibrate=False, score_thresh=1.0)
    with torch.no_grad():
        out = ours(images())
    assert all(r["boxes"].shape == (0, 4) and r["labels"].dtype == torch.int64 for r in out)


# ---- training: the same losses --------------------------------------------------------------------------


@pytest.mark.parametrize("name,empty", [("retinanet_resnet18_fpn", ()), ("retinanet_resnet18_fpn", (1,)),
                                        ("retinanet_resnet50_fpn_v2", ()), ("fcos_resnet18_fpn", ()),
                                        ("fcos_resnet18_fpn", (0,))])
def test_training_losses_match_torchvision(name, empty):
    tv, ours = pair(name, calibrate=False, min_size=(112, 128))
    assert_same_losses_and_backward(tv, ours, targets_for(images(), empty), rtol=1e-5)
    assert ours.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in ours.head.regression_head.parameters()) > 0


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou", "diou", "ciou"])
def test_retinanet_box_loss_types_match_torchvision(loss_type):
    tv, ours = pair("retinanet_resnet18_fpn", calibrate=False)
    tv.head.regression_head._loss_type = ours.head.regression_head._loss_type = loss_type
    ims = images()
    tv.train(), ours.train()
    torch.manual_seed(3)
    expected = tv(ims, targets_for(ims))
    torch.manual_seed(3)
    got = ours(ims, targets_for(ims))
    torch.testing.assert_close(got["bbox_regression"], expected["bbox_regression"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_matching_matches_torchvision(name):
    """The anchors each gt gets (RetinaNet's IoU Matcher, FCOS's centre sampling) are torchvision's,
    also for overlapping boxes of different sizes."""
    tv, ours = pair(name, calibrate=False)
    captured = []
    tv.head.compute_loss = lambda targets, outputs, anchors, matched: captured.append(matched) or {}
    ims = images()
    targets = targets_for(ims)
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], torch.tensor([[10.0, 12.0, 90.0, 100.0],
                                                                         [30.0, 30.0, 60.0, 64.0]])])
    targets[0]["labels"] = torch.cat([targets[0]["labels"], torch.tensor([1, 2])])
    tv.train()
    batch, resized = tv.transform(ims, targets)
    feats = list(tv.backbone(batch.tensors).values())
    anchors = tv.anchor_generator(batch, feats)
    per_level = [f.shape[-2] * f.shape[-1] * (9 if "retina" in name else 1) for f in feats]
    if "retina" in name:
        tv.compute_loss(resized, tv.head(feats), anchors)
        got = [ours.match(a, t["boxes"]) for a, t in zip(anchors, resized)]
    else:
        tv.compute_loss(resized, tv.head(feats), anchors, per_level)
        got = [fcos_assign(a, t["boxes"], per_level, 1.5) for a, t in zip(anchors, resized)]
    for a, b in zip(captured[0], got):
        assert torch.equal(a, b)
        assert (b >= 0).sum() >= 3


def test_training_all_images_empty():
    for name in ("retinanet_resnet18_fpn", "fcos_resnet18_fpn"):
        _, ours = pair(name, calibrate=False)
        ours.train()
        ims = images()
        losses = ours(ims, targets_for(ims, empty=(0, 1)))
        assert losses["classification"] > 0 and losses["bbox_regression"] == 0
        sum(losses.values()).backward()


def test_autocast_bf16_training():
    _, ours = pair("fcos_resnet18_fpn", calibrate=False)
    ours.train()
    ims = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = ours(ims, targets_for(ims))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# ---- components -----------------------------------------------------------------------------------------


def test_linear_box_coder_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(30, 2, generator=g) * 100
    ref = torch.cat([ref, ref + 8 + torch.rand(30, 1, generator=g) * 20], 1)
    boxes = torch.cat([ref[:, :2] - torch.rand(30, 2, generator=g) * 10, ref[:, 2:] + torch.rand(30, 2, generator=g)], 1)
    for normalize in (True, False):
        tv_c, c = tv_utils.BoxLinearCoder(normalize), fd_utils.LinearBoxCoder(normalize)
        codes = c.encode(ref, boxes)
        torch.testing.assert_close(codes, tv_c.encode(ref, boxes))
        torch.testing.assert_close(c.decode(codes, ref), tv_c.decode(codes, ref))
        torch.testing.assert_close(c.decode(codes, ref), boxes, rtol=1e-5, atol=1e-4)


def test_small_config_arguments():
    # fastdet's extensions for small inputs; the defaults are torchvision's (checked by the key tests)
    m = models.retinanet_resnet18_fpn(num_classes=4, anchor_sizes=(8, 16, 32, 64, 128), num_convs=1,
                                      fpn_channels=64, **SMALL)
    assert [s for s in m.anchor_generator.sizes[0]] == [8, 10, 12] and m.anchor_generator.sizes[4][0] == 128
    assert len(m.head.regression_head.conv) == 1 and m.head.classification_head.cls_logits.in_channels == 64
    f = models.fcos_resnet18_fpn(num_classes=4, num_convs=1, fpn_channels=64, **SMALL)
    assert len(f.head.classification_head.conv) == 3 and f.backbone.fpn.layer_blocks[0][0].out_channels == 64
    for model in (m, f):
        (out,) = model.eval()([torch.rand(3, 96, 128)])
        assert out["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="anchor_generator or anchor_sizes, not both"):
        models.RetinaNet(m.backbone, 4, anchor_generator=AnchorGenerator(((8,),) * 5, ((1.0,),) * 5),
                         anchor_sizes=(8, 16, 32, 64, 128))


def test_retinanet_head_norm():
    # head_norm="group": v1 with v2's GroupNorm towers (conv without bias, keys conv.<i>.{0, 1})
    m = models.retinanet_resnet18_fpn(num_classes=4, num_convs=2, fpn_channels=64, head_norm="group", **SMALL)
    for branch in (m.head.classification_head, m.head.regression_head):
        assert [type(block[1]) for block in branch.conv] == [torch.nn.GroupNorm] * 2 and branch.conv[0][0].bias is None
    assert "head.regression_head.conv.1.1.weight" in m.state_dict()
    (out,) = m.eval()([torch.rand(3, 96, 128)])
    assert out["boxes"].shape[1] == 4
    assert not any(isinstance(x, torch.nn.GroupNorm) for x in models.retinanet_resnet18_fpn(num_classes=4).modules())
    with pytest.raises(ValueError, match="RetinaNet: head_norm must be one of"):
        models.retinanet_resnet18_fpn(num_classes=4, head_norm="batch")
    with pytest.raises(ValueError, match="RetinaNet: give head or head_norm, not both"):
        models.RetinaNet(m.backbone, 4, head=m.head, head_norm="group")
    with pytest.raises(ValueError, match="retinanet_resnet50_fpn_v2: v2's heads have GroupNorm"):
        models.retinanet_resnet50_fpn_v2(num_classes=4, head_norm=None)


# ---- ATSS -----------------------------------------------------------------------------------------------


def grid_points(size: int, stride: int, offset: float | None = None) -> torch.Tensor:
    """Square anchors of side `stride` centred on a size x size grid of points, stride apart from
    `offset` (default stride / 2), row-major."""
    c = torch.arange(size, dtype=torch.float32) * stride + (stride / 2 if offset is None else offset)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([xx.flatten(), yy.flatten()], 1)
    return torch.cat([centres - stride / 2, centres + stride / 2], 1)


def test_atss_symmetric_case_all_four_candidates_positive():
    # gt [0, 0, 16, 16] on a 4x4 grid of stride 8: the 4 nearest points (4,4), (12,4), (4,12), (12,12)
    # have equal IoU (std 0, threshold = their IoU), all inside the box -> exactly these 4 positive
    anchors = grid_points(4, 8)
    m = atss_assign(anchors, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), [16], topk=4, anchor_scale=2.0)
    assert torch.where(m == 0)[0].tolist() == [0, 1, 4, 5] and (m[m != 0] == -1).all()


def test_atss_threshold_and_inside_rule():
    # gt [0, 0, 20, 20], centre (10, 10); 9 nearest points: x, y in {4, 12, 20}. Anchor boxes 16 px
    # (scale 2). The point (12, 12) overlaps most; points on the box's edge (x or y = 20) are not
    # inside it and never positive, whatever their IoU.
    anchors = grid_points(4, 8)
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    m = atss_assign(anchors, gt, [16], topk=9, anchor_scale=2.0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    boxes = torch.cat([centres - 8, centres + 8], 1)
    iou = torchvision.ops.box_iou(boxes, gt)[:, 0]
    cand = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10])
    threshold = iou[cand].mean() + iou[cand].std()
    expected = [i for i in cand.tolist() if iou[i] >= threshold and centres[i].max() < 20]
    assert expected == [5] and torch.where(m == 0)[0].tolist() == expected


def test_atss_point_shared_by_two_gts_takes_the_higher_iou():
    anchors = grid_points(4, 8)
    gts = torch.tensor([[0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 22.0, 22.0]])
    m = atss_assign(anchors, gts, [16], topk=4, anchor_scale=2.0)
    # alone, the first gt takes points 0, 1, 4, 5 (test above); the second gt's candidates are also
    # 0, 1, 4, 5 (its centre is (12, 12)) and point 5 (12, 12) overlaps it more -> goes to gt 1
    alone = atss_assign(anchors, gts[1:], [16], topk=4, anchor_scale=2.0)
    assert (alone == 0).any()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    iou = torchvision.ops.box_iou(torch.cat([centres - 8, centres + 8], 1), gts)
    for i in torch.where(m >= 0)[0].tolist():
        assert m[i] == iou[i].argmax()
    assert m[5] == 1


def test_atss_candidates_per_level():
    # two levels, points at multiples of 8 and of 16 (AnchorGenerator's layout), anchor boxes 2x the
    # stride; gt [16, 16, 32, 32], centre (24, 24). Candidates (topk 4 per level): fine level the
    # point (24, 24) (IoU 1) and three at distance 8 (IoU 1/3); coarse level (16|32, 16|32), IoU 1/4
    # each. Threshold = mean 0.375 + std 0.256 = 0.63: only the point on the centre is positive.
    fine, coarse = grid_points(8, 8, offset=0.0), grid_points(4, 16, offset=0.0)
    m = atss_assign(torch.cat([fine, coarse]), torch.tensor([[16.0, 16.0, 32.0, 32.0]]), [64, 16], topk=4,
                    anchor_scale=2.0)
    assert torch.where(m == 0)[0].tolist() == [3 * 8 + 3]


def test_fcos_with_atss_trains():
    _, ours = pair("fcos_resnet18_fpn", calibrate=False, assigner="atss")
    ours.train()
    ims = images()
    losses = ours(ims, targets_for(ims, empty=(1,)))
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["bbox_regression"] > 0
    sum(losses.values()).backward()


# ---- weights= and errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_weights_from_local_file(name, tmp_path):
    _, ours = pair(name, calibrate=False)
    sd = ours.state_dict()
    path = tmp_path / "w.pth"
    torch.save({"model": sd}, path)
    m = getattr(models, name)(weights=path)  # num_classes read from the checkpoint (5)
    assert m.head.classification_head.num_classes == 5
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    assert type(m.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    with pytest.raises(RuntimeError, match=f"{name}: .* does not match the model"):
        getattr(models, name)(weights=path, num_classes=9)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        getattr(models, name)(weights="https://download.pytorch.org/models/x.pth")


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes counts the background"):
        models.retinanet_resnet18_fpn(num_classes=1)
    with pytest.raises(ValueError, match="FCOS: assigner must be one of"):
        models.fcos_resnet18_fpn(num_classes=3, assigner="simota")
    with pytest.raises(ValueError, match="one anchor per location"):
        models.fcos_resnet18_fpn(num_classes=3, anchor_generator=AnchorGenerator(((8, 16),) * 5, ((1.0,),) * 5))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        models.RetinaNetHead(256, 9, 3, loss_type="l2")
    with pytest.raises(ValueError, match="detections_per_img must be >= 1"):
        models.retinanet_resnet18_fpn(num_classes=3, detections_per_img=0)


def test_bad_inputs():
    _, ours = pair("retinanet_resnet18_fpn", calibrate=False)
    ims = images()
    ours.train()
    with pytest.raises(ValueError, match="RetinaNet: targets are required in training mode"):
        ours(ims)
    bad = targets_for(ims)
    bad[0]["labels"] = bad[0]["labels"].float()
    with pytest.raises(TypeError, match=r"RetinaNet: targets\[0\]\['labels'\] must be int64"):
        ours(ims, bad)
    bad = targets_for(ims)
    bad[1]["labels"][0] = 5
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be in \[0, 5\)"):
        ours(ims, bad)
    bad = targets_for(ims)
    del bad[0]["labels"]
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'labels'"):
        ours(ims, bad)
    bad = targets_for(ims)
    bad[1]["boxes"][0, 3] = bad[1]["boxes"][0, 1]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\] has a box with no positive width"):
        ours(ims, bad)
    ours.eval()
    with pytest.raises(ValueError, match=r"RetinaNet: images\[1\] must have shape \[C, H, W\]"):
        ours([ims[0], ims[1][None]])
    with pytest.raises(ValueError, match="images is empty"):
        ours([])


def test_prior_probability_init():
    m = models.fcos_resnet18_fpn(num_classes=3)
    torch.testing.assert_close(m.head.classification_head.cls_logits.bias, torch.full((3,), -math.log(99.0)))
