"""One repetition of the load against one endpoint: the open-loop scheduler in this process, or
locust (closed loop) in its own processes, each writing records as calls complete; and the
progress bar that shows it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.load.client import ClientConfig
from bench.spec import RunSpec


@dataclass
class Endpoint:
    """What a load generator targets: a started server, or the tier gateway in front of several."""
    base_url: str
    model_name: str
    api_key: str | None = None


def run_load(spec: RunSpec, plans, server, out: Path, engine: str, tier: str, bar, died) -> dict:
    """One repetition against one server: the open-loop scheduler in this process, or locust
    (closed loop) in its own processes, each writing records as calls complete."""
    from bench.load.progress import LiveStats

    load = spec.load
    stats = LiveStats.from_plans(plans)
    if load.mode == "open":
        from bench.load.open_loop import run_open_loop
        from bench.load.recorder import Recorder

        recorder = Recorder(out, engine, tier)
        shown = [0.0]

        def on_record(rec):
            stats.add(rec.session, rec.status == "ok",
                      (rec.output_tokens or len(rec.chunk_times)) if rec.status == "ok" else 0)
            if time.monotonic() - shown[0] > 0.5:  # worker threads call this per call: recompute at most 2x/s
                shown[0] = time.monotonic()
                bar.set_postfix_str(stats.postfix(), refresh=False)
            bar.update(1)

        try:
            return run_open_loop(plans, server.base_url, server.model_name, recorder, api_key=server.api_key,
                                 arrivals=load.arrivals, rate=load.rate or None, gamma_cv=load.gamma_cv,
                                 seed=spec.trace.seed, duration_s=load.duration_s or None, warmup_s=load.warmup_s,
                                 client=ClientConfig.of(load), stop_event=died, on_record=on_record)
        finally:
            recorder.close()
    from bench.load.closed_loop import run_closed_loop

    done = [0]

    def on_progress(calls: int, errors: int):
        bar.set_postfix_str(stats.postfix(), refresh=False)  # drawn by the update: one frame, consistent
        bar.update(calls - done[0])
        done[0] = calls

    wl = out / "workload.jsonl"
    return run_closed_loop(wl, server.base_url, server.model_name, out, engine, users=load.users, workers=load.workers,
                           master_host=load.master_host, duration_s=load.duration_s or None, warmup_s=load.warmup_s,
                           api_key=server.api_key, tier=tier, client=ClientConfig.of(load), on_progress=on_progress,
                           on_row=stats.add_row, stop_event=died)


def record_unsent_calls(spec: RunSpec, plans, out: Path, engine: str, tier: str, message: str) -> int:
    """A failed row (reason `not-sent`) for every planned call the run never recorded."""
    from bench.load.recorder import record_unsent
    return record_unsent(out, plans, engine, tier, "not-sent", message, warmup_s=spec.load.warmup_s,
                         duration_s=spec.load.duration_s or None)


def progress_bar(total: int, desc: str, enabled: bool, position: int = 0):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=" calls", disable=not enabled, dynamic_ncols=True, leave=False,
                position=position)
