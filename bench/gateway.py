"""The tier gateway: a real HTTP proxy, in its own process, in front of each tier's engine. Calls
arrive at one URL; a routing policy picks the tier; the gateway injects the tier's network delay
and records the decision with the call.

    python -m bench.gateway --config gateway.json --port 9000 [--host 127.0.0.1] [--log calls.jsonl]

Config (JSON; keys of a tier as bench/tiers.py `Tier.from_dict` documents them):

    {"tiers": [{"name": "edge", "url": "http://127.0.0.1:8001", "profile": "metro"},
               {"name": "cloud", "url": "http://127.0.0.1:8002", "rtt_ms": 250, "model": "big"}],
     "routing": {"policy": "fixed", "tier": "edge"},     # given to bench.routing.make_policy
     "seed": 0}

Endpoints: POST /v1/completions and /v1/chat/completions (streaming SSE and not), GET /v1/models
(the union of the upstreams'), GET /health (200 when every upstream answers /health or
/v1/models, else 503 naming those that do not), GET /tiers (the config as JSON).

Routing: `policy.choose(CallInfo) -> (tier_name, reason)`, the policy from
`bench.routing.make_policy(config["routing"], tiers)`; without bench.routing only the built-in
`{"policy": "fixed", "tier": NAME}` exists (default: the first tier). A request header
`x-tierbench-tier: NAME` forces a tier (reason "forced by x-tierbench-tier"). CallInfo is filled
by bench.routing.call_info_from_request where it exists (else `basic_call_info`: prompt_tokens the
length of a token-id prompt, else None; prompt_text the string prompt or the messages' text
contents joined) from the body and the optional headers x-tierbench-session (else X-Session-Id),
x-tierbench-call-index, x-tierbench-complexity. A policy with an `observe(tier, call, record)`
method is told each call's outcome (the log record below).

Delay: one RTT is drawn per call from the tier's profile (seeded: `seed` and the tier's name). The
request is forwarded upstream RTT/2 after it was read (uplink); every piece of the response is
delivered RTT/2 after it arrived from upstream (downlink), each on its own schedule (arrival +
RTT/2, never accumulating, never reordered), so TTFT grows by one RTT and the ITL keeps its shape.
A non-streamed body is returned RTT/2 after upstream's answer is complete. A profile's jitter
adds uniform(-j, +j) to each transfer's delay, its bandwidth bytes * 8 / rate (transfers queue on
the link).

The decision travels with the response: headers x-tierbench-tier, x-tierbench-rtt-ms (the drawn
RTT) and x-tierbench-route-reason; upstream's bytes are forwarded unchanged (an SSE stream's
chunked framing included). `--log PATH` appends one JSON line per call: request_id, session,
call_index, tier, rtt_ms, reason, status, stream, error, and perf_counter timestamps (received,
upstream_sent, upstream_first (the first body bytes from upstream), first_out (their delivery),
done) plus wall-clock `time`; with --trace-chunks also every piece's arrival and delivery time
(`chunks_in`, `chunks_out`).

Errors: an unreachable upstream gives 502, an upstream error status is passed back with an
OpenAI-style error body ({"error": {"message", "type", "code"}}); upstream's own JSON error body
is kept as it is.

Implementation: plain asyncio streams (uvloop when installed) on both sides, one keep-alive
connection pool per upstream, no timeouts on streams, no access log; bytes are forwarded as they
are read without re-parsing (only the chunked framing is tracked, to find the end). Clients speak
HTTP/1.1 (keep-alive, Content-Length or chunked request bodies).

`GatewayProcess` starts it from Python (a free port, waits for /health, stops on every exit path).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import inspect
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bench.tiers import Tier, rng_for
from engines.launch import die_with_parent, free_port, stop_group, wait_http_ok

try:  # the other half of the interface: routing policies
    from bench import routing as _routing
except ImportError:  # pragma: no cover - depends on what is installed
    _routing = None


@dataclass
class _BasicCallInfo:
    """CallInfo's fields, for when bench.routing is absent."""
    prompt_tokens: int | None
    prompt_text: str
    complexity: str | None
    session: str | None
    call_index: int | None
    headers: dict = field(default_factory=dict)


