"""`tierbench demo` and `trace synth` / `trace fit` through the command line."""
from __future__ import annotations

import json

from bench.cli import main
from traces.load import load_trace


def test_demo_writes_trace_stats_and_plots(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["sessions"] == 16 and st["calls"] >= 16 * 4
    assert st["input_tokens"]["max"] <= 4096  # fits the tiny model
    assert (tmp_path / "trace.html").read_text().count('class="plotly-graph-div"') == 5
    assert load_trace(tmp_path / "trace.jsonl").num_calls == st["calls"]
    assert "calls_per_session" in capsys.readouterr().out


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
