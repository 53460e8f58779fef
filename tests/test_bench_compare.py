"""Benchmark regression reports (fastdet.bench._compare and `fastdet bench --compare`), on
synthetic JSON: nothing here is timed."""

import json

import pytest

from fastdet.bench import _compare as cmp
from fastdet.bench import _harness as h
from fastdet.cli import main

ENV = {"fastdet": {"version": "0.1.0"}, "torch": "2.14.1", "torchvision": "0.29.1", "cpu": "x86_64", "cpu_threads": 2}


def result(op, label, speedup, device="cpu", peer="torchvision"):
    peer_ms = None if speedup is None else 1.0 * speedup
    return {"op": op, "label": label, "size": 1, "device": device, "fastdet_ms": 1.0, "peer_ms": peer_ms,
            "peer_name": peer if speedup is not None else "", "speedup": speedup, "gbps": None,
            "pct_of_peak": None, "note": ""}


def report(*results, env=ENV):
    return {"environment": dict(env), "results": list(results)}


def status(rows):
    return {r.label: r.status for r in rows}


BASE = report(result("nms", "a", 10.0), result("nms", "b", 4.0), result("box_iou", "c", 2.0))


def test_regression_is_detected_and_reported():
    now = report(result("nms", "a", 5.0), result("nms", "b", 4.1), result("box_iou", "c", 2.0))
    rows = cmp.compare(now, BASE, tolerance=0.35)
    assert status(rows) == {"a": cmp.REGRESSED, "b": cmp.OK, "c": cmp.OK}
    assert [r.label for r in cmp.regressions(rows)] == ["a"]
    assert rows[0].label == "a"  # regressions first
    assert rows[0].change == pytest.approx(-0.5)
    text = cmp.to_markdown(rows, now, BASE, 0.35)
    assert "**1 regression**" in text
    assert "| nms | cpu | a | torchvision | 10.00x | 5.00x | -50 % | ❌ regressed |" in text


def test_improvement_is_not_a_failure():
    now = report(result("nms", "a", 30.0), result("nms", "b", 4.0), result("box_iou", "c", 2.0))
    rows = cmp.compare(now, BASE, tolerance=0.35)
    assert status(rows)["a"] == cmp.IMPROVED
    assert cmp.regressions(rows) == []
    assert "**no regressions**" in cmp.to_markdown(rows, now, BASE, 0.35)


def test_new_and_removed_cases_are_listed_not_failures():
    now = report(result("nms", "a", 10.0), result("nms", "b", 4.0), result("roi_align", "d", 3.0))
    rows = cmp.compare(now, BASE, tolerance=0.35)
    assert status(rows) == {"a": cmp.OK, "b": cmp.OK, "c": cmp.REMOVED, "d": cmp.NEW}
    assert cmp.regressions(rows) == []
    text = cmp.to_markdown(rows, now, BASE, 0.35)
    assert "| roi_align | cpu | d | torchvision | - | 3.00x | - | new |" in text
    assert "| box_iou | cpu | c | torchvision | 2.00x | - | - | removed |" in text
    assert "refresh the baseline" in text


def test_same_label_on_another_device_is_another_case():
    now = report(result("nms", "a", 10.0, device="cuda"))
    rows = cmp.compare(now, report(result("nms", "a", 10.0)), tolerance=0.35)
    assert sorted((r.device, r.status) for r in rows) == [("cpu", cmp.REMOVED), ("cuda", cmp.NEW)]


def test_tolerance_boundary_is_relative():
    base = report(result("nms", "a", 10.0))
    # 10 -> 6.6 is a 34 % drop: inside 0.35, outside 0.30
    now = report(result("nms", "a", 6.6))
    assert status(cmp.compare(now, base, tolerance=0.35))["a"] == cmp.OK
    assert status(cmp.compare(now, base, tolerance=0.30))["a"] == cmp.REGRESSED
    # the same relative drop on a small ratio counts the same
    assert status(cmp.compare(report(result("nms", "a", 0.66)), report(result("nms", "a", 1.0)), 0.30))["a"] == cmp.REGRESSED
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="tolerance"):
            cmp.compare(now, base, tolerance=bad)


def test_missing_ratio_is_listed_not_judged():
    now = report(result("nms", "a", None), result("nms", "b", float("nan")))
    rows = cmp.compare(now, report(result("nms", "a", 10.0), result("nms", "b", 4.0)), tolerance=0.35)
    assert status(rows) == {"a": cmp.NO_RATIO, "b": cmp.NO_RATIO}
    assert cmp.regressions(rows) == []


def test_repeated_case_keeps_its_best_ratio():
    now = report(result("nms", "a", 3.0), result("nms", "a", 9.5))
    assert status(cmp.compare(now, report(result("nms", "a", 10.0)), 0.35))["a"] == cmp.OK


