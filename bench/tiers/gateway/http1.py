"""HTTP/1.1 on the wire, the little the gateway needs: header blocks, chunked framing, error bodies.
Bytes are forwarded as they are read; only the chunked framing is tracked, to find a body's end."""
from __future__ import annotations

import asyncio
import socket

import orjson

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade",
       b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"host", b"expect"}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
HEAD_LIMIT = 1 << 20  # the longest header block (and upstream line) read


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


def parse_head(head: bytes) -> tuple[str, list[tuple[bytes, bytes]]]:
    """(first line, [(lowercased name, value)]) of a header block ending in CRLFCRLF."""
    lines = head[:-4].split(b"\r\n")
    out = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return lines[0].decode("latin-1"), out


def header_value(s: str) -> bytes:
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


def no_delay(sock) -> None:
    """Streams are many small writes: send each at once instead of waiting to coalesce (Nagle)."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
