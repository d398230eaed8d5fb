"""`tierbench compare` on the committed CPU runs: the same numbers as analysis.compare, repeated
runs' t-intervals, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.compare import compare_metric, repeated_runs, split_metric
from analysis.rundata import Run, load_run
from bench.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_split_metric():
    assert split_metric("ttft_p99") == ("ttft", 99.0)
    assert split_metric("e2el_median") == ("e2el", 50.0)
    assert split_metric("tpot_mean") == ("tpot", None)
    assert split_metric("output_throughput") is None and split_metric("ttft_p") is None


def test_cli_prints_the_paired_comparison(capsys):
    run = load_run(RESULTS / "cpu-agentic")
    assert main(["compare", str(RESULTS / "cpu-agentic"), str(RESULTS / "cpu-agentic"), "--groups", "reference:vllm",
                 "--metric", "ttft_p50", "--metric", "tpot_p99", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for r in rows:
        want = compare_metric(run, "reference", run, "vllm", r["metric"])
        assert r["paired"] and r["n_pairs"] == want.n_pairs
        assert r["ratio"]["estimate"] == pytest.approx(want.ratio.estimate)
        assert (r["ratio"]["lo"], r["ratio"]["hi"]) == pytest.approx((want.ratio.lo, want.ratio.hi))
    # vLLM's TTFT p50 is higher on this run, and the interval excludes 1
    assert rows[0]["ratio"]["lo"] > 1.0
    assert main(["compare", str(RESULTS / "cpu-agentic"), str(RESULTS / "cpu-agentic")]) == 0
    text = capsys.readouterr().out
    assert "reference" in text and "vllm" in text and "paired n=975" in text


def test_repeated_runs_t_interval():
    summary = {f"ref@rep{i}": {"output_throughput": v} for i, v in enumerate([100.0, 110.0, 90.0])}
    iv = repeated_runs(Run(Path("x"), {}, None, None, summary), "output_throughput")["ref"]
    assert iv.estimate == pytest.approx(100.0) and iv.n == 3 and iv.lo < 100 < iv.hi


def test_bad_input_exits_2(capsys, tmp_path):
    assert main(["compare", str(RESULTS / "cpu-agentic"), str(tmp_path / "nope")]) == 2
    assert main(["compare", str(RESULTS / "cpu-agentic"), str(RESULTS / "cpu-agentic"), "--groups", "x:vllm"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"summary": [1, 2]')
    assert main(["compare", str(bad), str(RESULTS / "cpu-agentic")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "nope" in err[0] and "no group 'x'" in err[1] and "bad.json:1: invalid JSON" in err[2]
