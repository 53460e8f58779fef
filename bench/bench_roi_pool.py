"""pytest-benchmark view of fastdet.bench.roi_pool (the cases of `fastdet bench --ops roi_pool --quick`)."""

from fastdet.bench import roi_pool as suite
from fastdet.bench._harness import pytest_benchmark_test

test_roi_pool = pytest_benchmark_test(suite)
