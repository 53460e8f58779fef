"""pytest-benchmark view of fastdet.bench.nms (the cases of `fastdet bench --ops nms --quick`)."""

from fastdet.bench import nms as suite
from fastdet.bench._harness import pytest_benchmark_test

test_nms = pytest_benchmark_test(suite)
