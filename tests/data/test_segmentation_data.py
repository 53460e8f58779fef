"""Semantic segmentation data: class maps of the shapes dataset, the folder / VOC readers, the
joint image + label transforms and the padding collate."""

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from fastdet.data import (CocoDetection, SegmentationFolder, build_segmentation_dataset, generate_shapes,  # noqa: E402
                          segmentation_collate)
from fastdet.data import segmentation_transforms as ST  # noqa: E402
from fastdet.data import shapes as shapes_module  # noqa: E402
from fastdet.data.transforms import Compose  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, split="train", num_images=6, image_size=48, seed=3, max_objects=6)
    return root


def test_shapes_class_maps_are_the_painted_shapes(shapes):
    ds = build_segmentation_dataset(shapes, "train")
    assert ds.classes == ["__background__", "rectangle", "ellipse", "triangle"]
    for index in range(len(ds)):
        image, label = ds[index]
        assert label.dtype == torch.int64 and label.shape == image.shape[-2:] == (48, 48)
        # independent: re-render the image and take the label of the shape painted last at each pixel
        _, visible = shapes_module._render(shapes_module._image_rng(3, "train", index), 48, 48, 1, 6)
        want = np.zeros((48, 48), dtype=np.int64)
        for inst, mask in visible:
            want[mask] = inst.label
        assert np.array_equal(label.numpy(), want)
    assert any(ds[i][1].unique().numel() > 2 for i in range(len(ds)))  # several classes in one image


