"""Self-calibration: how much the client itself adds to TTFT and ITL. Closed-loop sessions (the
locust path of `tierbench run`) drive the instant server (bench/measure/instant_server.py), which logs
when each request arrived and when it wrote each chunk. The client's overhead is what it measures
beyond what the server did:

- TTFT overhead = client TTFT (first chunk - send) - server TTFT (first write - request arrival);
- ITL overhead  = |client gap - server gap| for every pair of consecutive chunks.

The request's arrival is the kernel's stamp of its last bytes on the server's socket where it has
one (`arrived`), else when the server read it: a server busy with 64 streams, or waiting for a
core, reads a request late, and that lateness is the server's, not the client's. It is reported
apart (`server_read_lateness_ms`), as is whether the client's chunk times were the kernel's
receive stamps (`client_stamps`, bench/load/wire.py).

A session's first call also opens its connection (TCP handshake, the server's accept): that
one-time cost is reported apart (`first_call_ttft_overhead_ms`) and the bar applies to the calls
after it. Session starts are spread over one second, as agents' sessions are, rather than 64 at
the same instant.

Both are differences of differences, so each side's clock only has to be monotonic.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from analysis.records import read_records
from bench.load.closed_loop import run_closed_loop
from bench.load.workload import CallPlan, SessionPlan, write_workload
from bench.measure.instant_server import InstantServer
from engines.provenance import provenance

BAR_MS = 2.0


def calibrate(out: Path, sessions: int = 64, calls: int = 10, tokens: int = 32, ttft_ms: float = 20.0,
              itl_ms: float = 10.0, workers: int = 0) -> dict:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("requests.*.jsonl")) + [out / "server-times.jsonl"]:
        old.unlink(missing_ok=True)
    with InstantServer(out, ttft_ms, itl_ms, times_log=out / "server-times.jsonl") as inst:
        plans = [SessionPlan(f"c{i:03d}", i / sessions, [CallPlan(k, list(range(5, 21)), tokens) for k in range(calls)])
                 for i in range(sessions)]
        write_workload(plans, out / "workload.jsonl")
        load = run_closed_loop(out / "workload.jsonl", inst.url, "instant", out, "instant", users=sessions,
                               workers=workers)
    rows = read_records(out)
    client = pd.DataFrame(rows).set_index("request_id")
    server = {r["request_id"]: r for r in map(json.loads, open(out / "server-times.jsonl"))}
    ttft_over, first_over, itl_over, lateness = [], [], [], []
    for rid, row in client.iterrows():
        s = server.get(rid)
        if row["status"] != "ok" or s is None:
            continue
        arrived = s.get("arrived", s["received"])
        lateness.append(s["received"] - arrived)
        over = (row["first_token"] - row["sent"]) - (s["writes"][0] - arrived)
        (first_over if row["call_index"] == 0 else ttft_over).append(over)
        gaps = np.diff(s["writes"])
        n = min(len(gaps), len(row["itl"]))
        itl_over.extend(np.abs(np.asarray(row["itl"][:n]) - gaps[:n]).tolist())
    t, i, f = np.asarray(ttft_over) * 1e3, np.asarray(itl_over) * 1e3, np.asarray(first_over) * 1e3
    report = {
        "sessions": sessions, "calls_per_session": calls, "tokens": tokens, "server_ttft_ms": ttft_ms,
        "server_itl_ms": itl_ms, "workers": workers, "requests": int(len(client)),
        "ok": int((client["status"] == "ok").sum()), "matched": len(ttft_over) + len(first_over),
        "ttft_overhead_ms": dist(t), "itl_overhead_ms": dist(i), "first_call_ttft_overhead_ms": dist(f),
        "server_read_lateness_ms": dist(np.asarray(lateness) * 1e3), "client_stamps": client_stamps(),
        "bar_p99_ms": BAR_MS, "command": "tierbench calibrate " + " ".join(sys.argv[2:]),
        "pass": bool(len(t) and np.percentile(t, 99) <= BAR_MS and np.percentile(i, 99) <= BAR_MS),
        "load": load, **provenance(),
    }
    (out / "calibration.json").write_text(json.dumps(report, indent=2))
    return report


def client_stamps() -> str:
    """Where the client's chunk times came from (bench/load/wire.py)."""
    from bench.load.wire import KERNEL_STAMPS
    return "kernel receive stamps (SO_TIMESTAMPNS)" if KERNEL_STAMPS else "time.perf_counter() as each read returns"


def dist(a: np.ndarray) -> dict:
    if not len(a):
        return {}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(len(a))}
