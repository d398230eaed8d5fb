"""The proxy: calls arrive at one URL, the routing policy picks a tier, the call goes to that tier's
engine with the tier's round trip injected, and the decision travels back with the response.

Endpoints: POST /v1/completions and /v1/chat/completions (streaming SSE and not), GET /v1/models
(the union of the upstreams'), GET /health (200 when every upstream answers /health or
/v1/models, else 503 naming those that do not), GET /tiers (the config as JSON). Clients speak
HTTP/1.1 (keep-alive, Content-Length or chunked request bodies).
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import sys
import time

import orjson

from bench.tiers.gateway.config import gateway_config
from bench.tiers.gateway.delay import Downlink, Link, Timers
from bench.tiers.gateway.http1 import (HEAD_LIMIT, REASONS, HTTPError, error_body, header_value, no_delay, parse_head,
                                       read_chunked_body)
from bench.tiers.gateway.relay import relay, send_upstream
from bench.tiers.gateway.upstream import Upstream
from bench.tiers.network import Tier, rng_for
from bench.tiers.routing import CallInfo, call_info_from_request


class Gateway:
    """One gateway's state: its tiers, their upstream pools and seeded RTT draws, the policy, the
    call log. `handle` serves one client connection."""

    def __init__(self, tiers: list[Tier], policy, seed: int = 0, log_path: str | None = None,
                 trace_chunks: bool = False, config: dict | None = None):
        self.tiers = {t.name: t for t in tiers}
        self.order = [t.name for t in tiers]
        self.policy = policy
        self.seed = seed
        self.rngs = {t.name: rng_for(seed, t.name) for t in tiers}
        self.jitter_rngs = {t.name: rng_for(seed + 1_000_003, t.name) for t in tiers}
        self.upstreams = {t.name: Upstream(t.url, os.environ.get(t.api_key_env) if t.api_key_env else None)
                          for t in tiers}
        self.log = open(log_path, "ab", buffering=0) if log_path else None
        self.trace_chunks = trace_chunks
        self.config = config if config is not None else gateway_config(tiers, None, seed)
        self.observe = getattr(policy, "observe", None)
        self.calls = 0
        self.timers: Timers | None = None  # made in the event loop, on first use

    # -- connection loop -----------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        no_delay(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    err = error_body(431, "request headers too large", "invalid_request_error")
                    await self._respond(writer, 431, err, close=True)
                    return
                received = time.perf_counter()
                first, hs = parse_head(head)
                parts = first.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    await self._respond(writer, 400, error_body(400, "malformed request line", "invalid_request_error"),
                                        close=True)
                    return
                method, target, version = parts
                h = {k.decode("latin-1"): v.decode("latin-1") for k, v in hs}
                conn_hdr = h.get("connection", "").lower()
                keep = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
                if h.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    if "chunked" in h.get("transfer-encoding", "").lower():
                        body = await read_chunked_body(reader, 256 << 20)
                    else:
                        try:
                            length = int(h.get("content-length") or 0)
                        except ValueError:
                            raise HTTPError(400, "malformed Content-Length") from None
                        body = await reader.readexactly(length)
                except HTTPError as e:
                    await self._respond(writer, e.status, error_body(e.status, e.message, e.kind), close=True)
                    return
                received = time.perf_counter() if body else received
                path = target.split("?", 1)[0]
                try:
                    keep = await self.dispatch(method, path, hs, h, body, writer, received, keep)
                except HTTPError as e:
                    await self._respond(writer, e.status, error_body(e.status, e.message, e.kind), close=not keep)
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            writer.close()

    async def _respond(self, writer, status: int, body: bytes, close: bool = False,
                       ctype: bytes = b"application/json", extra: bytes = b"") -> None:
        writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
            status, REASONS.get(status, "Error").encode(), ctype, len(body), extra,
            b"connection: close\r\n" if close else b"", body))
        await writer.drain()

    async def dispatch(self, method, path, hs, h, body, writer, received, keep) -> bool:
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                raise HTTPError(405, f"{method} {path}: use POST")
            return await self.proxy(path, hs, h, body, writer, received, keep)
        if method != "GET":
            known = path in ("/health", "/tiers", "/v1/models")
            raise HTTPError(405 if known else 404, f"{method} {path}: not found")
        if path == "/health":
            status, payload = await self.health()
        elif path == "/tiers":
            status, payload = 200, orjson.dumps(self.config)
        elif path == "/v1/models":
            status, payload = await self.models()
        else:
            raise HTTPError(404, f"GET {path}: not found")
        await self._respond(writer, status, payload, close=not keep)
        return keep

    async def health(self) -> tuple[int, bytes]:
        async def one(name: str) -> str | None:
            up = self.upstreams[name]
            last = "no answer"
            for p in ("/health", "/v1/models"):
                try:
                    status, _ = await up.simple_get(p)
                    if status == 200:
                        return None
                    last = f"GET {p}: HTTP {status}"
                except Exception as e:  # any failure is "down", with what it was
                    last = f"GET {p}: {type(e).__name__}: {e}"
            return last
        res = await asyncio.gather(*(one(n) for n in self.order))
        down = {n: r for n, r in zip(self.order, res) if r}
        if down:
            return 503, orjson.dumps({"status": "unavailable", "down": down})
        return 200, orjson.dumps({"status": "ok", "tiers": self.order})

    async def models(self) -> tuple[int, bytes]:
        async def one(name: str):
            try:
                status, body = await self.upstreams[name].simple_get("/v1/models", 10.0)
                return orjson.loads(body).get("data", []) if status == 200 else None
            except Exception:
                return None
        res = await asyncio.gather(*(one(n) for n in self.order))
        if all(r is None for r in res):
            return 502, error_body(502, "no upstream answered /v1/models", "upstream_unreachable")
        seen, data = set(), []
        for name, r in zip(self.order, res):
            for m in r or []:
                if isinstance(m, dict) and m.get("id") not in seen:
                    seen.add(m.get("id"))
                    data.append(m)
            model = self.tiers[name].model
            if r is not None and model and model not in seen:
                seen.add(model)
                data.append({"id": model, "object": "model", "owned_by": f"tier {name}"})
        return 200, orjson.dumps({"object": "list", "data": data})

    # -- proxying ------------------------------------------------------------------------------
    def _timers(self) -> Timers:
        """The precise timers, made on first use (they need the running event loop)."""
        if self.timers is None:
            self.timers = Timers()
        return self.timers

    async def route(self, info: CallInfo, h: dict) -> tuple[str, str]:
        forced = h.get("x-tierbench-tier")
        if forced:
            if forced not in self.tiers:
                raise HTTPError(400, f"x-tierbench-tier: unknown tier {forced!r} (tiers: {', '.join(self.order)})")
            return forced, "forced by x-tierbench-tier"
        try:
            choice = self.policy.choose(info)
            if inspect.isawaitable(choice):
                choice = await choice
            name, reason = choice
        except Exception as e:
            raise HTTPError(500, f"routing policy failed: {type(e).__name__}: {e}", "internal_error") from None
        if name not in self.tiers:
            raise HTTPError(500, f"routing policy chose unknown tier {name!r}", "internal_error")
        return name, str(reason)

    async def proxy(self, path, hs, h, body, writer, received, keep) -> bool:
        try:
            req = orjson.loads(body)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise HTTPError(400, f"the request body is not a JSON object: {e}") from None
        try:
            info = call_info_from_request(req, h)
        except Exception as e:
            raise HTTPError(400, f"cannot read the request for routing: {type(e).__name__}: {e}") from None
        name, reason = await self.route(info, h)
        tier = self.tiers[name]
        if tier.model and req.get("model") != tier.model:
            req["model"] = tier.model
            body = orjson.dumps(req)
        net = tier.network
        rtt = net.draw_rtt_s(self.rngs[name])
        jrng = self.jitter_rngs[name]
        up = self.upstreams[name]
        rec = {"time": time.time(), "request_id": h.get("x-request-id"), "session": info.session,
               "call_index": info.call_index, "tier": name, "rtt_ms": rtt * 1e3, "reason": reason, "path": path,
               "stream": bool(req.get("stream")), "status": None, "error": None, "received": received,
               "upstream_sent": None, "upstream_first": None, "first_out": None, "done": None}
        self.calls += 1
        chunks_in = [] if self.trace_chunks else None
        down = Downlink(writer, self._timers(), [] if self.trace_chunks else None)
        ours = (b"x-tierbench-tier: " + header_value(name) + b"\r\nx-tierbench-rtt-ms: %.3f\r\n" % (rtt * 1e3)
                + b"x-tierbench-route-reason: " + header_value(reason) + b"\r\n")
        try:
            # uplink: the request reaches the engine RTT/2 after it was read
            uplink = Link(rtt / 2, net, jrng)
            head = up.request_head("POST", path, hs, len(body))
            due = uplink.due(received, len(head) + len(body))
            if due > time.perf_counter():
                await self._timers().sleep_until(due)
            conn, status, uhead = await send_upstream(up, head, body, rec)
            keep = await relay(conn, up, status, uhead, ours, down, Link(rtt / 2, net, jrng), rec, chunks_in, keep)
        except HTTPError as e:
            rec["status"], rec["error"] = e.status, e.message
            if rtt > 0:
                await self._timers().sleep_until(time.perf_counter() + rtt / 2)  # the error travels back too
            await self._respond(writer, e.status, error_body(e.status, e.message, e.kind), close=not keep, extra=ours)
        except BaseException as e:
            rec["error"] = rec["error"] or f"{type(e).__name__}: {e}"
            down.cancel()
            raise
        finally:
            rec["done"] = time.perf_counter()
            rec["first_out"] = down.first_out
            if self.trace_chunks:
                rec["chunks_in"], rec["chunks_out"] = chunks_in, down.trace
            if self.log is not None:
                self.log.write(orjson.dumps(rec) + b"\n")
            if self.observe is not None:
                try:
                    self.observe(name, info, rec)
                except Exception as e:  # a policy's bookkeeping never breaks a call
                    print(f"gateway: policy.observe failed: {type(e).__name__}: {e}", file=sys.stderr)
        return keep


async def serve(gw: Gateway, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT; `ready` is set once the port listens."""
    server = await asyncio.start_server(gw.handle, host, port, backlog=2048, limit=HEAD_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    print(f"tier gateway on http://{host}:{port}: "
          + "; ".join(t.network.describe() + f" -> {t.url}" for t in gw.tiers.values()), flush=True)
    gc.freeze()  # what start-up allocated stays out of the collector's way
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()
    if gw.log is not None:
        gw.log.close()


def run_forever(coro) -> None:
    """Run the gateway's coroutine on uvloop where it is installed (faster sockets), else asyncio."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)