CallInfo = getattr(_routing, "CallInfo", _BasicCallInfo)
make_policy = getattr(_routing, "make_policy", None)
call_info_from_request = getattr(_routing, "call_info_from_request", None)


class FixedPolicy:
    """Every call to one tier (the built-in policy when bench.routing is absent)."""

    def __init__(self, tier: str):
        self.tier = tier

    def choose(self, call) -> tuple[str, str]:
        return self.tier, "fixed"


def build_policy(spec: dict | None, tiers: list[Tier]):
    """The routing policy of a config: bench.routing.make_policy, else the built-in fixed one."""
    spec = dict(spec or {})
    names = [t.name for t in tiers]
    if make_policy is not None and spec:
        return make_policy(spec, tiers)
    kind = spec.get("policy", "fixed")
    if kind != "fixed":
        raise ValueError(f"routing policy {kind!r} needs bench.routing (only 'fixed' is built in)")
    tier = spec.get("tier", names[0])
    if tier not in names:
        raise ValueError(f"routing: unknown tier {tier!r} (tiers: {', '.join(names)})")
    return FixedPolicy(tier)


def load_config(cfg: dict) -> tuple[list[Tier], dict, int]:
    """(tiers, routing spec, seed) of a gateway config; ValueError on a bad one."""
    if not isinstance(cfg, dict):
        raise ValueError("the gateway config must be a JSON object")
    raw = cfg.get("tiers")
    if not isinstance(raw, list) or not raw:
        raise ValueError("the gateway config needs a non-empty list 'tiers'")
    tiers = [t if isinstance(t, Tier) else Tier.from_dict(t) for t in raw]
    names = [t.name for t in tiers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate tier names: {', '.join(sorted(dup))}")
    routing = cfg.get("routing") or {}
    if not isinstance(routing, dict):
        raise ValueError("'routing' must be an object (the routing policy spec)")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' must be an integer, got {seed!r}")
    return tiers, routing, seed


def gateway_config(tiers: list[Tier], routing: dict | None = None, seed: int = 0) -> dict:
    """A config (JSON-ready) for these tiers."""
    return {"tiers": [t.to_dict() for t in tiers], "routing": routing or {}, "seed": seed}


# -- HTTP plumbing ------------------------------------------------------------------------------

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade",
       b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"host", b"expect"}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
HEAD_LIMIT = 1 << 20
CONNECT_TIMEOUT_S = 10.0
IDLE_POOL = 512


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def _parse_head(head: bytes) -> tuple[str, list[tuple[bytes, bytes]]]:
    """(first line, [(lowercased name, value)]) of a header block ending in CRLFCRLF."""
    lines = head[:-4].split(b"\r\n")
    out = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return lines[0].decode("latin-1"), out


def _header_value(s: str) -> bytes:
    """A string safe as a header value (latin-1, no CR/LF)."""
    return s.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


class ChunkedEnd:
    """Tracks HTTP/1.1 chunked framing over raw bytes to find where the body ends."""
    __slots__ = ("need", "line", "trailer")

    def __init__(self):
        self.need = 0  # data bytes (and their CRLF) still to skip
        self.line = b""
        self.trailer = False

    def feed(self, b: bytes) -> int | None:
        """The index just past the body's end in b, or None when it goes on."""
        i, n = 0, len(b)
        while i < n:
            if self.need:
                take = min(self.need, n - i)
                i += take
                self.need -= take
                continue
            j = b.find(b"\n", i)
            if j < 0:
                self.line += b[i:]
                if len(self.line) > 65536:
                    raise ValueError("malformed chunked body: line too long")
                return None
            line = (self.line + b[i:j]) if self.line else b[i:j]
            self.line = b""
            i = j + 1
            if self.trailer:
                if not line.strip():
                    return i
                continue
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                self.trailer = True
            else:
                self.need = size + 2
        return None


