"""Abuse soak: the reference server and the tier gateway in front of it, abused round after round
for minutes, their resident memory watched.

    python -m tools.abuse_soak --minutes 10 --out results/abuse-soak/abuse.json

Each round, on both the server and the gateway: 1,000 connections that send nothing (slowloris)
held open while a normal stream runs through the gateway (its TTFT recorded), a 10 MB body (413
expected), 200 concurrent streams cut (TCP RST) once they have begun; on the gateway also every
malformed request of tests/bench/tiers/test_gateway_http.py's kinds (400 expected). Then the idle
connections close. After each round: both processes' RSS (/proc) and the server's free KV blocks.

Bars: each process's RSS grows under 5% after warm-up: its median over the rounds of the last 10%
of the time against its median over the 10% after the first 20% (by then the allocator's arenas
are in place; single samples swing by a few percent as arenas are taken and given back, so the
peak is reported beside, not barred); the free KV block count ends where it started; every abuse
got its answer. Writes the JSON with every round's figures and provenance; exit 1 when a bar fails.
The abuse primitives here are the ones tests/engines/reference/test_server_abuse.py runs once.
"""
from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np

from bench.load.client import Record, StreamingClient
from bench.measure.soak import MEMORY_BAR, metric, rss_bytes
from engines.process import raise_fd_limit

