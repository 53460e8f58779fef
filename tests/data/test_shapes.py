"""fastdet.data.generate_shapes: determinism, COCO validity, masks vs boxes, occlusion rule,
round trip through the reader, CLI and argument errors."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("PIL")
from pycocotools import mask as coco_mask  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from fastdet.data import SHAPES_CLASSES, CocoDetection, build_coco_dataset, generate_shapes  # noqa: E402
from fastdet.data import shapes as shapes_mod  # noqa: E402


def _edge_boxes(masks):
    """xyxy pixel-edge boxes of bool/uint8 masks [N, H, W] (x2 = last column + 1)."""
    out = []
    for m in np.asarray(masks).astype(bool):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return np.array(out, dtype=np.float32).reshape(-1, 4)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, "train", num_images=24, image_size=96, min_objects=2, max_objects=6, seed=3)
    return root


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes(tmp_path):
    kw = dict(num_images=4, image_size=64, seed=11)
    generate_shapes(tmp_path / "a", "val", **kw)
    generate_shapes(tmp_path / "b", "val", **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["annotations/instances_val.json"] + [f"val/{i:06d}.png" for i in range(4)]
    assert a == b
    generate_shapes(tmp_path / "c", "val", **{**kw, "seed": 12})
    assert _files(tmp_path / "c")["val/000000.png"] != a["val/000000.png"]
    # Image i does not depend on how many images were asked for; splits differ.
    generate_shapes(tmp_path / "d", "val", **{**kw, "num_images": 2})
    assert _files(tmp_path / "d")["val/000001.png"] == a["val/000001.png"]
    generate_shapes(tmp_path / "a", "train", **kw)
    assert _files(tmp_path / "a")["train/000000.png"] != a["val/000000.png"]


def test_pycocotools_loads_json(shapes_root):
    ann_file = shapes_root / "annotations" / "instances_train.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    assert sorted(coco.getImgIds()) == list(range(1, 25))
    assert [coco.cats[i]["name"] for i in (1, 2, 3)] == list(SHAPES_CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert min(a["id"] for a in anns) == 1  # COCOeval treats id 0 as unmatched
    assert len({a["id"] for a in anns}) == len(anns)
    assert {a["category_id"] for a in anns} == {1, 2, 3}
    assert all(a["iscrowd"] == 0 for a in anns)
    # All three encodings the reader must handle start here with two: polygons and compressed RLE.
    kinds = {"polygon" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__ for a in anns}
    assert kinds == {"polygon", "str"}
    # Several sizes in COCO's sense, including small objects.
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and (areas >= 32**2).any()
    # Evaluating the ground truth against itself gives AP 1 (valid ids, areas, boxes for COCOeval).
    from pycocotools.cocoeval import COCOeval

    keys = ("image_id", "category_id", "bbox", "segmentation")
    dets = [{**{k: json.loads(json.dumps(a[k])) for k in keys}, "score": 1.0} for a in anns]
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), iou_type)
            ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_masks_agree_with_boxes_and_do_not_overlap(shapes_root):
    data = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    by_image = {}
    for ann in data["annotations"]:
        seg = ann["segmentation"]
        rle = coco_mask.frPyObjects(seg, 96, 96) if isinstance(seg, list) else {"size": seg["size"], "counts": seg["counts"].encode()}
        if isinstance(rle, list):
            rle = coco_mask.merge(rle)
        m = coco_mask.decode(rle).astype(bool)
        assert m.sum() >= shapes_mod.MIN_VISIBLE_PIXELS
        assert ann["area"] == m.sum()
        x0, y0, x1, y1 = _edge_boxes(m[None])[0]
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        np.testing.assert_array_equal(coco_mask.toBbox(rle), ann["bbox"])
        by_image.setdefault(ann["image_id"], []).append(m)
    for masks in by_image.values():  # visible parts of different instances are disjoint
        assert np.stack(masks).sum(0).max() == 1


def test_occlusion_rule_and_visible_masks():
    occluded = 0
    for index in range(30):
        image, instances = shapes_mod._render(shapes_mod._image_rng(0, "train", index), 80, 96, 3, 6)
        assert image.shape == (80, 96, 3) and image.dtype == np.uint8
        for inst, visible in instances:
            drawn = int(inst.drawn.sum())
            assert not (visible & ~inst.drawn).any()  # visible part lies inside the drawn shape
            assert visible.sum() >= max(shapes_mod.MIN_VISIBLE_PIXELS, shapes_mod.MIN_VISIBLE_FRACTION * drawn)
            occluded += int(visible.sum() < drawn)
            # The pixels of the visible mask carry the instance's colour (up to the added noise).
            mean = image[visible].astype(np.float64).mean(0)
            assert np.abs(mean - inst.colour).max() < 25
    assert occluded > 0  # overlaps do happen


def test_reader_round_trip(shapes_root):
    ds = build_coco_dataset(shapes_root, "train", masks=True)
    assert len(ds) == 24 and ds.classes == ["__background__", *SHAPES_CLASSES]
    assert ds.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    for i in range(0, 24, 3):
        image, target = ds[i]
        expected_image, instances = shapes_mod._render(shapes_mod._image_rng(3, "train", i), 96, 96, 2, 6)
        assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
        np.testing.assert_array_equal((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), expected_image)
        assert target["image_id"] == i + 1
        masks = np.stack([m for _, m in instances]).astype(np.uint8)
        np.testing.assert_array_equal(target["masks"].numpy(), masks)
        assert target["labels"].tolist() == [inst.label for inst, _ in instances]
        np.testing.assert_array_equal(target["boxes"].numpy(), _edge_boxes(masks))
        np.testing.assert_array_equal(target["area"].numpy(), masks.sum((1, 2)).astype(np.float32))


def test_progress_and_cli(tmp_path, capsys):
    generate_shapes(tmp_path / "p", num_images=2, image_size=48, progress=True)
    assert len(list((tmp_path / "p" / "train").glob("*.png"))) == 2
    rc = shapes_mod.main(["--root", str(tmp_path / "cli"), "--split", "val", "--num-images", "3", "--image-size", "64", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "instances_val.json" in out
    ds = CocoDetection(tmp_path / "cli" / "val", tmp_path / "cli" / "annotations" / "instances_val.json")
    assert len(ds) == 3 and ds[2][0].shape == (3, 64, 64)
    with pytest.raises(SystemExit):
        shapes_mod.main(["--root", str(tmp_path / "cli"), "--num-images", "-1"])


def test_rectangular_images_and_zero_objects(tmp_path):
    ann = generate_shapes(tmp_path, "t", num_images=2, image_size=(48, 80), min_objects=0, max_objects=0)
    data = json.loads(ann.read_text())
    assert data["annotations"] == [] and data["images"][0]["height"] == 48 and data["images"][0]["width"] == 80
    image, target = CocoDetection(tmp_path / "t", ann, masks=True)[0]
    assert image.shape == (3, 48, 80) and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 48, 80)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_images=-1), "num_images"),
        (dict(num_images=2.5), "num_images"),
        (dict(image_size=8), "image_size"),
        (dict(image_size=(64, 64, 3)), "image_size"),
        (dict(min_objects=3, max_objects=2), "max_objects"),
        (dict(split="a/b"), "split"),
        (dict(split=""), "split"),
        (dict(seed=-1), "seed"),
    ],
)
def test_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=f"generate_shapes: .*{match}"):
        generate_shapes(tmp_path, **kwargs)


@pytest.mark.parametrize("min_size", [150, 60])
def test_flip_resize_boxes_follow_masks(shapes_root, min_size):
    from fastdet.data import transforms as T

    ds = build_coco_dataset(shapes_root, "train", masks=True)
    ds.transforms = T.Compose([T.RandomHorizontalFlip(1.0), T.Resize(min_size)])
    scale = min_size / 96
    # Nearest-exact mask resizing puts straight edges within 1 px of the scaled box; when shrinking,
    # a shape tip thinner than one output pixel may vanish, so allow that much more.
    bound = 1.0 if scale >= 1 else 1.0 + 1.0 / scale
    for i in range(0, 24, 2):
        image, target = ds[i]
        assert image.shape == (3, min_size, min_size) and target["masks"].shape[-2:] == (min_size, min_size)
        assert (target["masks"].flatten(1).sum(1) > 0).all()
        diff = (target["boxes"] - torch.from_numpy(_edge_boxes(target["masks"].numpy()))).abs()
        assert diff.max() <= bound
