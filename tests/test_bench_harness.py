"""The benchmark harness's derived figures (fastdet.bench._harness): achieved TFLOP/s and the
fraction of the device's math peak for compute-bound cases. Timing only trivial closures."""

import pytest
import torch

from fastdet.bench import _harness as h


@pytest.mark.parametrize("name, dtype, tf32, want", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989.4e12),
    ("NVIDIA H200", torch.float16, False, 989.4e12),
    ("NVIDIA H200", torch.float32, False, 66.9e12),
    ("NVIDIA H200", torch.float32, True, 494.7e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, False, 756e12),
    ("NVIDIA H100 PCIe", torch.float32, True, None),  # not on the spec sheet used
    ("NVIDIA H100 NVL", torch.bfloat16, False, None),  # not H100 SXM's figures
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312e12),
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, None),
    ("NVIDIA H200", torch.float64, False, None),
])
def test_math_peak_by_device_name_and_dtype(name, dtype, tf32, want):
    assert h.math_peak_flops_per_s(name, dtype, tf32=tf32) == want


def test_flops_case_reports_tflops_and_no_peak_on_cpu():
    case = h.Case("op", "label", 1, "cpu", fastdet=lambda: None, peer=lambda: None, flops=10**9,
                  math_dtype=torch.float32)
    r = h.run_case(case, repeats=3)
    assert r.tflops == pytest.approx(1e9 / (r.fastdet_ms / 1e3) / 1e12)
    assert r.pct_of_peak is None and r.gbps is None
    row = h.rows([r])[0]
    assert len(row) == len(h.HEADER) and row[h.HEADER.index("TFLOP/s")] != "-"
    assert h.to_json([r], {"x": 1})["results"][0]["tflops"] == r.tflops


def test_cases_without_flops_leave_the_column_empty():
    r = h.run_case(h.Case("op", "label", 1, "cpu", fastdet=lambda: None), repeats=3)
    assert r.tflops is None and h.rows([r])[0][h.HEADER.index("TFLOP/s")] == "-"


@pytest.mark.cuda
def test_flops_case_on_cuda_reports_fraction_of_peak_on_known_devices():
    a = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    case = h.Case("op", "mm", 1, "cuda", fastdet=lambda: a @ a, flops=2 * 512**3, math_dtype=torch.bfloat16)
    r = h.run_case(case, repeats=5)
    peak = h.math_peak_flops_per_s(torch.cuda.get_device_name(), torch.bfloat16)
    assert (r.pct_of_peak is None) == (peak is None)
    if peak:
        assert 0 < r.pct_of_peak < 100
