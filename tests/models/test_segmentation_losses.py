"""Segmentation losses against hand-computed values and reference formulas; ignore index; gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastdet.models.segmentation import losses as L


def _case(seed=0, b=2, c=4, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 255]]])
    want = -math.log(math.exp(2) / (math.exp(2) + 1))  # only the first pixel counts
    assert L.cross_entropy(logits, target).item() == pytest.approx(want)


def test_dice_hand_computed():
    # probabilities [1, 0] and [0.5, 0.5] (logits 0, 0), labels 0 and 1; smooth 1
    logits = torch.tensor([[[[30.0, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    p0, p1 = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    d0 = (2 * 1.0 + 1) / (p0.sum() + 1 + 1)
    d1 = (2 * 0.5 + 1) / (p1.sum() + 1 + 1)
    assert L.dice_loss(logits, target).item() == pytest.approx(1 - (d0 + d1).item() / 2, abs=1e-6)


def test_dice_is_zero_for_perfect_one_hot_predictions():
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert L.dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_reference_formula_and_cross_entropy_limit():
    logits, target = _case()
    valid = target != 255
    p = logits.softmax(1).permute(0, 2, 3, 1)[valid]
    pt = p.gather(1, target[valid][:, None])[:, 0]
    alpha = torch.tensor([0.25, 1.0, 0.5, 2.0])
    want = (-alpha[target[valid]] * (1 - pt) ** 2 * pt.log()).mean()
    torch.testing.assert_close(L.focal_loss(logits, target, alpha=alpha), want)
    torch.testing.assert_close(L.focal_loss(logits, target, gamma=0.0), L.cross_entropy(logits, target))


def test_ignore_index_pixels_do_not_count():
    logits, target = _case()
    changed = logits.detach().clone()
    changed[0, :, 0, :3] = torch.randn(4, 3) * 10  # only ignored pixels change
    for name, fn in L.LOSSES.items():
        torch.testing.assert_close(fn(changed, target), fn(logits.detach(), target), msg=name)


@pytest.mark.parametrize("name", list(L.LOSSES))
def test_gradients_finite_and_all_ignored_is_zero(name):
    logits, target = _case(seed=1)
    loss = L.LOSSES[name](logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[0, :, 0, :3].abs().sum() == 0  # no gradient at ignored pixels
    logits.grad = None
    zero = L.LOSSES[name](logits, torch.full_like(target, 255))
    zero.backward()
    assert zero.item() == 0.0 and (logits.grad == 0).all()


def test_segmentation_loss_adds_weighted_aux():
    logits, target = _case()
    aux = logits.detach() * 0.5
    losses = L.segmentation_loss({"out": logits, "aux": aux}, target)
    assert set(losses) == {"loss_seg", "loss_aux"}
    torch.testing.assert_close(losses["loss_aux"], 0.5 * L.cross_entropy(aux, target))
    assert set(L.segmentation_loss({"out": logits}, target, loss="ce_dice")) == {"loss_seg"}
    torch.testing.assert_close(L.ce_dice_loss(logits, target), L.cross_entropy(logits, target) + L.dice_loss(logits, target))


@pytest.mark.parametrize("kwargs, message", [
    (dict(target=torch.zeros(2, 5, 5, dtype=torch.long)), r"target must be a Tensor\[B, H, W\]"),
    (dict(target=torch.zeros(2, 5, 6)), "target must be int64"),
    (dict(target=torch.full((2, 5, 6), 7)), "target holds label 7 outside"),
])
def test_errors(kwargs, message):
    logits, _ = _case()
    with pytest.raises(ValueError, match=f"cross_entropy: {message}"):
        L.cross_entropy(logits, **kwargs)
    with pytest.raises(ValueError, match="segmentation_loss: loss must be one of"):
        L.segmentation_loss({"out": logits}, _case()[1], loss="hinge")
