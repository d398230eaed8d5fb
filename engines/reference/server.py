"""An OpenAI-compatible HTTP server for the reference engine.

This module holds the FastAPI app (build_app: routes, auth, error bodies, request limits) and
starting it (serve; run_from_args, for `tierbench serve` and `python -m`).

    python -m engines.reference.server --model DIR [--port 8000] [--api-key K] [engine knobs]

Endpoints: POST /v1/completions and /v1/chat/completions (streaming SSE or not), GET /v1/models,
/health and /metrics (Prometheus text, with vLLM's metric names where one exists). It works with
the official `openai` client and with `vllm bench serve` (--backend vllm / openai-chat).

The rest of the server, by module: tokenizer.py (tokenizer, chat template, incremental
detokenization), engine_loop.py (the engine thread and one request in flight: queues, stop
strings, aborts), sse.py (the streaming response), metrics.py (/metrics), api_protocol.py (request
validation and response bodies; what is rejected).

Under abuse (tests/engines/reference/test_server_abuse.py, tools/abuse_soak.py): it binds loopback
unless --host says otherwise; an API key is compared in constant time (hmac.compare_digest); a body
over --max-body-size (4 MiB) gets 413, at once when Content-Length says so; a client that goes away
mid-stream aborts its request, which frees its KV blocks. Connections that send nothing (slowloris)
cost uvicorn a descriptor and a protocol object each, no timer or worker: the open-file limit is
raised to the hard one at start, and 1,000 of them leave a concurrent stream's TTFT alone.
"""
# No `from __future__ import annotations`: FastAPI resolves the handlers' `Request` annotation at
# runtime, and fastapi is imported inside build_app so that the CLI can import this module cheaply.
import argparse
import asyncio
import hmac
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

from engines.reference.api_protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseMeta,
    bad_request,
    error_body,
    new_id,
    parse_request,
    requested_max_tokens,
    sampling_params,
    stop_strings,
)
from engines.reference.engine_loop import EngineLoop, Generation
from engines.reference.metrics import ServerMetrics, render_metrics
from engines.reference.scheduler import QueueFullError
from engines.process import raise_fd_limit
from engines.reference.serve_args import MAX_BODY_BYTES, add_serve_arguments, engine_overrides_from_args
from engines.reference.sse import SSEResponse, sse_stream
from engines.reference.tokenizer import ServerTokenizer, prompt_token_ids, tokenizer_vocab_size, warm_up_tokenizer

log = logging.getLogger("tierbench.server")

RETRY_AFTER_S = 1  # the Retry-After of a 503 when the waiting queue is full


class _Server:
    """State shared by the handlers of one app."""

    def __init__(self, engine: Any, tokenizer: Any, model_name: str, api_key: str | None,
                 model_aliases: tuple[str, ...], max_body: int = MAX_BODY_BYTES) -> None:
        self.engine = engine
        self.max_body = max_body
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_names = {model_name, *model_aliases}
        self.api_key = api_key
        self.engine_loop = EngineLoop(engine)
        self.metrics = ServerMetrics()
        self.max_model_len = int(getattr(engine, "max_model_len", None)
                                 or getattr(engine.config, "max_model_len", None) or 8192)
        mc = getattr(engine, "model_config", None)
        self.vocab_size = getattr(mc, "vocab_size", None) or tokenizer_vocab_size(tokenizer)
        pool = getattr(engine, "pool", None)
        block_size = getattr(getattr(engine, "config", None), "block_size", None)
        self.kv_capacity_tokens = pool.num_blocks * block_size if pool is not None and block_size else None
        self.created = int(time.time())


