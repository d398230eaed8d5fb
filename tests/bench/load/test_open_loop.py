"""The open-loop scheduler against the real reference server on loopback (tiny model): every call
sent at its intended time and recorded, the arrival processes, stopping, and coordinated omission
made visible when the pool and a slowed server fall behind."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.conftest import RefServer, serving

from bench.load.open_loop import arrival_offsets, run_open_loop, trace_offsets
from bench.load.recorder import Recorder
from bench.load.workload import CallPlan, SessionPlan

REPO = Path(__file__).resolve().parents[3]
NAME = "tiny"



class Server(RefServer):
    pass


def make_plans(n_sessions: int = 4, n_calls: int = 3, *, seed: int = 0, start_gap: float = 0.1,
               think=(0.05, 0.2), max_tokens=(4, 8), arrivals: bool = False) -> list[SessionPlan]:
    """Small sessions: prompts of 20-100 ids (a shared prefix per session), think 0.05-0.2 s."""
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n_sessions):
        s = SessionPlan(f"s{i}", start_gap * i)
        prefix = rng.integers(5, 2000, 16).tolist()
        t = s.start_s
        for k in range(n_calls):
            th = float(rng.uniform(*think)) if k else 0.0
            t += th
            prompt = prefix + rng.integers(5, 2000, int(rng.integers(4, 84))).tolist()
            n_out = int(rng.integers(max_tokens[0], max_tokens[1] + 1))
            s.calls.append(CallPlan(index=k, prompt_ids=prompt, max_tokens=n_out, think_s=th,
                                    arrival_s=t if arrivals else None))
        plans.append(s)
    return plans


def read_rows(run_dir: Path) -> list[dict]:
    rows = []
    for p in sorted(run_dir.glob("requests.*.jsonl")):
        rows += [orjson.loads(line) for line in p.read_bytes().splitlines()]
    return rows


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("open-loop-servers")
    with serving(Server(tiny_model_dir, logs / "fast.log"),
                 Server(tiny_model_dir, logs / "slow.log", "--step-delay-ms", "50")) as pair:
        yield pair


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


# -- schedules (no server) ------------------------------------------------------------------------

def test_trace_offsets_use_arrivals_else_start_plus_cumulative_think():
    a = SessionPlan("a", 1.0, [CallPlan(0, [5], 1, 0.0, 1.0), CallPlan(1, [5], 1, 0.5, 4.0)])
    b = SessionPlan("b", 2.0, [CallPlan(0, [5], 1), CallPlan(1, [5], 1, 0.25), CallPlan(2, [5], 1, 0.5)])
    got = [(o, s.id, c.index) for o, s, c in trace_offsets([a, b])]
    assert got == [(1.0, "a", 0), (2.0, "b", 0), (2.25, "b", 1), (2.75, "b", 2), (4.0, "a", 1)]


def test_arrival_processes_honour_rate_and_burstiness():
    p = np.diff(arrival_offsets(20001, "poisson", rate=10.0, seed=1))
    assert abs(p.mean() - 0.1) < 0.004 and abs(p.std() / p.mean() - 1.0) < 0.05
    g = np.diff(arrival_offsets(20001, "gamma", rate=10.0, gamma_cv=2.0, seed=1))
    assert abs(g.mean() - 0.1) < 0.008 and abs(g.std() / g.mean() - 2.0) < 0.2
    assert np.array_equal(arrival_offsets(50, "gamma", rate=3, seed=7), arrival_offsets(50, "gamma", rate=3, seed=7))
    assert arrival_offsets(5, "poisson", rate=1)[0] == 0.0
    with pytest.raises(ValueError, match="rate"):
        arrival_offsets(5, "poisson")
    with pytest.raises(ValueError, match="arrivals"):
        run_open_loop([], "http://127.0.0.1:1", NAME, None, arrivals="uniform")


# -- against the server ---------------------------------------------------------------------------

def test_trace_schedule_sends_every_call_on_time(server, tmp_path):
    plans = make_plans(arrivals=True)
    for c in plans[3].calls:  # one session without arrivals: start_s + cumulative think
        c.arrival_s = None
    expected = {(s.id, c.index): (o, s, c) for o, s, c in trace_offsets(plans)}
    rec = Recorder(tmp_path, "reference")
    seen = []
    res = run_open_loop(plans, server.url, NAME, rec, warmup_s=0.15, on_record=seen.append)
    rec.close()
    assert res["calls"] == res["sent"] == 12 and res["dropped"] == 0 and res["errors"] == 0
    assert res["lag_p99_ms"] < 50, res
    assert len(seen) == 12
    rows = read_rows(tmp_path)
    assert len(rows) == 12 and len({r["request_id"] for r in rows}) == 12
    assert {(r["session"], r["call_index"]) for r in rows} == set(expected)
    t_min = min(r["intended_start"] for r in rows)
    for r in rows:
        off, s, c = expected[(r["session"], r["call_index"])]
        assert r["status"] == "ok", r["error"]
        assert r["output_tokens"] == r["expected_output_tokens"] == c.max_tokens
        assert r["prompt_tokens"] == r["expected_prompt_tokens"] == len(c.prompt_ids)
        assert r["intended_start"] <= r["sent"] + 1e-6 <= r["first_token"] + 2e-6 <= r["last_token"] + 3e-6
        assert abs((r["intended_start"] - t_min) - off) < 1e-3  # the schedule kept its shape exactly
        assert r["warmup"] == (off < 0.15)
        assert r["engine"] == "reference"


def test_poisson_rate_is_roughly_honoured(server, tmp_path):
    plans = make_plans(6, 5, seed=1, max_tokens=(4, 4))
    rec = Recorder(tmp_path, "reference")
    res = run_open_loop(plans, server.url, NAME, rec, arrivals="poisson", rate=25.0, seed=3)
    rec.close()
    rows = read_rows(tmp_path)
    assert res["sent"] == len(rows) == 30 and all(r["status"] == "ok" for r in rows)
    starts = sorted(r["intended_start"] for r in rows)
    observed = (len(starts) - 1) / (starts[-1] - starts[0])
    assert 25.0 / 2.5 < observed < 25.0 * 2.5
    assert res["lag_p99_ms"] < 50, res
    sessions_first = [r for r in rows if r["call_index"] == 0]  # calls are independent: no per-session order needed
    assert len(sessions_first) == 6


def test_duration_drops_calls_not_yet_due(server, tmp_path):
    s = SessionPlan("d", 0.0, [CallPlan(k, list(range(10, 40)), 4, arrival_s=0.1 * k) for k in range(10)])
    rec = Recorder(tmp_path, "reference")
    res = run_open_loop([s], server.url, NAME, rec, duration_s=0.45)
    rec.close()
    rows = read_rows(tmp_path)
    assert res["sent"] == 5 and res["dropped"] == 5 and res["calls"] == 10
    assert sorted(r["call_index"] for r in rows) == [0, 1, 2, 3, 4]  # the sent ones finished and were recorded
    assert all(r["status"] == "ok" for r in rows)


def test_stop_event_stops_the_schedule(server, tmp_path):
    s = SessionPlan("e", 0.0, [CallPlan(k, list(range(10, 40)), 4, arrival_s=0.1 * k) for k in range(30)])
    stop = threading.Event()
    rec = Recorder(tmp_path, "reference")
    t = time.perf_counter()
    res = run_open_loop([s], server.url, NAME, rec, stop_event=stop,
                        on_record=lambda r: stop.set() if r.call_index >= 2 else None)
    rec.close()
    assert time.perf_counter() - t < 1.5
    assert 3 <= res["sent"] < 30 and res["dropped"] == 30 - res["sent"]
    assert len(read_rows(tmp_path)) == res["sent"]


def test_coordinated_omission_is_visible_from_intended_start(servers, tmp_path):
    """A slowed server (50 ms per step) and a pool of 2 against 40 calls/s: the schedule falls
    behind, so latency from the intended start is far above latency from the actual send."""
    slow = servers[1]
    s = SessionPlan("co", 0.0, [CallPlan(k, list(range(10, 40 + k)), 4, arrival_s=0.025 * k) for k in range(10)])
    rec = Recorder(tmp_path, "reference")
    res = run_open_loop([s], slow.url, NAME, rec, max_in_flight=2)
    rec.close()
    rows = read_rows(tmp_path)
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    assert res["lag_max_ms"] > 300, res  # sent - intended grew: the generator could not keep up
    ttft_sent = np.mean([r["first_token"] - r["sent"] for r in rows])
    ttft_intended = np.mean([r["first_token"] - r["intended_start"] for r in rows])
    assert ttft_intended > 2 * ttft_sent, (ttft_intended, ttft_sent)


def test_connections_survive_keep_alive_expiry_and_reuse(server, tmp_path):
    """One worker, three calls: back to back (the connection is reused), then after 5.5 s idle
    (uvicorn has closed the keep-alive connection by then): all three succeed."""
    times = (0.0, 0.05, 5.5)
    s = SessionPlan("k", 0.0, [CallPlan(k, list(range(10, 40)), 4, arrival_s=t) for k, t in enumerate(times)])
    rec = Recorder(tmp_path, "reference")
    res = run_open_loop([s], server.url, NAME, rec, max_in_flight=1)
    rec.close()
    rows = read_rows(tmp_path)
    assert res["errors"] == 0 and [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
