"""pytest-benchmark view of fastdet.bench.ssd (the cases of `fastdet bench --ops ssd --quick`)."""

from fastdet.bench import ssd as suite
from fastdet.bench._harness import pytest_benchmark_test

test_ssd = pytest_benchmark_test(suite)
