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

from bench.tiers.gateway.config import GatewayConfig, gateway_config
from bench.tiers.gateway.delay import Downlink, Link, Timers
from bench.tiers.gateway.http1 import (REASONS, HTTPError, Request, RequestParser, error_body, header_value,
                                       no_delay)
from bench.tiers.gateway.relay import relay, send_upstream
from bench.tiers.gateway.upstream import Upstream
from bench.tiers.network import rng_for
from bench.tiers.routing import CallInfo, call_info_from_request
from engines.process import raise_fd_limit

READ_SIZE = 64 << 10
MID_REQUEST_TIMEOUT_S = 60.0  # a request under way whose next bytes take longer is dropped (slowloris)
LINGER_S, LINGER_BYTES = 2.0, 64 << 20


class Gateway:
    """One gateway's state: its tiers, their upstream pools, seeded RTT and fault draws, the policy,
    the call log. `handle` serves one client connection."""

    def __init__(self, cfg: GatewayConfig, policy, log_path: str | None = None, trace_chunks: bool = False):
        tiers, seed = cfg.tiers, cfg.seed
        self.tiers = {t.name: t for t in tiers}
        self.order = [t.name for t in tiers]
        self.policy = policy
        self.seed = seed
        self.rngs = {t.name: rng_for(seed, t.name) for t in tiers}
        self.jitter_rngs = {t.name: rng_for(seed + 1_000_003, t.name) for t in tiers}
        self.fault_rngs = {t.name: rng_for(seed + 2_000_003, t.name) for t in tiers if t.faults.active}
        self.upstreams = {t.name: Upstream(t.url, os.environ.get(t.api_key_env) if t.api_key_env else None)
                          for t in tiers}
        self.log = open(log_path, "ab", buffering=0) if log_path else None
        self.trace_chunks = trace_chunks
        self.config = gateway_config(tiers, cfg.routing, seed, cfg.max_body_bytes)
        self.max_body = cfg.max_body_bytes
        self.observe = getattr(policy, "observe", None)
        self.calls = 0
        self.timers: Timers | None = None  # made in the event loop, on first use

    # -- connection loop -----------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        no_delay(writer.get_extra_info("socket"))
        rp = RequestParser(self.max_body)
        try:
            while True:
                while not rp.ready:
                    if rp.error is not None:
                        e = rp.error
                        await self._respond(writer, e.status, error_body(e.status, e.message, e.kind), close=True)
                        await _linger(reader, writer)
                        return
                    if rp.continue_due:
                        rp.continue_due = False
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    if rp.pending:  # a request under way: its next bytes are due
                        data = await asyncio.wait_for(reader.read(READ_SIZE), MID_REQUEST_TIMEOUT_S)
                    else:
                        data = await reader.read(READ_SIZE)
                    if not data:
                        return
                    rp.feed(data)
                req = rp.ready.popleft()
                try:
                    keep = await self.dispatch(req, writer)
                except HTTPError as e:
                    keep = req.keep_alive
                    await self._respond(writer, e.status, error_body(e.status, e.message, e.kind), close=not keep)
                if not keep:
                    return
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            rp.close()
            writer.close()

    async def _respond(self, writer, status: int, body: bytes, close: bool = False,
                       ctype: bytes = b"application/json", extra: bytes = b"") -> None:
        writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
            status, REASONS.get(status, "Error").encode(), ctype, len(body), extra,
            b"connection: close\r\n" if close else b"", body))
        await writer.drain()

    async def dispatch(self, req: Request, writer) -> bool:
        method, path, keep = req.method, req.path, req.keep_alive
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                raise HTTPError(405, f"{method} {path}: use POST")
            return await self.proxy(req, writer)
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

    async def proxy(self, req: Request, writer) -> bool:
        h, keep, body = req.h, req.keep_alive, req.body
        try:
            call = orjson.loads(body)
            if not isinstance(call, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise HTTPError(400, f"the request body is not a JSON object: {e}") from None
        try:
            info = call_info_from_request(call, h)
        except Exception as e:
            raise HTTPError(400, f"cannot read the request for routing: {type(e).__name__}: {e}") from None
        name, reason = await self.route(info, h)
        tier = self.tiers[name]
        if tier.model and call.get("model") != tier.model:
            call["model"] = tier.model
            body = orjson.dumps(call)
        net = tier.network
        rtt = net.draw_rtt_s(self.rngs[name])
        strike, faults, fault_ms, extra = None, [], 0.0, b""
        if name in self.fault_rngs:  # faults on purpose: nothing of this with none configured
            fp = tier.faults
            strike, spike = fp.draw(self.fault_rngs[name])
            faults = [strike] * (strike is not None) + ["spike"] * spike
            fault_ms = fp.spike_ms * spike + fp.stall_ms * (strike == "stall")
            rtt += fp.spike_ms / 1e3 if spike else 0.0
            extra = b"x-tierbench-faults: %s\r\n" % ",".join(faults).encode() if faults else b""
        jrng = self.jitter_rngs[name]
        up = self.upstreams[name]
        rec = {"time": time.time(), "request_id": h.get("x-request-id"), "session": info.session,
               "call_index": info.call_index, "tier": name, "rtt_ms": rtt * 1e3, "reason": reason, "path": req.path,
               "stream": bool(call.get("stream")), "status": None, "error": None, "faults": faults,
               "fault_ms": fault_ms, "received": req.received, "upstream_sent": None, "upstream_first": None,
               "upstream_last": None, "first_out": None, "last_out": None, "done": None}
        self.calls += 1
        chunks_in = [] if self.trace_chunks else None
        down = Downlink(writer, self._timers(), [] if self.trace_chunks else None)
        ours = (b"x-tierbench-tier: " + header_value(name) + b"\r\nx-tierbench-rtt-ms: %.3f\r\n" % (rtt * 1e3)
                + b"x-tierbench-route-reason: " + header_value(reason) + b"\r\n" + extra)
        try:
            # uplink: the request reaches the engine RTT/2 after it was read
            uplink = Link(rtt / 2, net, jrng)
            head = up.request_head("POST", req.path, req.headers, len(body))
            due = uplink.due(req.received, len(head) + len(body))
            if due > time.perf_counter():
                await self._timers().sleep_until(due)
            if strike == "error":
                status = tier.faults.error_status
                raise HTTPError(status, f"injected fault: HTTP {status} from the tier gateway", "injected_fault")
            conn = await send_upstream(up, head, body, rec)
            keep = await relay(conn, up, ours, down, Link(rtt / 2, net, jrng), rec, chunks_in, keep, strike,
                               tier.faults.stall_ms / 1e3)
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
            rec["first_out"], rec["last_out"] = down.first_out, down.last_out
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


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer, stop writing and read what the client still sends (a while, at most
    LINGER_BYTES), so that closing does not reset the connection before it has read the answer."""
    try:
        writer.write_eof()
        deadline = time.monotonic() + LINGER_S
        got = 0
        while got < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            data = await asyncio.wait_for(reader.read(READ_SIZE), left)
            if not data:
                return
            got += len(data)
    except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
        pass


async def serve(gw: Gateway, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT; `ready` is set once the port listens."""
    raise_fd_limit()  # every idle client connection holds a descriptor
    server = await asyncio.start_server(gw.handle, host, port, backlog=2048, limit=READ_SIZE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    print(f"tier gateway on http://{host}:{port}: "
          + "; ".join(", ".join(filter(None, (t.network.describe(), t.faults.describe()))) + f" -> {t.url}"
                      for t in gw.tiers.values()), flush=True)
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

