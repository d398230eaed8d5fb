"""Sequential early stopping: the watcher on a records file, and `tierbench run --early-stop` end
to end with the real reference engine."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from analysis.stats import EarlyStopRule
from bench.load.early_stop import EarlyStopWatch
from bench.load.recorder import records_path

REPO = Path(__file__).resolve().parents[3]


def _row(i: int, ttft_s: float, tier: str = "") -> bytes:
    return orjson.dumps({"status": "ok", "warmup": False, "tier": tier, "sent": 100.0 + i,
                         "first_token": 100.0 + i + ttft_s, "last_token": 100.0 + i + ttft_s + 0.1,
                         "itl": [0.05, 0.05], "output_tokens": 3}) + b"\n"


def test_watch_decides_at_the_looks_and_halts(tmp_path):
    path = records_path(tmp_path, 4242, "ref")
    path.write_bytes(b"".join(_row(i, 0.5, tier="rep0") for i in range(200)))  # an earlier repetition
    died, halt = threading.Event(), threading.Event()
    rules = [EarlyStopRule.parse("ttft_p50<=100"), EarlyStopRule.parse("e2el_p99<=50")]
    w = EarlyStopWatch(rules, tmp_path, "ref", "rep1", died, halt).start()
    with open(path, "ab") as f:
        for i in range(63):
            f.write(_row(i, 0.01, tier="rep1"))  # 10 ms: under the p50 bound, over the e2el bound
    w.poll()
    assert not w.decisions  # 63 < the first look
    with open(path, "ab") as f:
        f.write(_row(63, 0.01, tier="rep1"))
        f.write(b'{"status": "ok", "tier": "rep1"')  # a row still being written is not read
    deadline = time.monotonic() + 10
    while not halt.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    w.stop()
    rep = w.report()
    assert halt.is_set() and rep["stopped_early"]
    assert [r["decision"] for r in rep["rules"]] == ["met", "missed"]
    assert rep["rules"][0]["calls"] == 64 and rep["rules"][1]["over_bound"] == 64


def test_watch_mirrors_a_dead_server(tmp_path):
    died, halt = threading.Event(), threading.Event()
    w = EarlyStopWatch([], tmp_path, "ref", "", died, halt).start()
    died.set()
    deadline = time.monotonic() + 5
    while not halt.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    assert halt.is_set() and w.report() is None


@pytest.mark.slow
def test_run_stops_early_once_the_target_is_decided(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", "32",
                        "--model", str(tiny_model_dir), "--engine", "reference", "--users", "4", "--think-scale", "0",
                        "--early-stop", "e2el_p50<=60000", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    rep = info["engines"]["reference"]["repetitions"][0]
    assert rep["early_stop"]["stopped_early"] and rep["early_stop"]["rules"][0]["decision"] == "met"
    assert 64 <= rep["calls"] < info["workload"]["calls"]
    assert "stopped early" in r.stderr


def test_watch_of_a_tiered_scenario_reads_every_tier(tmp_path):
    """Through tiers a scenario's rows carry the tier each call was routed to: tier=None reads them all."""
    path = records_path(tmp_path, 7, "hybrid")
    path.write_bytes(b"".join(_row(i, 0.01, tier="edge" if i % 3 else "central") for i in range(64)))
    died, halt = threading.Event(), threading.Event()
    w = EarlyStopWatch([EarlyStopRule.parse("ttft_p50<=100")], tmp_path, "hybrid", None, died, halt)
    w._offsets.clear()  # the rows above stand for this scenario's own
    w.poll()
    assert w.report()["rules"][0]["decision"] == "met" and w.report()["rules"][0]["calls"] == 64
