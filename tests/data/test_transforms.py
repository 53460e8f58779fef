"""fastdet.data.transforms: flip / resize consistency between image, boxes and masks."""

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from fastdet.data import transforms as T  # noqa: E402


def _edge_boxes(masks):
    out = []
    for m in masks.bool():
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def _sample(h=37, w=53, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n, h, w), dtype=torch.uint8)
    for i in range(n):
        x0 = int(torch.randint(0, w - 6, (), generator=g))
        y0 = int(torch.randint(0, h - 6, (), generator=g))
        x1 = x0 + 1 + int(torch.randint(2, w - x0, (), generator=g))
        y1 = y0 + 1 + int(torch.randint(2, h - y0, (), generator=g))
        masks[i, y0 : min(y1, h), x0 : min(x1, w)] = 1
    masks[0, :3, :3] = 1  # a mask touching the image corner (not one lone pixel: shrinking may drop that)
    target = {
        "boxes": _edge_boxes(masks),
        "labels": torch.arange(1, n + 1),
        "masks": masks,
        "area": masks.sum((1, 2)).float(),
        "image_id": 5,
    }
    return torch.rand((3, h, w), generator=g), target


def test_flip_twice_is_identity_and_boxes_follow_masks():
    image, target = _sample()
    flip = T.RandomHorizontalFlip(1.0)
    fi, ft = flip(image, target)
    assert torch.equal(fi, image.flip(-1))
    assert torch.equal(ft["boxes"], _edge_boxes(ft["masks"]))
    assert ft["labels"] is target["labels"] and ft["image_id"] == 5
    assert target["masks"][0, 0, 0] == 1 and ft["masks"][0, 0, -1] == 1  # input untouched
    ii, tt = flip(fi, ft)
    assert torch.equal(ii, image)
    for k in ("boxes", "masks", "labels", "area"):
        assert torch.equal(tt[k], target[k])
    same_image, same = T.RandomHorizontalFlip(0.0)(image, target)
    assert same_image is image and same is target
    assert flip(image, None)[1] is None


def test_flip_probability_is_seeded():
    image, target = _sample()
    flip = T.RandomHorizontalFlip(0.5)
    torch.manual_seed(1)
    a = [flip(image, target)[1]["boxes"][1, 0].item() for _ in range(20)]
    torch.manual_seed(1)
    b = [flip(image, target)[1]["boxes"][1, 0].item() for _ in range(20)]
    assert a == b and len(set(a)) == 2


@pytest.mark.parametrize(
    "hw, min_size, max_size, out",
    [((37, 53), 74, None, (74, 106)), ((37, 53), 64, 80, (56, 80)), ((60, 40), 20, 1000, (30, 20)), ((37, 53), 37, None, (37, 53))],
)
def test_resize_sizes_boxes_masks(hw, min_size, max_size, out):
    image, target = _sample(*hw)
    ri, rt = T.Resize(min_size, max_size)(image, target)
    assert ri.shape == (3, *out) and ri.dtype == torch.float32
    assert rt["masks"].shape == (4, *out) and rt["masks"].dtype == torch.uint8
    sx, sy = out[1] / hw[1], out[0] / hw[0]
    torch.testing.assert_close(rt["boxes"], target["boxes"] * torch.tensor([sx, sy, sx, sy]))
    torch.testing.assert_close(rt["area"], target["area"] * sx * sy)
    assert (rt["boxes"] - _edge_boxes(rt["masks"])).abs().max() <= 1.0  # boxes = bbox of masks within 1 px
    assert torch.equal(rt["labels"], target["labels"])
    if out == hw:
        assert ri is image and rt is target


def test_resize_image_values_and_empty_target():
    image = torch.full((3, 10, 20), 0.25)
    ri, rt = T.Resize(5)(image, {"boxes": torch.zeros((0, 4)), "masks": torch.zeros((0, 10, 20), dtype=torch.uint8)})
    torch.testing.assert_close(ri, torch.full((3, 5, 10), 0.25))
    assert rt["boxes"].shape == (0, 4) and rt["masks"].shape == (0, 5, 10)
    sizes = set()
    torch.manual_seed(0)
    multi = T.Resize((8, 12, 16), max_size=100)
    for _ in range(30):
        sizes.add(multi(image, None)[0].shape[-2])
    assert sizes == {8, 12, 16}


def test_to_tensor_normalize_compose():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    t, target = T.ToTensor()(Image.fromarray(pixels), {"x": 1})
    assert t.dtype == torch.float32 and t.shape == (3, 4, 5) and target == {"x": 1}
    torch.testing.assert_close(t, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert torch.equal(T.to_tensor(torch.from_numpy(pixels).permute(2, 0, 1)), t)
    n, _ = T.Normalize((0.5, 0.5, 0.5), (0.5, 0.25, 2.0))(t, None)
    torch.testing.assert_close(n[1], (t[1] - 0.5) / 0.25)
    c = T.Compose([T.ToTensor(), T.RandomHorizontalFlip(1.0), T.Normalize()])
    out, _ = c(Image.fromarray(pixels), None)
    torch.testing.assert_close(out, T.Normalize()(t.flip(-1))[0])
    assert "RandomHorizontalFlip(p=1.0)" in repr(c)
    # PIL input to the other transforms is converted too.
    assert T.RandomHorizontalFlip(1.0)(Image.fromarray(pixels))[0].shape == (3, 4, 5)


def test_transform_errors():
    with pytest.raises(ValueError, match="RandomHorizontalFlip: p"):
        T.RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="Resize: min_size"):
        T.Resize(0)
    with pytest.raises(ValueError, match="Resize: min_size"):
        T.Resize([])
    with pytest.raises(ValueError, match="Resize: max_size"):
        T.Resize(10, max_size=-1)
    with pytest.raises(ValueError, match="Normalize: std"):
        T.Normalize((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="Normalize: mean and std"):
        T.Normalize((0, 0), (1, 1))
    with pytest.raises(ValueError, match="to_tensor: image"):
        T.to_tensor(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="to_tensor: image"):
        T.to_tensor(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="Compose"):
        T.Compose([1])
