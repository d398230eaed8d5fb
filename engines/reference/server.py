"""An OpenAI-compatible HTTP server for the reference engine.

    python -m engines.reference.server --model DIR [--port 8000] [--api-key K] [engine knobs]

Endpoints: POST /v1/completions and /v1/chat/completions (streaming SSE or not), GET /v1/models,
/health and /metrics (Prometheus text, with vLLM's metric names where one exists). It works with
the official `openai` client and with `vllm bench serve` (--backend vllm / openai-chat).

Threads: one background thread runs LLMEngine.step() in a loop; request handlers are async on the
event loop. add_request/abort are called from the loop (the engine makes them thread-safe), and
the engine thread hands each step's outputs to the loop with call_soon_threadsafe, which puts them
on per-request asyncio queues. A client that disconnects has its request aborted, which returns its
KV blocks (full ones stay in the prefix cache).

Text: completions prompts are encoded with special tokens (BOS), chat prompts are rendered with the
model's chat template (which carries BOS itself) and encoded without. Output is detokenized
incrementally as vLLM does: decode a short window of ids, emit the new suffix once it no longer
ends in U+FFFD (a partial UTF-8 character). Stop strings are matched on the detokenized text; while
one could still be forming, its possible prefix is held back from the stream.

Request fields and what is rejected: see api_protocol.py.
"""
# No `from __future__ import annotations`: FastAPI resolves the handlers' `Request` annotation at
# runtime, and fastapi is imported inside build_app so that the CLI can import this module cheaply.
import argparse
import asyncio
import hmac
import json
import logging
import os
import threading
import time
import traceback
from bisect import bisect_left
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from engines.reference.api_protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseMeta,
    bad_request,
    chat_messages,
    completion_prompt,
    error_body,
    new_id,
    parse_request,
    requested_max_tokens,
    sampling_params,
    stop_strings,
    usage,
)
from engines.reference.scheduler import QueueFullError
from engines.reference.serve_args import add_serve_arguments, engine_overrides_from_args

log = logging.getLogger("tierbench.server")

RETRY_AFTER_S = 1  # the Retry-After of a 503 when the waiting queue is full
DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the first output tokens (as vLLM)
INLINE_TOKENIZE_CHARS = 16384  # longer texts are tokenized off the event loop


# -- tokenizer -----------------------------------------------------------------------------------

class ServerTokenizer:
    """A checkpoint's tokenizer.json plus its chat template, with the slice of the HF tokenizer
    interface the server uses (encode, decode, apply_chat_template), so a transformers tokenizer
    can be passed to build_app instead. The template is rendered like transformers does: a
    sandboxed jinja2 environment with trim_blocks, lstrip_blocks, loop controls, `tojson`,
    `raise_exception` and `strftime_now`."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        d = Path(model_dir)
        if not (d / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{d / 'tokenizer.json'} not found (pass a checkpoint directory "
                                    "or --tokenizer DIR)")
        self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.bos_token = _token_str(cfg.get("bos_token"))
        self.eos_token = _token_str(cfg.get("eos_token"))
        self.chat_template = self._find_template(d, cfg)
        self._compiled = None

    @staticmethod
    def _find_template(d: Path, cfg: dict) -> str | None:
        if (d / "chat_template.jinja").is_file():
            return (d / "chat_template.jinja").read_text(encoding="utf-8")
        t = cfg.get("chat_template")
        if t is None and (d / "chat_template.json").is_file():
            t = json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        if isinstance(t, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
            t = named.get("default") or next(iter(named.values()), None)
        return t

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, tokenize: bool = False,
                            **kwargs: Any) -> str | list[int]:
        if not self.chat_template:
            raise ValueError("this model has no chat template; use /v1/completions")
        if self._compiled is None:
            self._compiled = _jinja_env().from_string(self.chat_template)
        text = self._compiled.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _token_str(t: Any) -> str | None:
    return t.get("content") if isinstance(t, dict) else t


def _jinja_env():
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _vocab_size(tokenizer: Any) -> int | None:
    """Ids the tokenizer knows, added tokens included (len() of an HF tokenizer)."""
    try:
        return len(tokenizer)
    except TypeError:
        v = getattr(tokenizer, "vocab_size", None)
        return v if isinstance(v, int) else None


class IncrementalDetokenizer:
    """vLLM's incremental detokenization: decode ids[prefix:] and ids[prefix:read], emit the
    difference when the text no longer ends in U+FFFD (an incomplete UTF-8 sequence). Seeded with
    the last few prompt tokens so that tokenizers that drop a leading space decode the first
    output token in context."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-DETOKENIZE_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, new_ids: list[int], final: bool = False) -> str:
        self.ids.extend(new_ids)
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=self.skip)
        text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=self.skip)
        if len(text) > len(prefix_text) and (final or not text.endswith("\ufffd")):
            delta = text[len(prefix_text):]
            self.ids = self.ids[self.read:]  # the new window starts where the old one was read to
            self.prefix, self.read = 0, len(self.ids)
            return delta
        return ""


