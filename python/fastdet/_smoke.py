"""`fastdet smoke`: a forward and a backward pass of every differentiable op on CPU, to check an
installation (the wheel smoke test runs it in a clean virtual environment).

Nothing here lists the ops. Each module of fastdet.ops may define

    def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]

returning tiny CPU examples as (output, inputs that should receive a gradient). The runner calls
every such function, backpropagates a random weighting of each output, checks that the outputs
and gradients are finite and shaped like their inputs, and records which fastdet ops ran. An op
counts as differentiable when the dispatcher has its backward op `fastdet::_<op>_backward` (the
project's convention); each one must have run, forward and backward, or the smoke test fails and
names the module that needs a smoke() example.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def fastdet_ops() -> set[str]:
    """Every op registered under the fastdet namespace (public and backward ops)."""
    names = {n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("fastdet::")}
    return names


def differentiable_ops() -> list[str]:
    """Public ops that have a backward op `_<op>_backward`."""
    names = fastdet_ops()
    return sorted(n for n in names if not n.startswith("_") and f"_{n}_backward" in names)


class _Recorder(TorchDispatchMode):
    """Records the fastdet ops that run, forward and backward, and changes nothing."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()
        self.recent: set[str] = set()  # since the last reset, for the per-example lines

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastdet":
            self.seen.add(func._opname)
            self.recent.add(func._opname)
        return func(*args, **(kwargs or {}))


@dataclass
class SmokeResult:
    examples: list[str] = field(default_factory=list)   # "module #i: op -> shape"
    failures: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failures


def _check_example(where: str, output, inputs, generator: torch.Generator) -> list[str]:
    problems = []
    if not isinstance(output, torch.Tensor):
        return [f"{where}: output is {type(output).__name__}, not a Tensor"]
    if output.is_floating_point() and not torch.isfinite(output).all():
        problems.append(f"{where}: output has non-finite values")
    if not inputs:
        return problems
    for t in inputs:
        t.grad = None
    weight = torch.rand(output.shape, generator=generator, dtype=output.dtype)
    (output * weight).sum().backward()
    for i, t in enumerate(inputs):
        if t.grad is None:
            problems.append(f"{where}: input {i} received no gradient")
        elif t.grad.shape != t.shape:
            problems.append(f"{where}: gradient of input {i} has shape {list(t.grad.shape)}, input {list(t.shape)}")
        elif not torch.isfinite(t.grad).all():
            problems.append(f"{where}: gradient of input {i} has non-finite values")
    return problems


def run() -> SmokeResult:
    """Runs every smoke() example of fastdet.ops and checks that every differentiable op ran."""
    from fastdet import ops

    result = SmokeResult()
    generator = torch.Generator().manual_seed(0)
    recorder = _Recorder()
    for info in sorted(pkgutil.iter_modules(ops.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"fastdet.ops.{info.name}")
        example_fn = getattr(module, "smoke", None)
        if example_fn is None:
            continue
        try:
            with recorder:
                examples = example_fn()
                for i, (output, inputs) in enumerate(examples):
                    where = f"fastdet.ops.{info.name}.smoke() #{i}"
                    recorder.recent.clear()
                    result.failures += _check_example(where, output, tuple(inputs), generator)
                    ran = sorted(recorder.recent) or ["no fastdet op"]
                    result.examples.append(f"{where}: output {list(output.shape)}, backward ran {', '.join(ran)}")
        except Exception as e:  # report every module, not only the first failure
            result.failures.append(f"fastdet.ops.{info.name}.smoke(): {type(e).__name__}: {e}")
    result.seen = set(recorder.seen)
    for name in differentiable_ops():
        missing = [n for n in (name, f"_{name}_backward") if n not in result.seen]
        if missing:
            result.failures.append(
                f"fastdet::{name} is differentiable but no smoke() example ran {' and '.join(missing)}: "
                f"add a smoke() example to its module in python/fastdet/ops/")
    return result
