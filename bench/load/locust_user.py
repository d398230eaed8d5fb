"""The locustfile of closed-loop agent sessions (run by bench.load.closed_loop; never import it in a
process that should not be gevent-monkey-patched: importing locust patches the standard library).

Each locust user plays one session at a time: it takes the next session of its process's share,
waits until the session's start_s (relative to this process's test start) if that is still
ahead, then for each call waits the call's think_s after the previous response's last token (not
before call 0), sends it, streams the response and records it, then goes on. A call that fails is
recorded as an error and the session goes on with its next call (the prompts are fixed).

Record.intended is the session's scheduled start (run start + start_s) for call 0 and the end of
the think time (previous last token + think_s) for the others; `sent` is the actual send.

Sessions are shared out without duplication: worker i of W (locust's own worker index; W from the
config) takes sessions i, i+W, ...; a local run takes them all; within a process the users take
them from one queue in start_s order. When a process has no session left and none in progress it
ends the run (local) or tells the master, which quits once every worker is done or missing: a
worker that stopped answering (killed, crashed) is marked missing by locust's heartbeat within
about 3 s; its calls in flight and its sessions not yet played are lost, and the parent
(bench.load.closed_loop) records them as such from the share each process writes at the start
(run_dir/locust.sessions.<pid>.json). The think time is
locust's wait_time, so at --run-time a user thinking or waiting for a session stops at once and a
user in a request finishes and records it first (--stop-timeout).

Config: a JSON file named by $TIERBENCH_LOCUST_CONFIG with workload, base_url, model, run_dir,
engine, tier, warmup_s, client (bench.load.client.ClientConfig's fields), workers; the API key, if
any, in $TIERBENCH_LOCUST_API_KEY.

Each process freezes the objects alive at the test's start out of the garbage collector's reach
(gc.freeze): a full collection of locust's, gevent's and our imports takes tens of milliseconds
(about 35 ms here), longer than a chunk gap, and would hold every stream of the process while it
runs; frozen, a collection walks only what the run allocates.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import deque
from pathlib import Path

import gevent
from locust import User, events, task
from locust.runners import MasterRunner, WorkerRunner

from bench.load.client import ClientConfig, StreamingClient
from bench.load.open_loop import COMPLETIONS_PATH, new_record, stream_call
from bench.load.recorder import Recorder
from bench.load.workload import read_workload

CONFIG_ENV = "TIERBENCH_LOCUST_CONFIG"
API_KEY_ENV = "TIERBENCH_LOCUST_API_KEY"
DONE_MESSAGE = "tierbench_done"
IDLE_WAIT_S = 0.5
MISSING_POLL_S = 0.5


def _load_config() -> dict:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"bench/load/locust_user.py: ${CONFIG_ENV} is not set (run it through bench.load.closed_loop)")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"bench/load/locust_user.py: cannot read the config {path}: {e}") from None


CFG = _load_config()


class _Process:
    """This process's share of the sessions and its bookkeeping (gevent: no locks needed)."""
    sessions: deque | None = None
    run_start: float | None = None
    in_progress = 0
    done_signalled = False
    recorder: Recorder | None = None
    done_workers: set = set()  # the master's: workers done or missing
    quitting = False


@events.init.add_listener
def _on_init(environment, **_kw):
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        def on_done(environment, msg, **_kw):
            _Process.done_workers.add(msg.node_id)
            _quit_when_all_done(runner)
        runner.register_message(DONE_MESSAGE, on_done)
        gevent.spawn(_watch_missing, runner)


def _quit_when_all_done(runner) -> None:
    if not _Process.quitting and len(_Process.done_workers) >= max(1, int(CFG.get("workers") or 1)):
        _Process.quitting = True
        gevent.spawn(runner.quit)


def _watch_missing(runner) -> None:
    """The master: a worker locust's heartbeat marks missing will never say it is done; count it
    as done, so the run ends when the others are (the parent records its lost calls)."""
    while True:
        gevent.sleep(MISSING_POLL_S)
        for node in runner.clients.missing:
            if node.id not in _Process.done_workers:
                logging.getLogger("tierbench").warning(
                    "locust worker %s stopped answering: its calls in flight and sessions left are lost", node.id)
                _Process.done_workers.add(node.id)
        _quit_when_all_done(runner)


