"""COCO-style detection / instance-segmentation metrics through pycocotools or faster-coco-eval.

The evaluator itself is NOT re-implemented: this module only converts model outputs into COCO
result records and drives ``pycocotools.cocoeval.COCOeval`` or ``faster_coco_eval.COCOeval_faster``
(same numbers, the latter in C++). What it adds over calling them directly:

* predictions in the torchvision detection format (``xyxy`` absolute-pixel boxes, contiguous labels,
  mask probabilities) are converted to COCO results (``xywh`` boxes, category ids, RLE masks);
* an image updated with no detection, or no detection at all, is evaluated correctly (pycocotools'
  ``loadRes`` crashes on an empty result list);
* only the images passed to :meth:`CocoEvaluator.update` are evaluated (``params.imgIds``), so a
  partial pass over a dataset gives the metrics of that part;
* :meth:`CocoEvaluator.synchronize` merges the predictions of all ``torch.distributed`` ranks;
* :meth:`CocoEvaluator.summarize` returns the 12 standard numbers as a dict and prints nothing
  unless asked to.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["COCO_METRICS", "CocoEvaluator", "format_metrics"]

# The 12 numbers of COCOeval.summarize(), in its order: (key, description).
COCO_METRICS: tuple[tuple[str, str], ...] = (
    ("AP", "AP @ IoU=0.50:0.95, area=all, maxDets=100"),
    ("AP50", "AP @ IoU=0.50, area=all, maxDets=100"),
    ("AP75", "AP @ IoU=0.75, area=all, maxDets=100"),
    ("APs", "AP @ IoU=0.50:0.95, area=small, maxDets=100"),
    ("APm", "AP @ IoU=0.50:0.95, area=medium, maxDets=100"),
    ("APl", "AP @ IoU=0.50:0.95, area=large, maxDets=100"),
    ("AR1", "AR @ IoU=0.50:0.95, area=all, maxDets=1"),
    ("AR10", "AR @ IoU=0.50:0.95, area=all, maxDets=10"),
    ("AR100", "AR @ IoU=0.50:0.95, area=all, maxDets=100"),
    ("ARs", "AR @ IoU=0.50:0.95, area=small, maxDets=100"),
    ("ARm", "AR @ IoU=0.50:0.95, area=medium, maxDets=100"),
    ("ARl", "AR @ IoU=0.50:0.95, area=large, maxDets=100"),
)
_METRIC_KEYS = tuple(k for k, _ in COCO_METRICS)
_IOU_TYPES = ("bbox", "segm")
_BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


def _has_faster_coco_eval() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"CocoEvaluator: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faster_coco_eval" if _has_faster_coco_eval() else "pycocotools"
    if backend == "faster_coco_eval" and not _has_faster_coco_eval():
        raise ImportError("CocoEvaluator: backend='faster_coco_eval' needs `pip install faster-coco-eval`")
    if backend == "pycocotools":
        try:
            import pycocotools  # noqa: F401
        except ImportError as e:
            raise ImportError("CocoEvaluator: backend='pycocotools' needs `pip install pycocotools`") from e
    return backend


def _gt_dataset(coco_gt: Any) -> dict:
    """The ground-truth COCO dict from a COCO object (either library), a dict or a json path."""
    if isinstance(coco_gt, Mapping):
        dataset = dict(coco_gt)
    elif isinstance(coco_gt, (str, os.PathLike)):
        if not os.path.isfile(coco_gt):
            raise FileNotFoundError(f"CocoEvaluator: coco_gt annotation file not found: {os.fspath(coco_gt)}")
        with open(coco_gt) as f:
            dataset = json.load(f)
    elif isinstance(getattr(coco_gt, "dataset", None), Mapping):
        dataset = coco_gt.dataset
    else:
        raise TypeError(
            "CocoEvaluator: coco_gt must be a COCO object (pycocotools or faster_coco_eval), a COCO dict "
            f"or the path of an instances json, got {type(coco_gt).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"CocoEvaluator: coco_gt has no {key!r} list (not a COCO instances file?)")
    # The evaluators add keys (e.g. "ignore") to the ground-truth annotations: work on a copy.
    dataset = copy.deepcopy(dataset)
    dataset.setdefault("annotations", [])
    return dataset


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


class CocoEvaluator:
    """Accumulates detections image by image and computes the COCO metrics.

    Args:
        coco_gt: ground truth: a ``pycocotools.coco.COCO`` or ``faster_coco_eval.COCO`` object (e.g.
            ``CocoDetection.coco``), a COCO instances dict, or the path of an instances json. It is
            copied, never modified.
        iou_types: any of ``"bbox"`` and ``"segm"`` (``segm`` needs ``masks`` in the predictions).
        label_to_cat_id: maps the model's contiguous labels (1..K, 0 = background) to COCO category
            ids (e.g. ``CocoDetection.label_to_cat_id``). ``None``: label ``i`` is the ``i``-th
            category id of the ground truth in ascending order (the CocoDetection convention).
        backend: ``"pycocotools"``, ``"faster_coco_eval"`` or ``"auto"`` (faster_coco_eval when it is
            importable). Both give the same numbers.

    Usage::

        evaluator = CocoEvaluator(dataset.coco, ("bbox", "segm"), dataset.label_to_cat_id)
        for images, targets in loader:
            outputs = model(images)
            evaluator.update({t["image_id"]: o for t, o in zip(targets, outputs)})
        evaluator.synchronize()            # only needed under torch.distributed
        metrics = evaluator.summarize()    # {"bbox": {"AP": ..., "AP50": ..., ...}, "segm": {...}}
    """

    def __init__(
        self,
        coco_gt: Any,
        iou_types: Sequence[str] | str = ("bbox",),
        label_to_cat_id: Mapping[int, int] | None = None,
        backend: str = "auto",
    ) -> None:
        if isinstance(iou_types, str):
            iou_types = (iou_types,)
        iou_types = tuple(iou_types)
        if not iou_types:
            raise ValueError("CocoEvaluator: iou_types is empty; use ('bbox',) and/or ('segm',)")
        for t in iou_types:
            if t not in _IOU_TYPES:
                raise ValueError(f"CocoEvaluator: iou_types may contain {_IOU_TYPES}, got {t!r}")
        if len(set(iou_types)) != len(iou_types):
            raise ValueError(f"CocoEvaluator: iou_types has duplicates: {iou_types}")
        self.iou_types = iou_types
        self.backend = _resolve_backend(backend)
        self._dataset = _gt_dataset(coco_gt)
        if "segm" in iou_types:
            no_segm = [a.get("id") for a in self._dataset["annotations"] if not a.get("segmentation")]
            if no_segm:
                raise ValueError(
                    f"CocoEvaluator: iou_types has 'segm' but {len(no_segm)} ground-truth annotations have no "
                    f"segmentation (ids {no_segm[:5]}); evaluate 'bbox' only"
                )
        self._images = {int(img["id"]): img for img in self._dataset["images"]}
        cat_ids = sorted(int(c["id"]) for c in self._dataset["categories"])
        if label_to_cat_id is None:
            label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        else:
            label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
            unknown = sorted(set(label_to_cat_id.values()) - set(cat_ids))
            if unknown:
                raise ValueError(f"CocoEvaluator: label_to_cat_id maps to category ids {unknown} not in coco_gt")
        self.label_to_cat_id = label_to_cat_id
        self._gt_objects: dict[str, Any] = {}
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget every prediction passed to :meth:`update`."""
        # image id -> {iou_type: [COCO result records]}; insertion order = update order.
        self._results: dict[int, dict[str, list[dict]]] = {}

    @property
    def img_ids(self) -> list[int]:
        """The ids of the images updated so far (after :meth:`synchronize`: on any rank), sorted."""
        return sorted(self._results)

    def update(self, predictions: Mapping[int, Mapping[str, Any]]) -> None:
        """Adds the detections of some images.

        Args:
            predictions: ``{image_id: {"boxes": [N, 4] xyxy absolute pixels, "scores": [N],
                "labels": [N] contiguous (1..K), "masks": [N, 1, H, W] float probabilities (> 0.5
                is foreground) or bool, at the original image size — only needed for "segm"}}``.
                Tensors (any device) or arrays. An image with N = 0 counts as evaluated with no
                detection (all its objects are missed).

        Raises:
            ValueError: unknown image id, image updated twice, bad shapes, non-finite values,
                unknown label, masks missing or not the image's size.
        """
        if not isinstance(predictions, Mapping):
            raise TypeError(
                "CocoEvaluator.update: predictions must be a dict {image_id: {boxes, scores, labels[, masks]}}, "
                f"got {type(predictions).__name__}"
            )
        converted = {}
        for image_id, pred in predictions.items():
            img_id = self._check_image_id(image_id)
            if img_id in self._results or img_id in converted:
                raise ValueError(f"CocoEvaluator.update: image_id {img_id} was already updated (each image once)")
            converted[img_id] = self._convert(img_id, pred)
        self._results.update(converted)

    def _check_image_id(self, image_id: Any) -> int:
        if isinstance(image_id, torch.Tensor):
            if image_id.numel() != 1:
                raise ValueError(f"CocoEvaluator.update: image_id must be a scalar, got shape {tuple(image_id.shape)}")
            image_id = image_id.item()
        if isinstance(image_id, (bool, float)) or not isinstance(image_id, (int, np.integer)):
            raise ValueError(f"CocoEvaluator.update: image_id must be an int, got {image_id!r}")
        img_id = int(image_id)
        if img_id not in self._images:
            raise ValueError(f"CocoEvaluator.update: image_id {img_id} is not in the ground truth")
        return img_id

    def _convert(self, img_id: int, pred: Mapping[str, Any]) -> dict[str, list[dict]]:
        where = f"CocoEvaluator.update: image {img_id}:"
        if not isinstance(pred, Mapping):
            raise ValueError(f"{where} prediction must be a dict with boxes, scores, labels, got {type(pred).__name__}")
        for key in ("boxes", "scores", "labels"):
            if key not in pred:
                raise ValueError(f"{where} prediction has no {key!r}")
        boxes = _to_numpy(pred["boxes"], "boxes").astype(np.float64, copy=False)
        scores = _to_numpy(pred["scores"], "scores").astype(np.float64, copy=False)
        labels = _to_numpy(pred["labels"], "labels")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where} boxes must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        if scores.shape != (n,):
            raise ValueError(f"{where} scores must have shape [{n}], got {tuple(scores.shape)}")
        if labels.shape != (n,):
            raise ValueError(f"{where} labels must have shape [{n}], got {tuple(labels.shape)}")
        if n and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise ValueError(f"{where} labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"{where} boxes contain NaN or inf")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{where} scores contain NaN or inf")
        cat_ids = []
        for label in labels.tolist():
            if label not in self.label_to_cat_id:
                raise ValueError(
                    f"{where} label {label} has no category id (label_to_cat_id covers {sorted(self.label_to_cat_id)})"
                )
            cat_ids.append(self.label_to_cat_id[label])
        scores_l = scores.tolist()

        out: dict[str, list[dict]] = {}
        if "bbox" in self.iou_types:
            xywh = boxes.copy()
            xywh[:, 2:] -= xywh[:, :2]
            out["bbox"] = [
                {"image_id": img_id, "category_id": c, "bbox": b, "score": s}
                for c, b, s in zip(cat_ids, xywh.tolist(), scores_l)
            ]
        if "segm" in self.iou_types:
            out["segm"] = [
                {"image_id": img_id, "category_id": c, "segmentation": rle, "score": s}
                for c, rle, s in zip(cat_ids, self._encode_masks(img_id, pred.get("masks"), n, where), scores_l)
            ]
        return out

    def _encode_masks(self, img_id: int, masks: Any, n: int, where: str) -> list[dict]:
        from pycocotools import mask as mask_utils

        if masks is None:
            raise ValueError(f"{where} iou_types has 'segm' but the prediction has no 'masks' [N, 1, H, W]")
        masks = _to_numpy(masks, "masks")
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        elif not (masks.ndim == 3 or (masks.ndim == 4 and masks.shape[0] == 0)):
            raise ValueError(f"{where} masks must have shape [N, 1, H, W] (or [N, H, W]), got {tuple(masks.shape)}")
        if masks.shape[0] != n:
            raise ValueError(f"{where} masks has {masks.shape[0]} masks for {n} boxes")
        if n == 0:
            return []
        img = self._images[img_id]
        h, w = img.get("height"), img.get("width")
        if h is not None and w is not None and tuple(masks.shape[1:]) != (int(h), int(w)):
            raise ValueError(
                f"{where} masks are {masks.shape[1]}x{masks.shape[2]} but the image is {h}x{w} "
                "(masks must be pasted at the original image size)"
            )
        if masks.dtype == np.bool_:
            binary = masks
        elif np.issubdtype(masks.dtype, np.floating):
            if np.isnan(masks).any():
                raise ValueError(f"{where} masks contain NaN")
            binary = masks > 0.5  # probabilities, as torchvision's Mask R-CNN returns them
        else:
            binary = masks != 0
        # encode() takes a Fortran-ordered uint8 [H, W, N] array.
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # str: json- and pickle-friendly
        return rles

    # ------------------------------------------------------------------ distributed
    def synchronize(self) -> None:
        """Merges the predictions of every ``torch.distributed`` rank into every rank.

        A no-op unless ``torch.distributed`` is initialised. An image updated on several ranks
        (``DistributedSampler`` pads the last batch by repeating images) is kept once, from the
        lowest rank. Collective: every rank must call it.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._results)
        merged: dict[int, dict[str, list[dict]]] = {}
        for rank_results in gathered:
            for img_id, res in rank_results.items():
                merged.setdefault(img_id, res)
        self._results = merged

    # ------------------------------------------------------------------ evaluation
    def _gt(self) -> Any:
        if self.backend not in self._gt_objects:
            with _quiet(False):
                if self.backend == "faster_coco_eval":
                    from faster_coco_eval import COCO
                else:
                    from pycocotools.coco import COCO
                gt = COCO()
                gt.dataset = self._dataset
                gt.createIndex()
            self._gt_objects[self.backend] = gt
        return self._gt_objects[self.backend]

    def _load_results(self, gt: Any, records: list[dict]) -> Any:
        # loadRes adds keys to the records: give it copies so that summarize() can run again.
        records = [{**r, "segmentation": dict(r["segmentation"])} if "segmentation" in r else dict(r) for r in records]
        if records:
            return gt.loadRes(records)
        # pycocotools' loadRes indexes records[0]: build the empty result set by hand.
        dt = type(gt)()
        dt.dataset = {
            "images": list(self._dataset["images"]),
            "categories": copy.deepcopy(self._dataset["categories"]),
            "annotations": [],
        }
        dt.createIndex()
        return dt

    def evaluate(self, iou_type: str, verbose: bool = False) -> Any:
        """Runs the backend's COCOeval (evaluate + accumulate + summarize) for one iou type on the
        updated images and returns the COCOeval object (for per-category precision arrays etc.)."""
        if iou_type not in self.iou_types:
            raise ValueError(f"CocoEvaluator.evaluate: iou_type {iou_type!r} is not in iou_types {self.iou_types}")
        img_ids = self.img_ids
        if not img_ids:
            raise RuntimeError("CocoEvaluator.evaluate: no image was updated")
        records = [r for img_id in img_ids for r in self._results[img_id].get(iou_type, [])]
        with _quiet(verbose):
            gt = self._gt()
            dt = self._load_results(gt, records)
            if self.backend == "faster_coco_eval":
                from faster_coco_eval import COCOeval_faster

                coco_eval = COCOeval_faster(
                    gt, dt, iouType=iou_type, print_function=print if verbose else (lambda *a, **k: None)
                )
            else:
                from pycocotools.cocoeval import COCOeval

                coco_eval = COCOeval(gt, dt, iouType=iou_type)
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval

    def summarize(self, verbose: bool = False) -> dict[str, dict[str, float]]:
        """The COCO metrics of the updated images.

        Args:
            verbose: print the backend's usual summary lines.

        Returns:
            ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
            "ARm", "ARl": float}}``, values in [0, 1], or -1.0 where COCO defines none (no ground
            truth in that area range). With no image updated at all every value is -1.0.
        """
        results: dict[str, dict[str, float]] = {}
        for iou_type in self.iou_types:
            if not self._results:
                results[iou_type] = dict.fromkeys(_METRIC_KEYS, -1.0)
                continue
            stats = np.asarray(self.evaluate(iou_type, verbose).stats, dtype=np.float64)
            if stats.shape[0] < len(_METRIC_KEYS):
                raise RuntimeError(f"CocoEvaluator: the {self.backend} backend returned {stats.shape[0]} stats, expected 12")
            results[iou_type] = {k: float(v) for k, v in zip(_METRIC_KEYS, stats[: len(_METRIC_KEYS)])}
        return results


def format_metrics(results: Mapping[str, Any], digits: int = 3) -> str:
    """A Markdown table of COCO metrics, one row per metric, one column per iou type.

    Args:
        results: the dict of :meth:`CocoEvaluator.summarize` (``{iou_type: {metric: value}}``) or a
            single ``{metric: value}`` dict.
        digits: decimals shown. -1 (undefined in COCO) is shown as ``n/a``.
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("format_metrics: results must be a non-empty dict {iou_type: {metric: value}}")
    if all(not isinstance(v, Mapping) for v in results.values()):
        results = {"value": results}
    for name, metrics in results.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"format_metrics: results[{name!r}] must be a dict {{metric: value}}")
    columns = list(results)
    known = [k for k in _METRIC_KEYS if any(k in results[c] for c in columns)]
    extra = sorted({k for c in columns for k in results[c]} - set(_METRIC_KEYS))
    descriptions = dict(COCO_METRICS)

    def cell(v: Any) -> str:
        if v is None:
            return ""
        v = float(v)
        return "n/a" if v == -1.0 else f"{v:.{digits}f}"

    lines = [
        "| Metric | " + " | ".join(str(c) for c in columns) + " | Definition |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for key in known + extra:
        values = " | ".join(cell(results[c].get(key)) for c in columns)
        lines.append(f"| {key} | {values} | {descriptions.get(key, '')} |")
    return "\n".join(lines)
