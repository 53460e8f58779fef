"""pytest-benchmark view of fastdet.bench.multiclass_nms (the cases of `fastdet bench --ops multiclass_nms --quick`)."""

from fastdet.bench import multiclass_nms as suite
from fastdet.bench._harness import pytest_benchmark_test

test_multiclass_nms = pytest_benchmark_test(suite)