async def read_chunked_body(reader: asyncio.StreamReader, limit: int) -> bytes:
    """A chunked request/response body, decoded."""
    parts, total = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise HTTPError(413, "request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _no_delay(sock) -> None:
    """Streams are many small writes: send each at once instead of waiting to coalesce (Nagle)."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to an upstream. Reads like an asyncio.StreamReader (readuntil,
    readexactly, read) for response heads and whole bodies; in streaming mode (`sink` set) every
    piece goes straight from data_received to the sink, with no task switch in between."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.sink = None  # streaming: called with each piece, b"" at the connection's end

    def connection_made(self, transport) -> None:
        self.transport = transport
        _no_delay(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
            return
        self.buf += data
        self._wake()

    def eof_received(self):
        self._lost()
        return False

    def connection_lost(self, exc) -> None:
        self._lost()

    def _lost(self) -> None:
        self.closed = True
        self._wake()
        if self.sink is not None:
            self.sink(b"")

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _more(self) -> None:
        if self.closed:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def readuntil(self, sep: bytes = b"\n") -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > HEAD_LIMIT:
                raise asyncio.LimitOverrunError("upstream line too long", len(self.buf))
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._more()

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read(self) -> bytes:
        """Everything up to the connection's end."""
        while not self.closed:
            await self._more()
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def usable(self) -> bool:
        return not self.closed and not self.buf and self.sink is None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        self.sink = None
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """One engine's base URL and a pool of keep-alive connections to it."""

    def __init__(self, url: str, api_key: str | None = None):
        u = urlsplit(url)
        self.url = url
        self.host = u.hostname or "127.0.0.1"
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        self.host_header = (u.netloc or self.host).encode("latin-1")
        self.auth = f"Bearer {api_key}".encode("latin-1") if api_key else None
        self.idle: list[UpstreamConn] = []
        self._ssl = ssl.create_default_context() if self.tls else None

    async def connect(self) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(UpstreamConn, self.host, self.port, ssl=self._ssl,
                                   server_hostname=self.host if self.tls else None), CONNECT_TIMEOUT_S)
        return conn

    def take_idle(self) -> UpstreamConn | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def give_back(self, conn: UpstreamConn) -> None:
        if len(self.idle) < IDLE_POOL and conn.usable():
            self.idle.append(conn)
        else:
            conn.close()

    def request_head(self, method: str, path: str, headers: list[tuple[bytes, bytes]], length: int,
                     close: bool = False) -> bytes:
        out = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"), b"Host: ", self.host_header, b"\r\n"]
        for k, v in headers:
            if k in HOP or (self.auth is not None and k == b"authorization"):
                continue
            out += [k, b": ", v, b"\r\n"]
        if self.auth is not None:
            out += [b"authorization: ", self.auth, b"\r\n"]
        if close:
            out.append(b"connection: close\r\n")
        out.append(b"content-length: %d\r\n\r\n" % length if method == "POST" or length else b"\r\n")
        return b"".join(out)

    async def simple_get(self, path: str, timeout_s: float = 3.0) -> tuple[int, bytes]:
        """GET on a fresh connection (health checks, /v1/models): (status, decoded body)."""
        async def go():
            conn = await self.connect()
            try:
                conn.write(self.request_head("GET", path, [], 0, close=True))
                head = await conn.readuntil(b"\r\n\r\n")
                first, hs = _parse_head(head)
                status = int(first.split(" ", 2)[1])
                h = dict(hs)
                if b"chunked" in h.get(b"transfer-encoding", b"").lower():
                    body = await read_chunked_body(conn, 64 << 20)
                elif b"content-length" in h:
                    body = await conn.readexactly(int(h[b"content-length"]))
                else:
                    body = await conn.read()
                return status, body
            finally:
                conn.close()
        return await asyncio.wait_for(go(), timeout_s)


