"""`tierbench trace ...` end to end through the real command line."""
from __future__ import annotations

import json
import re

from bench.cli import main
from tests.conftest import shared

KEYS = {"sessions", "calls", "duration_s", "calls_per_session", "input_tokens", "output_tokens",
        "think_time_s", "prefix_reuse_ratio", "arrival_rate_per_s"}


def test_stats_json_has_design_keys(capsys):
    assert main(["trace", "stats", str(shared("mooncake")), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert KEYS <= st.keys()
    for k in ("input_tokens", "output_tokens", "calls_per_session"):
        assert set(st[k]) == {"mean", "p50", "p90", "p99", "max"}
    assert st["input_tokens"]["p50"] <= st["input_tokens"]["p90"] <= st["input_tokens"]["p99"] <= st["input_tokens"]["max"]


def test_stats_plot_writes_five_figures(tmp_path, capsys):
    out = tmp_path / "plot.html"
    assert main(["trace", "stats", str(shared("tracelab-examples") / "round_trace.derived.jsonl"), "--plot", str(out)]) == 0
    html = out.read_text()
    assert html.count('class="plotly-graph-div"') == 5
    for title in ("Prompt tokens", "Output tokens", "Think time", "Calls per session", "Prefix reuse"):
        assert title in html
    assert not re.search(r"<script[^>]+src=", html)  # plotly.js is inlined: opens without a network
    assert len(re.findall(r"plotly\.js v\d", html)) >= 1


def test_convert_to_mooncake_and_back(tmp_path, capsys):
    src = shared("tracelab-examples") / "round_trace.derived.jsonl"
    out = tmp_path / "m.jsonl"
    assert main(["trace", "convert", str(src), "--to", "mooncake", "--block-size", "64", "-o", str(out)]) == 0
    assert main(["trace", "stats", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert st["calls"] == 19 and st["prefix_reuse_ratio"] > 0.5


def test_convert_native_records_scaling(tmp_path, capsys):
    src = shared("tracelab-examples") / "round_trace.derived.jsonl"
    out = tmp_path / "n.jsonl"
    assert main(["trace", "convert", str(src), "--to", "native", "--token-scale", "0.01", "--max-context", "300",
                 "-o", str(out)]) == 0
    header = json.loads(out.read_text().splitlines()[0])
    assert header["meta"]["token_scale"] == 0.01 and header["meta"]["max_context"] == 300
    assert main(["trace", "stats", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert st["input_tokens"]["max"] <= 300


def test_help_on_every_command(capsys):
    for argv in (["--help"], ["trace", "--help"], ["trace", "stats", "--help"], ["trace", "fit", "--help"],
                 ["trace", "synth", "--help"], ["trace", "convert", "--help"], ["model", "tiny", "--help"],
                 ["demo", "--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
        assert "usage: tierbench" in capsys.readouterr().out


def test_bad_flag_value_exits_2(capsys):
    try:
        main(["trace", "synth", "--profile", "demo", "--sessions", "0", "-o", "x"])
    except SystemExit as e:
        assert e.code == 2
    assert "must be >= 1" in capsys.readouterr().err
