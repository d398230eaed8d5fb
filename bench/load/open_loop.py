"""The open-loop scheduler: every call is sent at its intended time, whether or not earlier calls
have been answered.

A dispatcher thread sleeps until each call's intended time (to about 1 ms before, then yields in a
short spin) and hands the call to a pool of worker threads, each owning one keep-alive
StreamingClient. The pool grows on demand up to `max_in_flight`; beyond that, calls wait for a free
worker. Each record keeps both times: `intended` (the scheduled perf_counter time) and `sent` (the
actual send), so latency measured from the intended start shows coordinated omission when the pool
or the server falls behind, and sent - intended is the scheduler's own lag.

Arrival times:
- 'trace': each CallPlan.arrival_s; a call without one is placed at its session's start_s plus the
  cumulative think time of the calls before it (response times are not known in advance, so such a
  session is compressed compared to a closed-loop replay).
- 'poisson' / 'gamma': the calls in trace order (by their 'trace' times), with inter-arrival times
  drawn at `rate` calls/s: exponential, or gamma with coefficient of variation `gamma_cv` (vLLM's
  burstiness = 1 / cv**2; cv 1 is Poisson). The first call goes at offset 0.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np

from bench.load.client import ClientConfig, Record, StreamingClient
from bench.load.workload import CallPlan, SessionPlan

COMPLETIONS_PATH = "/v1/completions"
ARRIVALS = ("trace", "poisson", "gamma")


def call_payload(model: str, call: CallPlan) -> dict:
    """The /v1/completions body of one call: exact token ids, exactly max_tokens out, greedy."""
    return {"model": model, "prompt": call.prompt_ids, "max_tokens": call.max_tokens,
            "min_tokens": call.max_tokens, "ignore_eos": True, "temperature": 0}


def session_headers(session_id: str) -> dict:
    return {"X-Session-Id": session_id}


def stream_call(client: StreamingClient, session_id: str, model: str, call: CallPlan, rec: Record) -> Record:
    """Send one call and stream it into rec. The X-Tierbench-* headers are what a tier gateway's
    routing policy may read (session, position, the trace's complexity label); engines ignore them."""
    headers = {**session_headers(session_id), "X-Request-Id": rec.request_id,
               "X-Tierbench-Session": session_id, "X-Tierbench-Call-Index": str(call.index)}
    if call.complexity:
        headers["X-Tierbench-Complexity"] = call.complexity
    return client.stream(COMPLETIONS_PATH, call_payload(model, call), rec, headers)


def new_record(session: SessionPlan, call: CallPlan, intended: float | None, warmup: bool,
               request_id: str | None = None) -> Record:
    return Record(request_id=request_id or f"{session.id}#{call.index}", session=session.id,
                  call_index=call.index, intended=intended, expected_prompt_tokens=len(call.prompt_ids),
                  expected_output_tokens=call.max_tokens, warmup=warmup)


def trace_offsets(plans: list[SessionPlan]) -> list[tuple[float, SessionPlan, CallPlan]]:
    """(offset from the run's start, session, call) for every call, sorted by offset (stable)."""
    out = []
    for s in plans:
        t = s.start_s
        for k, c in enumerate(s.calls):
            if k:
                t += c.think_s
            out.append((c.arrival_s if c.arrival_s is not None else t, s, c))
    out.sort(key=lambda x: x[0])
    return out


def arrival_offsets(n: int, arrivals: str, rate: float | None = None, gamma_cv: float = 2.0,
                    seed: int = 0) -> np.ndarray:
    """n offsets (seconds from the run's start) of a Poisson or gamma arrival process at `rate`/s."""
    if arrivals not in ("poisson", "gamma"):
        raise ValueError(f"arrivals must be 'poisson' or 'gamma' here, got {arrivals!r}")
    if rate is None or not rate > 0:
        raise ValueError(f"arrivals={arrivals!r} needs a rate > 0 (calls/s), got {rate!r}")
    if n <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    if arrivals == "poisson":
        gaps = rng.exponential(1.0 / rate, n - 1)
    else:
        if not gamma_cv > 0:
            raise ValueError(f"gamma_cv must be > 0, got {gamma_cv!r}")
        shape = 1.0 / gamma_cv ** 2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


class _Pool:
    """Worker threads that each own one StreamingClient; grows on demand up to max_workers."""

    def __init__(self, base_url: str, api_key: str | None, client: ClientConfig, max_workers: int,
                 handle: Callable[[StreamingClient, tuple], None]):
        self.base_url, self.api_key, self.client = base_url, api_key, client
        self.max_workers = max_workers
        self.handle = handle
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.busy = 0  # submitted and not finished
        self.idle_done = threading.Condition(self.lock)

    def _grow(self) -> None:
        t = threading.Thread(target=self._work, name=f"open-loop-{len(self.threads)}", daemon=True)
        self.threads.append(t)
        t.start()

    def prestart(self, n: int) -> None:
        with self.lock:
            while len(self.threads) < min(n, self.max_workers):
                self._grow()

    def submit(self, item: tuple) -> None:
        with self.lock:
            self.busy += 1
            if self.busy > len(self.threads) and len(self.threads) < self.max_workers:
                self._grow()
        self.q.put(item)

    def _work(self) -> None:
        client = StreamingClient(self.base_url, self.api_key, self.client)
        try:
            while True:
                item = self.q.get()
                if item is None:
                    return
                try:
                    self.handle(client, item)
                finally:
                    with self.lock:
                        self.busy -= 1
                        if self.busy == 0:
                            self.idle_done.notify_all()
        finally:
            client.close()

    def wait_idle(self) -> None:
        with self.lock:
            while self.busy:
                self.idle_done.wait(0.5)

    def shutdown(self) -> None:
        for _ in self.threads:
            self.q.put(None)


def run_open_loop(plans: list[SessionPlan], base_url: str, model: str, recorder, *, api_key: str | None = None,
                  arrivals: str = "trace", rate: float | None = None, gamma_cv: float = 2.0, seed: int = 0,
                  duration_s: float | None = None, warmup_s: float = 0.0, max_in_flight: int = 1024,
                  client: ClientConfig | None = None, stop_event: threading.Event | None = None,
                  on_record: Callable[[Record], None] | None = None) -> dict:
    """Send every call of `plans` at its intended time and record it with `recorder` (a
    bench.load.recorder.Recorder, or anything with write(Record)). Blocks until the schedule is done
    (or duration_s passed / stop_event was set) and every sent call has finished.

    Calls due at or after duration_s, or still unsent when stop_event is set, are not sent
    (`dropped`); calls already sent finish and are recorded. Calls intended before warmup_s are
    recorded with warmup=True. `client` holds the calls' time-outs and retries. on_record(rec)
    is called from the worker threads after each write.

    Returns {calls, sent, dropped, errors, lag_p50_ms, lag_p99_ms, lag_max_ms, elapsed_s}; lag is
    sent - intended over the sent calls (None when none was sent)."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    schedule = trace_offsets(plans)
    if arrivals != "trace":
        offsets = arrival_offsets(len(schedule), arrivals, rate, gamma_cv, seed)
        schedule = [(float(o), s, c) for o, (_, s, c) in zip(offsets, schedule)]

    stop = stop_event or threading.Event()
    lags: list[float] = []
    errors = 0
    state_lock = threading.Lock()

    def handle(http: StreamingClient, item: tuple) -> None:
        nonlocal errors
        rec, session_id, call = item
        stream_call(http, session_id, model, call, rec)
        recorder.write(rec)
        with state_lock:
            lags.append(rec.sent - rec.intended)
            if rec.status != "ok":
                errors += 1
        if on_record is not None:
            on_record(rec)

    pool = _Pool(base_url, api_key, client or ClientConfig(), max_in_flight, handle)
    pool.prestart(min(8, len(schedule)))
    sent = 0
    seen_ids: set[str] = set()
    failure: list[BaseException] = []

    def dispatch(t0: float) -> None:
        nonlocal sent
        try:
            for offset, s, c in schedule:
                if stop.is_set() or (duration_s is not None and offset >= duration_s):
                    return
                due = t0 + offset
                while True:
                    rem = due - time.perf_counter()
                    if rem > 0.002:
                        if stop.wait(rem - 0.001):
                            return
                    elif rem > 0:
                        time.sleep(0)  # yield the GIL while spinning the last millisecond
                    else:
                        break
                rid = f"{s.id}#{c.index}"
                if rid in seen_ids:  # a session id or call index used twice: keep ids unique
                    rid = f"{rid}~{len(seen_ids)}"
                seen_ids.add(rid)
                pool.submit((new_record(s, c, due, offset < warmup_s, rid), s.id, c))
                sent += 1
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failure.append(e)

    t0 = time.perf_counter() + 0.01  # a moment for the dispatcher thread to start
    dispatcher = threading.Thread(target=dispatch, args=(t0,), name="open-loop-dispatcher", daemon=True)
    try:
        dispatcher.start()
        while dispatcher.is_alive():
            dispatcher.join(0.2)
        pool.wait_idle()
    except BaseException:
        stop.set()  # KeyboardInterrupt and the like: send nothing more; in-flight threads are daemons
        raise
    finally:
        pool.shutdown()
    if failure:
        raise failure[0]
    elapsed = time.perf_counter() - t0
    lag_ms = np.asarray(lags) * 1000.0
    pct = (lambda q: float(np.percentile(lag_ms, q))) if len(lag_ms) else (lambda q: None)
    return {"calls": len(schedule), "sent": sent, "dropped": len(schedule) - sent, "errors": errors,
            "lag_p50_ms": pct(50), "lag_p99_ms": pct(99), "lag_max_ms": float(lag_ms.max()) if len(lag_ms) else None,
            "elapsed_s": elapsed}
