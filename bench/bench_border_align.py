"""pytest-benchmark view of fastdet.bench.border_align (the cases of `fastdet bench --ops border_align --quick`)."""

from fastdet.bench import border_align as suite
from fastdet.bench._harness import pytest_benchmark_test

test_border_align = pytest_benchmark_test(suite)
