"""The one streaming HTTP client of every load generator.

It timestamps the send, every SSE chunk and the end with one monotonic clock (time.perf_counter;
a chunk's time is when the read that brought it returned, taken before any parsing: see
bench/load/wire.py), reads usage (prompt, completion and cached tokens) from the usage chunk, and
turns every failure into a recorded error with a reason instead of an exception, so a run never
stops for one bad request:

- `timeout:connect`, `timeout:ttft`, `timeout:stall`, `timeout:total`: ClientConfig's limits on
  connecting, the first token (from the send), the gap between reads once tokens flow, the call;
- `connect` (refused, unreachable), `reset` (closed or reset by the server while answering);
- `http:<code>`; `rejected:<code>` for 429, and 503 with Retry-After (load shedding: resent after
  the delay when ClientConfig.retry_rejected allows);
- `stream-error` (the server sent an error event), `malformed` (not HTTP, not SSE, not JSON, or
  not OpenAI's shape: the message says what), `client` (a bug here: one call fails, not the run).

A keep-alive connection the server closed while idle (uvicorn after 5 s, nginx, hosted APIs) is
not sent on: it is checked before reuse, and a request whose reused connection turns out to be
dead before any byte of the answer arrived (reset, broken pipe, EOF: the server closed it as the
request crossed) is resent once on a fresh connection. That is the server's normal behaviour, not
a failed call: it is counted in Record.retries, and `sent` stays the first attempt's time, so the
latency includes it. A call that fails after the server began answering is never resent.

Plain blocking sockets: under locust, gevent makes them cooperative; the open-loop scheduler runs
the client on threads.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from urllib.parse import urlsplit

import orjson

from bench.load import wire


@dataclass
class Record:
    """One call as the client saw it. Times are perf_counter seconds; analysis subtracts them."""
    request_id: str
    session: str = ""
    call_index: int = 0
    intended: float | None = None  # when the schedule wanted it sent (open loop), or the think end
    sent: float = 0.0  # the first attempt's send
    first_token: float | None = None  # first chunk with choices (vLLM's TTFT)
    last_token: float | None = None  # last chunk with choices; for a failed call, when it failed
    chunk_times: list[float] = field(default_factory=list)  # every chunk with choices, in order
    prompt_tokens: int | None = None  # as the server reports them
    output_tokens: int | None = None
    cached_tokens: int | None = None
    expected_prompt_tokens: int = 0  # what we sent / asked for
    expected_output_tokens: int = 0
    status: str = "ok"  # ok | error
    http_status: int | None = None
    error: str | None = None
    error_reason: str | None = None  # the failure's class (module docstring), None when ok
    retries: int = 0  # resends: on a fresh connection after a dead keep-alive one, or after a rejection
    finish_reason: str | None = None
    text: str = ""  # the response text (kept for text traces; empty for token-id prompts)
    warmup: bool = False  # sent during warm-up: recorded, excluded from measurement
    # set by a tier gateway (bench/tiers/gateway/) in its response headers
    routed_tier: str | None = None  # the tier the routing policy picked
    network_s: float | None = None  # the round trip it injected (uplink + downlink)
    route_reason: str | None = None


@dataclass
class ClientConfig:
    """The client's time-outs (seconds; 0 turns a limit off) and retries: LoadSpec's fields of the
    same names, `tierbench run --timeout --connect-timeout --ttft-timeout --stall-timeout
    --retry-rejected`."""
    timeout_s: float = 600.0  # the whole call, from its send to its last byte
    connect_timeout_s: float = 30.0  # TCP connect and TLS handshake
    ttft_timeout_s: float = 0.0  # from the send to the first token
    stall_timeout_s: float = 0.0  # the longest gap between reads once tokens flow
    retry_rejected: int = 0  # resends of a call rejected with Retry-After (429, 503), after the delay

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"{f.name}: expected a number >= 0, got {v!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s!r}")
        if not float(self.retry_rejected).is_integer():
            raise ValueError(f"retry_rejected: expected a whole number, got {self.retry_rejected!r}")
        self.retry_rejected = int(self.retry_rejected)

    @classmethod
    def of(cls, obj) -> ClientConfig:
        """From anything with these attributes (a LoadSpec) or keys (a dict)."""
        get = obj.get if isinstance(obj, dict) else (lambda k, d: getattr(obj, k, d))
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})

    def to_dict(self) -> dict:
        return asdict(self)


class Failed(Exception):
    """A call's failure: its reason (module docstring) and a message for the record."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Call:
    """One call's clock: its deadlines and which one a time-out was."""
    __slots__ = ("rec", "cfg", "total", "ttft", "kind", "done", "done_t")

    def __init__(self, rec: Record, cfg: ClientConfig):
        self.rec, self.cfg = rec, cfg
        self.total = rec.sent + cfg.timeout_s
        self.ttft = rec.sent + cfg.ttft_timeout_s if cfg.ttft_timeout_s else math.inf
        self.kind = "timeout:total"
        self.done = False  # data: [DONE] seen
        self.done_t = 0.0

    def deadline(self, last_read: float = 0.0) -> float:
        """The nearest limit now; `kind` names it for the time-out it may become."""
        cfg = self.cfg
        limit, self.kind = self.total, "timeout:total"
        if self.done:  # only the body's end is left: never wait long for it
            return min(limit, self.done_t + 1.0)
        if self.rec.first_token is None:
            if self.ttft < limit:
                limit, self.kind = self.ttft, "timeout:ttft"
        elif cfg.stall_timeout_s and last_read + cfg.stall_timeout_s < limit:
            limit, self.kind = last_read + cfg.stall_timeout_s, "timeout:stall"
        return limit

    def timeout(self) -> Failed:
        limit = {"timeout:ttft": self.cfg.ttft_timeout_s, "timeout:stall": self.cfg.stall_timeout_s,
                 "timeout:connect": self.cfg.connect_timeout_s}.get(self.kind, self.cfg.timeout_s)
        what = {"timeout:ttft": "no first token", "timeout:stall": "no byte of the stream",
                "timeout:connect": "no connection"}.get(self.kind, "the call not finished")
        return Failed(self.kind, f"timeout: {what} within {limit:g} s")


