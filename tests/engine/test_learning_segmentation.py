"""The segmentation learning test: a small U-Net trained from scratch on generated shapes class maps,
on CPU, reaches a stated mIoU on a held-out split.

What a defect reaches: predicting background everywhere gives mIoU ~0.17 on this data (background
IoU ~0.67 averaged with three zeros); a model that only separates shapes from background and calls
them all one class gets about (0.9 + 0.3) / 4 = 0.3 at best. Broken labels (misaligned with the
image, wrong class mapping) or a broken loss / ignore index stay near the background level. The
threshold (0.3) asks for about twice the background level and for more than one shape class."""

import pytest
import torch

from fastdet.engine import TrainConfig, fit

TRAIN_IMAGES, VAL_IMAGES, SIZE = 512, 64, 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from fastdet.data import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, split="train", num_images=TRAIN_IMAGES, image_size=SIZE, seed=0)
    generate_shapes(root, split="val", num_images=VAL_IMAGES, image_size=SIZE, seed=1)
    return root


# Set-up: U-Net depth 4, base width 8 (~0.12 M parameters), 512 training images of 64 px, 20
# epochs of batch 8 (1280 steps), AdamW 1e-3 with cosine decay, cross-entropy, flips only (random
# rescaling slows learning on this data a lot: at 0.5-2x the same budget stays near background), one
# thread. Measured on this 2-core machine while other jobs shared it (load average 6-8), 2026-12-06,
# two runs: mIoU 0.365 both times (background 0.91, rectangle 0.30, ellipse 0.25, triangle 0.0; the
# run is deterministic), 110 s and 116 s CPU (user + sys), 255 s and 289 s wall under that load (one
# thread, so alone the wall time is about the CPU time). Trained for 30 epochs it reached 0.41
# (~170 s CPU); the threshold 0.3 leaves room for machine differences.
@pytest.mark.slow
def test_unet_learns_shapes_class_maps(shapes, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is small: a second thread costs more CPU time than it saves
    try:
        torch.manual_seed(0)
        cfg = TrainConfig(model="unet", data=str(shapes), output=str(tmp_path), epochs=20, batch_size=8, workers=0,
                          lr=1e-3, lr_schedule="cosine", warmup_iters=20, eval_every=0, progress=False, seed=0,
                          model_kwargs=dict(depth=4, base_width=8), crop_size=SIZE, scale_range=(1.0, 1.0))
        result = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    metrics = result["metrics"]
    print("unet", {k: round(metrics[k], 3) for k in ("mIoU", "pixel_acc", "mean_acc")}, metrics["IoU"])
    assert metrics["mIoU"] >= 0.3, f"mIoU {metrics['mIoU']:.3f} < 0.3"
