"""Every fastdet op under fuzzed arguments (tests/fuzz_ops.py) on CPU: a result or a RuntimeError
naming the op, never a crash, a hang or an unexplained exception. The fuzzer runs in a subprocess so
that a crash fails this test with the case that caused it (its last log line)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).with_name("fuzz_ops.py")


def _last_case(log: Path) -> str:
    lines = log.read_text().splitlines() if log.exists() else []
    return lines[-1] if lines else "no case (it died before the first one)"


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_arguments_give_results_or_named_errors(tmp_path, seed):
    log, report = tmp_path / "fuzz.log", tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # fastdet from where this process has it
    try:
        proc = subprocess.run([sys.executable, str(FUZZER), "--seed", str(seed), "--cases", "2000", "--log", str(log),
                               "--report", str(report)], capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fuzzer hung on {_last_case(log)}")
    if not report.exists():  # the process died
        pytest.fail(f"the fuzzer crashed (exit {proc.returncode}) on {_last_case(log)}\n{proc.stderr[-2000:]}")
    summary = json.loads(report.read_text())
    assert summary["defects"] == []
    assert len(summary["ops"]) >= 24  # every registered op got cases
    assert summary["counts"]["ok"] > 50 and summary["counts"]["error"] > 50  # both outcomes exercised
