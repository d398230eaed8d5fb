"""The gateway's upstream side: one engine's base URL and a pool of keep-alive connections to it."""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from bench.tiers.gateway.http1 import HEAD_LIMIT, HOP, no_delay, parse_head, read_chunked_body

CONNECT_TIMEOUT_S = 10.0
IDLE_POOL = 512  # idle connections kept per upstream


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
        no_delay(transport.get_extra_info("socket"))

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
                first, hs = parse_head(head)
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
