"""fastdet.data.CocoDetection on hand-made COCO files: polygon / RLE / uncompressed-RLE masks,
crowd and degenerate boxes, clipping, contiguous labels, collate and clear errors."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
Image = pytest.importorskip("PIL.Image")
from pycocotools import mask as coco_mask  # noqa: E402

from fastdet.data import CocoDetection, build_coco_dataset, collate_fn, decode_segmentation  # noqa: E402
from fastdet.data import transforms as T  # noqa: E402

H, W = 20, 30


def _uncompressed_rle(mask):
    """Column-major run lengths starting with a run of zeros (COCO's crowd format)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _expected_masks():
    poly = np.zeros((H, W), np.uint8)
    poly[2:8, 3:13] = 1  # polygon [3,2,13,2,13,8,3,8] rasterises to rows 2..7, cols 3..12
    rle = np.zeros((H, W), np.uint8)
    rle[10:15, 20:26] = 1
    rle[12, 27] = 1
    unc = np.zeros((H, W), np.uint8)
    unc[5:18, 0:4] = 1
    crowd = np.zeros((H, W), np.uint8)
    crowd[15:20, 10:20] = 1
    return poly, rle, unc, crowd


@pytest.fixture()
def coco_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    Image.fromarray(pixels[:, :, 0]).save(images / "gray.png")  # mode L -> converted to RGB
    poly, rle, unc, crowd = _expected_masks()
    enc = coco_mask.encode(np.asfortranarray(rle))
    anns = [
        # category ids 7 and 3 are not contiguous: labels follow sorted ids (3 -> 1, 7 -> 2)
        dict(id=1, image_id=10, category_id=7, bbox=[3, 2, 10, 6], area=60, iscrowd=0,
             segmentation=[[3, 2, 13, 2, 13, 8, 3, 8]]),
        dict(id=2, image_id=10, category_id=3, bbox=[20, 10, 8, 5], area=31, iscrowd=0,
             segmentation={"size": [H, W], "counts": enc["counts"].decode("ascii")}),
        dict(id=3, image_id=10, category_id=3, bbox=[-2, 5, 6, 13], area=52, iscrowd=0,
             segmentation=_uncompressed_rle(unc)),  # box partly left of the image: clipped
        dict(id=4, image_id=10, category_id=7, bbox=[10, 15, 10, 5], area=50, iscrowd=1,
             segmentation=_uncompressed_rle(crowd)),  # crowd: not in the target
        dict(id=5, image_id=10, category_id=7, bbox=[5, 5, 0, 4], area=0, iscrowd=0,
             segmentation=[[5, 5, 5, 9, 5, 5]]),  # zero width: dropped
        dict(id=6, image_id=10, category_id=7, bbox=[40, 5, 5, 5], area=25, iscrowd=0,
             segmentation=[[40, 5, 45, 5, 45, 10]]),  # entirely outside: no area after clipping
    ]
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": H, "width": W},
            {"id": 4, "file_name": "gray.png", "height": H, "width": W},
        ],
        "annotations": anns,
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return images, ann_file, data, pixels


def test_targets_and_masks(coco_dir):
    images, ann_file, _, pixels = coco_dir
    ds = CocoDetection(images, ann_file, masks=True)
    assert ds.ids == [4, 10] and len(ds) == 2
    assert ds.classes == ["__background__", "dog", "cat"]
    assert ds.cat_id_to_label == {3: 1, 7: 2} and ds.label_to_cat_id == {1: 3, 2: 7}

    image, target = ds[1]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    np.testing.assert_array_equal((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), pixels)
    assert target["image_id"] == 10
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[3, 2, 13, 8], [20, 10, 28, 15], [0, 5, 4, 18]], dtype=torch.float32)
    )
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1, 1]
    assert target["area"].dtype == torch.float32 and target["area"].tolist() == [60, 31, 52]
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0, 0, 0]
    poly, rle, unc, _ = _expected_masks()
    assert target["masks"].dtype == torch.uint8
    np.testing.assert_array_equal(target["masks"].numpy(), np.stack([poly, rle, unc]))
    # Crowd and degenerate annotations stay in the COCO ground truth for evaluation.
    assert len(ds.coco.getAnnIds(imgIds=[10])) == 6

    gray, empty = ds[0]
    assert gray.shape == (3, H, W) and torch.equal(gray[0], gray[1])
    assert empty["image_id"] == 4 and empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, H, W)
    assert "masks" not in CocoDetection(images, ann_file)[1][1]


