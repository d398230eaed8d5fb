"""A locust worker killed (SIGKILL) in the middle of a distributed `tierbench run` against the
bundled instant server on loopback: the master notices within its heartbeat, the other worker
finishes its sessions, the run ends with the dead worker's unfinished calls recorded as `lost`,
exits 1, and loses nothing that was recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from bench.load.recorder import records_path
from bench.load.workload import read_workload
from bench.measure.instant_server import InstantServer

REPO = Path(__file__).resolve().parents[3]


def complete_lines(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]


def test_killed_worker_loses_only_its_unfinished_calls(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with InstantServer(tmp_path, ttft_ms=5, itl_ms=2) as server:
        engine = server.url.split("//")[1]  # a URL engine's name
        p = subprocess.Popen([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", "8",
                              "--users", "4", "--workers", "2", "--engine", server.url, "--model", str(tiny_model_dir),
                              "--think-scale", "1.0", "--token-scale", "0.2", "--out", str(out), "--quiet"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            victim = None
            while victim is None:  # the worker processes write their share at the start: wait for a record
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()[-3000:]
                for share in out.glob("locust.sessions.*.json"):
                    pid = int(share.name.split(".")[2])
                    if complete_lines(records_path(out, pid, engine)):
                        victim = pid
                time.sleep(0.05)
            before = complete_lines(records_path(out, victim, engine))
            os.kill(victim, signal.SIGKILL)
            killed, killed_wall = time.monotonic(), time.time()
            code = p.wait(timeout=180)
            after_kill = time.monotonic() - killed
        finally:
            if p.poll() is None:
                p.kill()
    assert code == 1, p.stderr[-3000:] if isinstance(p.stderr, str) else ""
    share = set(json.loads((out / f"locust.sessions.{victim}.json").read_text()))
    req = pd.read_parquet(out / "requests.parquet")
    plans = read_workload(out / "workload.jsonl")
    planned = {(s.id, c.index) for s in plans for c in s.calls}
    assert len(req) == len(planned) and set(zip(req["session"], req["call_index"])) == planned  # each call once
    lost = req[req["error_reason"] == "lost"]
    assert len(lost) > 0 and set(lost["session"]) <= share and lost["sent"].isna().all()
    assert lost["error"].str.contains(f"locust process {victim} died").all()
    assert (req[req["error_reason"] != "lost"]["status"] == "ok").all()  # everything else completed
    kept = set(req["request_id"])
    assert all(r["request_id"] in kept for r in before)  # nothing recorded before the kill is lost
    others = req[~req["session"].isin(share)]
    assert len(others) > 0 and (others["status"] == "ok").all()
    info = json.loads((out / "run.json").read_text())
    rep = info["engines"][engine]["repetitions"][0]
    assert rep["lost"] == len(lost) and rep["errors"] == len(lost)
    assert info["summary"][engine]["errors"] == {"lost": len(lost)}
    # the master noticed within its heartbeat (locust: 3 missed beats of 1 s), and the run then ended
    line = next(ln for ln in (out / "locust.log").read_text().splitlines() if "stopped answering" in ln)
    noticed = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert 0 < noticed - killed_wall < 5.0, line
    assert after_kill < 60
