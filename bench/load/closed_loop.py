"""Closed-loop agent sessions with locust: runs bench/load/locust_user.py headless in subprocesses.

Locally (workers=0) one locust process runs every user. With workers=N, locust's own distributed
mode: one `--master --expect-workers N` and N `--worker` processes, here or (master_host set) on
other machines; load scales with locust's machinery. Every process writes its own
requests.<pid>.<engine>.jsonl into run_dir; the locust output goes to run_dir/locust.log (master or local)
and run_dir/locust.worker<i>.log. The config reaches the locustfile as a JSON file
(run_dir/locust.config.json, named by $TIERBENCH_LOCUST_CONFIG); the API key only through the
environment, never a file.

Every subprocess is stopped on every way out (normal end, exception, KeyboardInterrupt): SIGTERM
(locust's graceful shutdown), then SIGKILL after a grace period.

A worker that dies mid-run (killed, crashed) after recording calls does not end the run: the
master's heartbeat notices it within about 3 s (bench/load/locust_user.py) and the others finish
their sessions. Its calls in flight and the sessions of its share it had not finished are then
recorded as failed rows with reason `lost` (requests.unsent.<engine>.jsonl); what it recorded
before it died stays.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import orjson

from analysis.records import read_jsonl
from bench.load.client import ClientConfig
from bench.load.recorder import read_new_rows, record_unsent, records_path
from bench.load.workload import read_workload
from engines.process import free_port, start_logged, stop_groups

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().with_name("locust_user.py")
CONFIG_ENV = "TIERBENCH_LOCUST_CONFIG"  # the names bench/load/locust_user.py reads
API_KEY_ENV = "TIERBENCH_LOCUST_API_KEY"
POLL_S = 0.5
TERM_GRACE_S = 10.0
STARTUP_GRACE_S = 120.0  # locust start and workers connecting (the --run-time clock starts after)


class _Progress:
    """Counts rows (and error rows) appended to some requests.<pid>.<engine>.jsonl files, incrementally."""

    def __init__(self, run_dir: Path, engine: str, on_row: Callable[[dict], None] | None = None):
        self.run_dir, self.engine, self.on_row = run_dir, engine, on_row
        self.pids: set[int] = set()
        self.offsets: dict[Path, int] = {}
        self.rows = self.errors = 0

    def poll(self) -> tuple[int, int]:
        for pid in self.pids:
            chunk = read_new_rows(records_path(self.run_dir, pid, self.engine), self.offsets)
            self.rows += chunk.count(b"\n")
            self.errors += chunk.count(b'"status":"error"')
            if self.on_row is not None:
                for line in chunk.splitlines():
                    self.on_row(orjson.loads(line))
        return self.rows, self.errors


def _worker_died(workers: list[subprocess.Popen], died: dict[int, int], run_dir: Path, engine: str) -> bool:
    """Note workers that exited with an error status; True when the run should end now: one died
    before recording a call (a crash at start), or none is left."""
    for p in workers:
        if p.pid not in died and p.poll() not in (None, 0):
            died[p.pid] = p.returncode
            path = records_path(run_dir, p.pid, engine)
            if not path.exists() or path.stat().st_size == 0:
                return True
    return bool(workers) and len(died) == len(workers)


def _share(run_dir: Path, pid: int) -> set[str]:
    """The session ids process `pid` took at the start (bench/load/locust_user.py writes them)."""
    try:
        return set(json.loads((run_dir / f"locust.sessions.{pid}.json").read_text()))
    except (OSError, ValueError):
        return set()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_closed_loop(workload_path, base_url: str, model: str, run_dir, engine: str, *, users: int,
                    workers: int = 0, master_host: str | None = None, duration_s: float | None = None,
                    warmup_s: float = 0.0, api_key: str | None = None, tier: str = "",
                    client: ClientConfig | None = None, on_progress: Callable[[int, int], None] | None = None,
                    on_row: Callable[[dict], None] | None = None,
                    stop_event: threading.Event | None = None) -> dict:
    """Play the sessions of the workload file (bench.load.workload.write_workload) with `users`
    concurrent locust users until every session is done or duration_s passed (rounded up to whole
    seconds: locust's --run-time; in-flight requests then finish and are recorded).

    workers=N>0: locust's distributed mode with N local worker processes; with master_host set,
    only the master starts, bound to master_host, and the command a remote worker runs is printed
    (and returned as worker_command); such workers write their records on their own machines.
    on_progress(done_calls, errors) is called about every 0.5 s from this thread, after on_row(row)
    for each row recorded since the last call. Setting
    stop_event ends the run at once (locust is stopped; calls in flight are lost, finished ones kept).
    `client` holds the calls' time-outs and retries.

    Returns {sessions, sessions_done, calls, errors, lost, exit_code, worker_exit_codes, elapsed_s,
    worker_command}: counts from the records this run's local processes wrote; sessions_done counts
    sessions with every call recorded; lost counts the rows written for the calls of processes that
    died mid-run (included in calls and errors); exit_code is the locust (master) exit code (1 when
    any request failed)."""
    workload_path = Path(workload_path)
    run_dir = Path(run_dir)
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers and users < workers:
        raise ValueError(f"users ({users}) must be >= workers ({workers}): a worker without users would "
                         "never play its share of the sessions")
    if master_host and not workers:
        raise ValueError("master_host needs workers > 0 (the number of remote workers to expect)")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    plans = read_workload(workload_path)  # fail here, not in locust, on a bad file
    client = client or ClientConfig()
    timeout_s = client.timeout_s
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("locust.sessions.*.json"):
        old.unlink()
    config = {"workload": str(workload_path.resolve()), "base_url": base_url, "model": model,
              "run_dir": str(run_dir.resolve()), "engine": engine, "tier": tier, "warmup_s": warmup_s,
              "client": client.to_dict(), "workers": workers}
    config_path = run_dir / "locust.config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    env = dict(os.environ)
    env[CONFIG_ENV] = str(config_path.resolve())
    env.pop(API_KEY_ENV, None)
    if api_key:
        env[API_KEY_ENV] = api_key
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--stop-timeout", str(math.ceil(timeout_s))]
    master = base + ["-u", str(users), "-r", str(users)]
    if duration_s is not None:
        master += ["--run-time", f"{math.ceil(duration_s)}s"]
    worker_cmd = None
    port = None
    if workers:
        bind = master_host or "127.0.0.1"
        port = free_port(bind if not master_host else "0.0.0.0")
        master += ["--master", "--master-bind-host", bind, "--master-bind-port", str(port),
                   "--expect-workers", str(workers)]
        if not master_host:
            master += ["--expect-workers-max-wait", str(int(STARTUP_GRACE_S))]
    progress = _Progress(run_dir, engine, on_row)
    procs: list[subprocess.Popen] = []
    died: dict[int, int] = {}  # pid -> exit status of a process that ran users and died mid-run
    t_start = time.monotonic()
    try:
        procs.append(start_logged(master, run_dir / "locust.log", env=env, cwd=REPO))
        if not workers:
            progress.pids.add(procs[0].pid)
        elif master_host:
            worker_cmd = (f"{CONFIG_ENV}={shlex.quote(str(config_path.resolve()))} PYTHONPATH={shlex.quote(str(REPO))} "
                          f"{shlex.quote(sys.executable)} -m locust -f {shlex.quote(str(LOCUSTFILE))} --worker "
                          f"--master-host {shlex.quote(master_host)} --master-port {port}")
            print(f"locust master on {master_host}:{port} expects {workers} worker(s); on each worker machine "
                  f"(the same paths, and ${API_KEY_ENV} if the server needs a key), run:\n  {worker_cmd}",
                  flush=True)
        else:
            for i in range(workers):
                p = start_logged(base + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                 run_dir / f"locust.worker{i}.log", env=env, cwd=REPO)
                procs.append(p)
                progress.pids.add(p.pid)
        deadline = None
        if duration_s is not None:
            deadline = t_start + STARTUP_GRACE_S + math.ceil(duration_s) + timeout_s + 60
        next_progress = time.monotonic() + POLL_S
        worker_deadline = None
        while True:
            if procs[0].poll() is not None:
                # the master is done: local workers got 'quit' and finish their in-flight requests
                if not workers and procs[0].returncode not in (0, 1):
                    died[procs[0].pid] = procs[0].returncode  # killed, or crashed
                if all(p.poll() is not None for p in procs[1:]):
                    break
                if worker_deadline is None:
                    worker_deadline = time.monotonic() + timeout_s + 30
                elif time.monotonic() > worker_deadline:
                    break
            elif _worker_died(procs[1:], died, run_dir, engine):
                break  # a worker died before recording anything, or all did (their logs say why)
            if deadline is not None and time.monotonic() > deadline:
                break  # locust did not stop by itself: the finally stops it
            if stop_event is not None and stop_event.is_set():
                break  # the server died or the early-stop rules are decided: the finally stops locust
            time.sleep(0.05)
            if on_progress is not None and time.monotonic() >= next_progress:
                next_progress = time.monotonic() + POLL_S
                on_progress(*progress.poll())
    finally:
        # SIGTERM first: locust workers finish their in-flight requests and write their records
        stop_groups(procs, ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5.0)))
    exit_code = procs[0].returncode
    worker_codes = [p.returncode for p in procs[1:]]
    lost = 0
    for pid, code in died.items():
        lost += record_unsent(run_dir, plans, engine, tier, "lost",
                              f"lost: locust process {pid} died mid-run (exit status {code})",
                              warmup_s=warmup_s, duration_s=duration_s, sessions=_share(run_dir, pid))
    if on_progress is not None:
        on_progress(*progress.poll())

    calls = errors = 0
    seen: dict[str, set] = {}
    for pid in progress.pids:
        p = records_path(run_dir, pid, engine)
        for row in read_jsonl(p) if p.exists() else []:
            calls += 1
            errors += row["status"] != "ok"
            seen.setdefault(row["session"], set()).add(row["call_index"])
    sessions_done = sum(1 for s in plans if s.calls and seen.get(s.id, set()) >= {c.index for c in s.calls})
    if calls == 0 and exit_code not in (0, None) and not master_host:
        raise RuntimeError(f"locust exited with code {exit_code} and recorded no call; "
                           f"{run_dir / 'locust.log'} ends with:\n{_tail(run_dir / 'locust.log')}")
    return {"sessions": len(plans), "sessions_done": sessions_done, "calls": calls + lost, "errors": errors + lost,
            "lost": lost, "exit_code": exit_code, "worker_exit_codes": worker_codes, "elapsed_s": time.monotonic() - t_start,
            "worker_command": worker_cmd}