def test_environment_differences_are_named():
    now = report(result("nms", "a", 10.0), env={**ENV, "cpu_threads": 4, "torch": "2.11.0"})
    text = cmp.to_markdown(cmp.compare(now, BASE, 0.35), now, BASE, 0.35)
    assert "Environments differ" in text
    assert "cpu_threads: 2 in the baseline, 4 now" in text and "torch: 2.14.1 in the baseline, 2.11.0 now" in text
    assert "Environments differ" not in cmp.to_markdown(cmp.compare(BASE, BASE, 0.35), BASE, BASE, 0.35)


# ---- python -m fastdet.bench._compare CURRENT BASELINE -----------------------------------------


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_compare_files_exit_codes(tmp_path, capsys):
    base = write(tmp_path, "base.json", BASE)
    good = write(tmp_path, "good.json", report(result("nms", "a", 9.0), result("nms", "b", 4.0)))
    bad = write(tmp_path, "bad.json", report(result("nms", "a", 2.0), result("nms", "b", 4.0)))
    out = tmp_path / "report.md"
    assert cmp.main([good, base, "--report", str(out)]) == 0
    assert "**no regressions**" in out.read_text()
    assert cmp.main([bad, base]) == 1
    assert "❌ regressed" in capsys.readouterr().out
    assert cmp.main([bad, base, "--tolerance", "0.9"]) == 0


def test_compare_files_bad_input_is_a_clear_error(tmp_path, capsys):
    base = write(tmp_path, "base.json", BASE)
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    assert cmp.main([str(not_json), base]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert cmp.main([write(tmp_path, "y.json", {"foo": 1}), base]) == 2
    assert "no 'results' list" in capsys.readouterr().err
    assert cmp.main([str(tmp_path / "missing.json"), base]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cmp.main([base, base, "--tolerance", "2"]) == 2
    assert "tolerance must be" in capsys.readouterr().err


# ---- fastdet bench --compare: measuring, re-measuring suspects, verdict -------------------------


@pytest.fixture
def scripted(monkeypatch):
    """Two fake cases whose measured ratios come from a script (per case, one value per
    measurement), so the re-measuring logic is tested without timing anything."""
    script = {}
    calls = []

    def fake_collect(ops, devices, sizes, quick):
        return [h.Case(op="nms", label=label, size=1, device="cpu", fastdet=lambda: None, peer=lambda: None)
                for label in script]

    def fake_run_case(case, repeats):
        calls.append(case.label)
        speedup = script[case.label].pop(0)
        return h.Result(case.op, case.label, case.size, case.device, 1.0, speedup, "torchvision", speedup)

    monkeypatch.setattr(h, "collect", fake_collect)
    monkeypatch.setattr(h, "run_case", fake_run_case)
    return script, calls


def run_compare(tmp_path, *extra):
    base = write(tmp_path, "base.json", report(result("nms", "a", 10.0), result("nms", "b", 4.0)))
    out, js = tmp_path / "report.md", tmp_path / "now.json"
    code = main(["bench", "--device", "cpu", "--compare", base, "--report", str(out), "--json", str(js), *extra])
    return code, out.read_text(), json.loads(js.read_text())


def test_bench_compare_rechecks_only_suspects_and_keeps_the_best(tmp_path, scripted):
    script, calls = scripted
    script.update(a=[5.0, 6.0, 9.0], b=[4.0])  # a looks regressed twice, then recovers
    code, text, now = run_compare(tmp_path, "--recheck", "2")
    assert code == 0
    assert calls == ["a", "b", "a", "a"]
    assert "**no regressions**" in text
    assert {r["label"]: r["speedup"] for r in now["results"]} == {"a": 9.0, "b": 4.0}


def test_bench_compare_fails_on_a_persistent_regression(tmp_path, scripted, capsys):
    script, calls = scripted
    script.update(a=[5.0, 5.5], b=[4.0])
    code, text, _ = run_compare(tmp_path, "--recheck", "1")
    assert code == 1
    assert calls == ["a", "b", "a"]
    assert "**1 regression**" in text and "| nms | cpu | a | torchvision | 10.00x | 5.50x | -45 % | ❌ regressed |" in text
    assert "❌ regressed" in capsys.readouterr().out


def test_bench_best_of_keeps_the_best_ratio(tmp_path, scripted):
    script, calls = scripted
    script.update(a=[5.0, 11.0, 7.0], b=[4.0, 3.0, 2.0])
    code, _, now = run_compare(tmp_path, "--best-of", "3", "--recheck", "0")
    assert code == 0
    assert {r["label"]: r["speedup"] for r in now["results"]} == {"a": 11.0, "b": 4.0}


def test_bench_compare_bad_baseline_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--compare", str(tmp_path / "none.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "--compare" in err and "none.json: no such file" in err
    assert main(["bench", "--device", "cpu", "--compare", write(tmp_path, "b.json", BASE), "--tolerance", "0"]) == 2
    assert "tolerance must be" in " ".join(capsys.readouterr().err.split())
