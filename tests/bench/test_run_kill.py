"""`tierbench run` killed outright (SIGKILL: no handler runs, no finally) at random moments of a
real run against the bundled instant server on loopback: every time, the run directory reads back
with every call recorded before the kill, `tierbench report` works on it, and says the run was cut."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.metrics import load_requests
from bench.cli import main
from bench.measure.instant_server import InstantServer

REPO = Path(__file__).resolve().parents[2]
KILLS = 12


@pytest.fixture(scope="module")
def instant(tmp_path_factory):
    with InstantServer(tmp_path_factory.mktemp("instant"), ttft_ms=5, itl_ms=2) as server:
        yield server


def start(out: Path, url: str, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", "6",
                             "--users", "3", "--engine", url, "--model", str(model), "--think-scale", "0.5",
                             "--token-scale", "0.2", "--out", str(out), "--quiet"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.005)
    return time.monotonic()


def recorded(out: Path) -> set[str]:
    """The request ids of every complete record line of the run's journals, and of its table if written."""
    ids = set()
    for f in out.glob("requests.*.jsonl"):
        try:
            data = f.read_bytes()
        except FileNotFoundError:  # merged and deleted meanwhile: the table has them
            continue
        for line in data[:data.rfind(b"\n") + 1].splitlines():
            ids.add(json.loads(line)["request_id"])
    if (out / "requests.parquet").exists():
        ids |= set(load_requests(out)["request_id"])
    return ids


def test_a_run_killed_at_any_moment_reads_back(instant, tiny_model_dir, tmp_path):
    whole = tmp_path / "whole"
    p = start(whole, instant.url, tiny_model_dir)
    began = wait_for(whole / "run.json", p)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    length = time.monotonic() - began  # from run.json's first write to the end
    calls = json.loads((whole / "run.json").read_text())["workload"]["calls"]
    assert len(load_requests(whole)) == calls

    rng = random.Random(19)
    cut = 0
    for i in range(KILLS):
        out = tmp_path / f"cut{i}"
        p = start(out, instant.url, tiny_model_dir)
        wait_for(out / "run.json", p)
        at = (i + rng.random()) / KILLS * length  # one moment in each twelfth: start-up to the end
        time.sleep(at)
        before = recorded(out)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        rows = load_requests(out)  # never raises: the journal or the table, whole lines only
        assert before <= set(rows["request_id"]), f"kill {i}: calls recorded before the kill are gone"
        assert rows["request_id"].is_unique and len(rows) <= calls
        assert main(["report", str(out), "-o", str(out / "report.html")]) == 0
        info = json.loads((out / "run.json").read_text())
        page = (out / "report.html").read_text()
        print(f"kill {i} at {at:.2f} s of {length:.2f}: {info['status']}, {len(before)} calls recorded before, "
              f"{len(rows)} read back, table written: {(out / 'requests.parquet').exists()}")
        if info["status"] == "running":  # cut: the report says so, and how many calls it covers
            cut += 1
            assert info["pid"] == p.pid
            assert f"Run {info['name']} was cut" in page
        else:
            assert info["status"] == "completed" and "was cut" not in page
    # most kills land before the end (the last moments fall while the finished run writes its report)
    assert cut >= KILLS // 2
