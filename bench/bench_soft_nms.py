"""pytest-benchmark view of fastdet.bench.soft_nms (the cases of `fastdet bench --ops soft_nms --quick`)."""

from fastdet.bench import soft_nms as suite
from fastdet.bench._harness import pytest_benchmark_test

test_soft_nms = pytest_benchmark_test(suite)
