"""pytest-benchmark view of fastdet.bench.corner_pool (the cases of `fastdet bench --ops corner_pool --quick`)."""

from fastdet.bench import corner_pool as suite
from fastdet.bench._harness import pytest_benchmark_test

test_corner_pool = pytest_benchmark_test(suite)
