"""`tierbench calibrate` against the bundled instant server (a real server process on loopback), and
the committed calibration results: each carries a passed bar, recomputable from its own runs, at a
clean commit of this repository."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.measure.calibrate import BAR_MS

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "results" / "calibrate"


def test_calibrate_measures_client_overhead(tmp_path, capsys):
    code = main(["calibrate", "--sessions", "8", "--calls", "4", "--tokens", "32", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "calibration.json").read_text())
    assert r["requests"] == r["ok"] == r["matched"] == 32
    t, i = r["ttft_overhead_ms"], r["itl_overhead_ms"]
    # The bar: calibrate's own, p99 client overhead <= BAR_MS (2 ms) on TTFT and ITL, and exit 0. An
    # honest client meets it here with margin: the committed runs on this 2-core machine
    # (results/calibrate/runs.json: 10 runs x 576 calls, 64 sessions) have a worst TTFT p99 of 0.67 ms
    # and ITL p99 of 0.07 ms (user-space stamps: 0.96 / 0.62 ms). At this size (24 TTFT, 992 ITL
    # samples; 4 calls of 32 tokens rather than 3 of 8, so that the ITL p99 is not the second-largest
    # gap), measured while another test suite ran on the machine: TTFT p99 0.04-1.2 ms, ITL p99
    # 0.013-0.028 ms with the instant server stamping each chunk just before its send (10 runs). Where
    # the server stamps after the send, the send can wake the client onto the server's core before the
    # stamp: 4 of 16 runs then had an ITL p99 of 1.9-5.1 ms that was the server's, not the client's.
    # A client that adds over 2 ms to more than one call in a hundred (or stamps chunks that late) fails.
    assert t["p99"] <= BAR_MS and i["p99"] <= BAR_MS, (t, i)
    assert r["pass"] is True and r["bar_p99_ms"] == BAR_MS and code == 0
    assert t["n"] == 24 and r["first_call_ttft_overhead_ms"]["n"] == 8 and i["n"] == 32 * 31
    # The client can only add time to what the server did (monotonic clocks, differences only).
    assert t["p50"] > -0.5 and 0 <= i["p50"] <= i["p99"] <= i["max"]
    # what the server's late reads would have added is reported apart, never negative
    assert r["server_read_lateness_ms"]["n"] == 32 and r["server_read_lateness_ms"]["p50"] >= 0
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


@pytest.mark.parametrize("name", ["runs.json", "runs-userspace-stamps.json", "runs-256-workers2.json"])
def test_committed_calibration_passes_its_bar_at_a_clean_commit(name):
    """A committed result (tools/calibrate_runs.py) says pass, its bar is no looser than calibrate's
    (BAR_MS on the median run's p99), the figures and the verdict follow from its own runs, every run
    completed every call, and it was measured at a clean commit of this repository's history."""
    d = json.loads((COMMITTED / name).read_text())
    bars = d["bars_ms"]
    assert d["pass"] is True and bars["median_p99"] <= BAR_MS
    assert bars["worst_p99"] is None or bars["worst_p99"] <= BAR_MS
    runs = d["runs"]
    assert len(runs) >= 5
    for metric in ("ttft", "itl"):
        p99 = [r[f"{metric}_overhead_ms"]["p99"] for r in runs]
        f = d[metric]
        assert f["p99_ms_per_run"] == p99
        assert f["median_p99_ms"] == statistics.median(p99) and f["worst_p99_ms"] == max(p99)
        assert f["median_p99_ms"] <= bars["median_p99"], (metric, f)
        assert bars["worst_p99"] is None or f["worst_p99_ms"] <= bars["worst_p99"], (metric, f)
    n = d["sessions"] * d["calls_per_session"]
    for r in runs:
        assert r["exit"] == 0 and r["requests"] == r["ok"] == r["matched"] == n, r
        assert r["load"]["errors"] == 0 and r["load"]["lost"] == 0
        assert r["ttft_overhead_ms"]["n"] == n - d["sessions"]  # every call after each session's first
    # provenance: a commit without "-dirty" (tracked files as committed, results/ aside), in this
    # repository's history where there is one to ask
    commit = d["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit or ""), commit
    assert d["date"] and d["environment"]["cores"] >= 1
    if (REPO / ".git").exists():
        r = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, "HEAD"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{name}: {commit} is not an ancestor of HEAD: {r.stderr}"
