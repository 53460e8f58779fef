"""The `fastdet` command: `fastdet info`, `fastdet smoke`, `fastdet bench` (with `--compare`, the regression
check) and the model zoo's `train`, `eval`, `detect`, `shapes`, `models` (fastdet/engine/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastdet.bench._compare import DEFAULT_TOLERANCE


def _info(args) -> int:
    import fastdet

    info = fastdet.build_info()
    print(f"fastdet {info['version']}  ({fastdet.LIBRARY_PATH})")
    print(f"  built against torch {info['torch_version']}; running torch {torch.__version__}")
    if info["with_cuda"]:
        print(f"  CUDA kernels: yes (CUDA {info['cuda_version']}, archs {info['cuda_archs']})")
    else:
        print("  CUDA kernels: no (CPU-only build)")
    ops = sorted(name for name in dir(torch.ops.fastdet)
                 if isinstance(getattr(torch.ops.fastdet, name), torch._ops.OpOverloadPacket) and not name.startswith("_"))
    print(f"  ops: {', '.join(ops)}")
    print(f"  CPU threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("  CUDA devices: none")
    return 0


def _smoke(args) -> int:
    from fastdet import _smoke

    result = _smoke.run()
    for line in result.examples:
        print(f"  {line}")
    differentiable = _smoke.differentiable_ops()
    if result.ok:
        print(f"fastdet smoke: ok, forward and backward of {len(differentiable)} differentiable op(s) on CPU: "
              f"{', '.join(differentiable)}")
        return 0
    for line in result.failures:
        print(f"FAILED {line}", file=sys.stderr)
    print(f"fastdet smoke: {len(result.failures)} failure(s)", file=sys.stderr)
    return 1


def _csv(value: str, kind=str) -> list:
    return [kind(v) for v in value.split(",") if v.strip()]


def _bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from fastdet.bench import _harness as h

    console = Console(stderr=True)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        console.print("[red]fastdet bench: --device cuda asked for, but no CUDA device is available[/red]")
        return 2
    if args.best_of < 1 or args.recheck < 0 or args.repeats < 1:
        console.print("[red]fastdet bench: --best-of and --repeats must be >= 1, --recheck >= 0[/red]")
        return 2
    if args.compare:
        from fastdet.bench import _compare

        try:
            _compare.check_tolerance(args.tolerance)
            baseline = _compare.load(args.compare)
        except ValueError as e:
            console.print(f"[red]fastdet bench: --compare: {e}[/red]")
            return 2
    try:
        cases = h.collect(args.ops, devices, args.sizes, args.quick)
    except ValueError as e:
        console.print(f"[red]fastdet bench: {e}[/red]")
        return 2

    def measure_all(todo: list, rounds: int, what: str) -> None:
        # Each case keeps its best ratio over all rounds (noise only ever lowers a ratio's best).
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(what, total=len(todo) * rounds)
            for _ in range(rounds):
                for case in todo:
                    progress.update(task, description=f"{what}: {case.op} {case.device} {case.label}")
                    r = h.run_case(case, repeats=args.repeats)
                    old = best.get(case.id)
                    if old is None or (r.speedup or 0.0) > (old.speedup or 0.0):
                        best[case.id] = r
                    progress.advance(task)

    best: dict = {}
    measure_all(cases, args.best_of, "benchmarking")
    results = [best[case.id] for case in cases]
    env = h.environment()
    table = Table(title=f"fastdet vs peers (speedup = peer / fastdet, same run; torch {env['torch']})")
    for col in h.HEADER:
        table.add_column(col, justify="left" if col in ("op", "device", "case", "peer") else "right")
    for row in h.rows(results):
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(h.to_json(results, env), indent=2))
        console.print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(h.to_markdown(results, env))
        console.print(f"wrote {args.markdown}")
    if not args.compare:
        return 0
    # Regression check against the baseline; cases that look regressed are measured again
    # (--recheck rounds, best ratio kept) before they count.
    rows = _compare.compare(h.to_json(results, env), baseline, args.tolerance)
    for attempt in range(args.recheck):
        suspects = {row.key for row in _compare.regressions(rows)}
        if not suspects:
            break
        console.print(f"re-measuring {len(suspects)} case(s) that look regressed (round {attempt + 1} of {args.recheck})")
        measure_all([c for c in cases if (c.op, c.device, c.label) in suspects], 1, "re-measuring")
        results = [best[case.id] for case in cases]
        rows = _compare.compare(h.to_json(results, env), baseline, args.tolerance)
    if args.json:  # the file holds the ratios the verdict was based on
        Path(args.json).write_text(json.dumps(h.to_json(results, env), indent=2))
    text = _compare.to_markdown(rows, h.to_json(results, env), baseline, args.tolerance, baseline_name=args.compare)
    print(text, end="")
    if args.report:
        Path(args.report).write_text(text)
        console.print(f"wrote {args.report}")
    return 1 if _compare.regressions(rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdet", description="fastdet: fast detection ops for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build information, torch version and devices").set_defaults(func=_info)
    sub.add_parser("smoke", help="forward + backward of every differentiable op on CPU (checks an installation)"
                   ).set_defaults(func=_smoke)
    b = sub.add_parser("bench", help="side-by-side timing of fastdet against torchvision (or the named peer)")
    b.add_argument("--ops", type=_csv, help="comma-separated ops (default: every op with a benchmark)")
    b.add_argument("--device", type=_csv, help="cpu, cuda or cpu,cuda (default: every available device)")
    b.add_argument("--sizes", type=lambda v: _csv(v, int), help="comma-separated problem sizes (boxes) to run instead of the defaults")
    b.add_argument("--quick", action="store_true", help="smallest sizes only (a minute or two)")
    b.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement (median reported)")
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.add_argument("--markdown", metavar="PATH", help="also write the results as a Markdown table")
    b.add_argument("--best-of", type=int, default=1, metavar="R",
                   help="run every case R times and keep its best ratio (e.g. when writing a baseline)")
    b.add_argument("--compare", metavar="BASELINE",
                   help="compare the ratios with a baseline (bench/baselines/<device>.json), print a Markdown "
                        "report and exit 1 when one regressed past --tolerance")
    b.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="with --compare: the relative drop of a ratio that counts as a regression "
                        f"(default {DEFAULT_TOLERANCE})")
    b.add_argument("--recheck", type=int, default=2,
                   help="with --compare: rounds of re-measuring the cases that look regressed (default 2)")
    b.add_argument("--report", metavar="PATH", help="with --compare: also write the regression report to PATH")
    b.set_defaults(func=_bench)
    from fastdet.engine import cli as zoo_cli

    zoo_cli.add_subcommands(sub)
    args = parser.parse_args(argv)
    if args.func.__module__ == zoo_cli.__name__:
        return zoo_cli.run(args.func, args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