def test_decode_segmentation_forms():
    poly, rle, unc, crowd = _expected_masks()
    np.testing.assert_array_equal(decode_segmentation([[3, 2, 13, 2, 13, 8, 3, 8]], H, W), poly)
    # Two polygons are unioned; degenerate polygons (< 3 vertices) contribute nothing.
    two = decode_segmentation([[3, 2, 13, 2, 13, 8, 3, 8], [20, 10, 26, 10, 26, 15, 20, 15], [1, 1, 2, 2]], H, W)
    assert two.sum() == poly.sum() + 30
    enc = coco_mask.encode(np.asfortranarray(rle))
    np.testing.assert_array_equal(decode_segmentation({"size": [H, W], "counts": enc["counts"]}, H, W), rle)
    np.testing.assert_array_equal(decode_segmentation(_uncompressed_rle(crowd), H, W), crowd)
    with pytest.raises(ValueError, match="size"):
        decode_segmentation({"size": [H + 1, W], "counts": enc["counts"]}, H, W)
    with pytest.raises(ValueError, match="sum"):
        decode_segmentation({"size": [H, W], "counts": [3, 4]}, H, W)
    with pytest.raises(ValueError, match="polygon"):
        decode_segmentation([[1, 2, 3]], H, W)
    with pytest.raises(ValueError, match="unsupported"):
        decode_segmentation("nope", H, W)


def test_transforms_and_collate(coco_dir):
    images, ann_file, _, _ = coco_dir
    ds = CocoDetection(images, ann_file, transforms=T.Compose([T.RandomHorizontalFlip(1.0), T.Resize(40)]), masks=True)
    image, target = ds[1]
    assert image.shape == (3, 40, 60) and target["masks"].shape == (3, 40, 60)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([34.0, 4.0, 54.0, 16.0]))
    loader = torch.utils.data.DataLoader(CocoDetection(images, ann_file), batch_size=2, collate_fn=collate_fn)
    batch_images, batch_targets = next(iter(loader))
    assert isinstance(batch_images, tuple) and len(batch_images) == 2 and batch_images[1].shape == (3, H, W)
    assert [t["image_id"] for t in batch_targets] == [4, 10]
    assert collate_fn([]) == ()


def test_build_coco_dataset_layout(tmp_path, coco_dir):
    images, ann_file, data, _ = coco_dir
    (tmp_path / "root" / "annotations").mkdir(parents=True)
    images.rename(tmp_path / "root" / "val2017")
    (tmp_path / "root" / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    ds = build_coco_dataset(tmp_path / "root", "val2017")
    assert ds.transforms is None and len(ds) == 2
    train = build_coco_dataset(tmp_path / "root", "val2017", train=True, masks=True)
    flips = set()
    torch.manual_seed(0)
    for _ in range(12):
        flips.add(train[1][1]["boxes"][0, 0].item())
    assert flips == {3.0, 17.0}  # both the original and the flipped box occur
    with pytest.raises(FileNotFoundError, match="image_dir"):
        build_coco_dataset(tmp_path / "root", "train2017")


def _write(tmp_path, data):
    f = tmp_path / "bad.json"
    f.write_text(data if isinstance(data, str) else json.dumps(data))
    return f


def test_errors(tmp_path, coco_dir):
    images, ann_file, data, _ = coco_dir
    with pytest.raises(FileNotFoundError, match="CocoDetection: image_dir"):
        CocoDetection(tmp_path / "missing", ann_file)
    with pytest.raises(FileNotFoundError, match="CocoDetection: ann_file"):
        CocoDetection(images, tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(images, _write(tmp_path, "{not json"))
    with pytest.raises(ValueError, match="'images'"):
        CocoDetection(images, _write(tmp_path, {"annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="JSON object"):
        CocoDetection(images, _write(tmp_path, [1, 2]))
    bad = json.loads(json.dumps(data))
    bad["annotations"][0]["image_id"] = 99
    with pytest.raises(ValueError, match="annotation 1 refers to unknown image_id 99"):
        CocoDetection(images, _write(tmp_path, bad))
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["category_id"] = 5
    with pytest.raises(ValueError, match="annotation 2 refers to unknown category_id 5"):
        CocoDetection(images, _write(tmp_path, bad))
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["segmentation"] = {"size": [H, W + 1], "counts": "abc"}
    with pytest.raises(ValueError, match="annotation 2 .*size"):
        CocoDetection(images, _write(tmp_path, bad), masks=True)[1]
    bad = json.loads(json.dumps(data))
    del bad["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match="masks=True but annotation 1"):
        CocoDetection(images, _write(tmp_path, bad), masks=True)[1]
    assert CocoDetection(images, _write(tmp_path, bad))[1][1]["boxes"].shape == (3, 4)  # fine without masks
    bad = json.loads(json.dumps(data))
    bad["images"][1]["file_name"] = "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        CocoDetection(images, _write(tmp_path, bad))[0]
    bad = json.loads(json.dumps(data))
    bad["images"][1]["height"] = H + 5
    with pytest.raises(ValueError, match="on disk"):
        CocoDetection(images, _write(tmp_path, bad))[0]
    with pytest.raises(ValueError, match="transforms"):
        CocoDetection(images, ann_file, transforms=3)
