"""The fastdet command line: info and bench (tiny sizes)."""

import json

import pytest

import fastdet
from fastdet.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    info = fastdet.build_info()
    assert f"fastdet {info['version']}" in out
    assert f"built against torch {info['torch_version']}" in out
    assert "box_iou" in out


def test_bench_json_and_markdown(tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["bench", "--ops", "box_iou", "--sizes", "64", "--repeats", "2", "--device", "cpu",
                 "--json", str(js), "--markdown", str(md)]) == 0
    report = json.loads(js.read_text())
    results = report["results"]
    assert {r["label"] for r in results} >= {"iou 64x64 fp32", "giou 64x64 fp32", "ciou 64x64 fp32"}
    for r in results:
        assert r["fastdet_ms"] > 0 and r["peer_ms"] > 0
        assert r["speedup"] == pytest.approx(r["peer_ms"] / r["fastdet_ms"])
    assert report["environment"]["fastdet"]["version"] == fastdet.__version__
    text = md.read_text()
    assert "| op | device | case |" in text and "giou 64x64 fp32" in text
    assert "giou 64x64 fp32" in capsys.readouterr().out


def test_bench_unknown_op_is_a_clear_error(capsys):
    assert main(["bench", "--ops", "no_such_op"]) == 2
    assert "no benchmark for no_such_op" in capsys.readouterr().err