class Timers:
    """Sleeps until an absolute perf_counter time with sub-millisecond precision: one Linux
    timerfd (CLOCK_MONOTONIC, perf_counter's clock) armed for the earliest due time, watched by
    the event loop. The loop's own timers (uvloop's and asyncio's) have millisecond resolution,
    which would shift every injected delay by up to a millisecond. Elsewhere: asyncio.sleep."""

    def __init__(self):
        self.heap: list = []
        self.seq = 0
        self.armed: float | None = None
        self.fd = -1
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
            if fd < 0 or time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
                raise OSError("no timerfd")

            class _TS(ctypes.Structure):
                _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

            class _ITS(ctypes.Structure):
                _fields_ = [("interval", _TS), ("value", _TS)]
            self._its, self._settime, self._ctypes = _ITS(), libc.timerfd_settime, ctypes
            self.fd = fd
            asyncio.get_running_loop().add_reader(fd, self._fire)
        except (OSError, AttributeError):
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1

    async def sleep_until(self, due: float) -> None:
        if self.fd < 0:
            rem = due - time.perf_counter()
            if rem > 0:
                await asyncio.sleep(rem)
            return
        fut = asyncio.get_running_loop().create_future()
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, fut))
        if self.armed is None or due < self.armed:
            self._arm(due)
        await fut

    def _arm(self, due: float) -> None:
        self.armed = due
        sec = int(due)
        self._its.value.sec, self._its.value.nsec = sec, max(1, int((due - sec) * 1e9))
        self._settime(self.fd, 1, self._ctypes.byref(self._its), None)  # TFD_TIMER_ABSTIME

    def _fire(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        now = time.perf_counter() + 20e-6
        heap = self.heap
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)
        self.armed = None
        if heap:
            self._arm(heap[0][0])


class Link:
    """When each piece of one direction of one call is delivered: arrival + RTT/2 (+ jitter,
    + time on the link at the tier's bandwidth), never before the previous piece."""
    __slots__ = ("half", "net", "rng", "free", "last", "plain")

    def __init__(self, half: float, net, rng):
        self.half, self.net, self.rng = half, net, rng
        self.free = 0.0
        self.last = 0.0
        self.plain = not net.bandwidth_mbps and not net.jitter_ms

    def due(self, arrival: float, nbytes: int) -> float:
        if self.plain:  # the common case, per piece: keep it short
            t = arrival + self.half
        else:
            t = arrival
            if self.net.bandwidth_mbps:
                t = max(t, self.free) + self.net.transfer_s(nbytes)
                self.free = t
            t += self.half
            if self.net.jitter_ms:
                t = max(t + self.net.draw_jitter_s(self.rng), arrival)
        if t < self.last:
            t = self.last
        self.last = t
        return t


class Downlink:
    """Writes pieces to the client at their due times, in order; at once when already due."""
    __slots__ = ("writer", "transport", "timers", "q", "task", "trace", "first_out", "error")

    def __init__(self, writer: asyncio.StreamWriter, timers: Timers, trace: list | None):
        self.writer, self.timers = writer, timers
        self.transport = writer.transport
        self.q: deque = deque()
        self.task: asyncio.Task | None = None
        self.trace = trace
        self.first_out: float | None = None
        self.error: BaseException | None = None

    def send(self, data: bytes, due: float, body: bool = True, now: float | None = None) -> None:
        """Deliver data at `due` (perf_counter); `now`, when the caller has it, saves a clock read."""
        if self.error is not None:
            raise self.error
        if not self.q and due <= (now if now is not None else time.perf_counter()):
            self._write(data, body)
            return
        self.q.append((due, data, body))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def _write(self, data: bytes, body: bool) -> None:
        t = self.transport
        if t.is_closing():
            raise ConnectionResetError("the client went away")
        try:
            t.write(data)
        except RuntimeError as e:  # uvloop: the handle is closed
            raise ConnectionResetError(f"the client went away: {e}") from None
        if body and (self.first_out is None or self.trace is not None):
            now = time.perf_counter()
            if self.first_out is None:
                self.first_out = now
            if self.trace is not None:
                self.trace.append(now)

    async def _run(self) -> None:
        try:
            while self.q:
                due, data, body = self.q[0]
                if due > time.perf_counter():
                    await self.timers.sleep_until(due)
                self.q.popleft()
                self._write(data, body)
                if self.writer.transport.get_write_buffer_size() > 65536:
                    await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self.error = e
        finally:
            self.task = None

    async def flush(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)
        if self.error is not None:
            raise self.error
        await self.writer.drain()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.q.clear()


# -- the gateway --------------------------------------------------------------------------------