WARMUP_FRACTION, WINDOW = 0.2, 0.1  # warm-up, and the windows compared (shares of the time)
STREAM = b'{"prompt": [%s], "max_tokens": %d, "stream": true, "ignore_eos": true}'  # a random model can say EOS: these streams must run until cut
MALFORMED = [  # each must get 400 from the gateway
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"".join(b"X-Flood-%d: x\r\n" % i for i in range(200)) + b"Content-Length: 2\r\n\r\n{}",
    b"X-Big: " + b"a" * (70 << 10) + b"\r\n\r\n",
]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def send(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    """A POST /v1/completions with these header lines (CRLF-ended) and body, on a new connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: abuse\r\nContent-Type: application/json\r\n" + head + body)
    return s


def status_of(s: socket.socket) -> bytes:
    """The status line of the answer on s (b"" when the connection closed first)."""
    got = b""
    try:
        while b"\r\n" not in got:
            part = s.recv(4096)
            if not part:
                break
            got += part
    except ConnectionResetError:
        pass
    return got.split(b"\r\n", 1)[0]


def idle_connections(port: int, n: int = 1000) -> list[socket.socket]:
    """n connections that send nothing."""
    raise_fd_limit()
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


def big_body(port: int, size: int = 10 << 20) -> bytes:
    """The status line answering a body of `size` bytes (its first 64 KiB sent)."""
    with send(port, b"Content-Length: %d\r\n\r\n" % size, b" " * 65536) as s:
        return status_of(s)


def cut_streams(port: int, n: int = 200, max_tokens: int = 990, timeout_s: float = 60.0) -> int:
    """n concurrent streams, each reset (TCP RST) once its first event came; how many began."""
    raise_fd_limit()
    socks = []
    for i in range(n):
        body = STREAM % (b", ".join(b"%d" % (10 + (i * 7 + j) % 200) for j in range(24)), max_tokens)
        socks.append(send(port, b"Content-Length: %d\r\n\r\n" % len(body), body))
    pending, deadline = set(socks), time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for s in readable(pending, 1.0):
                if b"data: " in s.recv(65536):
                    pending.discard(s)
    finally:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    return n - len(pending)


def readable(socks, timeout_s: float) -> list[socket.socket]:
    """The sockets with something to read (or closed), waiting up to timeout_s (epoll: any number)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return [key.fileobj for key, _ in sel.select(timeout_s)]


def ttfts(url: str, n: int) -> list[float]:
    """TTFT (ms) of n short calls in a row on one keep-alive connection."""
    client, out = StreamingClient(url), []
    for k in range(n):
        rec = client.stream("/v1/completions", {"prompt": [5, 6, 7, 8], "max_tokens": 2}, Record(f"r{k}"))
        if rec.status != "ok":
            raise RuntimeError(f"a normal call failed: {rec.error}")
        out.append((rec.first_token - rec.sent) * 1e3)
    client.close()
    return out


def slowloris(url: str, n: int = 1000, calls: int = 30) -> tuple[float, float]:
    """TTFT p99 (ms) of `calls` short calls in a row without, then with, n idle connections open
    (the calls without: before and after, pooled). ConnectionError when the server closed one."""
    ttfts(url, 5)  # warm
    before = ttfts(url, calls)
    idle = idle_connections(port_of(url), n)
    try:
        time.sleep(0.5)
        loaded = ttfts(url, calls)
        if readable(idle, 0):
            raise ConnectionError("the server closed an idle connection")
    finally:
        for s in idle:
            s.close()
    after = ttfts(url, calls)
    return float(np.percentile(before + after, 99)), float(np.percentile(loaded, 99))


def wait_free_blocks(url: str, want: float, timeout_s: float = 30.0) -> float:
    deadline, now = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline and (now := metric(url, "tierbench_kv_free_blocks")) != want:
        time.sleep(0.2)
    return now


def abuse_round(server: str, gateway: str) -> dict:
    """One round of every abuse on both; what each answered."""
    idle = idle_connections(port_of(server)) + idle_connections(port_of(gateway))
    try:
        t = ttfts(gateway, 20)
        return {"ttft_p99_ms": float(np.percentile(t, 99)), "ttft_p50_ms": float(np.percentile(t, 50)),
                "big_body": [big_body(port_of(u)).decode() for u in (server, gateway)],
                "cut_streams_begun": [cut_streams(port_of(u)) for u in (server, gateway)],
                "malformed": [status_of(send(port_of(gateway), m)).decode() for m in MALFORMED]}
    finally:
        for s in idle:
            s.close()


def soak(minutes: float, out: Path, command: str) -> dict:
    from bench.run import resolve_model
    from bench.tiers.gateway import GatewayProcess
    from engines.launch import EngineSpec, Server
    from engines.provenance import provenance

    out.parent.mkdir(parents=True, exist_ok=True)
    spec = EngineSpec("reference", name="abuse", model=str(resolve_model("tiny")),
                      args=["--num-threads", "1", "--max-num-seqs", "256"])
    rounds = []
    with Server(spec, out.parent) as srv:
        gw_config = {"tiers": [{"name": "zero", "url": srv.base_url, "rtt_ms": 0}]}
        with GatewayProcess(gw_config, out.parent, name="abuse-gateway", call_log=False) as gw:
            free0 = metric(srv.base_url, "tierbench_kv_free_blocks")
            t0 = time.monotonic()
            while not rounds or time.monotonic() - t0 < minutes * 60:
                r = abuse_round(srv.base_url, gw.base_url)
                r.update(t=round(time.monotonic() - t0, 1), rss_server=rss_bytes(srv.proc.pid),
                         rss_gateway=rss_bytes(gw.proc.pid), free_blocks=wait_free_blocks(srv.base_url, free0))
                rounds.append(r)
                print(f"round {len(rounds)} at {r['t']:.0f} s: RSS server {r['rss_server'] / 2**20:.1f} MiB, gateway "
                      f"{r['rss_gateway'] / 2**20:.1f} MiB; TTFT p99 through the gateway {r['ttft_p99_ms']:.1f} ms",
                      flush=True)
    span = rounds[-1]["t"]
    after = [r for r in rounds if r["t"] >= WARMUP_FRACTION * span]
    first = [r for r in after if r["t"] < (WARMUP_FRACTION + WINDOW) * span]
    last = [r for r in rounds if r["t"] >= (1 - WINDOW) * span]
    growth = {}
    for p in ("server", "gateway"):
        base, end = (float(np.median([r[f"rss_{p}"] for r in w])) for w in (first or after, last))
        peak = max(r[f"rss_{p}"] for r in after)
        growth[p] = {"rss_first_round": rounds[0][f"rss_{p}"], "rss_after_warmup": base, "rss_at_end": end,
                     "rss_peak_after_warmup": peak, "growth": round((end - base) / base, 4),
                     "peak_growth": round((peak - base) / base, 4)}
    ok = {"memory": all(g["growth"] < MEMORY_BAR for g in growth.values()) and len(after) > 2,
          "free_blocks": rounds[-1]["free_blocks"] == free0,
          "answers": all(all(b.startswith("HTTP/1.1 413") for b in r["big_body"])
                         and all(m.startswith("HTTP/1.1 400") for m in r["malformed"])
                         and r["cut_streams_begun"] == [200, 200] for r in rounds)}
    report = {"what": "the reference server and the tier gateway under abuse (tools/abuse_soak.py)",
              "command": command, **provenance(command), "minutes": minutes, "rounds": len(rounds),
              "warmup_fraction": WARMUP_FRACTION, "memory_bar": MEMORY_BAR, "memory": growth,
              "free_blocks_start": free0, "pass": ok, "per_round": rounds}
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.abuse_soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="results/abuse-soak/abuse.json")
    args = ap.parse_args(argv)
    if not args.minutes > 0:
        print("python -m tools.abuse_soak: error: --minutes must be > 0", file=sys.stderr)
        return 2
    command = "python -m tools.abuse_soak " + " ".join(argv if argv is not None else sys.argv[1:])
    r = soak(args.minutes, Path(args.out), command.strip())
    m = r["memory"]
    print(f"{r['rounds']} rounds in {args.minutes:g} min: RSS growth server {m['server']['growth']:.2%}, gateway "
          f"{m['gateway']['growth']:.2%} (bar < {MEMORY_BAR:.0%}); free KV blocks back: {r['pass']['free_blocks']}; "
          f"answers as expected: {r['pass']['answers']}; wrote {args.out}")
    return 0 if all(r["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
