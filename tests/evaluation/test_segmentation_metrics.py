"""Semantic segmentation metrics: hand-made cases with known answers, and random maps against an
independent numpy computation."""

import numpy as np
import pytest
import torch

from fastdet.evaluation import SegmentationEvaluator, confusion_matrix, format_segmentation_metrics


def test_hand_made_case():
    # labels  0 0 1 1 | 255 2      predictions 0 1 1 1 | 0 2
    target = torch.tensor([[0, 0, 1, 1], [255, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    ev = SegmentationEvaluator(4, classes=["bg", "a", "b", "c"])
    ev.update(pred, target)
    m = ev.summarize()
    # class 0: TP 1, FN 1, FP 1 -> IoU 1/3, acc 1/2; class 1: TP 2, FP 1 -> 2/3, acc 1;
    # class 2: TP 2, FN 1 -> 2/3, acc 2/3; class 3: absent -> left out
    assert m["IoU"] == pytest.approx({"bg": 1 / 3, "a": 2 / 3, "b": 2 / 3, "c": None})
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["pixels"] == 7
    assert m["acc"]["c"] is None


def test_perfect_and_all_background_predictions():
    target = torch.tensor([[0, 0, 1, 2]])
    ev = SegmentationEvaluator(3)
    ev.update(target.clone(), target)
    assert ev.summarize()["mIoU"] == 1.0 and ev.summarize()["pixel_acc"] == 1.0
    bg = SegmentationEvaluator(3)
    bg.update(torch.zeros_like(target), target)
    m = bg.summarize()
    # all background: IoU 0.5 for class 0, 0 for classes 1 and 2 -> mIoU 1/6
    assert m["mIoU"] == pytest.approx(0.5 / 3) and m["pixel_acc"] == 0.5 and m["mean_acc"] == pytest.approx(1 / 3)


def test_class_only_predicted_counts_in_miou_not_in_mean_accuracy():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 1, 1])
    ev = SegmentationEvaluator(2)
    ev.update(pred, target)
    m = ev.summarize()
    assert m["IoU"] == {"0": 0.5, "1": 0.0} and m["mIoU"] == 0.25
    assert m["mean_acc"] == 0.5 and m["acc"]["1"] is None


def _numpy_metrics(preds, targets, n, ignore):
    cm = np.zeros((n, n), dtype=np.int64)
    for p, t in zip(preds, targets):
        for a, b in zip(t.ravel(), p.ravel()):
            if a != ignore:
                cm[a, b] += 1
    ious, accs = [], []
    for c in range(n):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
        if tp + fn:
            accs.append(tp / (tp + fn))
    return cm, np.mean(ious), np.trace(cm) / cm.sum(), np.mean(accs)


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    targets = [rng.integers(0, n, size=(int(rng.integers(5, 20)), 13)) for _ in range(3)]
    for t in targets:
        t[rng.random(t.shape) < 0.1] = 255
    preds = [np.where(rng.random(t.shape) < 0.6, np.where(t == 255, 0, t), rng.integers(0, n, size=t.shape)) for t in targets]
    ev = SegmentationEvaluator(n)
    for p, t in zip(preds, targets):
        ev.update(torch.from_numpy(p), torch.from_numpy(t))
    cm, miou, pacc, macc = _numpy_metrics(preds, targets, n, 255)
    m = ev.summarize()
    assert np.array_equal(ev.matrix.numpy(), cm)
    assert m["mIoU"] == pytest.approx(miou) and m["pixel_acc"] == pytest.approx(pacc) and m["mean_acc"] == pytest.approx(macc)


def test_errors_and_table():
    with pytest.raises(ValueError, match="confusion_matrix: target holds class 5 outside"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 5, 255]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="argmax the logits first"):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="SegmentationEvaluator: num_classes"):
        SegmentationEvaluator(0)
    ev = SegmentationEvaluator(2, classes=["bg", "fg"])
    ev.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    table = format_segmentation_metrics(ev.summarize())
    assert "| mIoU | 0.250 |" in table and "| fg | 0.000 | n/a |" in table