def call_info(req: dict, headers: dict[str, str]) -> CallInfo:
    """What the policy sees of a call: bench.routing's own reading of a request where it has one
    (call_info_from_request), else `basic_call_info`."""
    if call_info_from_request is not None:
        return call_info_from_request(req, headers)
    return basic_call_info(req, headers)


def basic_call_info(req: dict, headers: dict[str, str]) -> CallInfo:
    """prompt_tokens: the length of a token-id prompt, else None; prompt_text: the string prompt,
    or the messages' text contents joined by newlines; session, call index and complexity from the
    x-tierbench-* headers (session also from X-Session-Id)."""
    prompt = req.get("prompt")
    tokens = None
    text = ""
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
        tokens = len(prompt)
    elif isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        text = "\n".join(prompt)
    msgs = req.get("messages")
    if isinstance(msgs, list):
        parts = []
        for m in msgs:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
        text = "\n".join(parts)
    idx = headers.get("x-tierbench-call-index")
    try:
        call_index = int(idx) if idx is not None else None
    except ValueError:
        call_index = None
    session = headers.get("x-tierbench-session") or headers.get("x-session-id")
    return CallInfo(prompt_tokens=tokens, prompt_text=text, complexity=headers.get("x-tierbench-complexity"),
                    session=session, call_index=call_index, headers=headers)


