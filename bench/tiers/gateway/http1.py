"""HTTP/1.1 on the wire, parsed by llhttp (httptools, the parser uvicorn uses), the little the
gateway needs: a client connection's requests (RequestParser), the limits it enforces, chunked
framing of what goes out, error bodies. Upstream answers are parsed in upstream.py.

What the parser rejects gets a 400 and a closed connection: a malformed request line, header or
chunk size, both Content-Length and Transfer-Encoding (request smuggling), a Transfer-Encoding
other than chunked last, more than MAX_HEADERS header fields or a head over HEAD_LIMIT bytes, a
protocol upgrade. A body over the gateway's limit gets 413 (at once when Content-Length says so).
"""
from __future__ import annotations

import socket
import time
from collections import deque

import httptools
import orjson

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade",
       b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"host", b"expect"}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
HEAD_LIMIT = 64 << 10  # the longest request head (request line and header fields), bytes
MAX_HEADERS = 100  # header fields per request at most
MAX_BODY = 4 << 20  # the default request body limit: see proxy.py


class HTTPError(Exception):
    """A request answered with an error status; `kind` is the OpenAI error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> bytes:
    """An OpenAI-style error body: {"error": {"message", "type", "code"}}."""
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def error_message(payload: bytes) -> str:
    """The message of an error body (for the call log), at most 300 characters."""
    try:
        e = orjson.loads(payload)["error"]
        return str(e.get("message") if isinstance(e, dict) else e)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return payload[:300].decode("utf-8", "replace")


def header_value(s: str) -> bytes:
    """A string safe as a header value (latin-1, no CR/LF)."""
    return s.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def frame(pieces: list[bytes]) -> bytes:
    """Body pieces as HTTP/1.1 chunks (empty pieces left out: an empty chunk ends a body)."""
    if len(pieces) == 1:  # the common case, per piece of a stream: keep it short
        p = pieces[0]
        return b"%x\r\n%s\r\n" % (len(p), p) if p else b""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)


LAST_CHUNK = b"0\r\n\r\n"


class Request:
    """One parsed request: `headers` as received (lowercased names, bytes), `h` the same as a
    str dict (the last of a repeated field), `received` when its last byte was read (perf_counter)."""
    __slots__ = ("method", "target", "headers", "h", "body", "keep_alive", "received")

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]], h: dict[str, str],
                 body: bytes, keep_alive: bool, received: float):
        self.method, self.target, self.headers, self.h = method, target, headers, h
        self.body, self.keep_alive, self.received = body, keep_alive, received

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class RequestParser:
    """A client connection's bytes through llhttp: completed requests queue up in `ready` (a
    pipelined one too); a malformed one sets `error` (an HTTPError), after which nothing more is
    parsed. `pending`: a request has begun and is not complete (`in_head`: nor is its head);
    `continue_due`: the client waits for `100 Continue` before sending the body."""

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        self.error: HTTPError | None = None
        self.pending = False
        self.in_head = False
        self.head_bytes = 0
        self.continue_due = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._h: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self._keep = True

    def close(self) -> None:
        """The connection is done: drop the parser (it refers back to us: no cycle to collect)."""
        self.parser = None
        self.ready.clear()

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            self.error = ctx if isinstance(ctx, HTTPError) else HTTPError(400, f"malformed request: {ctx or e}")
        except httptools.HttpParserUpgrade:
            self.error = HTTPError(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            self.error = HTTPError(400, f"malformed request: {e}")
        else:
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > HEAD_LIMIT:
                    self.error = HTTPError(400, f"request head over {HEAD_LIMIT} bytes")

    # -- llhttp's callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.pending, self.in_head, self.head_bytes = True, True, 0
        self._url, self._headers, self._body, self._size, self._head_size = [], [], [], 0, 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS:
            raise HTTPError(400, f"more than {MAX_HEADERS} header fields")
        self._head_size += len(name) + len(value) + 4
        if self._head_size > HEAD_LIMIT:
            raise HTTPError(400, f"request head over {HEAD_LIMIT} bytes")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.parser.should_upgrade():
            raise HTTPError(400, "protocol upgrades are not supported")
        self._h = h = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._headers}
        self._keep = self.parser.should_keep_alive()
        length = h.get("content-length")
        if length is not None and int(length) > self.max_body:  # llhttp checked it is a number
            raise HTTPError(413, f"request body of {int(length)} bytes over the limit of {self.max_body}")
        if h.get("expect", "").lower() == "100-continue":
            self.continue_due = True

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_body:
            raise HTTPError(413, f"request body over the limit of {self.max_body} bytes")
        self._body.append(data)

    def on_message_complete(self) -> None:
        self.pending = self.continue_due = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self.ready.append(Request(self.parser.get_method().decode("ascii"), b"".join(self._url).decode("latin-1"),
                                  self._headers, self._h, body, self._keep, time.perf_counter()))


def no_delay(sock) -> None:
    """Streams are many small writes: send each at once instead of waiting to coalesce (Nagle)."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
