"""DCNv2 ResNet backbones (``stage_with_dcn``): a DCN model holding a plain model's weights starts
equal to it (features and detections), plain checkpoints load into DCN models, gradients reach the
offset predictors, a training step runs, and bad arguments are errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torchvision = pytest.importorskip("torchvision")

from fastdet import models, ops  # noqa: E402
from fastdet.models.detection.backbones import DCN_OFFSET_KEYS  # noqa: E402
from fastdet.testing import assert_same_detections, calibrate_batchnorm  # noqa: E402
from fastdet.testing import detection_images as images  # noqa: E402
from fastdet.testing import detection_targets as make_targets  # noqa: E402

SMALL = dict(min_size=128, max_size=160, num_classes=5)
DCN = (False, True, True, True)


def plain_and_dcn(name, stage_with_dcn=DCN, **kwargs):
    """A seeded plain model (BatchNorm statistics set from a random image, see calibrate_batchnorm)
    and the DCN model with its weights loaded, both in eval mode."""
    torch.manual_seed(0)
    plain = models.build_model(name, **SMALL, **kwargs)
    calibrate_batchnorm(plain, 128)
    dcn = models.build_model(name, **SMALL, stage_with_dcn=stage_with_dcn, **kwargs)
    result = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all(DCN_OFFSET_KEYS in k for k in result.missing_keys)
    return plain.eval(), dcn.eval()


def test_mask_scale_two_starts_as_the_plain_convolution():
    # the zero-initialised DCNv2 layer: mask_scale 1 (the paper's) halves the plain conv, 2 equals it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=g)
    for scale, factor in ((1.0, 0.5), (2.0, 1.0)):
        layer = ops.ModulatedDeformConv2dPack(8, 6, 3, stride=2, padding=1, bias=False, mask_scale=scale)
        expected = F.conv2d(x, layer.weight, stride=2, padding=1)
        torch.testing.assert_close(layer(x), factor * expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage_with_dcn", [DCN, (True, False, False, True)])
def test_dcn_blocks_keep_the_plain_keys(stage_with_dcn):
    m = models.build_model("fasterrcnn_resnet18_fpn", num_classes=3, stage_with_dcn=stage_with_dcn)
    plain_keys = set(models.build_model("fasterrcnn_resnet18_fpn", num_classes=3).state_dict())
    added = set(m.state_dict()) - plain_keys
    stages = [s for s, on in enumerate(stage_with_dcn, start=1) if on]
    # ResNet-18 (BasicBlock): the second 3x3 of each of the 2 blocks per chosen stage
    assert added == {f"backbone.body.layer{s}.{b}.conv2.conv_offset.{p}" for s in stages for b in (0, 1)
                     for p in ("weight", "bias")}
    assert plain_keys <= set(m.state_dict())
    for s in range(1, 5):
        conv2 = getattr(m.backbone.body, f"layer{s}")[0].conv2
        assert isinstance(conv2, ops.ModulatedDeformConv2dPack) == (s in stages)
    assert m.backbone.body.layer4[0].conv2.conv_offset.out_channels == 27  # 2 * 9 offsets + 9 mask logits


def test_resnet50_dcn_replaces_the_bottleneck_3x3():
    m = models.build_model("fasterrcnn_resnet50_fpn", num_classes=3, stage_with_dcn=(False, False, False, True))
    conv2 = m.backbone.body.layer4[0].conv2  # the strided 3x3 of the first res5 block
    assert isinstance(conv2, ops.ModulatedDeformConv2dPack)
    assert conv2.stride == (2, 2) and conv2.weight.shape == (512, 512, 3, 3) and conv2.bias is None
    assert not isinstance(m.backbone.body.layer3[0].conv2, ops.ModulatedDeformConv2dPack)


def test_backbone_features_equal_the_plain_ones():
    plain, dcn = plain_and_dcn("fasterrcnn_resnet18_fpn")
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = plain.backbone(x), dcn.backbone(x)
    assert list(got) == list(expected)
    for k in expected:
        assert expected[k].abs().amax() > 0.1
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn", "fcos_resnet18_fpn"])
def test_detections_equal_the_plain_ones(name):
    kwargs = dict(box_score_thresh=0.0) if name.startswith("faster") else dict(score_thresh=0.0)
    plain, dcn = plain_and_dcn(name, **kwargs)
    with torch.no_grad():
        expected, got = plain(images()), dcn(images())
    for a, b in zip(expected, got):
        assert_same_detections(a, b)


def test_plain_checkpoints_load_into_dcn_models(tmp_path):
    torch.manual_seed(0)
    resnet = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    m = models.build_model("retinanet_resnet18_fpn", **SMALL, weights_backbone=resnet, stage_with_dcn=DCN)
    torch.testing.assert_close(m.backbone.body.layer3[1].conv2.weight, torch.load(resnet)["layer3.1.conv2.weight"])
    # weights_backbone: FrozenBatchNorm and trainable layers 2-4 (also their offset predictors)
    assert m.backbone.body.layer2[0].conv2.conv_offset.weight.requires_grad
    assert not m.backbone.body.layer1[0].conv2.weight.requires_grad

    detector = tmp_path / "fcos.pt"
    plain = models.build_model("fcos_resnet18_fpn", **SMALL)
    torch.save({"model": plain.state_dict()}, detector)
    dcn = models.build_model("fcos_resnet18_fpn", weights=detector, stage_with_dcn=DCN, min_size=128, max_size=160)
    torch.testing.assert_close(dcn.head.classification_head.cls_logits.weight,
                               plain.head.classification_head.cls_logits.weight)
    assert dcn.backbone.body.layer4[0].conv2.conv_offset.weight.abs().sum() == 0
    # without DCN the loading stays strict
    dcn_ckpt = tmp_path / "dcn.pt"
    torch.save(dcn.state_dict(), dcn_ckpt)
    with pytest.raises(RuntimeError, match="unexpected keys: backbone.body.layer2.0.conv2.conv_offset"):
        models.build_model("fcos_resnet18_fpn", weights=dcn_ckpt)


def test_gradients_reach_the_offset_predictors():
    torch.manual_seed(0)
    dcn = models.build_model("fasterrcnn_resnet18_fpn", **SMALL, stage_with_dcn=DCN)
    offset_convs = [m.conv_offset for m in dcn.modules() if isinstance(m, ops.ModulatedDeformConv2dPack)]
    assert len(offset_convs) == 6
    g = torch.Generator().manual_seed(4)
    for conv in offset_convs:
        conv.weight.data = 0.01 * torch.randn(conv.weight.shape, generator=g)
    x = torch.rand(1, 3, 64, 64, generator=g)
    sum(f.square().mean() for f in dcn.backbone(x).values()).backward()
    for conv in offset_convs:
        assert conv.weight.grad.abs().sum() > 0 and conv.bias.grad.abs().sum() > 0


def test_training_step():
    torch.manual_seed(0)
    m = models.build_model("fasterrcnn_resnet18_fpn", num_classes=5, min_size=64, max_size=96,
                           stage_with_dcn=(False, False, True, True)).train()
    offset = m.backbone.body.layer3[0].conv2.conv_offset.weight
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    ims = images()
    losses = m(ims, make_targets(ims, masks=False))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert offset.grad.abs().sum() > 0
    opt.step()
    assert offset.abs().sum() > 0  # the offsets left their zero initialisation
    assert all(torch.isfinite(v) for v in m(ims, make_targets(ims, masks=False)).values())


@pytest.mark.parametrize("value", [(True, False), (1, 0, 1, 1), "ttft", (False, True, True, True, True)])
def test_bad_stage_with_dcn(value):
    for name in ("fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn", "fcos_resnet18_fpn"):
        with pytest.raises(ValueError, match=f"{name}: stage_with_dcn must be"):
            models.build_model(name, stage_with_dcn=value)
    with pytest.raises(ValueError, match="fasterrcnn_mobilenet_v3_large_fpn: stage_with_dcn is for the ResNet"):
        models.build_model("fasterrcnn_mobilenet_v3_large_fpn", stage_with_dcn=DCN)


def test_no_dcn_stage_is_the_plain_model():
    m = models.build_model("fasterrcnn_resnet18_fpn", stage_with_dcn=(False,) * 4)
    assert not any(isinstance(x, ops.ModulatedDeformConv2dPack) for x in m.modules())
