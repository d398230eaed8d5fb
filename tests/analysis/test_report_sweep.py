"""The sweep report (analysis/report_sweep.py) from a hand-built sweep.json: its tables, and the
page opened in real headless Chromium with every figure drawn (the `browser` fixture of
tests/analysis/conftest.py)."""
from __future__ import annotations

import json

import pytest

from analysis.report_sweep import build_sweep_report, capacity_rows, is_sweep, load_sweep, write_sweep_report
from tests.analysis.test_report import _check_page


def iv(est):
    return {"estimate": est, "lo": est * 0.9, "hi": est * 1.1, "confidence": 0.95}


def point(load, tput, users=None, verdict="pass", saturated=False, label=None):
    return {"load": load, "label": label or f"rate-{load:g}", "closed": False, "dir": f"points/ref-rate-{load:g}",
            "reused": False, "status": "completed", "request_throughput": load * 0.98, "output_throughput": tput,
            "output_throughput_per_user": tput / (users or load), "ttft_p50_ms": iv(20 + load), "ttft_p99_ms": iv(80 + 9 * load),
            "tpot_p50_ms": iv(2 + load / 10), "tpot_p99_ms": iv(5 + load), "e2el_p50_ms": iv(40 + load),
            "e2el_p99_ms": iv(150 + 10 * load), "makespan_p50_s": {"estimate": None},
            "verdict": verdict, "saturation": {"saturated": saturated}, "slos": []}


def sweep_doc():
    ref = [point(1, 30), point(2, 60), point(4, 110, verdict="fail"), point(2.8, 85), point(8, 120, verdict="fail", saturated=True)]
    vl = [point(1, 31), point(2, 62), point(4, 125), point(8, 200, verdict="fail")]
    return {"command": "tierbench sweep s.toml", "spec": {"name": "s"}, "provenance": {"git_commit": "abc"},
            "config": {"closed": False, "slos": ["ttft_p99<=100"], "confidence": 0.95, "resolution": 0.1},
            "engines": {"reference": {"points": ref, "saturated_at": 8,
                                      "capacity": {"lo": 2.8, "hi": 4, "unit": "calls/s"}},
                        "<b>vllm</b>": {"points": vl, "saturated_at": None,
                                        "capacity": {"lo": 4, "hi": 8, "unit": "calls/s"}}}}


def test_capacity_table_and_bad_files(tmp_path):
    rows = capacity_rows(sweep_doc())
    assert rows[0][:3] == ["reference", "2.8 calls/s (fails at 4 calls/s)", "8 calls/s"]
    assert rows[1][0] == "&lt;b&gt;vllm&lt;/b&gt;" and rows[1][2] == "-"  # escaped; not saturated
    (tmp_path / "sweep.json").write_text("{}")
    assert is_sweep(tmp_path)
    with pytest.raises(ValueError, match="field 'engines'"):
        load_sweep(tmp_path)


def test_sweep_report_draws_curves_and_pareto_in_chromium(browser, tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps(sweep_doc()))
    page = write_sweep_report(tmp_path)
    html = page.read_text()
    assert "<b>vllm</b>" not in html and "2.8 calls/s (fails at 4 calls/s)" in html
    drawn = _check_page(browser, page)
    assert [d["id"] for d in drawn] == ["fig-sweep-curves", "fig-pareto"]
    pareto = next(d for d in drawn if d["id"] == "fig-pareto")
    assert pareto["data"] == 2  # one line per engine


def test_a_sweep_without_throughputs_gives_notes_not_figures():
    doc = sweep_doc()
    for e in doc["engines"].values():
        for p in e["points"]:
            p["output_throughput"] = p["output_throughput_per_user"] = None
    html = build_sweep_report(doc)
    assert "No point has a throughput and a latency." in html and '"fig-pareto"' not in html
