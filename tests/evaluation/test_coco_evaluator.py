"""CocoEvaluator against pycocotools' COCOeval run directly, on hand-made cases with known values."""

import contextlib
import copy
import io
import json
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fastdet.evaluation import COCO_METRICS, CocoEvaluator, format_metrics

BACKENDS = ["pycocotools", "faster_coco_eval"]
KEYS = [k for k, _ in COCO_METRICS]
H, W = 120, 160


# ---------------------------------------------------------------------------------------- helpers
def make_gt(objects, categories=(1, 2, 3), num_images=None, crowd=()):
    """COCO dict. objects: list of (image_id, category_id, [x1, y1, x2, y2]); the segmentation of
    each object is the RLE of its (integer) box, so box and mask IoUs are computable by hand."""
    image_ids = sorted({o[0] for o in objects} | set(range(1, (num_images or 0) + 1)))
    anns = []
    for i, (img, cat, (x1, y1, x2, y2)) in enumerate(list(objects) + list(crowd)):
        m = np.zeros((H, W), np.uint8)
        m[y1:y2, x1:x2] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": i + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float((x2 - x1) * (y2 - y1)),
                "iscrowd": int(i >= len(objects)),
                "segmentation": rle,
            }
        )
    return {
        "images": [{"id": i, "width": W, "height": H, "file_name": f"{i:06d}.png"} for i in image_ids],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": anns,
    }


def box_mask(boxes):
    masks = torch.zeros(len(boxes), 1, H, W)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, 0, int(y1) : int(y2), int(x1) : int(x2)] = 0.9
    return masks


def pred(boxes, scores, labels, masks=False):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if masks:
        out["masks"] = box_mask(boxes)
    return out


