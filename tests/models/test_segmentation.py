"""fastdet.models semantic segmenters against torchvision: state-dict keys, strict loading of
torchvision's weights, the same `out` / `aux` logits in eval mode, local weight files, U-Net shapes
and errors."""

from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models import segmentation as tvs  # noqa: E402

from fastdet import models  # noqa: E402

X = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))

PARITY = [("fcn_resnet50", False), ("fcn_resnet50", True), ("fcn_resnet101", True), ("deeplabv3_resnet50", False),
          ("deeplabv3_resnet50", True), ("deeplabv3_resnet101", True), ("deeplabv3_mobilenet_v3_large", False),
          ("deeplabv3_mobilenet_v3_large", True), ("lraspp_mobilenet_v3_large", None)]


def _kwargs(aux):
    return dict(weights=None, weights_backbone=None, num_classes=5, **({} if aux is None else {"aux_loss": aux}))


def _torchvision(name, aux, seed=0):
    torch.manual_seed(seed)
    return getattr(tvs, name)(**_kwargs(aux)).eval()


def _assert_same_outputs(tv, ours, x=X):
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert list(got) == list(want)
    for key in want:
        assert got[key].shape == (x.shape[0], 5, *x.shape[-2:])
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * max(scale, 1e-3))


@pytest.mark.parametrize("name, aux", PARITY)
def test_same_outputs_as_torchvision_with_its_weights(name, aux):
    tv = _torchvision(name, aux)
    ours = models.build_model(name, **_kwargs(aux)).eval()
    assert list(ours.state_dict()) == list(tv.state_dict())  # same keys, same order
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert any(k.startswith("aux_classifier.") for k in ours.state_dict()) == bool(aux)
    # the 101-layer models differ from the 50-layer ones only in depth: a smaller input keeps them fast
    _assert_same_outputs(tv, ours, X[:1, :, :64, :64] if "101" in name else X)
    assert models.model_task(name) == "semantic_segmentation"


def test_weights_file_round_trip_takes_num_classes_and_aux_from_the_checkpoint(tmp_path):
    tv = _torchvision("deeplabv3_mobilenet_v3_large", True, seed=3)
    path = tmp_path / "dl.pth"
    torch.save(tv.state_dict(), path)
    ours = models.deeplabv3_mobilenet_v3_large(weights=path).eval()  # num_classes 5 and aux from the file
    _assert_same_outputs(tv, ours)
    torch.save({"model": tv.state_dict()}, path)  # a training checkpoint holding the state dict
    _assert_same_outputs(tv, models.deeplabv3_mobilenet_v3_large(weights=str(path), aux_loss=True).eval())
    with pytest.raises(RuntimeError, match="deeplabv3_mobilenet_v3_large: .* does not match the model: .*unexpected keys: aux_classifier"):
        models.deeplabv3_mobilenet_v3_large(weights=path, aux_loss=False, num_classes=5)


def test_weights_backbone_file_loads_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    body = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(body.state_dict(), path)
    model = models.lraspp_mobilenet_v3_large(weights_backbone=path, num_classes=3)
    first = model.backbone["0"][0].weight
    assert torch.equal(first, body.features[0][0].weight)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    seg = models.unet_resnet18(weights_backbone=path, num_classes=3)
    assert torch.equal(seg.encoder.conv1.weight, torch.load(path)["conv1.weight"])


@pytest.mark.parametrize("name, kwargs, error, message", [
    ("fcn_resnet50", dict(weights="https://example.com/fcn.pth"), ValueError, "fcn_resnet50: weights must be None or a local"),
    ("deeplabv3_resnet50", dict(weights_backbone="/nonexistent.pth"), FileNotFoundError, "weights_backbone file not found"),
    ("lraspp_mobilenet_v3_large", dict(aux_loss=True), ValueError, "aux_loss=True is not supported"),
    ("fcn_resnet50", dict(min_size=128), ValueError, "fcn_resnet50: unexpected keyword argument.*min_size"),
    ("unet", dict(upsampling="nearest"), ValueError, "UNet: upsampling must be 'bilinear' or 'transpose'"),
    ("unet", dict(depth=0), ValueError, "UNet: depth must be an int >= 1"),
])
def test_builder_errors(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        models.build_model(name, **kwargs)


def test_forward_needs_a_4d_float_batch():
    model = models.unet(num_classes=2, depth=2, base_width=4).eval()
    with pytest.raises(ValueError, match=r"UNet: images must be a Tensor\[B, 3, H, W\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="UNet: images must be floating point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("name, kwargs", [
    ("unet", dict(depth=3, base_width=8)),
    ("unet", dict(depth=2, base_width=4, upsampling="transpose")),
    ("unet_resnet18", dict(base_width=4)),
])
@pytest.mark.parametrize("size", [(64, 96), (37, 51)])
def test_unet_output_has_the_input_size_and_trains(name, kwargs, size):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=3, **kwargs)
    images = torch.rand(2, 3, *size)
    out = model(images)
    assert list(out) == ["out"] and out["out"].shape == (2, 3, *size)
    out["out"].mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # every parameter is used


def test_unet_resnet34_transposed_upsampling():
    model = models.unet_resnet34(num_classes=3, base_width=4, upsampling="transpose")
    assert isinstance(model.decoder[0].up, torch.nn.ConvTranspose2d)
    assert model(torch.rand(1, 3, 37, 51))["out"].shape == (1, 3, 37, 51)


def test_unet_padding_does_not_leak_into_the_cropped_logits():
    # the logits at a pixel depend on the image only: a bigger image agreeing on the top-left corner
    # gives the same logits there as long as the receptive field stays inside the shared part
    torch.manual_seed(0)
    model = models.unet(num_classes=2, depth=2, base_width=4).eval()
    small = torch.rand(1, 3, 30, 30)
    with torch.no_grad():
        a = model(small)["out"]
        b = model(torch.nn.functional.pad(small, (0, 2, 0, 2)))["out"][..., :30, :30]
    torch.testing.assert_close(a, b)  # 30 -> 32 is exactly the internal padding


def test_weights_round_trip_unet(tmp_path):
    torch.manual_seed(0)
    model = models.unet(num_classes=4, depth=2, base_width=4).eval()
    torch.save(model.state_dict(), tmp_path / "u.pth")
    again = models.unet(weights=tmp_path / "u.pth", depth=2, base_width=4).eval()
    assert again.head.out_channels == 4
    x = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(again(x)["out"], model(x)["out"])


def test_model_task_and_list_models():
    assert models.model_task("fasterrcnn_resnet18_fpn") == "detection"
    assert models.model_task("maskrcnn_resnet18_fpn") == "instance_segmentation"
    assert models.model_task("unet") == "semantic_segmentation"
    seg = models.list_models("semantic_segmentation")
    assert {"fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "unet_resnet34"} <= set(seg)
    assert not set(seg) & set(models.list_models("detection"))
    with pytest.raises(ValueError, match="model_task: unknown model 'nope'"):
        models.model_task("nope")
    with pytest.raises(ValueError, match="list_models: task must be one of"):
        models.list_models("classification")
