"""`tierbench run` end to end with a real reference server on loopback: the run directory, an
engine killed mid-run, an interrupted run, and malformed specs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.load.workload import read_workload

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_env(tiny_model_dir, tmp_path_factory):
    return {**os.environ, "TIERBENCH_CACHE": str(tmp_path_factory.mktemp("cache"))}


def start_run(out: Path, sessions: int, model: Path, env) -> subprocess.Popen:
    """`tierbench run` in the background: 2 users, real think times, so the run lasts a while."""
    return subprocess.Popen([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", str(sessions),
                             "--model", str(model), "--users", "2", "--think-scale", "1.0",
                             "--out", str(out), "--quiet"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def recorded_rows(out: Path) -> int:
    return sum(1 for f in out.glob("requests.*.jsonl") for _ in open(f)) if out.exists() else 0


def run_cli(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "bench", "run", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_closed_loop_run_directory(tiny_model_dir, model_env, tmp_path):
    out = tmp_path / "run"
    r = run_cli(["--trace", "profile:demo", "--sessions", "4", "--model", str(tiny_model_dir), "--engine", "reference",
                 "--think-scale", "0.2", "--users", "4", "--out", str(out), "--repetitions", "2", "--quiet"], model_env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["git_commit"] and info["environment"]["cores"]
    assert info["spec"]["trace"]["path"] == "profile:demo"
    eng = info["engines"]["reference"]
    assert len(eng["repetitions"]) == 2 and eng["prefix_cache_reset"] == [True]
    assert (out / "server-reference.log").exists()
    req = pd.read_parquet(out / "requests.parquet")
    calls = info["workload"]["calls"]
    assert len(req) == 2 * calls and (req["status"] == "ok").all()
    assert (req["output_tokens"] == req["expected_output_tokens"]).all()
    assert (req["prompt_tokens"] == req["expected_prompt_tokens"]).all()
    assert set(req["tier"]) == {"rep0", "rep1"}
    # Each session's calls in order, each after the previous one ended.
    for (_, _), g in req.groupby(["tier", "session"]):
        g = g.sort_values("call_index")
        assert list(g["call_index"]) == list(range(len(g)))
        assert (g["sent"].values[1:] >= g["last_token"].values[:-1]).all()
    sessions = pd.read_parquet(out / "sessions.parquet")
    assert "fig-cdf-ttft" in (out / "report.html").read_text()  # the run writes its report
    assert len(sessions) == 2 * info["workload"]["sessions"]
    s = info["summary"]["reference@rep0"]
    assert s["completed"] == calls and s["makespan_p50_s"] > 0 and 0 < s["prefix_cache_hit_ratio"] <= 1
    assert "TTFT p50" in r.stdout


def test_open_loop_run(tiny_model_dir, model_env, tmp_path):
    out = tmp_path / "open"
    r = run_cli(["--trace", "profile:demo", "--sessions", "3", "--model", str(tiny_model_dir), "--mode", "open",
                 "--rate", "8", "--out", str(out), "--quiet"], model_env)
    assert r.returncode == 0, r.stderr[-2000:]
    req = pd.read_parquet(out / "requests.parquet")
    assert req["intended_start"].notna().all() and (req["status"] == "ok").all()
    info = json.loads((out / "run.json").read_text())
    assert info["engines"]["reference"]["repetitions"][0]["lag_p99_ms"] < 100


def test_engine_killed_mid_run(tiny_model_dir, model_env, tmp_path):
    """The server dies: the run ends, the calls after are failed with a reason, finished ones stay."""
    out = tmp_path / "killed"
    proc = start_run(out, 6, tiny_model_dir, model_env)
    try:
        deadline = time.time() + 120
        killed = False
        while time.time() < deadline and not killed:
            time.sleep(0.3)
            if recorded_rows(out) >= 3:
                info = json.loads((out / "run.json").read_text())
                url = info["engines"]["reference"]["base_url"]
                port = url.rsplit(":", 1)[1]
                pids = subprocess.run(["pgrep", "-f", f"engines.reference.server.*--port {port}"], capture_output=True,
                                      text=True).stdout.split()
                assert pids, "the server process"
                for pid in pids:
                    os.kill(int(pid), signal.SIGKILL)
                killed = True
        assert killed
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["engines"]["reference"]["died"] is True
    req = pd.read_parquet(out / "requests.parquet")
    ok, failed = req[req["status"] == "ok"], req[req["status"] == "error"]
    assert len(ok) >= 3 and len(failed) >= 1
    # in flight when it died: a connection error; after it (the kill may land while every user
    # thinks): never sent, with the reason and no send time
    assert failed["error"].str.contains("disconnected|refused|HTTP|not sent: the reference server died",
                                        regex=True).all()
    unsent = failed[failed["error"].str.startswith("not sent")]
    assert unsent["sent"].isna().all()
    planned = sum(len(s.calls) for s in read_workload(out / "workload.jsonl"))
    assert len(req) == planned, "every planned call has a row: done, failed in flight, or never sent"
    assert "died" in stderr


def test_sigterm_keeps_finished_requests(tiny_model_dir, model_env, tmp_path):
    out = tmp_path / "term"
    proc = start_run(out, 8, tiny_model_dir, model_env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.3)
            if recorded_rows(out) >= 2:
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted"
    req = pd.read_parquet(out / "requests.parquet")
    assert (req["status"] == "ok").sum() >= 2
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, "no locust or server process outlives the run"


@pytest.mark.parametrize("text, needle", [
    ("[load]\nmode = 'sideways'\n", "spec.toml:2: field 'load.mode'"),
    ("[trace]\nsessions = -1\n", "spec.toml:2: field 'trace.sessions'"),
    ("name = 'x'\n[load\n", "spec.toml:2: invalid TOML"),
    ("[[engines]]\nkind = 'tpu'\n", "spec.toml:2: field 'engines[0].kind'"),
    ("bogus = 1\n", "spec.toml:1: field 'bogus'"),
    ("[slos]\nitl_ms = 5\n", "spec.toml:2: field 'slos.itl_ms'"),
])
def test_malformed_spec_exits_2(tmp_path, capsys, text, needle):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_malformed_trace_exits_2(tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": -1}\n')
    assert main(["run", "--trace", str(bad), "--quiet"]) == 2
    assert "t.jsonl:1: field 'output_length'" in capsys.readouterr().err


def test_engines_side_by_side(tiny_model_dir, model_env, tmp_path):
    """`side_by_side = true`: both engines get the same calls at the same time."""
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""name = "sbs"
model = "{tiny_model_dir}"
[trace]
path = "profile:demo"
sessions = 3
[load]
mode = "open"
arrivals = "poisson"
rate = 6.0
side_by_side = true
[[engines]]
kind = "reference"
name = "a"
[[engines]]
kind = "reference"
name = "b"
""")
    out = tmp_path / "run"
    r = run_cli([str(spec), "--out", str(out), "--quiet"], model_env)
    assert r.returncode == 0, r.stderr[-2000:]
    req = pd.read_parquet(out / "requests.parquet")
    a, b = req[req.engine == "a"], req[req.engine == "b"]
    assert len(a) == len(b) > 0 and (req.status == "ok").all()
    assert set(a.request_id) == set(b.request_id)
    # Overlapping in time: each engine's first send comes before the other's last token.
    assert a.sent.min() < b.last_token.max() and b.sent.min() < a.last_token.max()


