"""Where a decode step's time goes: torch.profiler over a few decode steps at batch 1 and the
headline context, eager and graphed, on the same sequences. The device time of every kernel
(summed per kernel name) says what the GPU did; its total against the step's wall time says
how much of the step was the host (preparation, launches, the token copied back) or gaps between
kernels. On the CPU (the dry run) only host events exist.
"""
from __future__ import annotations

import time

from torch.profiler import ProfilerActivity, profile

from engines.reference.bench_stages import Bench, decode_sequences, release

STEPS = 5
TOP = 15


def _device_us(event) -> float:
    # torch renamed cuda_* to device_* in 2.x; read whichever this version has
    for name in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(event, name, None)
        if v is not None:
            return float(v)
    return 0.0


def _kernels(prof) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        us = _device_us(e)
        if us > 0:
            rows.append({"name": e.key[:120], "calls": int(e.count), "device_us_per_step": us / STEPS})
    rows.sort(key=lambda r: -r["device_us_per_step"])
    return rows


def stage_profile(b: Bench, deadline: float) -> dict:
    runner = b.engine.runner
    ctx = b.shapes.decode_contexts[0]
    seqs = decode_sequences(b, 1, ctx)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
    out: dict = {"batch": 1, "context": ctx, "steps": STEPS}
    try:
        for graphs in (False, True) if runner.graphs is not None else (False,):
            key = "graphs_on" if graphs else "graphs_off"
            if time.monotonic() > deadline:
                out[key] = {"skipped": "time"}
                continue
            runner.use_graphs = graphs
            for _ in range(3):
                runner.execute(seqs, [1])
            b.sync()
            with profile(activities=acts) as prof:
                t = time.perf_counter()
                for _ in range(STEPS):
                    runner.execute(seqs, [1])
                b.sync()
                wall_ms = (time.perf_counter() - t) / STEPS * 1e3
            kernels = _kernels(prof)
            device_ms = sum(k["device_us_per_step"] for k in kernels) / 1e3
            out[key] = {"wall_ms_per_step": wall_ms, "device_ms_per_step": device_ms,
                        "kernels_per_step": sum(k["calls"] for k in kernels) / STEPS,
                        "host_or_gaps_ms_per_step": wall_ms - device_ms, "top_kernels": kernels[:TOP]}
    finally:
        runner.use_graphs = runner.graphs is not None
        release(b, seqs)
    return out
