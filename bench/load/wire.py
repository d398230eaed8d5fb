"""HTTP/1.1 on one socket: just what the streaming client needs, with every read timestamped.

When did a chunk arrive? A client that asks the clock after it got round to reading and parsing
the bytes adds its own delays to every TTFT and ITL: gevent running 64 streams' greenlets one
after another, the GIL shared with locust's own work, the operating system running another
process on the core. On Linux the kernel stamps each packet as it arrives (SO_TIMESTAMPNS) and
recvmsg hands back the stamp of the last packet it read: a chunk's time is that stamp, not when
this process got to it (`tierbench calibrate` measures the difference). Elsewhere, over TLS, or
with TIERBENCH_KERNEL_STAMPS=0, it is time.perf_counter() as the read returns, before any
parsing.

http.client reads a streamed body through layers of Python buffering (a readline per SSE line,
the chunked framing decoded through peek and read); here the chunked framing is cut out of one
buffer with bytes.find. Every read waits at most until a deadline the caller gives (a callable
for the body, so the client can move from a time-to-first-token limit to a stall limit once
tokens flow), and the connection counts the bytes of the current response, so the client can
tell a connection that died before answering from one that broke mid-answer.

Under locust, gevent's monkey-patching makes the socket cooperative; the open-loop scheduler uses
it from threads.
"""
from __future__ import annotations

import os
import platform
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

RECV_BYTES = 65536
# SO_TIMESTAMPNS: the kernel stamps each received packet (CLOCK_REALTIME, struct timespec) and
# recvmsg hands the stamp of the last packet read back. Python does not export the constant; 35
# is its value on Linux's generic ABI (x86-64, arm64).
SO_TIMESTAMPNS = 35
KERNEL_STAMPS = (sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
                 and os.environ.get("TIERBENCH_KERNEL_STAMPS", "1") != "0")
TIMESPEC = struct.Struct("@ll")
MAX_HEAD = 65536  # a response head longer than this is not HTTP we can use
MAX_LINE = 4096  # a chunk-size line


