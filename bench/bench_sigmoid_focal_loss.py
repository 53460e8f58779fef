"""pytest-benchmark view of fastdet.bench.sigmoid_focal_loss (the cases of `fastdet bench --ops sigmoid_focal_loss --quick`)."""

from fastdet.bench import sigmoid_focal_loss as suite
from fastdet.bench._harness import pytest_benchmark_test

test_sigmoid_focal_loss = pytest_benchmark_test(suite)
