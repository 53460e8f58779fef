import pytest

from fastdet.bench import nms as suite

CASES = suite.cases("cpu", quick=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("impl", ["fastdet", "peer"])
def test_nms(benchmark, case, impl):
    fn = case.fastdet if impl == "fastdet" else case.peer
    if fn is None:
        pytest.skip("no peer")
    benchmark(fn)
