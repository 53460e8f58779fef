"""CornerNet learns: the light hourglass variant from scratch on the generated shapes data reaches a
stated box AP50 on the held-out split."""

import pytest
import torch

from fastdet.engine import TrainConfig, fit

EPOCHS = 10
THRESHOLD = 0.3


# Measured on this 2-core machine (shared with another helper's training, load ~1.9) with exactly this
# set-up (256 training images of 128 px, batch 8, AdamW 2e-3, lr / 10 after epochs 7 and 9, one
# thread), 2026-12-06: box AP50 0.487 at 10 epochs (the same in two runs); 148.0 s user + 2.5 s sys,
# 151 s wall, and 135.8 s user + 2.4 s sys, 139 s wall, for the whole pytest run (data generation
# included). A 20-epoch run of the same recipe (lr steps 14, 18) was at AP50 0.28 after epoch 4,
# 0.40 after 8, 0.56 after 16 and 0.54 after 20.
@pytest.mark.slow
def test_cornernet_learns_shapes(learning_shapes, tmp_path):
    torch.set_num_threads(1)  # measured with one thread (conftest restores the count after the test)
    torch.manual_seed(0)
    cfg = TrainConfig(model="cornernet_hourglass_light", data=str(learning_shapes), output=str(tmp_path / "run"),
                      epochs=EPOCHS, batch_size=8, lr=2e-3, workers=0, warmup_iters=50, eval_every=0, progress=False,
                      seed=0, model_kwargs=dict(min_size=128, max_size=128))
    result = fit(cfg)
    ap50 = result["metrics"]["bbox"]["AP50"]
    print("cornernet_hourglass_light box AP50", ap50)
    assert ap50 >= THRESHOLD, f"cornernet_hourglass_light: box AP50 {ap50:.3f} < {THRESHOLD}"
