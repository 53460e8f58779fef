"""pytest-benchmark view of fastdet.bench.box_iou (the cases of `fastdet bench --ops box_iou --quick`)."""

from fastdet.bench import box_iou as suite
from fastdet.bench._harness import pytest_benchmark_test

test_box_iou = pytest_benchmark_test(suite)
