"""Schema-driven fuzzing of every `torch.ops.fastdet.*` op on CPU (run by tests/test_fuzz_ops.py in a
subprocess, so that a crash is caught and named; also runnable by hand:
``python tests/fuzz_ops.py --seed 7 --cases 5000 --log fuzz.log``).

Each case starts from a small valid call of one op (the ops are cycled, so every op gets the same
share) and mutates one or two arguments: a tensor's dtype, rank, a size (0, or wrong), special
values (NaN, inf, huge, negative, out-of-range indices), layout (non-contiguous, channels-last,
expanded with stride 0); an int, float, string or list argument to an extreme or a wrong value.
Every outcome must be a result or a RuntimeError naming a fastdet op. Tolerated besides: torch's
allocator refusing an absurd requested output size. Anything else (another exception type, an
unnamed RuntimeError), and a crash or a hang of the process, is a defect.

Each case also runs the op's fake kernel (FakeTensorMode, what torch.compile and torch.export trace
with, data-dependent output sizes becoming symbols). It must not fail where the real kernel
succeeds, and it fails only with a named RuntimeError. It may accept what the real kernel rejects:
some checks need the data (batch indices, for one).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import torch

from fastdet.testing import random_boxes

ALLOCATION_ERRORS = ("can't allocate memory", "Storage size calculation overflowed", "std::bad_alloc")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool,
          torch.uint8]
SPECIAL = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, -1.0, 2.0 ** 31, 1e-30]


def _boxes(n: int, scale: float = 10.0) -> torch.Tensor:
    return random_boxes(n, image_size=scale, max_size=scale / 2)


def _rois(k: int, batch: int = 2) -> torch.Tensor:
    return torch.cat([torch.randint(0, batch, (k, 1)).float(), _boxes(k)], 1)


def valid_call(name: str) -> list:
    """A small valid argument list of fastdet::<name> (schema order)."""
    x = torch.randn(2, 3, 8, 9)
    grad_rois = torch.randn(7, 3, 2, 3)
    calls = {
        "nms": lambda: [_boxes(20), torch.rand(20), 0.5, -1],
        "batched_nms": lambda: [_boxes(20), torch.rand(20), torch.randint(0, 3, (20,)), 0.5],
        "soft_nms": lambda: [_boxes(20), torch.rand(20), 0.3, 0.5, 0.001, "linear", None],
        "multiclass_nms": lambda: [_boxes(20).expand(2, 20, 4).contiguous(), torch.rand(2, 20, 3), 0.05, 0.5, 10, 20,
                                   False],
        "box_iou": lambda: [_boxes(5), _boxes(6), "giou", False, 1e-7],
        "_box_iou_backward": lambda: [torch.randn(5, 6), _boxes(5), _boxes(6), "giou", False, 1e-7],
        "roi_align": lambda: [x, _rois(7), 0.5, 2, 3, 2, True],
        "_roi_align_backward": lambda: [grad_rois, _rois(7), 0.5, 2, 3, 2, 3, 8, 9, 2, True, False],
        "roi_pool": lambda: [x, _rois(7), 0.5, 2, 3],
        "_roi_pool_backward": lambda: [grad_rois, _rois(7), torch.randint(-1, 72, (7, 3, 2, 3), dtype=torch.int32),
                                       0.5, 2, 3, 2, 3, 8, 9, False],
        "multi_scale_roi_align": lambda: [[x, torch.randn(2, 3, 4, 5)], _rois(7), torch.randint(0, 2, (7,)),
                                          [1.0, 0.5], 2, 2, 2, True],
        "_multi_scale_roi_align_backward": lambda: [torch.randn(7, 3, 2, 2), _rois(7), torch.randint(0, 2, (7,)),
                                                    [1.0, 0.5], [8, 4], [9, 5], 2, 3, 2, True, False],
        "deform_conv2d": lambda: [torch.randn(2, 4, 6, 7), torch.randn(2, 18, 6, 7), torch.randn(5, 4, 3, 3),
                                  torch.randn(5), torch.rand(2, 9, 6, 7), [1, 1], [1, 1], [1, 1]],
        "_deform_conv2d_backward": lambda: [torch.randn(2, 5, 6, 7), torch.randn(2, 4, 6, 7),
                                            torch.randn(2, 18, 6, 7), torch.randn(5, 4, 3, 3), torch.rand(2, 9, 6, 7),
                                            [1, 1], [1, 1], [1, 1]],
        "border_align": lambda: [torch.randn(2, 8, 5, 6), _boxes(30).expand(2, 30, 4).contiguous(), 4],
        "_border_align_backward": lambda: [torch.randn(2, 2, 30, 4), _boxes(30).expand(2, 30, 4).contiguous(),
                                           torch.randint(0, 5, (2, 2, 30, 4), dtype=torch.int32), 4, 5, 6],
        "corner_pool": lambda: [x, "top"],
        "_corner_pool_backward": lambda: [torch.randn(2, 3, 8, 9), x, "left"],
        "corner_pool_sum": lambda: [x, x.clone(), "top_left"],
        "_corner_pool_sum_backward": lambda: [torch.randn(2, 3, 8, 9), x, x.clone(), "bottom_right"],
        "sigmoid_focal_loss": lambda: [torch.randn(6, 4), torch.rand(6, 4), 0.25, 2.0, "mean", None],
        "_sigmoid_focal_loss_backward": lambda: [torch.tensor(1.0), torch.randn(6, 4), torch.rand(6, 4), 0.25, 2.0,
                                                 "mean", None],
    }
    if name in ("simota_assign", "simota_cost"):
        b, a, g, c = 2, 12, 3, 4
        priors = torch.cat([torch.rand(a, 2) * 32, torch.full((a, 2), 8.0)], 1)
        args = [torch.rand(b, a, c), _boxes(b * a, 32).view(b, a, 4), priors, _boxes(b * g, 32).view(b, g, 4),
                torch.randint(0, c, (b, g)), torch.rand(b, g) > 0.3, 2.5]
        return args + ([10] if name == "simota_assign" else []) + [3.0, 1.0, False, 1e5]
    return calls[name]()


def _special_value(dtype: torch.dtype, r: random.Random):
    if dtype.is_floating_point:
        return r.choice(SPECIAL)
    if dtype == torch.bool:
        return r.random() < 0.5
    info = torch.iinfo(dtype)  # integers: the extremes and out-of-range indices
    return r.choice([info.min, info.max, max(info.min, -1), min(info.max, 2 ** 31 - 1), min(info.max, 1000)])


def _mutate_tensor(t: torch.Tensor, r: random.Random) -> torch.Tensor:
    kind = r.randrange(9)
    if kind == 0:  # another dtype
        return t.to(r.choice(DTYPES))
    if kind == 1:  # another rank
        if t.dim() > 0 and r.random() < 0.5:
            return t.reshape(-1) if r.random() < 0.5 else t.select(0, 0) if t.shape[0] else t.reshape(-1)
        return t.unsqueeze(r.randrange(t.dim() + 1))
    if kind == 2:  # a zero-size dimension
        return t.reshape(1)[:0] if t.dim() == 0 else t.narrow(r.randrange(t.dim()), 0, 0)
    if kind == 3:  # a wrong size
        if t.dim() == 0:
            return t.reshape(1).repeat(3)
        sizes = list(t.shape)
        sizes[r.randrange(t.dim())] = r.choice([1, 2, 3, 5, 7, 33])
        return torch.randn(sizes).to(t.dtype) if t.is_floating_point() else torch.randint(0, 3, sizes).to(t.dtype)
    if kind == 4:  # special values (indices out of range for integer tensors)
        t = t.clone(memory_format=torch.contiguous_format)
        flat = t.view(-1)
        for _ in range(r.randrange(1, 4) if flat.numel() else 0):
            flat[r.randrange(flat.numel())] = _special_value(t.dtype, r)
        return t
    if kind == 5:  # non-contiguous
        if t.dim() >= 2:
            return t.transpose(0, 1).contiguous().transpose(0, 1)
        return torch.stack([t, t], -1)[..., 0]
    if kind == 6:  # channels-last
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    if kind == 7:  # expanded: stride 0
        return t[:1].expand(t.shape) if t.dim() >= 1 and t.shape[0] >= 1 else t
    return torch.empty(0)


def mutate(arg, r: random.Random):
    if isinstance(arg, torch.Tensor):
        return _mutate_tensor(arg, r)
    if isinstance(arg, bool):
        return not arg
    if isinstance(arg, int):
        return r.choice([-1, 0, 1, 7, 2 ** 31, 2 ** 40, -2 ** 40, arg * 1000])
    if isinstance(arg, float):
        return r.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30, -1e-9])
    if isinstance(arg, str):
        return r.choice(["", "bogus", arg.upper(), "top", "sum", "none", "gaussian", "iou", "ciou", "top_left"])
    if isinstance(arg, list):
        if not arg or r.random() < 0.2:
            return arg[:-1]
        if r.random() < 0.2:
            return arg + [arg[-1]]
        arg = list(arg)
        i = r.randrange(len(arg))
        arg[i] = mutate(arg[i], r)
        return arg
    return torch.randn(3) if arg is None else arg


def describe(args: list) -> str:
    def one(a):
        if isinstance(a, torch.Tensor):
            layout = "" if a.is_contiguous() else " non-contiguous"
            return f"Tensor{list(a.shape)} {str(a.dtype).replace('torch.', '')}{layout}"
        if isinstance(a, list):
            return "[" + ", ".join(one(t) for t in a) + "]"
        return repr(a)
    return ", ".join(one(a) for a in args)


def classify(name: str, args: list) -> str:
    """'ok', 'error' (a RuntimeError naming a fastdet op, or an allocation refusal), or the defect."""
    try:
        getattr(torch.ops.fastdet, name).default(*args)
        return "ok"
    except RuntimeError as e:
        text = str(e)
        if "fastdet::" in text.split("\n")[0] or any(s in text for s in ALLOCATION_ERRORS):
            return "error"
        return "unnamed RuntimeError: " + text.split("\n")[0][:300]
    except Exception as e:  # noqa: BLE001 - any other type is the defect being looked for
        if isinstance(e, MemoryError) and any(s in str(e) for s in ALLOCATION_ERRORS):
            return "error"
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def classify_fake(name: str, args: list) -> str:
    """The outcome of the op's fake kernel: 'ok', 'error' (named, or data-dependent output), or the defect."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())  # as in torch.compile: data-dependent sizes are symbols

    def fake(a):
        if isinstance(a, torch.Tensor):
            return mode.from_tensor(a)
        return [fake(t) for t in a] if isinstance(a, list) else a

    try:
        with mode:
            getattr(torch.ops.fastdet, name).default(*[fake(a) for a in args])
        return "ok"
    except RuntimeError as e:
        if "fastdet::" in str(e).split("\n")[0] or any(s in str(e) for s in ALLOCATION_ERRORS):
            return "error"
        return "fake kernel: unnamed RuntimeError: " + str(e).split("\n")[0][:300]
    except Exception as e:  # noqa: BLE001
        return f"fake kernel: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def run(seed: int, cases: int, log) -> dict:
    """Runs the cases; the log gets each case before it runs (the last line names a crash)."""
    import fastdet  # registers the ops

    torch.set_num_threads(1)
    names = sorted(n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("fastdet::"))
    if not names:
        raise SystemExit(f"no fastdet ops are registered (fastdet from {fastdet.__file__}: is its compiled library there?)")
    counts = {"ok": 0, "error": 0}
    defects = []
    for case in range(cases):
        name = names[case % len(names)]
        r = random.Random(seed * 1_000_003 + case)
        torch.manual_seed(seed * 1_000_003 + case)
        args = valid_call(name)
        for _ in range(r.randrange(1, 3)):
            i = r.randrange(len(args))
            args[i] = mutate(args[i], r)
        line = f"case {case}: fastdet::{name}({describe(args)})"
        log.write(line + "\n")
        log.flush()
        outcome = classify(name, args)
        if outcome in counts:
            counts[outcome] += 1
        else:
            defects.append(f"{line} -> {outcome}")
        fake = classify_fake(name, args)
        if fake == "error" and outcome == "ok":
            defects.append(f"{line} -> the fake kernel rejects what the kernel accepts")
        elif fake not in ("ok", "error"):
            defects.append(f"{line} -> {fake}")
    return {"ops": names, "counts": counts, "defects": defects}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--log", default="fuzz_ops.log", help="each case is written here before it runs")
    parser.add_argument("--report", help="write the summary as JSON here")
    args = parser.parse_args(argv)
    with open(args.log, "w") as log:
        summary = run(args.seed, args.cases, log)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary["counts"]), f"{len(summary['defects'])} defect(s)")
    for d in summary["defects"]:
        print(d)
    return 1 if summary["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
