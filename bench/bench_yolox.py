"""pytest-benchmark view of fastdet.bench.yolox (the cases of `fastdet bench --ops yolox --quick`)."""

from fastdet.bench import yolox as suite
from fastdet.bench._harness import pytest_benchmark_test

test_yolox = pytest_benchmark_test(suite)
