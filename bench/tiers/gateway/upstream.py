"""The gateway's upstream side: one engine's base URL, a pool of keep-alive connections to it, and
each connection's answers parsed by llhttp (httptools)."""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

from bench.tiers.gateway.http1 import HOP, no_delay

CONNECT_TIMEOUT_S = 10.0
IDLE_POOL = 512  # idle connections kept per upstream
WHOLE_LIMIT = 256 << 20  # the largest answer read whole (non-streamed, or an error)


class UpstreamError(Exception):
    """The upstream connection broke, or its answer is malformed."""


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to an upstream and the answer to the request last sent on it.
    `head()` waits for the status and header fields; then either `whole()` waits for the whole
    body, or `stream(sink)` hands every read's body pieces to the sink as they arrive, with no task
    switch in between: sink(pieces, complete), and sink(None, False) when the connection ends first."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.failure: str | None = None
        self.waiter: asyncio.Future | None = None
        self.sink = None
        self.begin()

    def begin(self) -> None:
        """Forget the last answer: a new request is about to go out."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.pieces: list[bytes] = []
        self.size = 0
        self.framed = False  # chunked or Content-Length: the body's end is known without the connection's

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        no_delay(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(f"malformed answer: {e.__context__ or e}")
            return
        if self.sink is not None:
            if self.pieces or self.complete:
                pieces, self.pieces = self.pieces, []
                self.sink(pieces, self.complete)
        else:
            self._wake()

    def eof_received(self):
        self._lost()
        return False

    def connection_lost(self, exc) -> None:
        self._lost()
        self.parser = None  # it refers back to us: no cycle left for the collector

    # -- llhttp's callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise UpstreamError("bytes after the answer's end")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers = []
            return
        self.head_done = True
        self.framed = self.status in (204, 304) or any(k in (b"content-length", b"transfer-encoding")
                                                       for k, _ in self.headers)

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.sink is None and self.size > WHOLE_LIMIT:
            raise UpstreamError(f"answer over {WHOLE_LIMIT} bytes")
        self.pieces.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # -- reading ------------------------------------------------------------------------------------
    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.head_done and not self.framed and not self.complete:
            self.complete = True  # a body without framing ends with the connection
        self._wake()
        if self.sink is not None:
            pieces, self.pieces = self.pieces, []
            self.sink(pieces if self.complete else None, self.complete)

    def _fail(self, why: str) -> None:
        self.failure = self.failure or why
        self.close()
        self._wake()
        if self.sink is not None:
            self.sink(None, False)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _until(self, done) -> None:
        while not done():
            if self.failure is not None:
                raise UpstreamError(self.failure)
            if self.closed:
                raise UpstreamError("the connection closed")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def head(self) -> None:
        """Wait for the answer's status and header fields (UpstreamError when it breaks off)."""
        await self._until(lambda: self.head_done)

    async def whole(self) -> bytes:
        """The whole body (UpstreamError when it breaks off)."""
        await self._until(lambda: self.complete)
        pieces, self.pieces = self.pieces, []
        return b"".join(pieces)

    def stream(self, sink) -> None:
        """From now on every read's body pieces go to `sink` (what already came first)."""
        self.sink = sink
        if self.pieces or self.complete:
            pieces, self.pieces = self.pieces, []
            sink(pieces, self.complete)
        elif self.closed:
            sink(None, False)

    def header(self, name: bytes) -> bytes:
        return next((v for k, v in reversed(self.headers) if k == name), b"")

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def reusable(self) -> bool:
        """The answer ended cleanly and upstream keeps the connection."""
        return (self.complete and self.framed and not self.closed and self.failure is None
                and b"close" not in self.header(b"connection").lower())

    def usable(self) -> bool:
        return not self.closed and self.sink is None and not self.transport.is_closing()

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
                conn.begin()
                return conn
            conn.close()
        return None

    def give_back(self, conn: UpstreamConn) -> None:
        """Back to the pool when its answer ended cleanly and upstream keeps it open, else closed."""
        conn.sink = None
        if len(self.idle) < IDLE_POOL and conn.reusable() and conn.usable():
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
                await conn.head()
                return conn.status, await conn.whole()
            finally:
                conn.close()
        return await asyncio.wait_for(go(), timeout_s)