class StreamingClient:
    """One keep-alive connection to an OpenAI-compatible server (one per user or worker)."""

    def __init__(self, base_url: str, api_key: str | None = None, config: ClientConfig | None = None,
                 keep_text: bool = False):
        u = urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.tls else 80)
        self.prefix = u.path  # e.g. "" or "/v1"-less proxies mounted under a path
        self.config = config or ClientConfig()
        self.keep_text = keep_text
        host = self.host if u.port is None else f"{self.host}:{self.port}"
        self._head = (f"Host: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
                      + (f"Authorization: Bearer {api_key}\r\n" if api_key else ""))
        self._conn: wire.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stream(self, path: str, payload: dict, rec: Record, extra_headers: dict | None = None) -> Record:
        """POST payload (stream=True is forced) and fill rec as chunks arrive."""
        body = orjson.dumps({**payload, "stream": True, "stream_options": {"include_usage": True}})
        extra = "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())
        rec.sent = time.perf_counter()
        call = _Call(rec, self.config)
        try:
            request = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}{extra}Content-Length: {len(body)}\r\n\r\n"
                       ).encode("latin-1") + body
            conn, head = self._send(request, call)
            text = self._read_stream(conn, head, call)
        except wire.TimedOut:
            return self._fail(rec, call.timeout())
        except wire.Closed as e:
            return self._fail(rec, Failed("reset", f"disconnected: {e}"))
        except wire.BadResponse as e:
            return self._fail(rec, Failed("malformed", f"malformed response: {e}"))
        except Failed as e:
            return self._fail(rec, e)
        except Exception as e:  # noqa: BLE001 - a bug here fails one call, never the run
            return self._fail(rec, Failed("client", f"client error: {type(e).__name__}: {e}"))
        rec.text = text
        return rec

    # -- the exchange ------------------------------------------------------------------------

    def _connection(self, call: _Call) -> tuple[wire.Connection, bool]:
        """The kept connection if the server has not closed it, else a new one; and whether it was kept."""
        conn = self._conn
        if conn is not None and conn.reusable and not conn.idle_closed():
            return conn, True
        self.close()
        now = time.perf_counter()
        deadline = min(call.total, now + self.config.connect_timeout_s) if self.config.connect_timeout_s else call.total
        call.kind = "timeout:connect" if deadline < call.total else "timeout:total"
        try:
            self._conn = wire.Connection.open(self.host, self.port, self.tls, deadline)
        except wire.TimedOut:
            raise call.timeout() from None
        except OSError as e:
            raise Failed("connect", f"cannot connect to {self.host}:{self.port}: {type(e).__name__}: {e}") from None
        return self._conn, False

    def _send(self, request: bytes, call: _Call) -> tuple[wire.Connection, wire.Head]:
        """Send and read the response head: resent once on a fresh connection when a kept one
        proves dead before answering, and after a rejection's Retry-After when the config allows."""
        rec, rejections, redialled = call.rec, 0, False
        while True:
            conn, kept = self._connection(call)
            try:
                conn.send(request, call.deadline())
                head = conn.head(call.deadline())
            except wire.Closed:
                self.close()
                if kept and conn.received == 0 and not redialled:
                    redialled = True
                    rec.retries += 1
                    continue
                raise
            rec.http_status = head.status
            tier = head.headers.get("x-tierbench-tier")
            if tier is not None:
                rec.routed_tier = tier
                rec.route_reason = head.headers.get("x-tierbench-route-reason")
                rtt = head.headers.get("x-tierbench-rtt-ms")
                rec.network_s = float(rtt) / 1000.0 if rtt else None
            if head.status == 200:
                return conn, head
            detail = self._error_body(conn, head, call)
            self.close()
            wait = _retry_after(head.get("retry-after"))
            rejected = head.status == 429 or (head.status == 503 and wait is not None)
            if (rejected and wait is not None and rejections < self.config.retry_rejected
                    and time.perf_counter() + wait < call.total):
                rejections += 1
                rec.retries += 1
                time.sleep(wait)
                continue
            after = f" (Retry-After {wait:g} s)" if wait is not None else ""
            raise Failed(f"rejected:{head.status}" if rejected else f"http:{head.status}",
                         f"HTTP {head.status}: {_error_message(detail)}{after}")

    def _error_body(self, conn: wire.Connection, head: wire.Head, call: _Call, limit: int = 2000) -> str:
        """Up to `limit` bytes of an error response's body, waiting a second at most."""
        out = b""
        deadline = min(call.total, time.perf_counter() + 1.0)
        try:
            for piece in conn.body(head, lambda: deadline):
                out += piece
                if len(out) >= limit:
                    break
        except (wire.TimedOut, wire.Closed, wire.BadResponse):
            pass
        return out[:limit].decode("utf-8", "replace")

    def _read_stream(self, conn: wire.Connection, head: wire.Head, call: _Call) -> str:
        """Read the SSE stream (or a whole JSON completion, from a server that ignores stream=True)
        into call.rec; the response text when keep_text."""
        rec = call.rec
        sse = "text/event-stream" in head.get("content-type")
        parts: list[str] = []
        pending = b""
        data: list[bytes] = []
        try:
            for piece in conn.body(head, lambda: call.deadline(conn.t)):
                pending = pending + piece if pending else piece
                if not sse:
                    continue
                start = 0
                while (j := pending.find(b"\n", start)) >= 0:
                    line = pending[start:j]
                    start = j + 1
                    if line[-1:] == b"\r":
                        line = line[:-1]
                    if not line:  # an event ends at an empty line
                        if data:
                            self._event(data[0] if len(data) == 1 else b"\n".join(data), conn.t, call, parts)
                            data = []
                    elif line[:5] == b"data:":
                        data.append(line[6:] if line[5:6] == b" " else line[5:])
                    # comments (':...') and the event/id/retry fields carry nothing used here
                pending = pending[start:]
        except (wire.TimedOut, wire.Closed):
            if not call.done:
                raise
            conn.reusable = False  # [DONE] came, the body's end did not: the call is whole, the connection is not
        if sse and data:  # a last event without its empty line
            self._event(b"\n".join(data), conn.t, call, parts)
        if not sse:
            if "json" not in head.get("content-type"):
                raise Failed("malformed", f"expected an event stream, got Content-Type {head.get('content-type')!r}")
            self._event(pending, conn.t, call, parts)
            call.done = True
        if not conn.reusable:
            self.close()
        if not call.done:
            framed = "chunked" in head.get("transfer-encoding").lower() or head.get("content-length")
            raise Failed("malformed" if framed else "reset", "the stream ended before data: [DONE]")
        if rec.first_token is None:
            raise Failed("malformed", "no token: no event of the stream had choices")
        return "".join(parts)

    def _event(self, data: bytes, t: float, call: _Call, parts: list[str]) -> None:
        """One SSE event's data, received at t."""
        if call.done:
            return
        if data == b"[DONE]":
            call.done, call.done_t = True, t
            return
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise Failed("malformed", f"malformed stream: an event is not JSON ({e}): {data[:80]!r}") from None
        if type(ev) is not dict:
            raise Failed("malformed", f"malformed stream: an event is not a JSON object: {data[:80]!r}")
        choices = ev.get("choices")
        if choices:
            if type(choices) is not list or type(choices[0]) is not dict:
                raise Failed("malformed", f"malformed stream: 'choices' is not a list of objects: {data[:80]!r}")
            rec = call.rec
            # As vLLM's benchmark client: every chunk with choices is timed, even when its text
            # is empty (a special token, or bytes of a partial character).
            if rec.first_token is None:
                rec.first_token = t
            rec.chunk_times.append(t)
            rec.last_token = t
            c0 = choices[0]
            if self.keep_text:
                piece = c0.get("text")
                if piece is None:
                    piece = (c0.get("delta") or {}).get("content")
                if isinstance(piece, str):
                    parts.append(piece)
            if c0.get("finish_reason"):
                rec.finish_reason = str(c0["finish_reason"])
        elif "error" in ev or ev.get("object") == "error":
            raise Failed("stream-error", f"stream error: {_error_message(data.decode('utf-8', 'replace'))}")
        elif choices is None and ev.get("usage") is None:
            raise Failed("malformed", f"malformed stream: an event with neither 'choices' nor 'usage': {data[:80]!r}")
        u = ev.get("usage")
        if u:
            _usage(u, call.rec)

    def _fail(self, rec: Record, failure: Failed) -> Record:
        rec.status = "error"
        rec.error_reason = failure.reason
        rec.error = str(failure)
        rec.last_token = time.perf_counter()  # when it failed (its chunks keep their own times)
        self.close()  # the connection's state is unknown after an error: start clean
        return rec


def _usage(u, rec: Record) -> None:
    if type(u) is not dict:
        raise Failed("malformed", f"malformed stream: 'usage' is not an object: {u!r:.80}")
    details = u.get("prompt_tokens_details") or {}
    values = (u.get("prompt_tokens"), u.get("completion_tokens"),
              details.get("cached_tokens") if type(details) is dict else None)
    for name, v in zip(("prompt_tokens", "completion_tokens", "cached_tokens"), values):
        if v is not None and (type(v) is not int or v < 0):
            raise Failed("malformed", f"malformed stream: usage {name} is not a count: {v!r:.40}")
    rec.prompt_tokens, rec.output_tokens, rec.cached_tokens = values


def _retry_after(value: str) -> float | None:
    """Retry-After in seconds (an HTTP date is not worth the parse: treated as absent)."""
    try:
        wait = float(value)
    except ValueError:
        return None
    return wait if 0 <= wait < math.inf else None


def _error_message(body: str) -> str:
    try:
        err = orjson.loads(body)
        msg = err["error"]["message"] if isinstance(err.get("error"), dict) else err.get("message") or err["error"]
        return str(msg)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body.strip().replace("\n", " ")[:300]
