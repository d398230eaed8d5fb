"""The tier gateway's HTTP/1.1 (llhttp through httptools) against abuse, over raw sockets to the
real gateway process in front of the instant server: every malformed request gets 400 and a closed
connection, a body over the limit 413, pipelined requests their answers in order, and 1,000 idle
connections do not slow a concurrent stream down."""
from __future__ import annotations

import socket
import time

import pytest

from bench.load.client import Record, StreamingClient
from bench.measure.instant_server import InstantServer
from bench.tiers.gateway import GatewayProcess
from bench.tiers.gateway.http1 import HEAD_LIMIT, MAX_BODY, MAX_HEADERS
from tools.abuse_soak import slowloris

POST = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
BODY = b'{"model": "instant", "prompt": [1, 2, 3], "max_tokens": 2}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    logs = tmp_path_factory.mktemp("gw-http")
    with InstantServer(logs, ttft_ms=10, itl_ms=2) as server:
        with GatewayProcess({"tiers": [{"name": "zero", "url": server.url, "rtt_ms": 0}]}, logs) as gw:
            yield gw


def exchange(gw, data: bytes, shut: bool = True, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send `data`, read until the gateway closes: (everything read, whether it closed)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except socket.timeout:
                return got, False
            except ConnectionResetError:
                return got, True
            if not part:
                return got, True
            got += part
        return got, False


MALFORMED = {
    "bad chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "Content-Length and Transfer-Encoding": (POST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             % len(BODY) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)),
    "two different Content-Lengths": POST + b"Content-Length: %d\r\nContent-Length: 3\r\n\r\n" % len(BODY) + BODY,
    "Transfer-Encoding not chunked": POST + b"Transfer-Encoding: gzip\r\n\r\n" + BODY,
    "chunked, then something else": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n" + BODY,
    "negative Content-Length": POST + b"Content-Length: -5\r\n\r\n" + BODY,
    "header flood": POST + b"".join(b"X-Flood-%d: x\r\n" % i for i in range(MAX_HEADERS + 1))
    + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY,
    "one header past the head limit": POST + b"X-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n",
    "a space before the colon": POST + b"Content-Length : %d\r\n\r\n" % len(BODY) + BODY,
    "bad request line": b"POST /v1/completions HTTP/9.9 extra\r\n\r\n",
    "bare LF line ends": b"POST /v1/completions HTTP/1.1\nContent-Length: %d\n\n" % len(BODY) + BODY,
    "protocol upgrade": b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_400_and_a_closed_connection(gateway, case):
    got, closed = exchange(gateway, MALFORMED[case])
    assert got.startswith(b"HTTP/1.1 400 "), (case, got[:300])
    assert b"connection: close" in got.lower() and closed, (case, got[:300])
    assert b'"type":"invalid_request_error"' in got


def test_a_head_that_never_ends_gets_400_before_it_is_read_whole(gateway):
    """Header bytes with no end (a slowloris sending forever) stop at HEAD_LIMIT."""
    got, closed = exchange(gateway, POST + b"X-Endless: " + b"a" * (HEAD_LIMIT * 4), shut=False)
    assert got.startswith(b"HTTP/1.1 400 ") and b"head over" in got and closed


def test_body_over_the_limit_gets_413(gateway):
    # Content-Length over the limit: 413 at once, before the body is read
    got, closed = exchange(gateway, POST + b"Content-Length: %d\r\n\r\n" % (10 << 20) + b"x" * 65536, shut=False)
    assert got.startswith(b"HTTP/1.1 413 ") and closed, got[:300]
    # a chunked body that grows past it: 413 once it does
    chunk = b"x" * (1 << 20)
    chunks = b"%x\r\n%s\r\n" % (len(chunk), chunk) * (MAX_BODY // len(chunk) + 1)
    data = POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    got, closed = exchange(gateway, data, shut=False)
    assert got.startswith(b"HTTP/1.1 413 ") and closed, got[:300]
    # the gateway is still fine
    rec = StreamingClient(gateway.base_url).stream("/v1/completions", {"prompt": [1], "max_tokens": 2}, Record("ok"))
    assert rec.status == "ok", rec.error


def test_pipelined_requests_and_100_continue(gateway):
    one = POST + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    got, closed = exchange(gateway, one + one + b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200 OK") == 3 and got.count(b"data: [DONE]") == 2 and closed, got[-500:]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(POST + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(BODY)
        assert s.recv(100).startswith(b"HTTP/1.1 200 OK")


def test_a_thousand_idle_connections_do_not_slow_a_stream(gateway):
    """1,000 connections that send nothing (slowloris): a concurrent stream's p99 TTFT stays within
    2x of its value without them (tools/abuse_soak.py's measurement)."""
    quiet, busy = slowloris(gateway.base_url, 1000)
    print(f"\nTTFT p99 without idle connections {quiet:.2f} ms, with 1,000: {busy:.2f} ms")
    assert busy <= 2 * quiet