def direct_pycocotools(gt, predictions, iou_type="bbox", label_to_cat_id=None):
    """The 12 stats from pycocotools' own COCOeval on hand-converted results."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        cats = sorted(c["id"] for c in gt["categories"])
        to_cat = label_to_cat_id or {i + 1: c for i, c in enumerate(cats)}
        results = []
        for img_id, p in predictions.items():
            for k in range(len(p["scores"])):
                x1, y1, x2, y2 = p["boxes"][k].tolist()
                r = {"image_id": img_id, "category_id": to_cat[int(p["labels"][k])], "score": float(p["scores"][k])}
                if iou_type == "bbox":
                    r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                else:
                    rle = mask_utils.encode(np.asfortranarray((p["masks"][k, 0] > 0.5).numpy().astype(np.uint8)))
                    r["segmentation"] = rle
                results.append(r)
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, iou_type)
        ev.params.imgIds = sorted(predictions)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(KEYS, map(float, ev.stats)))


def evaluate(gt, predictions, backend, iou_types=("bbox",), **kw):
    ev = CocoEvaluator(gt, iou_types, backend=backend, **kw)
    ev.update(predictions)
    return ev.summarize()


def assert_metrics(got, expected, **expected_values):
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    for key, value in expected_values.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------------------------------- cases
# Boxes: a medium (32^2..96^2) one and a large (> 96^2) one.
MED = [10, 10, 50, 50]  # 40 x 40
LARGE = [20, 10, 130, 110]  # 110 x 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions(backend):
    objs = [(1, 1, MED), (1, 2, LARGE), (2, 3, [60, 60, 100, 90]), (3, 1, [0, 0, 20, 20])]
    gt = make_gt(objs)
    preds = {
        img: pred([o[2] for o in objs if o[0] == img], [0.9] * sum(o[0] == img for o in objs), [o[1] for o in objs if o[0] == img], masks=True)
        for img in (1, 2, 3)
    }
    got = evaluate(gt, preds, backend, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        assert_metrics(got[iou_type], direct_pycocotools(gt, preds, iou_type), AP=1.0, AP50=1.0, APs=1.0, APl=1.0, AR100=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_box_known_ap(backend):
    # Shift a 110x100 box by 11 px: IoU = 99*100 / (121*100) = 0.818..., so it is a true positive at
    # IoU thresholds 0.50..0.80 (7 of 10): AP = AR = 0.7, AP50 = AP75 = 1.
    gt = make_gt([(1, 1, LARGE)])
    x1, y1, x2, y2 = LARGE
    preds = {1: pred([[x1 + 11, y1, x2 + 11, y2]], [0.8], [1])}
    assert_metrics(evaluate(gt, preds, backend)["bbox"], direct_pycocotools(gt, preds), AP=0.7, AP50=1.0, AP75=1.0, APl=0.7, AR1=0.7, APs=-1.0, APm=-1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missed_object(backend):
    # 2 objects, 1 found exactly: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points.
    gt = make_gt([(1, 1, MED), (2, 1, [70, 30, 110, 80])])
    preds = {1: pred([MED], [0.9], [1]), 2: pred([], [], [])}
    assert_metrics(evaluate(gt, preds, backend)["bbox"], direct_pycocotools(gt, preds), AP=51 / 101, AR100=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fp_score,expected_ap", [(0.95, 0.5), (0.5, 1.0)])
def test_false_positive(backend, fp_score, expected_ap):
    # A false positive ranked above the only true positive halves the precision at every recall;
    # ranked below it, it costs nothing.
    gt = make_gt([(1, 1, MED)])
    preds = {1: pred([MED, [100, 60, 140, 100]], [0.9, fp_score], [1, 1])}
    assert_metrics(evaluate(gt, preds, backend)["bbox"], direct_pycocotools(gt, preds), AP=expected_ap, AR100=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_classes_and_label_mapping(backend):
    # Category ids 7 and 3; default mapping sorts them: label 1 -> 3, label 2 -> 7.
    x1, y1, x2, y2 = LARGE
    gt = make_gt([(1, 3, MED), (1, 7, LARGE)], categories=(7, 3))
    preds = {1: pred([MED, [x1 + 11, y1, x2 + 11, y2]], [0.9, 0.8], [1, 2])}
    got = evaluate(gt, preds, backend)["bbox"]
    assert_metrics(got, direct_pycocotools(gt, preds), AP=(1.0 + 0.7) / 2, APm=1.0, APl=0.7)
    # An explicit mapping the other way round swaps the classes: both predictions miss.
    swapped = evaluate(gt, preds, backend, label_to_cat_id={1: 7, 2: 3})["bbox"]
    assert swapped["AP"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_segm_with_masks(backend):
    # Mask IoU differs from box IoU: a predicted box whose mask covers the left half of the object.
    gt = make_gt([(1, 1, LARGE), (2, 2, MED)])
    x1, y1, x2, y2 = LARGE
    masks1 = box_mask([[x1, y1, (x1 + x2) // 2, y2]])  # IoU 0.5 with the object's mask
    preds = {
        1: {"boxes": torch.tensor([LARGE], dtype=torch.float32), "scores": torch.tensor([0.9]), "labels": torch.tensor([1]), "masks": masks1},
        2: {**pred([MED], [0.8], [2]), "masks": box_mask([MED]) > 0.5},  # bool masks too
    }
    got = evaluate(gt, preds, backend, ("bbox", "segm"))
    assert_metrics(got["bbox"], direct_pycocotools(gt, preds, "bbox"), AP=1.0)
    # class 1: TP only at IoU threshold 0.50 (1 of 10) -> 0.1; class 2 perfect -> 1.0.
    assert_metrics(got["segm"], direct_pycocotools(gt, preds, "segm"), AP=(0.1 + 1.0) / 2, AP50=1.0, AP75=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_polygon_ground_truth_and_crowd(backend):
    gt = make_gt([(1, 1, MED), (1, 2, LARGE)], crowd=[(1, 1, [100, 70, 150, 115])])
    gt["annotations"][0]["segmentation"] = [[10, 10, 50, 10, 50, 50, 10, 50]]
    preds = {1: pred([MED, LARGE, [102, 72, 148, 113], [0, 90, 30, 119]], [0.9, 0.7, 0.8, 0.3], [1, 2, 1, 2], masks=True)}
    got = evaluate(gt, preds, backend, ("bbox", "segm"))
    for t in ("bbox", "segm"):
        assert_metrics(got[t], direct_pycocotools(gt, preds, t))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_scene_matches_pycocotools(backend):
    g = torch.Generator().manual_seed(0)
    objs, preds = [], {}
    for img in range(1, 7):
        xy = torch.randint(0, 100, (4, 2), generator=g)
        wh = torch.randint(8, 60, (4, 2), generator=g)
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([W, H]))], 1)
        cats = torch.randint(1, 4, (4,), generator=g)
        objs += [(img, int(c), b.tolist()) for b, c in zip(boxes, cats)]
        noisy = boxes.float() + torch.randn(4, 4, generator=g) * 4
        extra = torch.cat([xy.float() + 30, xy.float() + 50], 1)[:2]
        preds[img] = {
            "boxes": torch.cat([noisy, extra]),
            "scores": torch.rand(6, generator=g),
            "labels": torch.cat([cats, torch.randint(1, 4, (2,), generator=g)]),
        }
    gt = make_gt(objs, categories=(9, 3, 5))
    to_cat = {1: 9, 2: 5, 3: 3}
    got = evaluate(gt, preds, backend, label_to_cat_id=to_cat)["bbox"]
    expected = direct_pycocotools(gt, preds, label_to_cat_id=to_cat)
    assert_metrics(got, expected)
    assert 0.1 < expected["AP"] < 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_at_all(backend):
    # pycocotools' loadRes crashes on an empty result list; the evaluator gives AP 0 (not -1: there
    # are objects) and -1 only where COCO defines none (no small object).
    gt = make_gt([(1, 1, MED), (2, 2, LARGE)])
    got = evaluate(gt, {1: pred([], [], [], masks=True), 2: pred([], [], [], masks=True)}, backend, ("bbox", "segm"))
    for t in ("bbox", "segm"):
        assert got[t]["AP"] == 0.0 and got[t]["AR100"] == 0.0 and got[t]["APl"] == 0.0
        assert got[t]["APs"] == -1.0 and got[t]["ARs"] == -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_updated_images_are_evaluated(backend):
    gt = make_gt([(1, 1, MED), (2, 1, MED), (3, 2, LARGE)])
    preds = {1: pred([MED], [0.9], [1])}  # images 2 and 3 not evaluated: their objects are not misses
    got = evaluate(gt, preds, backend)["bbox"]
    assert_metrics(got, direct_pycocotools(gt, preds), AP=1.0)
    ev = CocoEvaluator(gt, backend=backend)
    assert ev.summarize()["bbox"] == dict.fromkeys(KEYS, -1.0)  # nothing updated yet
    ev.update({2: pred([], [], [])})
    ev.update(preds)
    assert ev.img_ids == [1, 2]
    assert ev.summarize()["bbox"]["AP"] == pytest.approx(51 / 101)


def test_backends_agree_and_accept_coco_objects(tmp_path):
    from faster_coco_eval import COCO as FCOCO

    gt = make_gt([(1, 1, MED), (1, 2, LARGE), (2, 1, [60, 60, 100, 90])])
    preds = {1: pred([MED, [25, 10, 130, 100]], [0.9, 0.6], [1, 2], True), 2: pred([[62, 58, 100, 95]], [0.7], [1], True)}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        sources = [gt, str(path), path, COCO(str(path)), FCOCO(str(path))]
    results = [evaluate(src, preds, b, ("bbox", "segm")) for src in sources for b in BACKENDS]
    for r in results[1:]:
        for t in ("bbox", "segm"):
            assert_metrics(r[t], results[0][t])
    assert gt == json.loads(path.read_text())  # ground truth not modified


def test_summarize_is_repeatable_and_quiet(capsys):
    gt = make_gt([(1, 1, MED)])
    ev = CocoEvaluator(gt, ("bbox", "segm"), backend="pycocotools")
    ev.update({1: pred([MED], [0.9], [1], masks=True)})
    first = ev.summarize()
    assert ev.summarize() == first
    assert capsys.readouterr().out == ""
    ev.summarize(verbose=True)
    assert "Average Precision" in capsys.readouterr().out
    assert ev.evaluate("segm").stats[0] == pytest.approx(1.0)


def test_auto_backend_and_gpu_free_inputs():
    ev = CocoEvaluator(make_gt([(1, 1, MED)]))
    assert ev.backend == "faster_coco_eval"
    # numpy inputs and fp16 tensors are accepted too.
    ev.update({np.int64(1): {"boxes": np.array([MED], np.float32), "scores": torch.tensor([0.9], dtype=torch.float16), "labels": [1]}})
    assert ev.summarize()["bbox"]["AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "prediction,match",
    [
        ({5: pred([MED], [0.9], [1])}, "image_id 5 is not in the ground truth"),
        ({1.0: pred([MED], [0.9], [1])}, "image_id must be an int"),
        ({1: {"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.ones(2, dtype=torch.long)}}, r"boxes must have shape \[N, 4\]"),
        ({1: {"boxes": torch.zeros(2, 4), "scores": torch.zeros(3), "labels": torch.ones(2, dtype=torch.long)}}, r"scores must have shape \[2\]"),
        ({1: {"boxes": torch.zeros(2, 4), "scores": torch.zeros(2), "labels": torch.ones(1, dtype=torch.long)}}, r"labels must have shape \[2\]"),
        ({1: {"boxes": torch.zeros(1, 4), "scores": torch.zeros(1)}}, "has no 'labels'"),
        ({1: pred([MED], [0.9], [4])}, "label 4 has no category id"),
        ({1: pred([MED], [float("nan")], [1])}, "scores contain NaN"),
        ({1: pred([[0, 0, float("inf"), 4]], [0.9], [1])}, "boxes contain NaN or inf"),
        ({1: {"boxes": torch.zeros(1, 4), "scores": torch.zeros(1), "labels": torch.tensor([1.5])}}, "labels must be integers"),
        ({1: [MED]}, "prediction must be a dict"),
    ],
)
def test_update_errors(prediction, match):
    ev = CocoEvaluator(make_gt([(1, 1, MED)]), backend="pycocotools")
    with pytest.raises(ValueError, match="CocoEvaluator.update: .*" + match):
        ev.update(prediction)
    assert ev.img_ids == []  # a failed update adds nothing


def test_mask_errors_and_double_update():
    ev = CocoEvaluator(make_gt([(1, 1, MED), (2, 1, MED)]), ("bbox", "segm"), backend="pycocotools")
    with pytest.raises(ValueError, match="image 1: iou_types has 'segm' but the prediction has no 'masks'"):
        ev.update({1: pred([MED], [0.9], [1])})
    with pytest.raises(ValueError, match="masks are 60x80 but the image is 120x160"):
        ev.update({1: {**pred([MED], [0.9], [1]), "masks": torch.zeros(1, 1, 60, 80)}})
    with pytest.raises(ValueError, match="masks has 2 masks for 1 boxes"):
        ev.update({1: {**pred([MED], [0.9], [1]), "masks": torch.zeros(2, 1, H, W)}})
    with pytest.raises(ValueError, match=r"masks must have shape \[N, 1, H, W\]"):
        ev.update({1: {**pred([MED], [0.9], [1]), "masks": torch.zeros(1, 2, H, W)}})
    ev.update({1: pred([MED], [0.9], [1], masks=True)})
    with pytest.raises(ValueError, match="image_id 1 was already updated"):
        ev.update({1: pred([MED], [0.9], [1], masks=True)})
    with pytest.raises(TypeError, match="predictions must be a dict"):
        ev.update([pred([MED], [0.9], [1])])


def test_constructor_errors(tmp_path):
    gt = make_gt([(1, 1, MED)])
    with pytest.raises(ValueError, match="CocoEvaluator: iou_types may contain"):
        CocoEvaluator(gt, ("keypoints",))
    with pytest.raises(ValueError, match="CocoEvaluator: backend must be one of"):
        CocoEvaluator(gt, backend="detectron")
    with pytest.raises(FileNotFoundError, match="CocoEvaluator: coco_gt annotation file not found"):
        CocoEvaluator(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="coco_gt has no 'images' list"):
        CocoEvaluator({"annotations": []})
    with pytest.raises(TypeError, match="coco_gt must be a COCO object"):
        CocoEvaluator(42)
    with pytest.raises(ValueError, match=r"label_to_cat_id maps to category ids \[8\]"):
        CocoEvaluator(gt, label_to_cat_id={1: 8})
    with pytest.raises(ValueError, match="iou_type 'segm' is not in iou_types"):
        CocoEvaluator(gt).evaluate("segm")
    del gt["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match=r"iou_types has 'segm' but 1 ground-truth annotations have no segmentation \(ids \[1\]\)"):
        CocoEvaluator(gt, ("bbox", "segm"))
    CocoEvaluator(gt, ("bbox",))  # fine for boxes


# ---------------------------------------------------------------------------------------- format
def test_format_metrics():
    results = {"bbox": dict(zip(KEYS, [0.5] * 3 + [-1.0] + [0.25] * 8)), "segm": dict(zip(KEYS, [0.125] * 12))}
    table = format_metrics(results).splitlines()
    assert table[0] == "| Metric | bbox | segm | Definition |"
    assert table[1] == "|---|---:|---:|---|"
    assert len(table) == 2 + 12
    assert table[2] == "| AP | 0.500 | 0.125 | AP @ IoU=0.50:0.95, area=all, maxDets=100 |"
    assert table[5].startswith("| APs | n/a | 0.125 |")
    assert format_metrics({"AP": 0.12345}, digits=2).splitlines()[2] == "| AP | 0.12 | AP @ IoU=0.50:0.95, area=all, maxDets=100 |"
    with pytest.raises(ValueError, match="format_metrics"):
        format_metrics({})


# ---------------------------------------------------------------------------------------- distributed
def _dist_scene():
    objs = [(i, 1 + i % 3, [5 * i, 10, 5 * i + 40, 60]) for i in range(1, 9)]
    preds = {i: pred([[5 * i + i % 4, 10, 5 * i + 40, 62]], [0.1 * i], [1 + (i * 2) % 3 if i % 4 == 0 else 1 + i % 3], masks=True) for i in range(1, 9)}
    return make_gt(objs), preds


def _dist_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        gt, preds = _dist_scene()
        # Rank 0 gets images 1..5, rank 1 images 5..8: image 5 on both, as DistributedSampler's padding does.
        mine = {i: p for i, p in preds.items() if (i <= 5 if rank == 0 else i >= 5)}
        ev = CocoEvaluator(gt, ("bbox", "segm"))
        ev.update(mine)
        ev.synchronize()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"img_ids": ev.img_ids, "metrics": ev.summarize()}, f)
    finally:
        dist.destroy_process_group()


def test_synchronize_two_processes_gloo():
    gt, preds = _dist_scene()
    single = evaluate(gt, preds, "auto", ("bbox", "segm"))
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        for rank in range(2):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                out = json.load(f)
            assert out["img_ids"] == list(range(1, 9))
            for t in ("bbox", "segm"):
                assert_metrics(out["metrics"][t], single[t])
    assert 0.0 < single["bbox"]["AP"] < 1.0


def test_synchronize_without_distributed_is_noop():
    gt, preds = _dist_scene()
    ev = CocoEvaluator(gt)
    ev.update({1: preds[1]})
    ev.synchronize()
    assert ev.img_ids == [1]
