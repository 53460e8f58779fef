"""The benchmark harness shared by `fastdet bench` and the pytest-benchmark files in bench/.

Each op has a module `fastdet.bench.<op>` with a function
    cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]
that builds its inputs once and returns closures for fastdet and for the peer (torchvision or
the named peer). Every figure reported is a ratio of the two measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Case:
    op: str                      # fastdet op name, e.g. "nms"
    label: str                   # shape description, e.g. "N=20000 clustered"
    size: int                    # the number --sizes filters on (boxes, rows, ...)
    device: str
    fastdet: Callable[[], object]
    peer: Callable[[], object] | None = None
    peer_name: str = "torchvision"
    bytes_moved: int | None = None  # minimum DRAM traffic, for memory-bound ops (GB/s, % of peak)
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}[{self.device}:{self.label}]"


@dataclass
class Timing:
    median_s: float
    samples: list = field(default_factory=list)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, *, warmup: int = 3, repeats: int = 15,
            min_time_s: float = 0.0) -> Timing:
    """Median wall time of fn(). CUDA: CUDA events around each call after warm-up."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start_all < min_time_s and len(samples) < 10 * repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), samples)
