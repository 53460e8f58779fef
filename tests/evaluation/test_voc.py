"""VOC AP (07 11-point and 2010+ all-point), difficult objects, precision/recall/F1: hand-computed."""

import numpy as np
import pytest
import torch

from fastdet.evaluation import precision_recall_f1, voc_ap, voc_evaluate


# ---------------------------------------------------------------------------------------- voc_ap
@pytest.mark.parametrize(
    "recall,precision,all_point,eleven_point",
    [
        # precision 1 to recall 0.5, then 0.5 to recall 1.
        ([0.5, 1.0], [1.0, 0.5], 0.5 * 1.0 + 0.5 * 0.5, (6 * 1.0 + 5 * 0.5) / 11),
        # recall never reaches past 0.5: the 11-point form counts t = 0..0.5 (6 points).
        ([0.5], [1.0], 0.5, 6 / 11),
        # a dip in precision is filled by the envelope (max precision at a higher recall):
        # envelope 1 on (0, .25], .75 on (.25, .75] -> .25 + .5*.75; 11-point: t=0,.1,.2 -> 1,
        # t=.3..0.7 -> .75 (5 points), t=.8..1 -> 0.
        ([0.25, 0.25, 0.5, 0.75], [1.0, 0.5, 2 / 3, 0.75], 0.25 + 0.5 * 0.75, (3 * 1.0 + 5 * 0.75) / 11),
        # first detection false: recall 0 with precision 0 adds nothing.
        ([0.0, 1.0], [0.0, 0.5], 0.5, 0.5),
        ([], [], 0.0, 0.0),
    ],
)
def test_voc_ap_hand_computed(recall, precision, all_point, eleven_point):
    assert voc_ap(recall, precision) == pytest.approx(all_point, abs=1e-12)
    assert voc_ap(np.array(recall), np.array(precision), use_07_metric=True) == pytest.approx(eleven_point, abs=1e-12)
    assert voc_ap(torch.tensor(recall), torch.tensor(precision)) == pytest.approx(all_point, abs=1e-6)


def test_voc_ap_errors():
    with pytest.raises(ValueError, match="voc_ap: recall and precision must be 1-D of the same length"):
        voc_ap([0.5, 1.0], [1.0])
    with pytest.raises(ValueError, match="voc_ap: recall and precision must be finite"):
        voc_ap([0.5, float("nan")], [1.0, 1.0])


# ---------------------------------------------------------------------------------------- voc_evaluate
def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def scene(difficult=True):
    """Image A: class 1 at A1 (normal) and A2 (difficult); image B: class 1 at B1.

    Class-1 detections by score: .9 on A1 (TP), .8 on A2 (difficult: ignored), .7 in empty space
    of B (FP), .6 on A1 again (duplicate: FP), .5 on B1 (TP). Class 2 has a detection but no
    object. Class 3: one object matched by a box with IoU exactly 0.5 (>= threshold: TP).
    """
    gts = [
        {
            "boxes": torch.tensor([box(0, 0, 10, 10), box(20, 20, 30, 30), box(40, 40, 60, 60)]),
            "labels": torch.tensor([1, 1, 3]),
            "difficult": torch.tensor([False, difficult, False]),
        },
        {"boxes": torch.tensor([box(0, 0, 10, 10)]), "labels": torch.tensor([1])},
    ]
    dets = [
        {
            "boxes": torch.tensor([box(0, 0, 10, 10), box(20, 20, 30, 30), box(0, 0, 10, 10), box(70, 70, 80, 80), box(40, 40, 60, 50)]),
            "scores": torch.tensor([0.9, 0.8, 0.6, 0.95, 0.4]),
            "labels": torch.tensor([1, 1, 1, 2, 3]),
        },
        {"boxes": torch.tensor([box(50, 50, 60, 60), box(0, 0, 10, 10)]), "scores": torch.tensor([0.7, 0.5]), "labels": torch.tensor([1, 1])},
    ]
    return dets, gts


def test_voc_evaluate_hand_computed_with_difficult():
    dets, gts = scene()
    # Class 1: counted sequence TP, FP, FP, TP with 2 positives: recall .5 .5 .5 1, precision 1 .5 .33 .5.
    for use_07, ap1 in ((False, 0.5 * 1.0 + 0.5 * 0.5), (True, (6 * 1.0 + 5 * 0.5) / 11)):
        out = voc_evaluate(dets, gts, num_classes=4, use_07_metric=use_07)
        assert out["num_positives"] == {1: 2, 2: 0, 3: 1}
        assert out["ap"][1] == pytest.approx(ap1, abs=1e-12)
        assert out["ap"][2] == -1.0  # no object: undefined, left out of the mean
        assert out["ap"][3] == pytest.approx(1.0)
        assert out["mAP"] == pytest.approx((ap1 + 1.0) / 2, abs=1e-12)


def test_voc_evaluate_difficult_flag_changes_result():
    # Without the difficult flag A2 is a positive and the .8 detection a TP: sequence TP TP FP FP TP
    # with 3 positives: recall 1/3 2/3 2/3 2/3 1, precision 1 1 2/3 1/2 3/5.
    dets, gts = scene(difficult=False)
    out = voc_evaluate(dets, gts, num_classes=4)
    assert out["num_positives"][1] == 3
    assert out["ap"][1] == pytest.approx(2 / 3 * 1.0 + 1 / 3 * 0.6, abs=1e-12)
    out07 = voc_evaluate(dets, gts, num_classes=4, use_07_metric=True)
    assert out07["ap"][1] == pytest.approx((7 * 1.0 + 4 * 0.6) / 11, abs=1e-12)


