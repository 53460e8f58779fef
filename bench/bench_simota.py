"""pytest-benchmark view of fastdet.bench.simota (the cases of `fastdet bench --ops simota --quick`)."""

from fastdet.bench import simota as suite
from fastdet.bench._harness import pytest_benchmark_test

test_simota = pytest_benchmark_test(suite)
