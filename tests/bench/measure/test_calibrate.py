"""`tierbench calibrate` against the bundled instant server (a real server process on loopback)."""
from __future__ import annotations

import json

from bench.cli import main


def test_calibrate_measures_client_overhead(tmp_path, capsys):
    code = main(["calibrate", "--sessions", "8", "--calls", "3", "--tokens", "8", "--out", str(tmp_path)])
    assert code in (0, 1)  # the bar is a benchmark figure; this machine's load decides it
    r = json.loads((tmp_path / "calibration.json").read_text())
    assert r["requests"] == r["ok"] == r["matched"] == 24
    t, i = r["ttft_overhead_ms"], r["itl_overhead_ms"]
    assert t["n"] == 16 and r["first_call_ttft_overhead_ms"]["n"] == 8 and i["n"] == 24 * 7
    # The client can only add time to what the server did (monotonic clocks, differences only).
    assert t["p50"] > -0.5 and 0 <= i["p50"] <= i["p99"] <= i["max"]
    assert "client overhead on TTFT" in capsys.readouterr().out
