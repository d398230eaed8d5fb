"""`tierbench demo` and `trace synth` / `trace fit` through the command line."""
from __future__ import annotations

import json

from bench.cli import main
from traces.load import load_trace


def test_demo_reference_only(tmp_path, capsys):
    """The demo's path with the reference engine alone (the vLLM side is tests/bench/test_vllm_run.py)."""
    assert main(["demo", "--out", str(tmp_path), "--sessions", "3", "--no-vllm"]) == 0
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "completed" and list(info["engines"]) == ["reference"]
    s = info["summary"]["reference"]
    assert s["completed"] == info["workload"]["calls"] and s["failed"] == 0
    out = capsys.readouterr().out
    assert "TTFT p99" in out and "makespan p50" in out and "prefix hit" in out


def test_synth_then_fit_round_trip(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    assert main(["trace", "synth", "--profile", "swe-agent", "--sessions", "60", "--seed", "3", "-o", str(trace)]) == 0
    prof = tmp_path / "p.json"
    assert main(["trace", "fit", str(trace), "-o", str(prof)]) == 0
    fitted = json.loads(prof.read_text())
    assert fitted["name"] == "p"
    again = tmp_path / "t2.jsonl"
    assert main(["trace", "synth", "--profile", str(prof), "--sessions", "60", "--seed", "3", "-o", str(again)]) == 0
    a, b = load_trace(trace), load_trace(again)
    assert abs(a.num_calls - b.num_calls) / a.num_calls < 0.35


def test_synth_is_deterministic(tmp_path, capsys):
    outs = []
    for i in range(2):
        p = tmp_path / f"{i}.jsonl"
        assert main(["trace", "synth", "--profile", "demo", "--sessions", "5", "--seed", "7", "-o", str(p)]) == 0
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]


def test_unknown_profile_exits_2(tmp_path, capsys):
    assert main(["trace", "synth", "--profile", "nope", "--sessions", "1", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "agentic-coding" in err and "\n" not in err.strip()
