"""Benchmark regression reports: the speedups of a `fastdet bench --json` run against a committed
baseline (bench/baselines/<device>.json).

Only ratios are compared (peer time / fastdet time, both measured in the same run), never times,
so a slower or busier machine does not by itself look like a regression. A case regresses when
its ratio fell by more than `tolerance` (relative: 0.35 means "now below 65 % of the baseline's
ratio"). Cases present in only one of the two files are listed as new or removed, not failures.

    python -m fastdet.bench._compare CURRENT.json BASELINE.json [--tolerance 0.35] [--report out.md]

compares two files; `fastdet bench --compare BASELINE.json` runs the benchmarks, re-measures the
cases that look regressed (--recheck) and then compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOLERANCE = 0.35

# Row statuses, in the order the report lists them.
REGRESSED, IMPROVED, OK, NEW, REMOVED, NO_RATIO = "regressed", "improved", "ok", "new", "removed", "no ratio"
_ORDER = {REGRESSED: 0, IMPROVED: 1, OK: 2, NEW: 3, REMOVED: 4, NO_RATIO: 5}
_MARK = {REGRESSED: "❌ regressed", IMPROVED: "⬆ improved", OK: "ok", NEW: "new", REMOVED: "removed",
         NO_RATIO: "no ratio"}


@dataclass(frozen=True)
class Row:
    op: str
    device: str
    label: str
    peer: str
    baseline: float | None   # speedup (peer / fastdet) in the baseline
    current: float | None    # speedup now
    status: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.op, self.device, self.label)

    @property
    def change(self) -> float | None:
        """Relative change of the ratio: +0.10 = 10 % faster against the peer than in the baseline."""
        if self.baseline is None or self.current is None or self.baseline <= 0:
            return None
        return self.current / self.baseline - 1.0


def check_tolerance(tolerance: float) -> float:
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be a relative drop in (0, 1), e.g. 0.35, got {tolerance}")
    return tolerance


def load(path: str | Path) -> dict:
    """A `fastdet bench --json` file, with a readable error when it is missing or malformed."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError(f"{path}: not a `fastdet bench --json` report (no 'results' list)")
    return report


def _ratio(result: dict) -> float | None:
    value = result.get("speedup")
    if value is None or not isinstance(value, (int, float)) or value != value or value <= 0:
        return None
    return float(value)


def index(report: dict) -> dict[tuple[str, str, str], dict]:
    """Results by (op, device, case label). A case measured more than once keeps its best ratio."""
    out: dict[tuple[str, str, str], dict] = {}
    for r in report["results"]:
        try:
            key = (r["op"], r["device"], r["label"])
        except (KeyError, TypeError):
            raise ValueError(f"a result has no op/device/label: {r!r}") from None
        if key not in out or (_ratio(r) or 0.0) > (_ratio(out[key]) or 0.0):
            out[key] = r
    return out


def compare(current: dict, baseline: dict, tolerance: float = DEFAULT_TOLERANCE) -> list[Row]:
    """One row per case of either report, regressions first, then by op, device and case."""
    check_tolerance(tolerance)
    now, base = index(current), index(baseline)
    rows = []
    for key in now.keys() | base.keys():
        r_now, r_base = now.get(key), base.get(key)
        c = _ratio(r_now) if r_now else None
        b = _ratio(r_base) if r_base else None
        if r_base is None:
            status = NEW
        elif r_now is None:
            status = REMOVED
        elif c is None or b is None:
            status = NO_RATIO
        elif c < b * (1.0 - tolerance):
            status = REGRESSED
        elif c > b * (1.0 + tolerance):
            status = IMPROVED
        else:
            status = OK
        peer = (r_now or r_base).get("peer_name") or "-"
        rows.append(Row(*key, peer, b, c, status))
    return sorted(rows, key=lambda r: (_ORDER[r.status], r.key))


def regressions(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == REGRESSED]


def _env_line(env: dict) -> str:
    fd = env.get("fastdet") or {}
    device = env.get("cuda_device") or f"{env.get('cpu', '?')} CPU"
    return (f"fastdet {fd.get('version', '?')}, torch {env.get('torch', '?')}, torchvision {env.get('torchvision')}, "
            f"{device}, {env.get('cpu_threads', '?')} CPU threads")


def environment_differences(current: dict, baseline: dict) -> list[str]:
    """The settings that move ratios when they differ between the two runs."""
    now, base = current.get("environment") or {}, baseline.get("environment") or {}
    notes = []
    for name in ("torch", "torchvision", "cpu_threads", "cuda_device", "cpu"):
        if now.get(name) != base.get(name):
            notes.append(f"{name}: {base.get(name)} in the baseline, {now.get(name)} now")
    return notes


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def to_markdown(rows: list[Row], current: dict, baseline: dict, tolerance: float,
                baseline_name: str = "baseline") -> str:
    bad = regressions(rows)
    counts = {s: sum(r.status == s for r in rows) for s in _ORDER}
    verdict = (f"**{len(bad)} regression{'s' if len(bad) != 1 else ''}** (ratio fell by more than {tolerance:.0%})"
               if bad else f"**no regressions** (tolerance: a ratio may fall by up to {tolerance:.0%})")
    lines = ["# fastdet benchmark regression report", "",
             f"{verdict}; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".", "",
             "Ratio = peer time / fastdet time, both measured in the same run; change = ratio now / ratio in "
             f"the baseline - 1. Baseline: `{baseline_name}`.", "",
             f"- now: {_env_line(current.get('environment') or {})}",
             f"- baseline: {_env_line(baseline.get('environment') or {})}"]
    diffs = environment_differences(current, baseline)
    if diffs:
        lines += ["", "Environments differ (ratios may shift for that reason alone): " + "; ".join(diffs) + "."]
    lines += ["", "| op | device | case | peer | baseline ratio | ratio now | change | status |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.op} | {r.device} | {r.label} | {r.peer} | {_fmt(r.baseline, '.2f', 'x')} | "
                     f"{_fmt(r.current, '.2f', 'x')} | {_fmt(None if r.change is None else 100 * r.change, '+.0f', ' %')} | "
                     f"{_MARK[r.status]} |")
    if counts[NEW] or counts[REMOVED]:
        lines += ["", "New and removed cases are not failures; refresh the baseline when they are intended: "
                  "`fastdet bench --quick --device cpu --best-of 3 --json bench/baselines/cpu.json`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdet.bench._compare",
                                     description="Compare a `fastdet bench --json` report with a baseline.")
    parser.add_argument("current", help="JSON written by `fastdet bench --json`")
    parser.add_argument("baseline", help="the committed baseline, e.g. bench/baselines/cpu.json")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"relative drop of a ratio that counts as a regression (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--report", metavar="PATH", help="also write the Markdown report to PATH")
    args = parser.parse_args(argv)
    try:
        check_tolerance(args.tolerance)
        current, baseline = load(args.current), load(args.baseline)
        rows = compare(current, baseline, args.tolerance)
    except ValueError as e:
        print(f"fastdet bench compare: {e}", file=sys.stderr)
        return 2
    text = to_markdown(rows, current, baseline, args.tolerance, baseline_name=str(args.baseline))
    print(text, end="")
    if args.report:
        Path(args.report).write_text(text)
    return 1 if regressions(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