class Gateway:
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
        _no_delay(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    await self._respond(writer, 431, error_body(431, "request headers too large", "invalid_request_error"),
                                        close=True)
                    return
                received = time.perf_counter()
                first, hs = _parse_head(head)
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
            raise HTTPError(404 if path not in ("/health", "/tiers", "/v1/models") else 405, f"{method} {path}: not found")
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
            info = call_info(req, h)
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
        ours = (b"x-tierbench-tier: " + _header_value(name) + b"\r\nx-tierbench-rtt-ms: %.3f\r\n" % (rtt * 1e3)
                + b"x-tierbench-route-reason: " + _header_value(reason) + b"\r\n")
        try:
            # uplink: the request reaches the engine RTT/2 after it was read
            uplink = Link(rtt / 2, net, jrng)
            head = up.request_head("POST", path, hs, len(body))
            due = uplink.due(received, len(head) + len(body))
            if due > time.perf_counter():
                await self._timers().sleep_until(due)
            conn, status, uhead = await self._send_upstream(up, head, body, rec)
            keep = await self._relay(conn, up, status, uhead, ours, down, Link(rtt / 2, net, jrng), rec, chunks_in,
                                     keep)
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

    async def _send_upstream(self, up: Upstream, head: bytes, body: bytes, rec: dict):
        """Send the request on a pooled connection (a fresh one when a reused one turns out
        closed before any answer); (connection, status, header block)."""
        for attempt in (0, 1):
            conn = up.take_idle() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                try:
                    conn = await up.connect()
                except (OSError, asyncio.TimeoutError) as e:
                    raise HTTPError(502, f"upstream {up.url} unreachable: {type(e).__name__}: {e}",
                                    "upstream_unreachable") from None
            try:
                rec["upstream_sent"] = time.perf_counter()
                conn.write(head + body)
                uhead = await conn.readuntil(b"\r\n\r\n")
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
                conn.close()
                if reused:
                    continue
                raise HTTPError(502, f"upstream {up.url} closed the connection: {type(e).__name__}: {e}",
                                "upstream_unreachable") from None
            except asyncio.LimitOverrunError:
                conn.close()
                raise HTTPError(502, f"upstream {up.url}: response headers too large", "upstream_error") from None
            first = uhead.split(b"\r\n", 1)[0].split(b" ", 2)
            try:
                status = int(first[1])
            except (IndexError, ValueError):
                conn.close()
                raise HTTPError(502, f"upstream {up.url}: malformed status line {first!r}", "upstream_error") from None
            return conn, status, uhead
        raise AssertionError("unreachable")

    async def _relay(self, conn: UpstreamConn, up: Upstream, status: int, uhead: bytes, ours: bytes,
                     down: Downlink, link: Link, rec: dict, chunks_in: list | None, keep: bool) -> bool:
        rec["status"] = status
        _, hs = _parse_head(uhead)
        uh = dict(hs)
        up_keep = b"close" not in uh.get(b"connection", b"").lower()
        chunked = b"chunked" in uh.get(b"transfer-encoding", b"").lower()
        length = uh.get(b"content-length")
        fwd = b"".join(k + b": " + v + b"\r\n" for k, v in hs if k not in HOP)
        status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Upstream").encode())
        tail = b"" if keep else b"connection: close\r\n"
        if status >= 400 or not chunked:
            # not streamed (or an error): read it all, deliver RTT/2 after the answer is complete
            try:
                if chunked:
                    payload = await read_chunked_body(conn, 256 << 20)
                elif length is not None:
                    payload = await conn.readexactly(int(length))
                else:
                    payload = await conn.read()
                    up_keep = False
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                conn.close()
                raise HTTPError(502, f"upstream {up.url} broke off its answer: {type(e).__name__}: {e}",
                                "upstream_error") from None
            arrived = time.perf_counter()
            rec["upstream_first"] = arrived
            if chunks_in is not None:
                chunks_in.append(arrived)
            if up_keep:
                up.give_back(conn)
            else:
                conn.close()
            if status >= 400:
                payload = self._error_payload(status, payload, up)
                fwd = b"".join(k + b": " + v + b"\r\n" for k, v in hs if k not in HOP and k != b"content-type")
                fwd += b"content-type: application/json\r\n"
                rec["error"] = _error_message(payload)
            out = status_line + fwd + ours + b"content-length: %d\r\n" % len(payload) + tail + b"\r\n" + payload
            down.send(out, link.due(arrived, len(out)))
            await down.flush()
            return keep
        # streamed: every piece goes out as it came (its chunked framing included), RTT/2 after
        # its arrival; the connection's protocol hands it over without a task switch
        out = status_line + fwd + ours + b"transfer-encoding: chunked\r\n" + tail + b"\r\n"
        down.send(out, link.due(time.perf_counter(), len(out)), body=False)
        done = asyncio.get_running_loop().create_future()
        end = ChunkedEnd()
        client = down.writer.transport
        upstream = conn.transport

        def resume() -> None:
            async def wait():
                try:
                    await down.writer.drain()
                    upstream.resume_reading()
                except (ConnectionError, OSError, RuntimeError) as e:
                    if not done.done():
                        done.set_exception(e)
            asyncio.get_running_loop().create_task(wait())

        def sink(data: bytes) -> None:
            try:
                if not data:  # upstream's connection ended
                    if not done.done():
                        done.set_result(False)
                    return
                now = time.perf_counter()
                if rec["upstream_first"] is None:
                    rec["upstream_first"] = now
                if chunks_in is not None:
                    chunks_in.append(now)
                stop = end.feed(data)
                if stop is None:
                    down.send(data, link.due(now, len(data)), True, now)
                    if client.get_write_buffer_size() > 1 << 20:  # a slow client: stop reading upstream
                        upstream.pause_reading()
                        resume()
                    return
                conn.sink = None
                if stop < len(data):
                    conn.buf += data[stop:]  # stray bytes: the connection is not reused
                    data = data[:stop]
                down.send(data, link.due(now, len(data)))
                if not done.done():
                    done.set_result(True)
            except BaseException as e:
                conn.sink = None
                if not done.done():
                    done.set_exception(e)

        leftover = bytes(conn.buf)
        conn.buf.clear()
        conn.sink = sink
        if leftover:
            sink(leftover)
        elif conn.closed:
            sink(b"")
        try:
            finished = await done
        except BaseException:
            conn.close()
            raise
        if not finished:
            conn.close()
            rec["error"] = "upstream closed the stream before its end"
            await down.flush()
            return False  # the client sees a truncated chunked body: close its connection
        if up_keep:
            up.give_back(conn)
        else:
            conn.close()
        await down.flush()
        return keep

    def _error_payload(self, status: int, payload: bytes, up: Upstream) -> bytes:
        try:
            obj = orjson.loads(payload)
            if isinstance(obj, dict) and isinstance(obj.get("error"), (dict, str)):
                return payload
        except ValueError:
            obj = None
        detail = obj.get("detail") if isinstance(obj, dict) else None
        message = str(detail) if detail is not None else payload.decode("utf-8", "replace").strip()[:2000]
        return error_body(status, f"upstream {up.url}: HTTP {status}: {message}",
                          "upstream_error" if status >= 500 else "invalid_request_error")


def _error_message(payload: bytes) -> str:
    try:
        e = orjson.loads(payload)["error"]
        return str(e.get("message") if isinstance(e, dict) else e)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return payload[:300].decode("utf-8", "replace")


# -- process entry point ------------------------------------------------------------------------

async def serve(gw: Gateway, host: str, port: int, ready: asyncio.Event | None = None) -> None:
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


def _run(coro) -> None:
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="gateway config JSON (tiers, routing, seed)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--log", default=None, help="append one JSON line per call here")
    ap.add_argument("--trace-chunks", action="store_true", help="log every piece's arrival and delivery time")
    a = ap.parse_args(argv)
    try:
        cfg = json.loads(Path(a.config).read_text())
        tiers, routing, seed = load_config(cfg)
        policy = build_policy(routing, tiers)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"bench.gateway: error: {a.config}: {e}", file=sys.stderr)
        return 2
    gw = Gateway(tiers, policy, seed, a.log, a.trace_chunks, gateway_config(tiers, routing, seed))
    try:
        _run(serve(gw, a.host, a.port))
    except KeyboardInterrupt:
        pass
    return 0


