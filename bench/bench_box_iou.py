"""pytest-benchmark view of fastdet.bench.box_iou (same cases as `fastdet bench --ops box_iou`)."""

import pytest

from fastdet.bench import box_iou as suite

CASES = suite.cases("cpu", quick=True)


@pytest.mark.parametrize("impl", ["fastdet", "peer"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_box_iou(benchmark, case, impl):
    fn = case.fastdet if impl == "fastdet" else case.peer
    if fn is None:
        pytest.skip("no peer")
    benchmark(fn)