def test_coco_overlaps_paint_later_annotations_over_earlier_ones(shapes, tmp_path):
    import json

    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    img = data["images"][0]
    h, w = img["height"], img["width"]
    data["annotations"] = [
        {"id": 1, "image_id": img["id"], "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]},
        {"id": 2, "image_id": img["id"], "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        {"id": 3, "image_id": img["id"], "category_id": 2, "bbox": [40, 40, 5, 5], "area": 25, "iscrowd": 1,
         "segmentation": [[40, 40, 45, 40, 45, 45, 40, 45]]},
    ]
    data["images"] = [img]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_x.json").write_text(json.dumps(data))
    (tmp_path / "x").symlink_to(shapes / "train")
    _, label = build_segmentation_dataset(tmp_path, "x")[0]
    assert label[5, 5] == 1 and label[15, 15] == 3 and label[25, 25] == 3 and label[35, 35] == 0
    assert label[42, 42] == 255  # crowd -> ignore
    assert label.shape == (h, w)


def _write(path, array, mode=None, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette:
        im = im.convert("P") if im.mode != "P" else im
        im.putpalette([v for i in range(256) for v in ((i * 40) % 256, (i * 90) % 256, 255 - i)])
    im.save(path)


def _folder(root, split="train", n=3, size=(20, 30)):
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(root / split / "images" / f"im{i}.png", rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
        label = rng.integers(0, 4, size=size, dtype=np.uint8)
        label[0, 0] = 255
        im = Image.fromarray(label, mode="L").convert("P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        im.save(root / split / "masks" / f"im{i}.png")
    return root


def test_folder_layout_reads_palette_indices_and_infers_classes(tmp_path):
    ds = build_segmentation_dataset(_folder(tmp_path), "train")
    assert isinstance(ds, SegmentationFolder) and ds.layout == "folders" and len(ds) == 3
    assert ds.classes == ["__background__", "class_1", "class_2", "class_3"]
    image, label = ds[0]
    assert image.shape == (3, 20, 30) and label.shape == (20, 30) and label[0, 0] == 255
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 255}
    (tmp_path / "classes.txt").write_text("bg\na\nb\nc\n")
    assert SegmentationFolder(tmp_path, "train").classes == ["bg", "a", "b", "c"]


def test_voc_layout(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("2007_000032", "2007_000039"):
        _write(tmp_path / "JPEGImages" / f"{stem}.jpg", rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8))
        label = Image.fromarray(rng.integers(0, 21, size=(16, 24), dtype=np.uint8), mode="L").convert("P")
        (tmp_path / "SegmentationClass").mkdir(exist_ok=True)
        label.save(tmp_path / "SegmentationClass" / f"{stem}.png")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n2007_000039\n")
    ds = build_segmentation_dataset(tmp_path, "val")
    assert ds.layout == "voc" and len(ds) == 2 and len(ds.classes) == 21
    assert ds[1][1].shape == (16, 24) and int(ds[1][1].max()) <= 20


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has neither train/images/"):
        build_segmentation_dataset(tmp_path, "train")
    _folder(tmp_path)
    (tmp_path / "train" / "masks" / "im1.png").unlink()
    with pytest.raises(ValueError, match="have no label map in masks/ with the same stem: im1"):
        SegmentationFolder(tmp_path, "train")
    _write(tmp_path / "train" / "masks" / "im1.png", np.zeros((10, 10), dtype=np.uint8), mode="L")
    ds = SegmentationFolder(tmp_path, "train")
    with pytest.raises(ValueError, match=r"is \(20, 30\) \(h, w\) but its label map .* is \(10, 10\)"):
        ds[1]
    _write(tmp_path / "train" / "masks" / "im1.png", np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="has mode 'RGB'; expected a palette or grey-scale PNG"):
        SegmentationFolder(tmp_path, "train")  # class inference reads every label map
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="VOC layout without"):
        SegmentationFolder(tmp_path / "voc", "train")


def _pair(h=21, w=33):
    image = torch.rand(3, h, w)
    label = torch.arange(h * w).reshape(h, w) % 5
    return image, label


def test_transforms_keep_image_and_label_aligned():
    torch.manual_seed(0)
    # the label is a function of the image here: it must stay so after every transform
    image = torch.zeros(3, 40, 60)
    image[:, 10:30, 5:25] = 1.0
    label = (image[0] > 0.5).long()
    t = Compose([ST.RandomResize(20, 80), ST.RandomCrop(32), ST.RandomHorizontalFlip(0.5)])
    for _ in range(10):
        im, lb = t(image, label)
        assert im.shape == (3, 32, 32) and lb.shape == (32, 32)
        inside = lb != 255
        agree = ((im[0] > 0.5).long() == lb)[inside].float().mean()
        assert agree > 0.95  # only bilinear edge pixels may differ
        assert set(lb.unique().tolist()) <= {0, 1, 255}  # nearest: no new label values


def test_crop_pads_labels_with_ignore_and_flip_is_exact():
    image, label = _pair(10, 12)
    im, lb = ST.RandomCrop((16, 20))(image, label)
    assert im.shape == (3, 16, 20) and (lb[10:] == 255).all() and (lb[:, 12:] == 255).all()
    assert torch.equal(lb[:10, :12], label) and (im[:, 10:] == 0).all()
    im, lb = ST.RandomHorizontalFlip(1.0)(image, label)
    assert torch.equal(lb, label.flip(-1)) and torch.equal(im, image.flip(-1))


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="RandomResize: max_size"):
        ST.RandomResize(10, 5)
    with pytest.raises(ValueError, match="RandomCrop: size must be a positive int"):
        ST.RandomCrop(0)
    with pytest.raises(ValueError, match="train=True needs crop_size"):
        ST.segmentation_transforms(train=True)
    with pytest.raises(ValueError, match="scale_range must be"):
        ST.segmentation_transforms(train=True, crop_size=8, scale_range=(2.0, 1.0))
    names = [type(t).__name__ for t in ST.segmentation_transforms(True, 8, scale_range=(1, 1)).transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "Normalize"]


def test_collate_pads_with_zero_and_ignore():
    a, b = _pair(10, 12), _pair(14, 8)
    images, labels = segmentation_collate([a, b])
    assert images.shape == (2, 3, 14, 12) and labels.shape == (2, 14, 12)
    assert torch.equal(labels[0, :10, :12], a[1]) and (labels[0, 10:] == 255).all() and (labels[1, :, 8:] == 255).all()
    assert (images[1, :, :, 8:] == 0).all()


def test_detection_reader_unchanged(shapes):
    assert isinstance(CocoDetection(shapes / "train", shapes / "annotations" / "instances_train.json")[0][1], dict)
