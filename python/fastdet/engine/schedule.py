"""Learning-rate schedules per iteration: linear warm-up, then step decay or cosine."""

from __future__ import annotations

import math

import torch


def lr_factor(iteration: int, *, total_iters: int, warmup_iters: int, warmup_factor: float = 0.001,
              schedule: str = "multistep", milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at `iteration` (0-based).

    Warm-up ramps linearly from `warmup_factor` to 1 over `warmup_iters` (Goyal et al. 2017,
    "Accurate, Large Minibatch SGD"); "multistep" multiplies by `gamma` at each milestone
    (iterations), "cosine" decays to 0 at `total_iters` (Loshchilov & Hutter, SGDR).
    """
    if schedule == "multistep":
        factor = gamma ** sum(iteration >= m for m in milestones)
    elif schedule == "cosine":
        progress = min(1.0, iteration / max(1, total_iters))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"lr schedule must be 'multistep', 'cosine' or 'constant', got {schedule!r}")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class WarmupSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR over `lr_factor`, stepped once per iteration; its state (the iteration) resumes."""

    def __init__(self, optimizer, **kwargs):
        lr_factor(0, **kwargs)  # validates the arguments now, not at the first step
        self.schedule_args = kwargs
        super().__init__(optimizer, lambda it: lr_factor(it, **kwargs))

    def load_state_dict(self, state_dict):
        # LambdaLR restores the iteration but leaves the optimizer's lr as it was: set it too, so a
        # resumed run continues at the lr of the iteration it stopped at.
        super().load_state_dict(state_dict)
        factor = lr_factor(self.last_epoch, **self.schedule_args)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
