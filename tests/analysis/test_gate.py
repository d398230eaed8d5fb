"""analysis.gate and `tierbench gate`: the 100-trial bars on synthetic runs, exact counters, the
Markdown and JUnit outputs, and exit statuses."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.gate import describe_runs, gate_failed, run_gate, write_outputs
from analysis.rundata import Run, load_run
from bench.cli import main

SESSIONS, CALLS = 40, 25


def call_costs(seed: int = 0) -> np.ndarray:
    """What each call of a fixed workload costs (seconds): sessions differ (context length), calls
    grow along a session. The same calls run in every synthetic run of a trial."""
    rng = np.random.default_rng(seed)
    session = np.exp(rng.normal(0, 0.4, SESSIONS))[:, None]
    growth = np.linspace(1.0, 2.0, CALLS)[None, :]
    return (0.05 * session * growth * np.exp(rng.normal(0, 0.3, (SESSIONS, CALLS)))).ravel()


def synthetic_run(costs: np.ndarray, rng: np.random.Generator, slowdown: float = 1.0, name: str = "r") -> Run:
    """One run of the workload: every call's TTFT and decode time are its cost times run-to-run
    noise (15% per call, the CPU machines' level), times `slowdown`."""
    n = costs.size
    ttft = costs * np.exp(rng.normal(0, 0.15, n)) * slowdown
    decode = costs * 2 * np.exp(rng.normal(0, 0.15, n)) * slowdown
    sent = np.arange(n) * 1.0
    df = pd.DataFrame({
        "request_id": [f"c{i}" for i in range(n)], "engine": "ref", "tier": "",
        "session": [f"s{i // CALLS}" for i in range(n)], "call_index": np.arange(n) % CALLS,
        "intended_start": sent, "sent": sent, "first_token": sent + ttft, "last_token": sent + ttft + decode,
        "itl": [[d / 15] * 15 for d in decode], "chunks": 16, "prompt_tokens": 100, "output_tokens": 16,
        "cached_tokens": None, "expected_prompt_tokens": 100, "expected_output_tokens": 16, "status": "ok",
        "error": None, "warmup": False})
    summary = {"ref": {"output_throughput": 1000.0 / slowdown, "completed": n,
                       "engine_counters": {"steps": 4000.0, "prompt_tokens_computed": 9000.0}}}
    return Run(Path(name), {"name": name}, df, None, summary)


def _trials(slowdown: float, metrics: list[str], trials: int = 100) -> int:
    """How many of `trials` gates pass a candidate `slowdown` times slower than its baseline."""
    costs = call_costs()
    passes = 0
    for t in range(trials):
        rng = np.random.default_rng(1000 + t)
        base = synthetic_run(costs, rng)
        cand = synthetic_run(costs, rng, slowdown)
        v = run_gate(base, cand, metrics, 10.0, confidence=0.95, n_boot=1000, seed=t)
        passes += not gate_failed(v)
    return passes


METRICS = ["ttft_p50", "ttft_p99", "e2el_p50", "e2el_p99"]


@pytest.mark.slow
def test_identical_rerun_passes_at_least_95_in_100():
    assert _trials(1.0, METRICS) >= 95


@pytest.mark.slow
def test_20_percent_slowdown_fails_at_least_95_in_100():
    assert _trials(1.2, METRICS) <= 5


def test_paired_is_used_for_the_same_calls_and_unpaired_otherwise():
    costs = call_costs()
    rng = np.random.default_rng(0)
    base, cand = synthetic_run(costs, rng), synthetic_run(costs, rng)
    v = run_gate(base, cand, ["ttft_p50"], 10.0)
    assert v[0].row.paired and v[0].row.n_pairs == costs.size
    other = synthetic_run(call_costs(seed=1), rng)
    other.requests["session"] = "x" + other.requests["session"]  # different sessions: no pairs
    u = run_gate(base, other, ["ttft_p50"], 10.0)
    assert not u[0].row.paired and u[0].row.mann_whitney_p is not None


def test_counters_gate_exactly_and_throughput_by_point():
    costs = call_costs()
    rng = np.random.default_rng(0)
    base, cand = synthetic_run(costs, rng), synthetic_run(costs, rng)
    assert not gate_failed(run_gate(base, cand, ["steps", "prompt_tokens_computed", "completed"], 10.0))
    cand.summary["ref"]["engine_counters"]["steps"] = 4001.0  # one extra engine step
    v = run_gate(base, cand, ["steps"], 50.0)
    assert gate_failed(v) and v[0].kind == "exact" and "4000 -> 4001" in v[0].reason
    slow = synthetic_run(costs, rng, slowdown=1.25)  # throughput 800 vs 1000: -20%
    v = run_gate(base, slow, ["output_throughput"], 10.0)
    assert gate_failed(v) and v[0].kind == "point"
    assert not gate_failed(run_gate(base, slow, ["output_throughput"], 25.0))
    # advisory metrics are reported but never fail
    v = run_gate(base, slow, ["completed"], 10.0, advisory=["output_throughput"])
    assert not gate_failed(v) and not v[1].ok and v[1].advisory


def test_outputs_markdown_and_junit(tmp_path):
    costs = call_costs()
    rng = np.random.default_rng(0)
    base, cand = synthetic_run(costs, rng), synthetic_run(costs, rng, 1.5)
    v = run_gate(base, cand, ["ttft_p50", "steps"], 10.0)
    md = write_outputs(v, describe_runs(base, cand), 10.0, 0.95, tmp_path / "g.md", tmp_path / "g.xml")
    assert md.startswith("## tierbench gate: FAILED") and "`ref.ttft_p50`" in md and "**FAIL**" in md
    root = ET.parse(tmp_path / "g.xml").getroot()
    assert root.tag == "testsuite" and root.get("tests") == "2" and root.get("failures") == "1"
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == ["ref.ttft_p50"]


def _write_run_dir(run: Run, path: Path) -> Path:
    path.mkdir()
    run.requests.to_parquet(path / "requests.parquet", index=False)
    (path / "run.json").write_text(json.dumps({"name": path.name, "summary": run.summary}))
    return path


def test_cli_exit_statuses(tmp_path, capsys):
    costs = call_costs()
    rng = np.random.default_rng(0)
    a = _write_run_dir(synthetic_run(costs, rng), tmp_path / "a")
    b = _write_run_dir(synthetic_run(costs, rng), tmp_path / "b")
    slow = _write_run_dir(synthetic_run(costs, rng, 1.5), tmp_path / "slow")
    common = ["--markdown", str(tmp_path / "g.md"), "--junit", str(tmp_path / "g.xml")]
    assert main(["gate", "--baseline", str(a), "--candidate", str(b), "--metric", "e2el_p50", "--metric", "steps",
                 *common]) == 0
    assert main(["gate", "--baseline", str(a), "--candidate", str(slow), "--metric", "e2el_p50", *common]) == 1
    assert "FAILED" in (tmp_path / "g.md").read_text()
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written over
    assert main(["gate", "--baseline", str(a), "--candidate", str(b), "--metric", "nope", *common]) == 2
    assert main(["gate", "--baseline", str(a), "--candidate", str(b), "--metric", "evictions", *common]) == 2
    assert main(["gate", "--baseline", str(a), "--candidate", str(tmp_path / "missing"), "--metric", "steps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "unknown metric 'nope'" in err[0]
    assert "engine_counters.evictions': missing" in err[1] and "run.json" in err[1]
    # a summary-only JSON compares point values
    js = tmp_path / "summary.json"
    js.write_text(json.dumps({"summary": load_run(a).summary}))
    assert main(["gate", "--baseline", str(js), "--candidate", str(a), "--metric", "output_throughput", *common]) == 0