# -- the engine thread ---------------------------------------------------------------------------

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


# -- metrics -------------------------------------------------------------------------------------

class Histogram:
    def __init__(self, buckets: list[float]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1


_LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]


class ServerMetrics:
    """Server-side counters; engine gauges and counters are read from engine.stats() at scrape."""

    def __init__(self) -> None:
        self.finished: dict[str, int] = defaultdict(int)  # finish reason -> requests
        self.rejected: dict[str, int] = defaultdict(int)  # queue_full | bad_request | unauthorized
        self.aborted = 0  # client disconnects
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.in_flight = 0
        self.ttft = Histogram(_LATENCY_BUCKETS)
        self.e2e = Histogram(_LATENCY_BUCKETS)
        self.itl = Histogram(_ITL_BUCKETS)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(stats: dict, m: ServerMetrics, model_name: str, engine_alive: bool) -> str:
    lines: list[str] = []
    base = f'model_name="{_esc(model_name)}"'

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, v in samples:
            lab = base + ("," + labels if labels else "")
            lines.append(f"{name}{{{lab}}} {_num(v)}")

    def one(name: str, kind: str, help_: str, v: float) -> None:
        metric(name, kind, help_, [("", v)])

    def hist(name: str, help_: str, h: Histogram) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} histogram")
        acc = 0
        for le, c in zip([*map(_num, h.buckets), "+Inf"], h.counts):
            acc += c
            lines.append(f'{name}_bucket{{{base},le="{le}"}} {acc}')
        lines.append(f"{name}_sum{{{base}}} {_num(h.sum)}")
        lines.append(f"{name}_count{{{base}}} {h.count}")

    s = defaultdict(int, stats)  # a key the engine stops reporting reads 0 rather than breaking scrapes
    g = "gauge"
    c = "counter"
    # vLLM's names (v1 engine), so dashboards and scrapers written for vLLM work unchanged
    one("vllm:num_requests_running", g, "Requests in the running batch.", s["num_running"])
    one("vllm:num_requests_waiting", g, "Requests waiting to be scheduled.", s["num_waiting"])
    one("vllm:kv_cache_usage_perc", g, "KV-cache usage, 0 to 1 (1 = every block in use).", s["kv_usage"])
    one("vllm:gpu_cache_usage_perc", g, "KV-cache usage, 0 to 1 (legacy name).", s["kv_usage"])
    one("vllm:num_preemptions_total", c, "Preemptions.", s["preemptions"])
    one("vllm:prefix_cache_queries_total", c, "Prompt tokens looked up in the prefix cache.",
        s["prefix_queried_tokens"])
    one("vllm:prefix_cache_hits_total", c, "Prompt tokens found in the prefix cache.", s["prefix_hit_tokens"])
    one("vllm:prompt_tokens_total", c, "Prompt tokens of admitted requests.", m.prompt_tokens)
    one("vllm:generation_tokens_total", c, "Generated tokens.", s["generation_tokens"])
    metric("vllm:request_success_total", c, "Finished requests by finish reason.",
           [(f'finished_reason="{_esc(k)}"', v) for k, v in sorted(m.finished.items())] or
           [('finished_reason="stop"', 0)])
    hist("vllm:time_to_first_token_seconds", "Time to first token (from arrival).", m.ttft)
    hist("vllm:e2e_request_latency_seconds", "End-to-end request latency.", m.e2e)
    hist("vllm:inter_token_latency_seconds", "Time between consecutive output tokens.", m.itl)
    # tierbench's names: everything the engine reports
    one("tierbench_engine_alive", g, "1 while the engine thread runs.", 1 if engine_alive else 0)
    one("tierbench_queue_depth", g, "Requests waiting to be scheduled.", s["num_waiting"])
    one("tierbench_running_sequences", g, "Sequences in the running batch.", s["num_running"])
    one("tierbench_requests_in_flight", g, "HTTP generation requests being served.", m.in_flight)
    one("tierbench_kv_usage_ratio", g, "Fraction of KV blocks referenced by a sequence.", s["kv_usage"])
    one("tierbench_kv_free_blocks", g, "KV blocks no sequence references (cached ones included).",
        s["num_free_blocks"])
    one("tierbench_kv_total_blocks", g, "KV blocks in the pool.", s["num_total_blocks"])
    one("tierbench_kv_cached_blocks", g, "KV blocks registered in the prefix cache.", s["num_cached_blocks"])
    one("tierbench_kv_block_size", g, "Tokens per KV block.", s["block_size"])
    one("tierbench_prefix_hit_rate", g, "Prefix-cache hit rate over prompt tokens since start.",
        s["prefix_hit_rate"])
    for key, help_ in (("prefix_queried_tokens", "Prompt tokens looked up in the prefix cache."),
                       ("prefix_hit_tokens", "Prompt tokens served by the prefix cache."),
                       ("prefix_hit_blocks", "Prompt blocks served by the prefix cache."),
                       ("prefix_miss_blocks", "Full prompt blocks not found in the prefix cache."),
                       ("evictions", "Cached KV blocks evicted."),
                       ("preemptions", "Preemptions."),
                       ("recomputed_tokens", "Tokens computed again after preemption."),
                       ("prompt_tokens_computed", "Prompt tokens run through the model."),
                       ("generation_tokens", "Generated tokens."),
                       ("steps", "Engine steps.")):
        one("tierbench_engine_steps_total" if key == "steps" else f"tierbench_{key}_total", c, help_, s[key])
    one("tierbench_cached_prompt_tokens_total", c, "Prompt tokens reported as cached to clients.", m.cached_tokens)
    one("tierbench_requests_aborted_total", c, "Requests aborted because the client went away.", m.aborted)
    metric("tierbench_requests_rejected_total", c, "Requests refused, by reason.",
           [(f'reason="{r}"', m.rejected.get(r, 0)) for r in ("bad_request", "queue_full", "unauthorized")])
    return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