@events.test_start.add_listener
def _on_test_start(environment, **_kw):
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        return
    _Process.run_start = time.perf_counter()
    if isinstance(runner, WorkerRunner):
        count = max(1, int(CFG.get("workers") or 1))
        index = max(0, runner.worker_index) % count
    else:
        index, count = 0, 1
    plans = read_workload(Path(CFG["workload"]))
    mine = [p for i, p in enumerate(plans) if i % count == index and p.calls]
    mine.sort(key=lambda p: p.start_s)  # stable: workload order among equal starts
    share = Path(CFG["run_dir"]) / f"locust.sessions.{os.getpid()}.json"
    share.write_text(json.dumps([p.id for p in mine]))
    _Process.sessions = deque(mine)
    _Process.in_progress = 0
    _Process.done_signalled = False
    if _Process.recorder is None:
        _Process.recorder = Recorder(Path(CFG["run_dir"]), CFG["engine"], CFG.get("tier", ""))
    gc.collect()
    gc.freeze()


@events.quitting.add_listener
def _on_quitting(environment, **_kw):
    if _Process.recorder is not None:
        _Process.recorder.close()
        _Process.recorder = None


def _signal_done(environment) -> None:
    if _Process.done_signalled:
        return
    _Process.done_signalled = True
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(DONE_MESSAGE, {"index": runner.worker_index})
    else:
        gevent.spawn(runner.quit)


class AgentSessionUser(User):
    """One agent at a time: a session's calls in order, with its think times between them."""

    def on_start(self) -> None:
        self.http = StreamingClient(CFG["base_url"], os.environ.get(API_KEY_ENV) or None,
                                    ClientConfig.of(CFG.get("client") or {}))
        self.plan = None
        self.k = 0
        self.due = 0.0
        self.warmup = False
        self._wait = 0.0
        if _Process.run_start is None:  # test_start not seen (should not happen): start now
            _Process.run_start = time.perf_counter()

    def on_stop(self) -> None:
        self.http.close()

    def wait_time(self) -> float:
        return self._wait

    @task
    def step(self) -> None:
        if self.plan is None:
            self._take_session()
        else:
            self._send_call()

    def _take_session(self) -> None:
        if not _Process.sessions:
            if _Process.in_progress == 0:
                _signal_done(self.environment)
            self._wait = IDLE_WAIT_S  # idle until the run ends (killed at once: we are 'waiting')
            return
        self.plan = _Process.sessions.popleft()
        _Process.in_progress += 1
        self.k = 0
        self.warmup = self.plan.start_s < float(CFG.get("warmup_s") or 0.0)
        self.due = _Process.run_start + self.plan.start_s
        self._wait = max(0.0, self.due - time.perf_counter())

    def _send_call(self) -> None:
        plan, call = self.plan, self.plan.calls[self.k]
        rem = self.due - time.perf_counter()
        while rem > 0:  # gevent's timers may wake a hair early: never send before the think ends
            gevent.sleep(rem)
            rem = self.due - time.perf_counter()
        rec = new_record(plan, call, self.due, self.warmup)
        stream_call(self.http, plan.id, CFG["model"], call, rec)
        _Process.recorder.write(rec)
        end = rec.last_token if rec.last_token is not None else time.perf_counter()
        self.environment.events.request.fire(
            request_type="POST", name=COMPLETIONS_PATH, response_time=(end - rec.sent) * 1000.0,
            response_length=rec.output_tokens or len(rec.chunk_times), response=None,
            context={"session": plan.id, "call_index": call.index},
            exception=None if rec.status == "ok" else RuntimeError(rec.error))
        self.k += 1
        if self.k < len(plan.calls):
            self.due = end + plan.calls[self.k].think_s
            self._wait = max(0.0, self.due - time.perf_counter())
        else:
            self.plan = None
            _Process.in_progress -= 1
            self._wait = 0.0
