"""Closed-loop agent sessions through locust (headless subprocesses, local and distributed) against
the real reference server on loopback: every call of every session recorded once and in order,
think times respected, and no locust process left behind, whatever way the run ends."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import psutil
import pytest

from bench.load.closed_loop import run_closed_loop
from bench.load.workload import CallPlan, SessionPlan, write_workload
from tests.bench.load.test_open_loop import NAME, Server, make_plans, read_rows


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(tiny_model_dir, tmp_path_factory.mktemp("closed-loop-server") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def locust_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if any("locust" in a for a in p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def check_sessions(rows: list[dict], plans: list[SessionPlan], warmup_s: float) -> None:
    """Every call of every session exactly once, in order, after its think time."""
    assert len({r["request_id"] for r in rows}) == len(rows)
    by_session = defaultdict(list)
    for r in rows:
        by_session[r["session"]].append(r)
    assert set(by_session) == {p.id for p in plans}
    for p in plans:
        got = sorted(by_session[p.id], key=lambda r: r["sent"])
        assert [r["call_index"] for r in got] == [c.index for c in p.calls]  # once each, sent in order
        for prev, r, c in zip([None] + got[:-1], got, p.calls):
            assert r["status"] == "ok", r["error"]
            assert r["output_tokens"] == c.max_tokens and r["prompt_tokens"] == len(c.prompt_ids)
            assert r["warmup"] == (p.start_s < warmup_s)
            assert r["intended_start"] <= r["sent"] + 1e-6
            if prev is not None:
                assert prev["last_token"] <= r["sent"]
                assert r["sent"] - prev["last_token"] >= c.think_s - 0.005
                assert abs(r["intended_start"] - (prev["last_token"] + c.think_s)) < 1e-3


@pytest.mark.parametrize("workers,users", [(0, 2), (2, 3)], ids=["local", "distributed"])
def test_every_session_played_once_in_order(server, tmp_path, workers, users):
    plans = make_plans(4, 3, seed=5)
    wl = tmp_path / "workload.jsonl"
    write_workload(plans, wl)
    run_dir = tmp_path / "run"
    progress = []
    res = run_closed_loop(wl, server.url, NAME, run_dir, "reference", users=users, workers=workers, warmup_s=0.15,
                          on_progress=lambda done, errors: progress.append((done, errors)))
    assert res["exit_code"] == 0, (run_dir / "locust.log").read_text()[-3000:]
    assert (res["sessions"], res["sessions_done"], res["calls"], res["errors"]) == (4, 4, 12, 0)
    assert progress and progress[-1] == (12, 0)
    rows = read_rows(run_dir)
    assert len(rows) == 12
    check_sessions(rows, plans, warmup_s=0.15)
    files = list(run_dir.glob("requests.*.jsonl"))
    assert len(files) == max(1, workers)  # one per process that ran users; distributed: both workers did
    assert (run_dir / "locust.log").stat().st_size > 0
    assert "/v1/completions" in (run_dir / "locust.log").read_text()  # locust's own summary exists too
    assert locust_children() == []
    assert res["worker_exit_codes"] == [0] * workers


def long_sessions(n: int = 2) -> list[SessionPlan]:
    return [SessionPlan(f"long{i}", 0.0, [CallPlan(k, list(range(10, 40 + i)), 4, think_s=3.0 if k else 0.0)
                                          for k in range(4)]) for i in range(n)]


def test_duration_ends_the_run_and_keeps_finished_calls(server, tmp_path):
    wl = tmp_path / "workload.jsonl"
    write_workload(long_sessions(), wl)
    t = time.monotonic()
    res = run_closed_loop(wl, server.url, NAME, tmp_path / "run", "reference", users=2, duration_s=1.5)
    assert time.monotonic() - t < 20
    assert res["sessions_done"] == 0 and res["calls"] == 2 and res["errors"] == 0  # call 0 of each, then thinking
    rows = read_rows(tmp_path / "run")
    assert sorted(r["session"] for r in rows) == ["long0", "long1"] and all(r["call_index"] == 0 for r in rows)
    assert locust_children() == []


def test_interrupt_kills_every_locust_process(server, tmp_path):
    wl = tmp_path / "workload.jsonl"
    write_workload(long_sessions(4), wl)

    def interrupt(done, errors):
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_closed_loop(wl, server.url, NAME, tmp_path / "run", "reference", users=2, workers=2,
                        on_progress=interrupt)
    assert locust_children() == []
    assert all(r["status"] == "ok" for r in read_rows(tmp_path / "run"))


def test_bad_arguments_are_refused_before_starting(tmp_path):
    wl = tmp_path / "workload.jsonl"
    write_workload(long_sessions(), wl)
    with pytest.raises(ValueError, match="users"):
        run_closed_loop(wl, "http://127.0.0.1:1", NAME, tmp_path / "run", "reference", users=1, workers=2)
    with pytest.raises(FileNotFoundError):
        run_closed_loop(tmp_path / "nope.jsonl", "http://127.0.0.1:1", NAME, tmp_path / "run", "reference", users=1)