# -- one generation ------------------------------------------------------------------------------

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


# -- the app -------------------------------------------------------------------------------------

class _Server:
    """State shared by the handlers of one app."""

    def __init__(self, engine: Any, tokenizer: Any, model_name: str, api_key: str | None,
                 model_aliases: tuple[str, ...]) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_names = {model_name, *model_aliases}
        self.api_key = api_key
        self.engine_loop = EngineLoop(engine)
        self.metrics = ServerMetrics()
        self.max_model_len = int(getattr(engine, "max_model_len", None)
                                 or getattr(engine.config, "max_model_len", None) or 8192)
        mc = getattr(engine, "model_config", None)
        self.vocab_size = getattr(mc, "vocab_size", None) or _vocab_size(tokenizer)
        pool = getattr(engine, "pool", None)
        block_size = getattr(getattr(engine, "config", None), "block_size", None)
        self.kv_capacity_tokens = pool.num_blocks * block_size if pool is not None and block_size else None
        self.created = int(time.time())


def build_app(engine: Any, tokenizer: Any, model_name: str, api_key: str | None = None, *,
              model_aliases: tuple[str, ...] | list[str] = ()):
    """A FastAPI app serving `engine` (an LLMEngine; its step loop starts with the app and stops
    with it). `tokenizer`: a ServerTokenizer or a transformers tokenizer. Requests may name
    `model_name` or any of `model_aliases` (or no model)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    srv = _Server(engine, tokenizer, model_name, api_key or None, tuple(model_aliases))

    @asynccontextmanager
    async def lifespan(app):
        srv.engine_loop.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            srv.engine_loop.stop()

    app = FastAPI(title="tierbench reference engine", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = srv

    def error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        if e.status == 401:
            srv.metrics.rejected["unauthorized"] += 1
        elif e.status == 503:
            srv.metrics.rejected["queue_full"] += 1
        elif 400 <= e.status < 500:
            srv.metrics.rejected["bad_request"] += 1
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "NotFoundError" if e.status_code == 404 else "BadRequestError"
        return JSONResponse(error_body(str(e.detail), kind, None, e.status_code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.error("unhandled error:\n%s", traceback.format_exc())
        return JSONResponse(error_body(f"{type(e).__name__}: {e}", "InternalServerError", None, 500),
                            status_code=500)

    def check_auth(request: Request) -> None:
        if srv.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), srv.api_key.encode()):
            raise APIError("invalid or missing API key (expected 'Authorization: Bearer <key>')", 401,
                           "AuthenticationError", None, "invalid_api_key")

    @app.get("/health")
    async def health():
        if not srv.engine_loop.alive:
            return JSONResponse(error_body("engine loop is not running", "ServiceUnavailableError", None, 503),
                                status_code=503)
        return Response(status_code=200)

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request):
        """Forget every free cached block (vLLM's endpoint of the same name), so that repetitions
        of a run start from a cold cache."""
        check_auth(request)
        n = await asyncio.to_thread(srv.engine.reset_prefix_cache)
        return {"reset_blocks": n}

    @app.get("/metrics")
    async def metrics():
        text = render_metrics(srv.engine.stats(), srv.metrics, srv.model_name, srv.engine_loop.alive)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{
            "id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "tierbench",
            "root": srv.model_name, "parent": None, "max_model_len": srv.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        return await handle(request, chat=True)

    async def handle(request: Request, chat: bool):
        arrival = time.monotonic()
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"malformed JSON body: {e}") from None
        req = parse_request(ChatCompletionRequest if chat else CompletionRequest, body)
        if req.model is not None and req.model not in srv.model_names:
            raise APIError(f"The model `{req.model}` does not exist.", 404, "NotFoundError", "model",
                           "model_not_found")
        prompt_ids = await tokenize(req, chat)
        param = "messages" if chat else "prompt"
        n = len(prompt_ids)
        if srv.vocab_size is not None and prompt_ids and (min(prompt_ids) < 0 or max(prompt_ids) >= srv.vocab_size):
            raise bad_request(f"prompt token ids must be in [0, {srv.vocab_size})", param)
        limit = srv.max_model_len
        if n >= limit:
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, your request "
                              f"has {n} input tokens, which leaves no room for output.", param)
        max_tokens = requested_max_tokens(req)
        if max_tokens is None:
            room = limit - n
            if srv.kv_capacity_tokens is not None:
                room = max(1, min(room, srv.kv_capacity_tokens - n))
            max_tokens = min(16, room) if not chat else room
        elif n + max_tokens > limit:
            field = "max_completion_tokens" if chat and getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, you requested "
                              f"{n + max_tokens} tokens ({n} in the {param}, {max_tokens} in the completion). "
                              "Please reduce the length of the prompt or the completion.", field)
        params = sampling_params(req, max_tokens)
        session_id = req.session_id or request.headers.get("x-session-id") or None
        rid = new_id("chatcmpl" if chat else "cmpl")
        try:
            gen = Generation(srv, rid, prompt_ids, params, stop_strings(req), bool(req.include_stop_str_in_output),
                             req.skip_special_tokens is not False, session_id, arrival)
        except QueueFullError as e:
            raise APIError(f"the server is at capacity: {e}; retry later", 503, "ServiceUnavailableError",
                           None, 503, headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ValueError as e:
            raise bad_request(str(e), param) from None
        meta = ResponseMeta(rid, srv.model_name, chat)
        want_ids = bool(req.return_token_ids)
        if req.stream:
            opts = req.stream_options
            include_usage = bool(opts and opts.include_usage)
            continuous = include_usage and bool(opts.continuous_usage_stats)
            return SSEResponse(stream(gen, meta, include_usage, continuous, want_ids), on_close=gen.close)
        return await complete(request, gen, meta, want_ids)

    async def tokenize(req, chat: bool) -> list[int]:
        tok = srv.tokenizer
        if chat:
            messages = chat_messages(req)
            kwargs = dict(req.chat_template_kwargs or {})
            if req.continue_final_message:
                kwargs["continue_final_message"] = True

            def render() -> list[int]:
                text = tok.apply_chat_template(messages, tools=req.tools, tokenize=False,
                                               add_generation_prompt=req.add_generation_prompt is not False, **kwargs)
                return list(tok.encode(text, add_special_tokens=False))
            size = sum(len(m["content"]) for m in messages)
        else:
            prompt = completion_prompt(req)
            if isinstance(prompt, list):
                return prompt

            def render() -> list[int]:
                return list(tok.encode(prompt, add_special_tokens=True))
            size = len(prompt)
        try:
            return render() if size < INLINE_TOKENIZE_CHARS else await asyncio.to_thread(render)
        except APIError:
            raise
        except Exception as e:  # template errors (raise_exception, bad message shapes)
            raise bad_request(f"could not build the prompt: {type(e).__name__}: {e}",
                              "messages" if chat else "prompt") from None

    async def stream(gen: Generation, meta: ResponseMeta, include_usage: bool, continuous: bool,
                     want_ids: bool) -> AsyncIterator[bytes]:
        first = True
        try:
            async for text, ids in gen.events():
                chunk = meta.chunk(text, gen.finish_reason if gen.finished else None,
                                   gen.stop_reason if gen.finished else None, first=first,
                                   token_ids=ids if want_ids else None)
                if want_ids and first:
                    chunk["prompt_token_ids"] = gen.prompt_ids
                if continuous:
                    chunk["usage"] = gen.usage()
                first = False
                yield sse(chunk)
            if include_usage:
                yield sse(meta.usage_chunk(gen.usage()))
        except APIError as e:
            yield sse(e.body())
        finally:
            gen.close()
        yield b"data: [DONE]\n\n"

    async def complete(request: Request, gen: Generation, meta: ResponseMeta, want_ids: bool):
        async def collect() -> dict:
            text_parts = []
            async for text, _ in gen.events():
                text_parts.append(text)
            return meta.full("".join(text_parts), gen.finish_reason, gen.stop_reason, gen.usage(),
                             token_ids=gen.token_ids if want_ids else None,
                             prompt_token_ids=gen.prompt_ids if want_ids else None)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work = asyncio.ensure_future(collect())
        watch = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return JSONResponse(work.result())
            return Response(status_code=499)  # nobody is listening
        finally:
            for t in (work, watch):
                t.cancel()
            gen.close()

    return app


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _sse_response_class():
    import anyio
    from starlette.responses import StreamingResponse

    class _SSE(StreamingResponse):
        """Server-sent events that stop, and run on_close, as soon as the client disconnects,
        whichever ASGI spec version the server speaks."""

        def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.on_close = on_close

        async def __call__(self, scope, receive, send) -> None:
            try:
                async with anyio.create_task_group() as tg:
                    async def run_stream() -> None:
                        try:
                            await self.stream_response(send)
                        except OSError:
                            pass  # the client went away
                        tg.cancel_scope.cancel()

                    async def run_listen() -> None:
                        await self.listen_for_disconnect(receive)
                        tg.cancel_scope.cancel()

                    tg.start_soon(run_stream)
                    await run_listen()
            finally:
                try:
                    await self.body_iterator.aclose()
                finally:
                    self.on_close()

    return _SSE


_SSE_CLASS = None


def SSEResponse(content: AsyncIterator[bytes], on_close: Callable[[], None]):
    global _SSE_CLASS
    if _SSE_CLASS is None:
        _SSE_CLASS = _sse_response_class()
    return _SSE_CLASS(content, on_close)


# -- serving -------------------------------------------------------------------------------------



def run_from_args(args: argparse.Namespace) -> None:
    serve(args.model, host=args.host, port=args.port, max_model_len=args.max_model_len, api_key=args.api_key,
          engine_overrides=engine_overrides_from_args(args), served_model_name=args.served_model_name,
          tokenizer_dir=args.tokenizer, log_level=args.log_level)


def serve(model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
          api_key: str | None = None, engine_overrides: dict | None = None, *, served_model_name: str | None = None,
          tokenizer_dir: str | os.PathLike | None = None, log_level: str = "warning") -> None:
    """Load the engine and serve it until interrupted."""
    import uvicorn

    from engines.reference.config import EngineConfig
    from engines.reference.engine import LLMEngine

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = str(model_dir)
    tokenizer = ServerTokenizer(tokenizer_dir or model)
    config = EngineConfig(model=model, max_model_len=max_model_len, **(engine_overrides or {}))
    engine = LLMEngine(config)
    name = served_model_name or model
    aliases = [model, str(Path(model).resolve()), Path(model).name]
    app = build_app(engine, tokenizer, name, api_key, model_aliases=aliases)
    log.warning("serving %s on http://%s:%d (max_model_len %d, %d KV blocks of %d)", name, host, port,
                engine.max_model_len, engine.pool.num_blocks, config.block_size)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                timeout_graceful_shutdown=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engines.reference.server", description=__doc__.split("\n")[0])
    add_serve_arguments(parser)
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
