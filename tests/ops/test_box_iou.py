"""fastdet::box_iou and the IoU losses against torchvision and the pure-PyTorch reference."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tol
from fastdet import ops
from fastdet.ops._reference import box_iou as ref
from fastdet.testing import adversarial_boxes, random_boxes

MODES = ["iou", "giou", "diou", "ciou"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TV_PAIRWISE = {
    "iou": lambda a, b: torchvision.ops.box_iou(a, b),
    "giou": torchvision.ops.generalized_box_iou,
    "diou": torchvision.ops.distance_box_iou,
    "ciou": torchvision.ops.complete_box_iou,
}
TV_LOSSES = {
    "giou": (ops.giou_loss, torchvision.ops.generalized_box_iou_loss),
    "diou": (ops.diou_loss, torchvision.ops.distance_box_iou_loss),
    "ciou": (ops.ciou_loss, torchvision.ops.complete_box_iou_loss),
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def boxes_pair(n, m, dtype=torch.float32, device="cpu", seed=0, batch=()):
    g = gen(seed)
    return (random_boxes(n, dtype=dtype, device=device, generator=g, batch=batch),
            random_boxes(m, dtype=dtype, device=device, generator=g, batch=batch))


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pairwise_matches_torchvision(mode, device):
    a, b = boxes_pair(57, 33, device=device)
    eps = 0.0 if mode in ("iou", "giou") else 1e-7
    expected = TV_PAIRWISE[mode](a, b)
    torch.testing.assert_close(ops.box_iou(a, b, mode, eps=eps), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_torchvision_named_wrappers(mode):
    a, b = boxes_pair(20, 30)
    mine = {"iou": lambda x, y: ops.box_iou(x, y, eps=0.0), "giou": ops.generalized_box_iou,
            "diou": ops.distance_box_iou, "ciou": ops.complete_box_iou}[mode]
    torch.testing.assert_close(mine(a, b), TV_PAIRWISE[mode](a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_all_forms(mode, dtype, device):
    a, b = boxes_pair(40, 23, dtype=dtype, device=device, seed=1)
    torch.testing.assert_close(ops.box_iou(a, b, mode), ref.box_iou(a, b, mode), **tol(dtype))
    ab, bb = boxes_pair(9, 14, dtype=dtype, device=device, seed=2, batch=(3,))
    out = ops.box_iou(ab, bb, mode)
    assert out.shape == (3, 9, 14)
    torch.testing.assert_close(out, ref.box_iou(ab, bb, mode), **tol(dtype))
    a2, b2 = boxes_pair(40, 40, dtype=dtype, device=device, seed=3)
    torch.testing.assert_close(ops.box_iou(a2, b2, mode, aligned=True), ref.box_iou(a2, b2, mode, aligned=True), **tol(dtype))
    a3, b3 = a2.view(4, 10, 4), b2.view(4, 10, 4)
    assert ops.box_iou(a3, b3, mode, aligned=True).shape == (4, 10)


@pytest.mark.parametrize("mode", MODES)
def test_half_precision_uses_fp32_math(mode, device):
    a, b = boxes_pair(30, 30, device=device, seed=4)
    expected = ops.box_iou(a, b, mode)
    for dtype in (torch.float16, torch.bfloat16):
        out = ops.box_iou(a.to(dtype), b.to(dtype), mode)
        assert out.dtype == dtype
        # Error of rounding the inputs and the output only.
        exact_on_rounded = ops.box_iou(a.to(dtype).float(), b.to(dtype).float(), mode)
        torch.testing.assert_close(out.float(), exact_on_rounded, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-3)
        assert (out.float() - expected).abs().max() < 0.05


def test_non_contiguous_and_channels(device):
    a, b = boxes_pair(30, 20, device=device)
    a_nc = torch.stack([a, a], -1)[..., 0]  # strided view with the same values
    assert not a_nc.is_contiguous()
    torch.testing.assert_close(ops.box_iou(a_nc, b), ops.box_iou(a.contiguous(), b))
    bt = b.t().contiguous().t()
    torch.testing.assert_close(ops.box_iou(a, bt, "ciou"), ops.box_iou(a, b, "ciou"))


@pytest.mark.parametrize("mode", MODES)
def test_empty_inputs(mode, device):
    a, b = boxes_pair(5, 3, device=device)
    assert ops.box_iou(a[:0], b, mode).shape == (0, 3)
    assert ops.box_iou(a, b[:0], mode).shape == (5, 0)
    assert ops.box_iou(a[:0], b[:0], mode, aligned=True).shape == (0,)
    assert ops.box_iou(a.new_zeros(0, 5, 4), b.new_zeros(0, 3, 4), mode).shape == (0, 5, 3)
    x = a[:0].requires_grad_()
    ops.box_iou(x, b, mode).sum().backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("mode", MODES)
def test_adversarial_boxes_match_reference(mode, device):
    adv = adversarial_boxes(dtype=torch.float64, device=device)
    out = ops.box_iou(adv, adv, mode)
    torch.testing.assert_close(out, ref.box_iou(adv, adv, mode))
    assert torch.isfinite(out).all(), "degenerate boxes must give finite values with eps > 0"
    # Identical, non-degenerate boxes overlap fully.
    assert out[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_nan_coordinates_give_nan_not_errors(device):
    a, b = boxes_pair(4, 5, device=device)
    a[1, 2] = float("nan")
    for mode in MODES:
        out = ops.box_iou(a, b, mode)
        assert torch.isnan(out[1]).all()
        assert torch.isfinite(out[[0, 2, 3]]).all()


def test_huge_coordinates_fp16():
    a = torch.tensor([[60000.0, 60000.0, 65000.0, 65000.0]], dtype=torch.float16)
    out = ops.box_iou(a, a)
    assert out.item() == pytest.approx(1.0, abs=1e-3)  # area 2.5e7 overflows fp16 but not fp32 math


# ---- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["pairwise", "batched", "aligned"])
def test_gradcheck(mode, form, device):
    g = gen(5)
    if form == "pairwise":
        a, b = random_boxes(6, generator=g, dtype=torch.float64, device=device), random_boxes(5, generator=g, dtype=torch.float64, device=device)
        fn = lambda x, y: ops.box_iou(x, y, mode)  # noqa: E731
    elif form == "batched":
        a, b = random_boxes(4, generator=g, dtype=torch.float64, device=device, batch=(2,)), random_boxes(3, generator=g, dtype=torch.float64, device=device, batch=(2,))
        fn = lambda x, y: ops.box_iou(x, y, mode)  # noqa: E731
    else:
        a, b = random_boxes(7, generator=g, dtype=torch.float64, device=device), random_boxes(7, generator=g, dtype=torch.float64, device=device)
        fn = lambda x, y: ops.box_iou(x, y, mode, aligned=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a.requires_grad_(), b.requires_grad_()))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_reference_autograd(mode, device):
    a, b = boxes_pair(12, 9, dtype=torch.float64, device=device, seed=7)
    for aligned in (False, True):
        bb = b[:12] if aligned else b
        bb = torch.cat([bb, bb])[: a.shape[0]] if aligned else bb
        x1, y1 = a.clone().requires_grad_(), bb.clone().requires_grad_()
        x2, y2 = a.clone().requires_grad_(), bb.clone().requires_grad_()
        w = torch.rand(ops.box_iou(a, bb, mode, aligned=aligned).shape, dtype=torch.float64, device=device)
        (ops.box_iou(x1, y1, mode, aligned=aligned) * w).sum().backward()
        (ref.box_iou(x2, y2, mode, aligned=aligned) * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(y1.grad, y2.grad)


@pytest.mark.parametrize("mode", ["giou", "diou"])
def test_losses_match_torchvision_values_and_grads(mode):
    mine, theirs = TV_LOSSES[mode]
    a, b = boxes_pair(50, 50, dtype=torch.float64, seed=8)
    for reduction in ("none", "mean", "sum"):
        x1, x2 = a.clone().requires_grad_(), a.clone().requires_grad_()
        l1, l2 = mine(x1, b, reduction=reduction), theirs(x2, b, reduction=reduction)
        torch.testing.assert_close(l1, l2)
        l1.sum().backward()
        l2.sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)


def test_ciou_loss_values_match_torchvision():
    a, b = boxes_pair(50, 50, dtype=torch.float64, seed=9)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(ops.ciou_loss(a, b, reduction=reduction), torchvision.ops.complete_box_iou_loss(a, b, reduction=reduction))


def test_loss_empty_mean_is_zero():
    e = torch.zeros(0, 4, requires_grad=True)
    out = ops.giou_loss(e, e.detach(), reduction="mean")
    assert out.item() == 0.0
    out.backward()


def test_iou_loss():
    a, b = boxes_pair(10, 10, seed=10)
    torch.testing.assert_close(ops.iou_loss(a, b), 1 - ops.box_iou(a, b, aligned=True))


def test_double_backward_raises():
    a, b = boxes_pair(3, 3, dtype=torch.float64)
    a.requires_grad_()
    (g,) = torch.autograd.grad(ops.box_iou(a, b).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- PyTorch integration ---------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
def test_opcheck(aligned, device):
    a, b = boxes_pair(6, 6, device=device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.fastdet.box_iou.default, (a, b, mode, aligned, 1e-7))
        torch.library.opcheck(torch.ops.fastdet.box_iou.default, (a.requires_grad_(), b, mode, aligned, 1e-7))
        a = a.detach()
    grad = torch.rand(ops.box_iou(a, b, aligned=aligned).shape, device=device)
    torch.library.opcheck(torch.ops.fastdet._box_iou_backward.default, (grad, a, b, "giou", aligned, 1e-7))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager", dynamic=True)
    def f(a, b):
        return ops.giou_loss(a, b, reduction="mean") + ops.box_iou(a, b).max()

    a, b = boxes_pair(16, 16)
    torch.testing.assert_close(f(a, b), ops.giou_loss(a, b, reduction="mean") + ops.box_iou(a, b).max())


def test_autocast_mixed_dtypes(device):
    a, b = boxes_pair(8, 9, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.box_iou(a.to(torch.bfloat16), b)  # mixed dtypes are unified to fp32 under autocast
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ops.box_iou(a.to(torch.bfloat16).float(), b))


# ---- input validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    a, b = boxes_pair(4, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: mode must be one of"):
        ops.box_iou(a, b, "xiou")
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: boxes1 must have shape"):
        ops.box_iou(a[:, :3], b)
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: boxes2 must have shape"):
        ops.box_iou(a, b.view(-1))
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: boxes1 and boxes2 must have the same dtype"):
        ops.box_iou(a, b.double())
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: boxes1 must be a floating-point"):
        ops.box_iou(a.long(), b.long())
    with pytest.raises(RuntimeError, match=r"aligned=True boxes1 and boxes2 must have the same shape"):
        ops.box_iou(a, b, aligned=True)
    with pytest.raises(RuntimeError, match=r"same batch size"):
        ops.box_iou(a.view(1, 4, 4), torch.cat([b, b]).view(2, 5, 4))
    with pytest.raises(RuntimeError, match=r"both be \[N, 4\]"):
        ops.box_iou(a, b.view(1, 5, 4))
    with pytest.raises(RuntimeError, match=r"reduction must be"):
        ops.giou_loss(a, a, reduction="avg")


@pytest.mark.cuda
def test_device_mismatch_raises():
    a, b = boxes_pair(4, 5)
    with pytest.raises(RuntimeError, match=r"fastdet::box_iou: boxes1 and boxes2 must be on the same device"):
        ops.box_iou(a, b.cuda())


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu_large(mode):
    a, b = boxes_pair(1000, 777, seed=11)
    torch.testing.assert_close(ops.box_iou(a.cuda(), b.cuda(), mode).cpu(), ops.box_iou(a, b, mode), rtol=1e-5, atol=1e-5)


# ---- properties (hypothesis) -----------------------------------------------------------------------

# Coordinates on a 1/16 grid so the translation below is exact in float64.
coord = st.integers(-16_000, 16_000).map(lambda v: v / 16)
side = st.integers(0, 8_000).map(lambda v: v / 16)
box = st.tuples(coord, coord, side, side).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=200, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6))
def test_properties(boxes_a, boxes_b):
    a = torch.tensor(boxes_a, dtype=torch.float64)
    b = torch.tensor(boxes_b, dtype=torch.float64)
    iou = ops.box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all()
    torch.testing.assert_close(iou, ops.box_iou(b, a).t())  # symmetric
    giou = ops.box_iou(a, b, "giou")
    assert ((giou >= -1 - 1e-9) & (giou <= iou + 1e-9)).all()  # GIoU <= IoU, >= -1
    diou = ops.box_iou(a, b, "diou")
    assert ((diou >= -1 - 1e-9) & (diou <= iou + 1e-9)).all()
    ciou = ops.box_iou(a, b, "ciou")
    assert (ciou <= diou + 1e-9).all()
    for mode, value in (("iou", iou), ("giou", giou), ("diou", diou), ("ciou", ciou)):
        torch.testing.assert_close(value, ref.box_iou(a, b, mode))
    # Translation invariance.
    shift = torch.tensor([3.5, -7.25, 3.5, -7.25], dtype=torch.float64)
    torch.testing.assert_close(ops.box_iou(a + shift, b + shift, "ciou"), ciou, atol=1e-9, rtol=1e-7)
    # A positive box overlaps itself fully.
    pos = (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1])
    self_iou = ops.box_iou(a, a, aligned=True, eps=0.0)
    torch.testing.assert_close(self_iou[pos], torch.ones_like(self_iou[pos]), atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("loss", ["giou", "ciou"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cuda_graph_capture_losses(loss, reduction):
    # Captured forward + backward of the loss, replayed on new boxes, equals eager on them.
    from fastdet.testing import cuda_graph_replay

    fn = {"giou": ops.giou_loss, "ciou": ops.ciou_loss}[loss]
    first, second = boxes_pair(300, 300, device="cuda", seed=20), boxes_pair(300, 300, device="cuda", seed=21)
    for grad_inputs in ((), (0, 1)):
        (out, grads), (expected, expected_grads) = cuda_graph_replay(
            lambda a, b: fn(a, b, reduction), first, second, grad_inputs)
        assert not torch.allclose(out, fn(*first, reduction))  # the replay used the new boxes
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