def enable_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp the packets sock receives (read them with recvmsg); False where it cannot."""
    if not KERNEL_STAMPS:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def arrival(ancdata, now: float) -> float:
    """When the bytes of a recvmsg arrived, on the perf_counter clock: the kernel's stamp of the
    last packet read (wall clock, moved to perf_counter with the offset read now), or `now` (the
    read's return) without one, or when a wall-clock step makes the stamp implausible."""
    for level, kind, data in ancdata or ():
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            stamp = sec + nsec * 1e-9 - (time.time() - now)
            if now - 60.0 < stamp <= now:
                return stamp
    return now


class Closed(Exception):
    """The server closed (eof) or reset the connection."""

    def __init__(self, message: str, eof: bool = False):
        super().__init__(message)
        self.eof = eof


class TimedOut(Exception):
    """A connect, send or read passed its deadline."""


class BadResponse(Exception):
    """Bytes that are not an HTTP/1.x response."""


@dataclass
class Head:
    """A response's status line and headers (names in lower case; a repeated header keeps its last value)."""
    status: int
    reason: str
    headers: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


class Connection:
    """One keep-alive connection: its socket, its read buffer, and when the last read returned."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.stamps = not isinstance(sock, ssl.SSLSocket) and enable_stamps(sock)  # recvmsg, not recv
        self.buf = bytearray()
        self.t = 0.0  # when the bytes of the last read arrived (kernel stamp), else when the read returned
        self.received = 0  # bytes of the current response so far
        self.responses = 0  # complete responses read on this connection
        self.reusable = False  # the last response ended cleanly and the server keeps the connection

    @classmethod
    def open(cls, host: str, port: int, tls: bool, deadline: float) -> Connection:
        """Connect (and, for https, shake hands) by the deadline: TimedOut after it, OSError when refused."""
        timeout = deadline - time.perf_counter()
        if timeout <= 0:
            raise TimedOut
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it now
            if tls:
                sock.settimeout(max(1e-3, deadline - time.perf_counter()))
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except (TimeoutError, socket.timeout):
            raise TimedOut from None
        return cls(sock)

    def idle_closed(self) -> bool:
        """An idle keep-alive connection that is readable has been closed by the server (uvicorn
        closes after 5 s idle; nginx, hosted APIs likewise): do not send on it."""
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes, deadline: float) -> None:
        self.received = 0
        self.reusable = False
        self.sock.settimeout(max(1e-3, deadline - time.perf_counter()))
        try:
            self.sock.sendall(data)
        except (TimeoutError, socket.timeout):
            raise TimedOut from None
        except OSError as e:  # reset, broken pipe
            raise Closed(f"{type(e).__name__}: {e}") from None

    def _read(self, deadline: float) -> None:
        """One recv into the buffer, waiting until the deadline at most; self.t is when it returned."""
        timeout = deadline - time.perf_counter()
        if timeout <= 0:
            raise TimedOut
        self.sock.settimeout(timeout)
        try:
            if self.stamps:
                data, anc, _, _ = self.sock.recvmsg(RECV_BYTES, 64)
            else:
                data, anc = self.sock.recv(RECV_BYTES), None
        except (TimeoutError, socket.timeout):
            raise TimedOut from None
        except OSError as e:
            raise Closed(f"{type(e).__name__}: {e}") from None
        self.t = arrival(anc, time.perf_counter())
        if not data:
            raise Closed("the server closed the connection", eof=True)
        self.buf += data
        self.received += len(data)

    def head(self, deadline: float) -> Head:
        """The response's status line and headers (an interim 1xx is skipped)."""
        buf = self.buf
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) >= 5 and not buf.startswith(b"HTTP/"):
                    raise BadResponse(f"not an HTTP response: {bytes(buf[:60])!r}")
                if len(buf) > MAX_HEAD:
                    raise BadResponse(f"a response head over {MAX_HEAD} bytes")
                self._read(deadline)
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
                raise BadResponse(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if not 100 <= int(code) < 200:
                return Head(int(code), reason, headers)

    def body(self, head: Head, deadline: Callable[[], float]) -> Iterator[bytes]:
        """The decoded body, piece by piece as it arrives (self.t: when the read that completed the
        piece returned). Chunked, Content-Length, or until the server closes. Afterwards
        self.reusable says whether the connection can carry another request."""
        if "chunked" in head.get("transfer-encoding").lower():
            yield from self._chunked(deadline)
        elif head.get("content-length"):
            try:
                size = int(head.get("content-length"))
            except ValueError:
                raise BadResponse(f"bad Content-Length {head.get('content-length')[:40]!r}") from None
            yield from self._sized(size, deadline)
        else:
            yield from self._until_close(deadline)
            return
        self.reusable = "close" not in head.get("connection").lower()
        self.responses += 1

    def _chunked(self, deadline: Callable[[], float]) -> Iterator[bytes]:
        buf = self.buf
        while True:
            while (i := buf.find(b"\r\n")) < 0:
                if len(buf) > MAX_LINE:
                    raise BadResponse(f"a chunk-size line over {MAX_LINE} bytes")
                self._read(deadline())
            try:
                size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
            except ValueError:
                raise BadResponse(f"bad chunk-size line {bytes(buf[:i][:40])!r}") from None
            if size == 0:  # the last chunk: trailers (if any), then an empty line
                del buf[:i + 2]
                while True:
                    while (i := buf.find(b"\r\n")) < 0:
                        self._read(deadline())
                    del buf[:i + 2]
                    if i == 0:
                        return
            end = i + 2 + size
            while len(buf) < end + 2:
                self._read(deadline())
            if buf[end:end + 2] != b"\r\n":
                raise BadResponse("a chunk not followed by CRLF")
            piece = bytes(buf[i + 2:end])
            del buf[:end + 2]
            yield piece

    def _sized(self, size: int, deadline: Callable[[], float]) -> Iterator[bytes]:
        buf = self.buf
        while size > 0:
            if not buf:
                self._read(deadline())
            piece = bytes(buf[:size])
            del buf[:len(piece)]
            size -= len(piece)
            yield piece

    def _until_close(self, deadline: Callable[[], float]) -> Iterator[bytes]:
        buf = self.buf
        while True:
            if buf:
                piece = bytes(buf)
                buf.clear()
                yield piece
            try:
                self._read(deadline())
            except Closed as e:
                if e.eof:  # the end of a body without framing
                    return
                raise
