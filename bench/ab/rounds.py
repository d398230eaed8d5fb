"""One round of an A/B run: one variant plays the whole workload, through the same client as
`tierbench run`, in this process.

Closed loop: `users` threads, each with its own keep-alive connection, take sessions in workload
order and play each session's calls one after another with its think times (sessions start as a
user frees up; a spec's session_rate is not used: a round must be short and the same each time).
Locust is not used for rounds: its start-up (a second or more per round) would dominate rounds of
a few seconds. Open loop: the open-loop scheduler at the spec's arrivals, as in `tierbench run`.
"""
from __future__ import annotations

import queue
import threading
import time

from bench.ab.variants import VariantError
from bench.load.client import ClientConfig, StreamingClient
from bench.load.open_loop import new_record, run_open_loop, stream_call
from bench.load.workload import SessionPlan


def play_round(plans: list[SessionPlan], endpoint, recorder, load, stop: threading.Event) -> dict:
    """Every call of `plans` against `endpoint` (base_url, model_name, api_key), recorded with
    `recorder`. Returns {calls, errors, wall_s}."""
    cfg = ClientConfig.of(load)
    t0 = time.perf_counter()
    if load.mode == "open":
        r = run_open_loop(plans, endpoint.base_url, endpoint.model_name, recorder, api_key=endpoint.api_key,
                          arrivals=load.arrivals, rate=load.rate or None, gamma_cv=load.gamma_cv,
                          client=cfg, stop_event=stop)
        return {"calls": r["sent"], "errors": r["errors"], "wall_s": time.perf_counter() - t0}
    todo: queue.Queue = queue.Queue()
    for p in plans:
        todo.put(p)
    counts = {"calls": 0, "errors": 0}
    lock = threading.Lock()

    def user() -> None:
        http = StreamingClient(endpoint.base_url, endpoint.api_key, cfg)
        try:
            while not stop.is_set():
                try:
                    session = todo.get_nowait()
                except queue.Empty:
                    return
                for i, call in enumerate(session.calls):
                    if i and call.think_s > 0 and stop.wait(call.think_s):
                        return
                    if stop.is_set():
                        return
                    rec = new_record(session, call, time.perf_counter(), False)
                    stream_call(http, session.id, endpoint.model_name, call, rec)
                    recorder.write(rec)
                    with lock:
                        counts["calls"] += 1
                        counts["errors"] += rec.status != "ok"
        finally:
            http.close()

    threads = [threading.Thread(target=user, daemon=True, name=f"ab-user-{i}")
               for i in range(max(1, min(load.users, len(plans))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins keep Ctrl-C responsive
    return {**counts, "wall_s": time.perf_counter() - t0}


def warm_up(name: str, plans: list[SessionPlan], endpoint, load, calls: int) -> int:
    """Play the first `calls` calls of the workload one at a time, unrecorded, and check that the
    server sees the workload as planned: every call answered, with the planned prompt and output
    token counts (another model or tokenizer behind a variant would count differently, and its
    rounds would not measure the same work). Returns the calls played; VariantError on a mismatch."""
    http = StreamingClient(endpoint.base_url, endpoint.api_key, ClientConfig.of(load))
    played = 0
    try:
        for session in plans:
            for call in session.calls:
                if played >= calls:
                    return played
                rec = new_record(session, call, time.perf_counter(), True, request_id=f"warmup-{session.id}#{call.index}")
                stream_call(http, session.id, endpoint.model_name, call, rec)
                played += 1
                if rec.status != "ok":
                    raise VariantError(f"variant {name}: warm-up call {rec.request_id} failed: "
                                       f"{rec.error_reason or ''} {rec.error or rec.http_status}".strip())
                if rec.prompt_tokens is not None and rec.prompt_tokens != len(call.prompt_ids):
                    raise VariantError(f"variant {name}: gets a different workload: the server counted {rec.prompt_tokens} "
                                       f"prompt tokens for call {rec.request_id}, the workload has {len(call.prompt_ids)} "
                                       f"(another model or tokenizer?)")
                got = rec.output_tokens if rec.output_tokens is not None else len(rec.chunk_times)
                if got != call.max_tokens:
                    raise VariantError(f"variant {name}: gets a different workload: call {rec.request_id} returned "
                                       f"{got} output tokens, the workload asks for exactly {call.max_tokens}")
        return played
    finally:
        http.close()