def test_voc_evaluate_iou_threshold_and_greedy_devkit_matching():
    # Two objects; the second detection overlaps the (already matched) first object best (IoU
    # 95/105) and the free second object by 85/115 >= 0.5. Devkit rule: a detection goes to its
    # max-IoU object, so it is a duplicate (FP), unlike COCO, which would match the free object.
    gts = [{"boxes": torch.tensor([box(0, 0, 10, 10), box(2, 0, 12, 10)]), "labels": torch.tensor([1, 1])}]
    dets = [{"boxes": torch.tensor([box(0, 0, 10, 10), box(0.5, 0, 10.5, 10)]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}]
    out = voc_evaluate(dets, gts, num_classes=2)
    assert out["ap"][1] == pytest.approx(0.5)  # TP, FP with 2 positives
    assert precision_recall_f1(dets, gts, 2)[1] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 1, "fp": 1, "fn": 1})
    # IoU threshold: a box with IoU exactly 0.5 is a TP at 0.5 and a FP at 0.51.
    gts = [{"boxes": torch.tensor([box(0, 0, 10, 10)]), "labels": torch.tensor([1])}]
    dets = [{"boxes": torch.tensor([box(0, 0, 10, 5)]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    assert voc_evaluate(dets, gts, 2, iou_threshold=0.5)["ap"][1] == 1.0
    assert voc_evaluate(dets, gts, 2, iou_threshold=0.51)["ap"][1] == 0.0


def test_voc_evaluate_dict_inputs_missing_and_empty_images():
    dets, gts = scene()
    by_id = voc_evaluate({10: dets[0], 11: dets[1]}, {10: gts[0], 11: gts[1]}, 4)
    assert by_id == voc_evaluate(dets, gts, 4)
    # An image absent from the detections dict has no detection: class 1 loses the B1 TP.
    missing = voc_evaluate({10: dets[0]}, {10: gts[0], 11: gts[1]}, 4)
    assert missing["ap"][1] == pytest.approx(0.5)  # TP, FP(duplicate) with 2 positives
    # Empty arrays everywhere: nothing defined.
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    out = voc_evaluate([empty], [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}], 3)
    assert out == {"ap": {1: -1.0, 2: -1.0}, "mAP": -1.0, "num_positives": {1: 0, 2: 0}}
    # Objects but no detections: AP 0.
    assert voc_evaluate([empty], [gts[1]], 2)["ap"][1] == 0.0


# ---------------------------------------------------------------------------------------- P/R/F1
def test_precision_recall_f1_hand_computed():
    dets, gts = scene()
    # score >= .55: class 1 has TP (.9), ignored (.8, difficult), FP (.7), FP (.6): tp 1, fp 2, fn 1.
    out = precision_recall_f1(dets, gts, num_classes=4, score_threshold=0.55)
    assert out[1] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "tp": 1, "fp": 2, "fn": 1})
    assert out[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert out[3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}  # .4 < .55
    # score >= .4 (inclusive): B1's .5 and class 3's .4 count.
    out = precision_recall_f1(dets, gts, num_classes=4, score_threshold=0.4)
    assert out[1] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "tp": 2, "fp": 2, "fn": 0})
    assert out[3] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 1, "fp": 0, "fn": 0})
    # Strict IoU: class 3's IoU-0.5 box becomes a FP.
    out = precision_recall_f1(dets, gts, num_classes=4, iou_threshold=0.6, score_threshold=0.4)
    assert out[3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 1}


# ---------------------------------------------------------------------------------------- errors
def _one(boxes=((0, 0, 5, 5),), labels=(1,), scores=(0.9,)):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "scores": torch.tensor(scores)}


@pytest.mark.parametrize("fn", [voc_evaluate, precision_recall_f1])
@pytest.mark.parametrize(
    "dets,gts,kwargs,match",
    [
        ([_one()], [_one(), _one()], {}, r"detections \(1 images\) and ground_truths \(2 images\)"),
        ([_one(labels=(2,))], [_one()], {}, r"detections\[0\] label 2 is outside 1..1 \(num_classes=2 counts the background"),
        ([_one()], [_one(labels=(0,))], {}, r"ground_truths\[0\] label 0 is outside"),
        ([_one(boxes=((0, 0, 5),))], [_one()], {}, r"boxes must have shape \[N, 4\]"),
        ([_one(scores=(0.9, 0.8))], [_one()], {}, r"detections\[0\] scores must have shape \[1\]"),
        ([_one(scores=(float("nan"),))], [_one()], {}, "scores contain NaN or inf"),
        ([_one(boxes=((0, 0, float("nan"), 5),))], [_one()], {}, "boxes contain NaN or inf"),
        ([_one()], [{**_one(), "difficult": torch.tensor([True, False])}], {}, r"difficult must have shape \[1\]"),
        ([_one()], [{"boxes": torch.zeros(1, 4)}], {}, "has no 'labels'"),
        ({1: _one()}, {2: _one()}, {}, "detections for images not in ground_truths"),
        ([_one()], {1: _one()}, {}, "detections must be one too"),
        ([_one()], [_one()], {"num_classes": 1}, "num_classes must be an int >= 2"),
        ([_one()], [_one()], {"iou_threshold": 0.0}, r"iou_threshold must be in \(0, 1\]"),
    ],
)
def test_errors(fn, dets, gts, kwargs, match):
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=fn.__name__ + ": .*" + match):
        fn(dets, gts, **kwargs)
