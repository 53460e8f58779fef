"""pytest-benchmark view of fastdet.bench.deform_conv2d (the cases of `fastdet bench --ops deform_conv2d --quick`)."""

from fastdet.bench import deform_conv2d as suite
from fastdet.bench._harness import pytest_benchmark_test

test_deform_conv2d = pytest_benchmark_test(suite)