def test_rerun_into_the_same_directory_keeps_nothing_of_the_last(tiny_model_dir, model_env, tmp_path):
    """A second run into a run directory replaces the first: no request, table or report of the
    first run is read back as the second's."""
    out = tmp_path / "run"
    common = ["--trace", "profile:demo", "--model", str(tiny_model_dir), "--engine", "reference", "--think-scale", "0",
              "--users", "2", "--out", str(out), "--quiet"]
    for sessions in ("3", "2"):
        r = run_cli([*common, "--sessions", sessions], model_env)
        assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    df = pd.read_parquet(out / "requests.parquet")
    assert df["session"].nunique() == 2 and len(df) == info["workload"]["calls"]
    assert info["summary"]["reference"]["completed"] == len(df)


def test_progress_bar_on_a_terminal(tiny_model_dir, model_env, tmp_path):
    """On a terminal (a real pty here) the bar shows calls, sessions finished out of planned, and live tok/s."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # tqdm sizes itself to it
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", "3",
                             "--model", str(tiny_model_dir), "--users", "3", "--think-scale", "0.1", "--out",
                             str(tmp_path / "bar")], env=model_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert proc.wait(240) == 0, seen[-2000:]
    frames = [f.decode(errors="replace") for f in seen.replace(b"\r", b"\n").split(b"\n") if b" calls" in f]
    assert frames, seen[-2000:]
    assert any("sessions 3/3" in f for f in frames) and all("sessions " in f for f in frames[1:]), frames[-3:]
    assert any(" tok/s" in f for f in frames)
