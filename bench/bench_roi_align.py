"""pytest-benchmark view of fastdet.bench.roi_align (the cases of `fastdet bench --ops roi_align --quick`)."""

from fastdet.bench import roi_align as suite
from fastdet.bench._harness import pytest_benchmark_test

test_roi_align = pytest_benchmark_test(suite)
