"""The bridge between the asyncio HTTP side and the engine thread.

EngineLoop runs LLMEngine.step() in a background thread; request handlers are async on the event
loop. add_request/abort are called from the loop (the engine makes them thread-safe), and the
engine thread hands each step's outputs to the loop with call_soon_threadsafe, which puts them on
per-request asyncio queues: queues are touched on the loop thread only, so they need no lock.

Generation is one request in flight on top of that: it submits the request, turns its StepOutputs
into text deltas (IncrementalDetokenizer), applies stop strings (matched on the detokenized text;
while one could still be forming, its possible prefix is held back from the stream), keeps the
server's metrics, and aborts the engine request when the client goes away, which returns its KV
blocks (full ones stay in the prefix cache).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from engines.reference.api_protocol import APIError, usage
from engines.reference.tokenizer import IncrementalDetokenizer

if TYPE_CHECKING:
    from engines.reference.server import _Server

log = logging.getLogger("tierbench.server")


class EngineLoop:
    """Runs engine.step() in a background thread and routes outputs to per-request asyncio
    queues on the event loop. Queues are touched only on the loop thread."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.queues: dict[str, asyncio.Queue] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.step_errors = 0
        self.last_error: str | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add(self, request_id: str, prompt_ids: list[int], params: Any, session_id: str | None,
            arrival_time: float) -> asyncio.Queue:
        """Register a queue and queue the request. Raises what add_request raises."""
        q: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = q
        try:
            self.engine.add_request(request_id, prompt_ids, params, session_id=session_id,
                                    arrival_time=arrival_time)
        except BaseException:
            self.queues.pop(request_id, None)
            raise
        self._wake.set()
        return q

    def abort(self, request_id: str) -> None:
        self.queues.pop(request_id, None)
        self.engine.abort(request_id)
        self._wake.set()

    def _run(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            if not engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as e:  # keep serving: fail what was in flight, go on
                self.step_errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("engine step failed:\n%s", traceback.format_exc())
                self._post(self._fail_all, e)
                time.sleep(0.01)
                continue
            if outputs:
                self._post(self._dispatch, outputs)

    def _post(self, fn: Callable, arg: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: shutting down
            self._stop.set()

    def _dispatch(self, outputs: list) -> None:
        for out in outputs:
            q = self.queues.get(out.request_id)
            if q is None:
                continue  # aborted by us; its final "abort" output is of no interest
            q.put_nowait(out)
            if out.finished:
                del self.queues[out.request_id]

    def _fail_all(self, exc: Exception) -> None:
        for rid, q in list(self.queues.items()):
            q.put_nowait(exc)
            try:
                self.abort(rid)
            except Exception:
                log.error("abort of %s failed:\n%s", rid, traceback.format_exc())


class Generation:
    """One request in flight: turns the engine's StepOutputs into text deltas, applies stop
    strings, and aborts the engine request when the client goes away."""

    def __init__(self, server: "_Server", request_id: str, prompt_ids: list[int], params: Any,
                 stops: list[str], include_stop: bool, skip_special: bool, session_id: str | None,
                 arrival: float) -> None:
        self.server = server
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.stops = stops
        self.max_stop = max((len(s) for s in stops), default=0)
        self.include_stop = include_stop
        self.detok = IncrementalDetokenizer(server.tokenizer, prompt_ids, skip_special)
        self.arrival = arrival
        self.text = ""
        self.emitted = 0  # chars of self.text sent to the client
        self.token_ids: list[int] = []
        self.finished = False
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.cached_tokens = 0
        self.num_output_tokens = 0
        self._last_token_time: float | None = None
        self._closed = False
        # raises QueueFullError / ValueError; nothing to undo then
        self.queue = server.engine_loop.add(request_id, prompt_ids, params, session_id, arrival)
        server.metrics.in_flight += 1
        server.metrics.prompt_tokens += len(prompt_ids)

    async def events(self) -> AsyncIterator[tuple[str, list[int]]]:
        """(text delta, new token ids) per engine step that produced something, until finished.
        Outputs that queued up while the consumer was busy are merged into one event."""
        while not self.finished:
            outs = [await self.queue.get()]
            while not self.queue.empty():
                outs.append(self.queue.get_nowait())
            new_ids: list[int] = []
            for out in outs:
                if isinstance(out, BaseException):
                    self.close(error=True)
                    raise APIError(f"the engine failed: {type(out).__name__}: {out}", 500,
                                   "InternalServerError")
                new_ids += out.new_token_ids
                self._observe(out)
                if out.finished:
                    if out.finish_reason not in ("stop", "length"):
                        self.close(error=True)
                        raise APIError(f"request ended with finish reason {out.finish_reason!r}", 500,
                                       "InternalServerError")
                    self.finished = True
                    self.finish_reason = out.finish_reason
                    self.stop_reason = out.stop_reason
            self.token_ids += new_ids
            self.text += self.detok.add(new_ids, final=self.finished)
            if self.stops:
                self._check_stop_strings()
            yield self._take_text(), new_ids
        self._done()

    def _observe(self, out: Any) -> None:
        self.cached_tokens = out.cached_tokens
        self.num_output_tokens = out.num_output_tokens
        m = self.server.metrics
        for t in out.token_times:
            if self._last_token_time is None:
                m.ttft.observe(max(0.0, t - self.arrival))
            else:
                m.itl.observe(max(0.0, t - self._last_token_time))
            self._last_token_time = t

    def _check_stop_strings(self) -> None:
        start = max(0, self.emitted - self.max_stop)
        best = None
        for s in self.stops:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return
        i, s = best
        self.text = self.text[:i + len(s) if self.include_stop else i]
        if not self.finished:
            self.finished = True
            self.server.engine_loop.abort(self.request_id)
        self.finish_reason = "stop"
        self.stop_reason = s

    def _take_text(self) -> str:
        end = len(self.text)
        if self.stops and not self.finished and not self.include_stop:
            end = max(self.emitted, end - self.max_stop + 1)  # a stop string may be forming
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _done(self) -> None:
        m = self.server.metrics
        m.in_flight -= 1
        m.finished[self.finish_reason or "stop"] += 1
        m.generation_tokens += self.num_output_tokens
        m.cached_tokens += self.cached_tokens
        m.e2e.observe(time.monotonic() - self.arrival)
        self._closed = True

    def close(self, error: bool = False) -> None:
        """Abort unless finished (idempotent). Called when the response ends, however it ends:
        unfinished then means the client went away, or (error) the engine failed."""
        if self._closed:
            return
        self._closed = True
        m = self.server.metrics
        m.in_flight -= 1
        if not self.finished:
            self.server.engine_loop.abort(self.request_id)
            if error:
                m.finished["error"] += 1
            else:
                m.aborted += 1
                m.finished["abort"] += 1

    def usage(self) -> dict:
        return usage(len(self.prompt_ids), self.num_output_tokens, self.cached_tokens)
