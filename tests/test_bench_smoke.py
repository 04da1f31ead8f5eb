"""The benchmarks (``make bench``) still run: the cheapest ones, tiny N.

The figures are not judged here (this machine's speed drifts); only that each
benchmark runs, writes its JSON line, and leaves no process behind.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import assert_no_children

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # bench/ is not installed; workers get our sys.path

import bench  # noqa: E402

KEYS = {"name", "figures", "reference", "ratio", "target", "pass", "python", "cpus",
        "timestamp"}


@pytest.mark.timeout(60)
def test_quick_benchmarks_run_and_record(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code = bench.main(["passthrough", "latency", "--quick", "--scale", "0.01",
                       "--out", str(out)])
    assert code == 0
    lines = [json.loads(row) for row in out.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["passthrough", "latency"]
    for line in lines:
        assert KEYS <= set(line)
        assert line["ratio"] is not None and line["ratio"] > 0
    printed = capsys.readouterr().out
    assert "== passthrough ==" in printed and "== latency ==" in printed
    assert_no_children()


def test_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["nosuchbench"])
    assert "unknown benchmark 'nosuchbench'" in capsys.readouterr().err