def build_app(engine: Any, tokenizer: Any, model_name: str, api_key: str | None = None, *,
              model_aliases: tuple[str, ...] | list[str] = (), max_body: int = MAX_BODY_BYTES,
              warmup: bool = False):
    """A FastAPI app serving `engine` (an LLMEngine; its step loop starts with the app and stops
    with it). `tokenizer`: a ServerTokenizer or a transformers tokenizer. Requests may name
    `model_name` or any of `model_aliases` (or no model); a body over `max_body` bytes gets 413.
    An API key, when set, is compared in constant time (hmac.compare_digest). `warmup`: at start,
    before the server listens, send the app a few requests in process (warm_up_http)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    srv = _Server(engine, tokenizer, model_name, api_key or None, tuple(model_aliases), max_body)

    @asynccontextmanager
    async def lifespan(app):
        srv.engine_loop.start(asyncio.get_running_loop())
        if warmup:
            t = await warm_up_http(app, srv)
            log.info("HTTP warm-up took %.3f s", t)
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
        raw = await read_body(request, srv.max_body)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"malformed JSON body: {e}") from None
        req = parse_request(ChatCompletionRequest if chat else CompletionRequest, body)
        if req.model is not None and req.model not in srv.model_names:
            raise APIError(f"The model `{req.model}` does not exist.", 404, "NotFoundError", "model",
                           "model_not_found")
        prompt_ids = await prompt_token_ids(srv.tokenizer, req, chat)
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
            return SSEResponse(sse_stream(gen, meta, include_usage, continuous, want_ids), on_close=gen.close)
        return await complete(request, gen, meta, want_ids)

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


async def read_body(request: Any, limit: int) -> bytes:
    """The request body; APIError 413 once it is over `limit` bytes, at once when Content-Length
    says so (what was not read is left to the server to discard)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise APIError(f"request body of {int(length)} bytes over the limit of {limit}", 413, "RequestTooLargeError")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(f"request body over the limit of {limit} bytes", 413, "RequestTooLargeError")
        parts.append(chunk)
    return b"".join(parts)


def run_from_args(args: argparse.Namespace) -> None:
    """serve() with the options of serve_args.add_serve_arguments: `tierbench serve` and
    `python -m engines.reference.server` share them."""
    serve(args.model, host=args.host, port=args.port, max_model_len=args.max_model_len, api_key=args.api_key,
          engine_overrides=engine_overrides_from_args(args), served_model_name=args.served_model_name,
          tokenizer_dir=args.tokenizer, log_level=args.log_level, max_body=args.max_body_size)


async def warm_up_http(app: Any, srv: _Server) -> float:
    """Send the app a streamed chat request and a plain completion in process (ASGI calls, no
    socket), then forget them: the engine's counters and prefix cache through engine.untraced(),
    the server's metrics replaced. A fresh server's first request pays for lazy set-up in the
    HTTP stack (measured: 11.6 ms to the first byte against 1.3 ms for the next); this pays it
    before uvicorn listens, so before /health answers."""
    t0 = time.monotonic()
    bodies = [("/v1/chat/completions", {"messages": [{"role": "user", "content": "warm-up"}], "max_tokens": 2,
                                        "stream": True, "stream_options": {"include_usage": True}}),
              ("/v1/completions", {"prompt": "warm-up", "max_tokens": 2})]
    with srv.engine.untraced():
        for path, body in bodies:
            await _asgi_post(app, path, {"model": srv.model_name, **body}, srv.api_key)
    srv.metrics = ServerMetrics()
    return time.monotonic() - t0


async def _asgi_post(app: Any, path: str, body: dict, api_key: str | None) -> int:
    """POST a JSON body to an ASGI app in process; the response is read and dropped. Returns its
    status. After the body, receive() reports a disconnect once the response has ended."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if api_key:
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    done = asyncio.Event()
    status = 0
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    return status


def serve(model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
          api_key: str | None = None, engine_overrides: dict | None = None, *, served_model_name: str | None = None,
          tokenizer_dir: str | os.PathLike | None = None, log_level: str = "warning",
          max_body: int = MAX_BODY_BYTES) -> None:
    """Load the engine and serve it until interrupted. Binds loopback unless `host` says otherwise."""
    import uvicorn

    from engines.reference.config import EngineConfig
    from engines.reference.engine import LLMEngine

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = str(model_dir)
    tokenizer = ServerTokenizer(tokenizer_dir or model)
    config = EngineConfig(model=model, max_model_len=max_model_len, **(engine_overrides or {}))
    engine = LLMEngine(config)
    if config.warmup:  # what the first users would otherwise pay for: engine steps, the chat template
        log.info("warm-up took %.2f s", engine.warm_up() + warm_up_tokenizer(tokenizer))
    name = served_model_name or model
    aliases = [model, str(Path(model).resolve()), Path(model).name]
    app = build_app(engine, tokenizer, name, api_key, model_aliases=aliases, max_body=max_body, warmup=config.warmup)
    log.warning("serving %s on http://%s:%d (max_model_len %d, %d KV blocks of %d, KV retention %s)", name, host,
                port, engine.max_model_len, engine.pool.num_blocks, config.block_size, config.kv_retention)
    raise_fd_limit()  # every idle client connection holds a descriptor
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m engines.reference.server", description=__doc__.split("\n")[0])
    add_serve_arguments(_parser)
    try:
        run_from_args(_parser.parse_args())
    except ValueError as e:  # a bad engine setting found once the model is known: one line, exit 2
        _parser.exit(2, f"{_parser.prog}: error: {e}\n")
