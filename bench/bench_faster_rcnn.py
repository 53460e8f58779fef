"""pytest-benchmark view of fastdet.bench.faster_rcnn (the cases of `fastdet bench --ops faster_rcnn --quick`)."""

from fastdet.bench import faster_rcnn as suite
from fastdet.bench._harness import pytest_benchmark_test

test_faster_rcnn = pytest_benchmark_test(suite)
