"""`fastdet smoke` (what the wheel smoke test runs in a clean venv): every differentiable op runs
forward and backward through the smoke() examples of its module, discovered, not listed."""

import importlib

import torch

from fastdet import _smoke
from fastdet.cli import main

# the module, not the function fastdet.ops.corner_pool that shadows it
corner_pool_module = importlib.import_module("fastdet.ops.corner_pool")


def test_differentiable_ops_are_discovered_from_the_dispatcher():
    ops = _smoke.differentiable_ops()
    # the ops with a `_<op>_backward` op today; new ones join automatically
    assert {"box_iou", "border_align", "corner_pool", "corner_pool_sum"} <= set(ops)
    assert "nms" not in ops and not any(op.startswith("_") for op in ops)


def test_every_differentiable_op_runs_forward_and_backward():
    result = _smoke.run()
    assert result.ok, "\n".join(result.failures)
    for op in _smoke.differentiable_ops():
        assert op in result.seen and f"_{op}_backward" in result.seen


def test_cli(capsys):
    assert main(["smoke"]) == 0
    out = capsys.readouterr().out
    assert "fastdet smoke: ok" in out and "corner_pool_sum" in out and "_border_align_backward" in out


def test_an_op_without_an_example_fails_by_name(monkeypatch, capsys):
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    monkeypatch.setattr(corner_pool_module, "smoke", lambda: [(corner_pool_module.corner_pool(x, "top"), (x,))])
    result = _smoke.run()
    assert not result.ok
    assert any(f.startswith("fastdet::corner_pool_sum is differentiable but no smoke() example ran corner_pool_sum "
                            "and _corner_pool_sum_backward") for f in result.failures), result.failures
    assert not any("fastdet::corner_pool " in f for f in result.failures)
    assert main(["smoke"]) == 1
    assert "FAILED fastdet::corner_pool_sum" in capsys.readouterr().err


def test_missing_or_bad_gradients_fail(monkeypatch):
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)

    def broken():
        return [(corner_pool_module.corner_pool(x, "top"), (x, unused)),
                (corner_pool_module.corner_pool(x, "left") * float("nan"), (x,))]

    monkeypatch.setattr(corner_pool_module, "smoke", broken)
    failures = "\n".join(_smoke.run().failures)
    assert "smoke() #0: input 1 received no gradient" in failures
    assert "smoke() #1: output has non-finite values" in failures
    assert "smoke() #1: gradient of input 0 has non-finite values" in failures


def test_an_example_that_raises_is_reported(monkeypatch):
    def raises():
        raise RuntimeError("boom")

    monkeypatch.setattr(corner_pool_module, "smoke", raises)
    assert any("fastdet.ops.corner_pool.smoke(): RuntimeError: boom" in f for f in _smoke.run().failures)
