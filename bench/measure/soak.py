"""Soak benchmark: the reference engine under a steady open-loop rate for a long time. It samples
the server's resident memory (/proc) and KV block counts (/metrics) every second and reports
memory growth after warm-up and whether the free KV block count returns to its start once the
load has drained.

    python -m tools.soak --minutes 10 --rate 4 --out results/soak-cpu/soak.json

Bars: memory grows less than 5% after warm-up; the free KV block count returns to its start.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

MEMORY_BAR = 0.05


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric(base_url: str, name: str) -> float:
    text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    if not m:
        raise RuntimeError(f"{name} not in /metrics")
    return float(m.group(1))


def soak(minutes: float, rate: float, out: Path, sessions: int = 100000, warmup_frac: float = 0.2,
         model: str = "tiny", seed: int = 0) -> dict:
    from bench.load.open_loop import run_open_loop
    from bench.load.recorder import Recorder
    from bench.run import resolve_model
    from engines.provenance import provenance
    from bench.load.workload import build_workload
    from engines.launch import EngineSpec, Server
    from traces.load import load_trace

    duration = minutes * 60.0
    model_dir = resolve_model(model)
    n_calls = int(rate * duration * 1.2) + 10
    # Agent sessions from the demo profile: growing contexts and prefix reuse, so the prefix cache
    # fills, evicts and reuses blocks all along.
    trace = load_trace("profile:demo", sessions=max(4, n_calls // 4), seed=seed)
    plans, _ = build_workload(trace, model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = out.parent
    samples: list[dict] = []
    with Server(EngineSpec("reference", model=str(model_dir), args=["--num-threads", "1"]), run_dir) as srv:
        pid = srv.proc.pid
        free0 = metric(srv.base_url, "tierbench_kv_free_blocks")
        stop = threading.Event()
        t0 = time.monotonic()

        def sample():
            while not stop.wait(1.0):
                try:
                    samples.append({"t": round(time.monotonic() - t0, 2), "rss": rss_bytes(pid),
                                    "free_blocks": metric(srv.base_url, "tierbench_kv_free_blocks"),
                                    "running": metric(srv.base_url, "tierbench_running_sequences")})
                except (OSError, RuntimeError):
                    pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rec = Recorder(run_dir, "reference")
        result = run_open_loop(plans, srv.base_url, srv.model_name, rec, arrivals="poisson", rate=rate, seed=seed,
                               duration_s=duration)
        rec.close()
        time.sleep(2.0)  # let the last requests drain
        stop.set()
        sampler.join()
        free_end = metric(srv.base_url, "tierbench_kv_free_blocks")
        rss_end = rss_bytes(pid)
    warm = [s for s in samples if s["t"] >= warmup_frac * duration]
    base = warm[0]["rss"] if warm else rss_end
    peak = max([s["rss"] for s in warm] + [rss_end])
    growth = (peak - base) / base
    report = {
        "command": "python -m tools.soak " + " ".join(sys.argv[1:]), **provenance(),
        "minutes": minutes, "rate_per_s": rate, "warmup_fraction": warmup_frac,
        "load": result, "errors": rec.errors, "completed": rec.ok,
        "rss_after_warmup_bytes": base, "rss_peak_after_warmup_bytes": peak, "rss_end_bytes": rss_end,
        "memory_growth_after_warmup": round(growth, 4), "memory_bar": MEMORY_BAR,
        "free_blocks_start": free0, "free_blocks_end": free_end,
        "pass_memory": growth < MEMORY_BAR, "pass_free_blocks": free_end == free0,
        "samples": samples,
    }
    out.write_text(json.dumps(report, indent=1))
    return report