class GatewayProcess:
    """The gateway in its own process. Use as a context manager (stopped on every exit path):

        with GatewayProcess(gateway_config(tiers, {"policy": "fixed", "tier": "edge"}), run_dir) as gw:
            ... gw.base_url ...

    config: a config dict (or Tier list). Its stdout/stderr go to log_dir/<name>.log, the config to
    log_dir/<name>.config.json, and the per-call log to `call_log` (default log_dir/<name>.calls.jsonl;
    False: none). start() waits until /health answers 200 (every upstream up), or, with
    wait_upstreams=False, until the gateway itself answers."""

    def __init__(self, config: dict | list, log_dir: Path, name: str = "gateway", host: str = "127.0.0.1",
                 call_log: Path | bool | None = None, trace_chunks: bool = False, startup_timeout_s: float = 60.0,
                 wait_upstreams: bool = True):
        if isinstance(config, list):
            config = gateway_config(config)
        tiers, routing, _ = load_config(config)  # fail here on a bad config, not in the child
        build_policy(routing, tiers)
        self.config = config
        self.name, self.host = name, host
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{name}.log"
        self.config_path = self.log_dir / f"{name}.config.json"
        self.call_log = None if call_log is False else Path(call_log or self.log_dir / f"{name}.calls.jsonl")
        self.trace_chunks = trace_chunks
        self.startup_timeout_s = startup_timeout_s
        self.wait_upstreams = wait_upstreams
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.base_url = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "bench.gateway", "--config", str(self.config_path), "--host", self.host,
               "--port", str(self.port)]
        if self.call_log is not None:
            cmd += ["--log", str(self.call_log)]
        if self.trace_chunks:
            cmd.append("--trace-chunks")
        return cmd

    def start(self) -> "GatewayProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")
        self.port = free_port(self.host)
        self.base_url = f"http://{self.host}:{self.port}"
        log = open(self.log_path, "ab")
        repo = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([repo] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=repo, start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        try:
            self.wait_healthy(self.startup_timeout_s, self.wait_upstreams)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout_s: float, upstreams: bool = True) -> None:
        # /health asks every upstream too; /tiers answers as soon as the gateway itself listens
        wait_http_ok(self.base_url + ("/health" if upstreams else "/tiers"), timeout_s, self.proc, "the tier gateway",
                     self.log_path, self.log_tail, poll_s=0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_group(self.proc, ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)))

    def calls(self) -> list[dict]:
        """The per-call log's records so far."""
        if self.call_log is None or not self.call_log.exists():
            return []
        with open(self.call_log, "rb") as f:
            return [orjson.loads(line) for line in f if line.endswith(b"\n")]

    def log_tail(self, n: int = 20) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
