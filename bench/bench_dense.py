"""pytest-benchmark view of fastdet.bench.dense (the cases of `fastdet bench --ops dense --quick`)."""

from fastdet.bench import dense as suite
from fastdet.bench._harness import pytest_benchmark_test

test_dense = pytest_benchmark_test(suite)
