"""The `fastdet` command: `fastdet info` and `fastdet bench`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


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
    try:
        cases = h.collect(args.ops, devices, args.sizes, args.quick)
    except ValueError as e:
        console.print(f"[red]fastdet bench: {e}[/red]")
        return 2
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for case in cases:
            progress.update(task, description=f"{case.op} {case.device} {case.label}")
            results.append(h.run_case(case, repeats=args.repeats))
            progress.advance(task)
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
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdet", description="fastdet: fast detection ops for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build information, torch version and devices").set_defaults(func=_info)
    b = sub.add_parser("bench", help="side-by-side timing of fastdet against torchvision (or the named peer)")
    b.add_argument("--ops", type=_csv, help="comma-separated ops (default: every op with a benchmark)")
    b.add_argument("--device", type=_csv, help="cpu, cuda or cpu,cuda (default: every available device)")
    b.add_argument("--sizes", type=lambda v: _csv(v, int), help="comma-separated problem sizes (boxes) to run instead of the defaults")
    b.add_argument("--quick", action="store_true", help="smallest sizes only (a minute or two)")
    b.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement (median reported)")
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.add_argument("--markdown", metavar="PATH", help="also write the results as a Markdown table")
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
