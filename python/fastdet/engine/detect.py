"""`fastdet detect`: run a trained model over images and write annotated copies plus JSON: boxes
(and instance masks) of a detector, the predicted class map of a semantic segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .evaluate import drop_background
from .progress import bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# colour of class / label c: PALETTE[c % len(PALETTE)]
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the named folders."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{str(p)!r} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
            found.append(p)
        else:
            raise FileNotFoundError(f"input {str(p)!r} does not exist")
    if not found:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def read_image(path: Path) -> torch.Tensor:
    """float32 [3,H,W] RGB in [0,1]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError as e:
        raise ValueError(f"{str(path)!r} could not be read as an image") from e
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


def draw(image: torch.Tensor, det: dict, classes: list[str]) -> torch.Tensor:
    """uint8 [3,H,W]: masks (alpha 0.45) and boxes with "<class> <score>" labels over the image."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = (image * 255).round().clamp(0, 255).to(torch.uint8)
    if len(det["boxes"]) == 0:
        return canvas
    colors = [PALETTE[int(l) % len(PALETTE)] for l in det["labels"]]
    if "masks" in det:
        canvas = draw_segmentation_masks(canvas, det["masks"][:, 0] > 0.5, alpha=0.45, colors=colors)
    names = [f"{classes[int(l)] if int(l) < len(classes) else int(l)} {float(s):.2f}"
             for l, s in zip(det["labels"], det["scores"])]
    return draw_bounding_boxes(canvas, det["boxes"], labels=names, colors=colors, width=2)


def draw_class_map(image: torch.Tensor, class_map: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """uint8 [3,H,W]: every non-background class of ``class_map`` [H, W] blended over the image in
    its PALETTE colour (alpha 0.5); background pixels keep the image."""
    from torchvision.utils import draw_segmentation_masks

    canvas = (image * 255).round().clamp(0, 255).to(torch.uint8)
    present = [int(c) for c in class_map.unique() if int(c) != 0]
    if not present:
        return canvas
    masks = torch.stack([class_map == c for c in present])
    return draw_segmentation_masks(canvas, masks, alpha=alpha, colors=[PALETTE[c % len(PALETTE)] for c in present])


def _unique_name(stem: str, used: set[str]) -> str:
    """`a`, then `a-1`, `a-2`, ... so images with one name in different folders don't overwrite."""
    name, i = stem, 0
    while name in used:
        i += 1
        name = f"{stem}-{i}"
    used.add(name)
    return name


@torch.no_grad()
def detect(model, images: list[Path], output: str | Path, *, classes: list[str], device: torch.device,
           score_thresh: float = 0.5, progress: bool = True) -> list[dict]:
    """Writes `<output>/<image stem>.png` (`-1`, `-2`, ... appended to repeated names) (drawn detections) and `<output>/detections.json`
    (one record per image: file, width, height, detections with box xyxy, score, label, class name;
    mask models add the mask's pixel area). Returns the records."""
    from PIL import Image

    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    records = []
    for path, image, out_stem in _each_image(model, images, output, device, progress, "detecting"):
        det = model([image.to(device)])[0]
        det = drop_background(det)
        keep = det["scores"] >= score_thresh
        det = {k: v[keep].cpu() for k, v in det.items()}
        Image.fromarray(draw(image, det, classes).permute(1, 2, 0).numpy()).save(f"{out_stem}.png")
        dets = []
        for i in range(len(det["boxes"])):
            label = int(det["labels"][i])
            rec = {"box": [round(float(v), 2) for v in det["boxes"][i]], "score": round(float(det["scores"][i]), 4),
                   "label": label, "class": classes[label] if label < len(classes) else str(label)}
            if "masks" in det:
                rec["mask_area"] = int((det["masks"][i, 0] > 0.5).sum())
            dets.append(rec)
        records.append({"file": str(path), "output": f"{out_stem}.png",
                        "width": image.shape[2], "height": image.shape[1], "detections": dets})
    (Path(output) / "detections.json").write_text(json.dumps(records, indent=1))
    return records


def _each_image(model, images: list[Path], output, device, progress: bool, what: str):
    """Puts the model in eval mode on `device`, makes `output`, and yields (path, image float [3,H,W],
    output path stem `<output>/<unique name>`) per image, advancing a progress bar."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    names: set[str] = set()
    with bar(progress) as pb:
        row = pb.add_task(what, total=len(images), info="")
        for path in images:
            yield path, read_image(path), str(out / _unique_name(path.stem, names))
            pb.advance(row)


def _save_class_map(class_map: torch.Tensor, path: Path) -> None:
    """A palette PNG whose pixel values are the class indices (readable as a label map)."""
    from PIL import Image

    im = Image.fromarray(class_map.to(torch.uint8).numpy(), mode="L").convert("P")
    im.putpalette([v for c in range(256) for v in (PALETTE[c % len(PALETTE)] if c else (0, 0, 0))])
    im.save(path)


@torch.no_grad()
def segment(model, images: list[Path], output: str | Path, *, classes: list[str], device: torch.device,
            progress: bool = True) -> list[dict]:
    """Runs a semantic segmenter (inputs normalised with the ImageNet statistics, as in training) and
    writes `<output>/<stem>.png` (the predicted classes blended over the image), `<output>/<stem>_mask.png`
    (the class map as a palette PNG of class indices) and `<output>/segmentation.json` (one record per
    image: file, outputs, width, height, and per class present its pixel count and colour, None for
    the undrawn background). Returns the records."""
    from PIL import Image

    from fastdet.data.transforms import Normalize

    normalize = Normalize()
    records = []
    for path, image, out_stem in _each_image(model, images, output, device, progress, "segmenting"):
        class_map = model(normalize(image)[0][None].to(device))["out"][0].argmax(0).cpu()
        Image.fromarray(draw_class_map(image, class_map).permute(1, 2, 0).numpy()).save(f"{out_stem}.png")
        _save_class_map(class_map, Path(f"{out_stem}_mask.png"))
        counts = torch.bincount(class_map.flatten(), minlength=len(classes))
        pixels = {classes[c] if c < len(classes) else str(c):
                  {"pixels": int(n), "color": list(PALETTE[c % len(PALETTE)]) if c else None}
                  for c, n in enumerate(counts.tolist()) if n}
        records.append({"file": str(path), "output": f"{out_stem}.png", "mask": f"{out_stem}_mask.png",
                        "width": image.shape[2], "height": image.shape[1], "classes": pixels})
    (Path(output) / "segmentation.json").write_text(json.dumps(records, indent=1))
    return records
