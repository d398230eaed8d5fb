"""`tierbench calibrate` against the bundled instant server (a real server process on loopback)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from bench.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_calibrate_measures_client_overhead(tmp_path, capsys):
    code = main(["calibrate", "--sessions", "8", "--calls", "3", "--tokens", "8", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "calibration.json").read_text())
    assert code == (0 if r["pass"] else 1)  # the bar itself is a benchmark figure: this machine's load decides it
    assert r["requests"] == r["ok"] == r["matched"] == 24
    t, i = r["ttft_overhead_ms"], r["itl_overhead_ms"]
    assert t["n"] == 16 and r["first_call_ttft_overhead_ms"]["n"] == 8 and i["n"] == 24 * 7
    # The client can only add time to what the server did (monotonic clocks, differences only).
    assert t["p50"] > -0.5 and 0 <= i["p50"] <= i["p99"] <= i["max"]
    # what the server's late reads would have added is reported apart, never negative
    assert r["server_read_lateness_ms"]["n"] == 24 and r["server_read_lateness_ms"]["p50"] >= 0
    assert r["client_stamps"]
    assert "client overhead on TTFT" in capsys.readouterr().out


def test_calibrate_without_out_rewrites_no_committed_result(capsys):
    committed = REPO / "results" / "calibrate" / "calibration.json"
    before = committed.read_bytes() if committed.exists() else None
    main(["calibrate", "--sessions", "2", "--calls", "2", "--tokens", "4"])
    wrote = Path(re.search(r"wrote (\S+)/calibration\.json", capsys.readouterr().out).group(1))
    assert wrote.resolve() != committed.parent.resolve() and REPO / "results" not in wrote.resolve().parents
    assert json.loads((wrote / "calibration.json").read_text())["requests"] == 4
    assert (committed.read_bytes() if committed.exists() else None) == before
