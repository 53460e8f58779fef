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
    # compute-bound ops: the GEMM arithmetic (2 per multiply-add) and its dtype (TFLOP/s, % of the
    # device's math peak for that dtype)
    flops: int | None = None
    math_dtype: torch.dtype | None = None

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
    """Median wall time of fn(). CUDA: CUDA events around each call after warm-up. A call that takes
    over a second (a slow peer such as YOLOX's per-image loop) is warmed up once and timed 3 times,
    so the full suite stays a few minutes long."""
    t0 = time.perf_counter()
    fn()
    _sync(device)
    if time.perf_counter() - t0 > 1.0:
        warmup, repeats, min_time_s = 1, min(repeats, 3), 0.0
    for _ in range(warmup - 1):
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


def pytest_benchmark_test(suite):
    """A pytest-benchmark test over suite.cases("cpu", quick=True), fastdet and peer side by side;
    bench/bench_<op>.py is `test_<op> = pytest_benchmark_test(fastdet.bench.<op>)`."""
    import pytest

    @pytest.mark.parametrize("impl", ["fastdet", "peer"])
    @pytest.mark.parametrize("case", suite.cases("cpu", quick=True), ids=lambda c: c.id)
    def test(benchmark, case, impl):
        fn = case.fastdet if impl == "fastdet" else case.peer
        if fn is None:
            pytest.skip("no peer")
        benchmark(fn)

    return test


# ---- running suites -------------------------------------------------------------------------------


def suite_names() -> list[str]:
    """Every op that has a benchmark module (fastdet.bench.<op>), discovered, not listed."""
    import pkgutil

    from fastdet import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def collect(ops: list[str] | None, devices: list[str], sizes: list[int] | None, quick: bool) -> list[Case]:
    import importlib

    names = suite_names()
    unknown = sorted(set(ops or []) - set(names))
    if unknown:
        raise ValueError(f"no benchmark for {', '.join(unknown)}; available: {', '.join(names)}")
    cases = []
    for name in ops or names:
        module = importlib.import_module(f"fastdet.bench.{name}")
        for device in devices:
            cases.extend(module.cases(device, sizes=sizes, quick=quick))
    return cases


def peak_bandwidth_bytes_per_s(device: str) -> float | None:
    """The device's theoretical DRAM bandwidth (memory clock x 2 (DDR) x bus width), CUDA only."""
    if not device.startswith("cuda"):
        return None
    props = torch.cuda.get_device_properties(torch.device(device))
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return clock_khz * 1e3 * 2 * bus_bits / 8


# Dense math peaks in FLOP/s (spec sheets; ANCHORS.md 1.1, and NVIDIA's A100 datasheet) by device-name
# pattern, first match wins: fp16/bf16 on tensor cores, "tf32" (fp32 matmuls when
# torch.backends.cuda.matmul.allow_tf32) on tensor cores, fp32 on the CUDA cores (torch's default).
_MATH_PEAKS = [
    ("H100 PCIe", {"half": 756e12, "float32": 51.2e12}),
    ("H100 NVL", {}),
    ("H100", {"half": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12}),
    ("H200", {"half": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12}),
    ("A100", {"half": 312e12, "tf32": 156e12, "float32": 19.5e12}),
]


def math_peak_flops_per_s(device_name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """The dense math peak of a known GPU for a GEMM in dtype (None for other devices and dtypes)."""
    key = {torch.float16: "half", torch.bfloat16: "half", torch.float32: "tf32" if tf32 else "float32"}.get(dtype)
    for pattern, peaks in _MATH_PEAKS:
        if pattern in device_name:
            return peaks.get(key)
    return None


@dataclass
class Result:
    op: str
    label: str
    size: int
    device: str
    fastdet_ms: float
    peer_ms: float | None
    peer_name: str
    speedup: float | None        # peer time / fastdet time, same run
    gbps: float | None = None    # achieved, for memory-bound cases
    pct_of_peak: float | None = None  # of the DRAM bandwidth (gbps) or of the math peak (tflops)
    note: str = ""
    tflops: float | None = None  # achieved, for compute-bound cases


def run_case(case: Case, repeats: int) -> Result:
    mine = measure(case.fastdet, case.device, repeats=repeats)
    peer = measure(case.peer, case.device, repeats=repeats) if case.peer is not None else None
    gbps = pct = tflops = None
    if case.bytes_moved and case.device.startswith("cuda"):
        gbps = case.bytes_moved / mine.median_s / 1e9
        peak = peak_bandwidth_bytes_per_s(case.device)
        pct = 100.0 * gbps * 1e9 / peak if peak else None
    if case.flops:
        tflops = case.flops / mine.median_s / 1e12
        if case.device.startswith("cuda") and case.math_dtype is not None:
            peak = math_peak_flops_per_s(torch.cuda.get_device_name(torch.device(case.device)), case.math_dtype,
                                         tf32=torch.backends.cuda.matmul.allow_tf32)
            pct = 100.0 * tflops * 1e12 / peak if peak else None
    return Result(case.op, case.label, case.size, case.device, mine.median_s * 1e3,
                  peer.median_s * 1e3 if peer else None, case.peer_name if peer else "",
                  peer.median_s / mine.median_s if peer else None, gbps, pct, case.note, tflops)


def environment() -> dict:
    import platform

    import fastdet

    env = {"fastdet": fastdet.build_info(), "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        env["torchvision"] = None
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cuda_runtime"] = torch.version.cuda
    return env


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def rows(results: list[Result]) -> list[list[str]]:
    return [[r.op, r.device, r.label, _fmt(r.fastdet_ms, ".3f"), _fmt(r.peer_ms, ".3f"), r.peer_name or "-",
             _fmt(r.speedup, ".2f") + ("x" if r.speedup else ""), _fmt(r.gbps, ".0f"), _fmt(r.tflops, ".3g"),
             _fmt(r.pct_of_peak, ".0f" if r.pct_of_peak is None or r.pct_of_peak >= 1 else ".2f")]
            for r in results]


HEADER = ["op", "device", "case", "fastdet ms", "peer ms", "peer", "speedup", "GB/s", "TFLOP/s", "% peak"]


def to_markdown(results: list[Result], env: dict) -> str:
    lines = [f"fastdet {env['fastdet']['version']}, torch {env['torch']}, torchvision {env.get('torchvision')}, "
             f"{env.get('cuda_device', 'no CUDA device')}, {env['cpu_threads']} CPU threads. "
             "speedup = peer median / fastdet median, measured in the same run. % peak: of the DRAM bandwidth "
             "for a GB/s row, of the dense math peak of the case's dtype for a TFLOP/s row (tensor cores for "
             "fp16/bf16, CUDA cores for fp32).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines) + "\n"


def to_json(results: list[Result], env: dict) -> dict:
    from dataclasses import asdict

    return {"environment": env, "results": [asdict(r) for r in results]}
