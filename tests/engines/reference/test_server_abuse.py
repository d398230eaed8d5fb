"""The reference server under abuse, as a real process on loopback over raw sockets: 1,000 idle
connections (slowloris) beside a normal stream, a 10 MB body, 200 streams cut mid-generation. The
abuse primitives are tools/abuse_soak.py's, which keeps this up for minutes and watches memory."""
from __future__ import annotations

import time

import pytest

from bench.measure.soak import metric
from engines.reference.serve_args import MAX_BODY_BYTES
from tests.conftest import RefServer, serving
from tools.abuse_soak import STREAM, big_body, cut_streams, port_of, send, slowloris, status_of, wait_free_blocks

pytest.importorskip("uvicorn")

ABORTED = "tierbench_requests_aborted_total"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serving(RefServer(tiny_model_dir, tmp_path_factory.mktemp("abuse") / "abuse.log",
                           "--max-num-seqs", "256")) as (srv,):
        yield srv


def test_a_thousand_idle_connections_do_not_slow_a_stream(server):
    """uvicorn keeps a connection that has sent nothing without a timer or a worker of its own: 1,000
    of them (slowloris) leave a concurrent stream's p99 TTFT within 2x of its value without them."""
    quiet, busy = slowloris(server.url, 1000)
    print(f"\nTTFT p99 without idle connections {quiet:.2f} ms, with 1,000: {busy:.2f} ms")
    assert busy <= 2 * quiet


def test_a_body_over_the_limit_gets_413(server):
    port = port_of(server.url)
    assert big_body(port, 10 << 20).startswith(b"HTTP/1.1 413")  # Content-Length says so: before the body is read
    with send(port, b"Transfer-Encoding: chunked\r\n\r\n") as s:  # chunked: 413 once it passes the limit
        chunk = b" " * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert status_of(s).startswith(b"HTTP/1.1 413")
    body = STREAM % (b"1, 2", 2)
    with send(port, b"Content-Length: %d\r\n\r\n" % len(body), body) as s:  # and the server is fine
        assert status_of(s).startswith(b"HTTP/1.1 200")


def test_streams_cut_mid_generation_give_their_blocks_back(server):
    """200 concurrent streams, each reset (TCP RST) once it has begun: every one is aborted and the
    KV free block count returns to where it started."""
    total = metric(server.url, "tierbench_kv_total_blocks")  # free, cached blocks included, once quiet
    start = wait_free_blocks(server.url, total)  # an earlier test's last call may still hold its block
    assert start == total
    aborted = metric(server.url, ABORTED)
    assert cut_streams(port_of(server.url), 200, max_tokens=990) == 200
    deadline = time.monotonic() + 30
    while (cut := metric(server.url, ABORTED) - aborted) < 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cut == 200  # each was aborted, none finished
    assert wait_free_blocks(server.url, start) == start
