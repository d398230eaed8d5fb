"""The tier gateway's own overhead: what it adds to TTFT and ITL with no delay configured (RTT 0).

    python -m tools.gateway_overhead [--streams 64] [--calls 10] [--rounds 4] [--out results/gateway]

The same closed-loop sessions (the locust path of `tierbench run`, as bench/measure/calibrate.py drives
it) play against the instant server (bench/measure/instant_server.py) directly, through the gateway
(bench/tiers/gateway/, one tier at RTT 0), and (the floor) through a bare TCP relay, in rounds of
alternating order (direct, gateway, relay, then relay, gateway, direct, ...) so a drift of the
machine's load falls on every path alike. The instant server logs when each request arrived and
when it wrote each chunk; as in calibrate, the overhead of a call on a path is

- TTFT overhead = client TTFT (first chunk - send) - server TTFT (first write - request read);
- ITL overhead  = |client gap - server gap| for every pair of consecutive chunks;

and the gateway's added latency is the gateway path's overhead minus the direct path's, per
percentile. The headline and the bar: each round's p99 difference (its phases ran next to each
other), the median over the rounds; on this shared 2-core machine one disturbed phase otherwise
decides a pooled p99, in either direction. Also reported: the pooled percentiles, and paired by
call (session i, call k of both paths: their difference's percentiles, which also carry both
runs' noise). A session's first call (it opens the connections) is reported apart.

Where the time goes: the gateway's own log (perf_counter timestamps, the same clock) gives the
time from the request read to the request sent upstream and from each piece's arrival from
upstream to its write to the client; the relay path (a plain asyncio/uvloop byte pipe, no HTTP,
no routing, no logging) is what any extra user-space hop costs on this machine; the CPU seconds
of the gateway and the relay are reported per piece forwarded.

Bar: p99 added latency under 1 ms on TTFT and ITL at 64 concurrent streams.

Writes OUT/overhead.json (figures and provenance), the configs and the servers' logs; the raw
per-request records and per-chunk timestamps (megabytes) only with --keep-raw.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from analysis.records import read_records

from bench.measure.calibrate import dist
from bench.measure.instant_server import InstantServer
from bench.load.closed_loop import run_closed_loop
from bench.tiers.gateway import GatewayProcess
from engines.provenance import provenance
from bench.tiers.network import Tier
from bench.load.workload import CallPlan, SessionPlan, write_workload
from engines.process import free_port, start_logged, stop_groups, wait_http_ok

BAR_MS = 1.0


def measure(out: Path, streams: int = 64, calls: int = 10, tokens: int = 32, ttft_ms: float = 20.0,
            itl_ms: float = 10.0, rounds: int = 5, relay: bool = True, command: str | None = None,
            keep_raw: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    load_before = _loadavg()
    for old in [*out.glob("*/requests.*.jsonl"), *out.glob("workload.*.jsonl"), out / "server-times.jsonl",
                out / "gateway.calls.jsonl"]:
        old.unlink(missing_ok=True)
    procs = []
    paths = ["direct", "gateway"] + (["relay"] if relay else [])
    phases = [(p, r) for r in range(rounds) for p in (paths if r % 2 == 0 else paths[::-1])]
    loads, cpu = {}, {}
    try:
        server = InstantServer(out, ttft_ms, itl_ms, times_log=out / "server-times.jsonl").start()
        url = server.url
        procs.append(server.proc)
        targets = {"direct": url}
        if relay:
            rport = free_port()
            rp = start_logged([sys.executable, "-m", "tools.gateway_overhead", "--serve-relay", str(rport),
                               str(server.port)], out / "relay.log")
            procs.append(rp)
            targets["relay"] = f"http://127.0.0.1:{rport}"
            wait_http_ok(targets["relay"] + "/health", 30.0, rp, "the relay", out / "relay.log")
        tier = Tier.from_dict({"name": "lab", "url": url, "rtt_ms": 0})
        config = {"tiers": [tier.to_dict()], "routing": {"policy": "fixed", "tier": "lab"}, "seed": 0}
        with GatewayProcess(config, out, call_log=out / "gateway.calls.jsonl", trace_chunks=True) as gw:
            targets["gateway"] = gw.base_url
            pids = {"gateway": gw.proc.pid, "instant_server": server.proc.pid, **({"relay": rp.pid} if relay else {})}
            cpu = {k: {"start": _cpu_s(v)} for k, v in pids.items()}
            for path, r in phases:
                tag = f"{path[0]}{r}"
                plans = [SessionPlan(f"{tag}-{i:03d}", i / streams,
                                     [CallPlan(k, list(range(5, 21)), tokens) for k in range(calls)])
                         for i in range(streams)]
                wl = out / f"workload.{tag}.jsonl"
                write_workload(plans, wl)
                t0 = _cpu_s(pids.get(path)) if path != "direct" else None
                loads[tag] = run_closed_loop(wl, targets[path], "instant", out / path, path, users=streams)
                if t0 is not None:
                    cpu[path]["during_own_phases"] = cpu[path].get("during_own_phases", 0.0) + _cpu_s(pids[path]) - t0
            for k, v in pids.items():
                cpu[k]["end"] = _cpu_s(v)
    finally:
        stop_groups(procs, ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)))
    for f in out.glob("workload.*.jsonl"):
        f.unlink()  # regenerated from the parameters; the request records keep every call
    report = analyse(out, paths, streams, calls, tokens, ttft_ms, itl_ms, rounds, loads, cpu, command)
    report["load_average_before"] = load_before
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    if not keep_raw:  # megabytes of per-chunk timestamps: overhead.json has what they give
        for f in [*out.glob("*/requests.*.jsonl"), out / "server-times.jsonl", out / "gateway.calls.jsonl"]:
            f.unlink(missing_ok=True)
    return report


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process used so far."""
    if pid is None:
        return None
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _added(a: np.ndarray, b: np.ndarray) -> dict:
    """b's percentiles minus a's."""
    if not (len(a) and len(b)):
        return {}
    pa, pb = np.percentile(a, [50, 90, 99]), np.percentile(b, [50, 90, 99])
    return {"p50": float(pb[0] - pa[0]), "p90": float(pb[1] - pa[1]), "p99": float(pb[2] - pa[2]),
            "mean": float(b.mean() - a.mean()), "n": [int(len(a)), int(len(b))]}


def analyse(out: Path, paths: list[str], streams: int, calls: int, tokens: int, ttft_ms: float, itl_ms: float,
            rounds: int, loads: dict, cpu: dict, command: str | None) -> dict:
    server = {r["request_id"]: r for r in map(json.loads, open(out / "server-times.jsonl"))}
    data = {}
    for path in paths:
        d = {"requests": 0, "ok": 0, "ttft": {}, "first": {}, "itl": {}, "by_key": {}}
        for row in read_records(out / path):
            d["requests"] += 1
            s = server.get(row["request_id"])
            if row["status"] != "ok" or s is None:
                continue
            d["ok"] += 1
            tag, idx = row["session"].split("-", 1)
            r = int(tag[1:])
            over = ((row["first_token"] - row["sent"]) - (s["writes"][0] - s["received"])) * 1e3
            (d["first"] if row["call_index"] == 0 else d["ttft"]).setdefault(r, []).append(over)
            d["by_key"][(r, idx, row["call_index"])] = over
            gaps = np.diff(s["writes"])
            n = min(len(gaps), len(row["itl"]))
            d["itl"].setdefault(r, []).extend((np.abs(np.asarray(row["itl"][:n]) - gaps[:n]) * 1e3).tolist())
        data[path] = d

    def pooled(path: str, key: str) -> np.ndarray:
        return np.asarray([x for r in sorted(data[path][key]) for x in data[path][key][r]])

    def per_round(path: str, key: str) -> list[dict]:
        return [_added(np.asarray(data["direct"][key].get(r, [])), np.asarray(data[path][key].get(r, [])))
                for r in range(rounds)]

    def paired(path: str) -> dict:
        d, g = data["direct"]["by_key"], data[path]["by_key"]
        return dist(np.asarray([g[k] - v for k, v in d.items() if k in g and k[2] != 0]))

    def report_path(path: str) -> dict:
        return {"ttft_overhead_ms": dist(pooled(path, "ttft")), "itl_overhead_ms": dist(pooled(path, "itl")),
                "first_call_ttft_overhead_ms": dist(pooled(path, "first"))}

    # where the time goes inside the gateway (its own timestamps)
    inside_req, inside_first, inside_piece = [], [], []
    for rec in map(orjson.loads, open(out / "gateway.calls.jsonl", "rb")):
        if rec.get("status") != 200 or rec.get("upstream_sent") is None:
            continue
        inside_req.append((rec["upstream_sent"] - rec["received"]) * 1e3)
        if rec.get("first_out") is not None and rec.get("upstream_first") is not None:
            inside_first.append((rec["first_out"] - rec["upstream_first"]) * 1e3)
        cin, cout = rec.get("chunks_in") or [], rec.get("chunks_out") or []
        n = min(len(cin), len(cout))
        inside_piece.extend(((np.asarray(cout[:n]) - np.asarray(cin[:n])) * 1e3).tolist())
    pieces = sum(len(data["gateway"]["itl"].get(r, [])) for r in range(rounds)) + data["gateway"]["ok"]
    cpu_per_chunk = {p: (cpu[p]["during_own_phases"] * 1e6 / pieces) if cpu.get(p, {}).get("during_own_phases")
                     else None for p in ("gateway", "relay") if p in cpu}

    ttft_added = _added(pooled("direct", "ttft"), pooled("gateway", "ttft"))
    itl_added = _added(pooled("direct", "itl"), pooled("gateway", "itl"))
    rounds_ttft, rounds_itl = per_round("gateway", "ttft"), per_round("gateway", "itl")
    med_ttft = _median([x.get("p99") for x in rounds_ttft])
    med_itl = _median([x.get("p99") for x in rounds_itl])
    passed = bool(med_ttft is not None and med_itl is not None and med_ttft < BAR_MS and med_itl < BAR_MS)
    inside_p99 = [dist(np.asarray(x)).get("p99") for x in (inside_req, inside_first, inside_piece)]
    report = {
        "what": "the tier gateway's added latency with no delay configured (RTT 0): gateway path minus direct path",
        "streams": streams, "calls_per_session": calls, "tokens": tokens, "server_ttft_ms": ttft_ms,
        "server_itl_ms": itl_ms, "rounds": rounds, "paths": paths,
        "requests": {p: data[p]["requests"] for p in paths}, "ok": {p: data[p]["ok"] for p in paths},
        "ttft_added_ms": ttft_added, "itl_added_ms": itl_added,
        "ttft_added_per_round_ms": rounds_ttft, "itl_added_per_round_ms": rounds_itl,
        "ttft_added_p99_median_of_rounds_ms": med_ttft, "itl_added_p99_median_of_rounds_ms": med_itl,
        "ttft_added_paired_ms": paired("gateway"),
        "first_call_ttft_added_ms": _added(pooled("direct", "first"), pooled("gateway", "first")),
        "per_path": {p: report_path(p) for p in paths},
        "inside_gateway_ms": {"request_read_to_upstream_sent": dist(np.asarray(inside_req)),
                              "first_piece_arrival_to_write": dist(np.asarray(inside_first)),
                              "piece_arrival_to_write": dist(np.asarray(inside_piece))},
        "cpu_us_per_chunk": cpu_per_chunk, "cpu_s": cpu,
        "bar": f"p99 added latency < {BAR_MS:g} ms on TTFT and ITL at {streams} concurrent streams, as seen by the "
               "client (gateway path minus direct path: p99 of each round's phases, median over the rounds)",
        "bar_p99_ms": BAR_MS, "pass": passed,
        "inside_gateway_p99_below_bar": bool(all(x is not None and x < BAR_MS for x in inside_p99)),
        "load": loads, "command": command or "python -m tools.gateway_overhead " + " ".join(sys.argv[1:]),
        **provenance(), "load_average_after": _loadavg(),
    }
    if "relay" in paths:
        report["floor_relay_added_ms"] = {"ttft": _added(pooled("direct", "ttft"), pooled("relay", "ttft")),
                                          "itl": _added(pooled("direct", "itl"), pooled("relay", "itl")),
                                          "ttft_per_round": per_round("relay", "ttft"),
                                          "itl_per_round": per_round("relay", "itl")}
        f = report["floor_relay_added_ms"]
        f["ttft_p99_median_of_rounds"] = _median([x.get("p99") for x in f["ttft_per_round"]])
        f["itl_p99_median_of_rounds"] = _median([x.get("p99") for x in f["itl_per_round"]])
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def summary(r: dict) -> str:
    t, i, p = r["ttft_added_ms"], r["itl_added_ms"], r["ttft_added_paired_ms"]
    ins = r["inside_gateway_ms"]
    rt = ", ".join(f"{x['p99']:.2f}" for x in r["ttft_added_per_round_ms"] if x)
    ri = ", ".join(f"{x['p99']:.2f}" for x in r["itl_added_per_round_ms"] if x)
    lines = [", ".join(f"{p} {r['ok'][p]}/{r['requests'][p]}" for p in r["paths"])
             + f" calls ok at {r['streams']} concurrent streams",
             f"gateway added TTFT: p99 {r['ttft_added_p99_median_of_rounds_ms']:.3f} ms (median of rounds: {rt}); "
             f"pooled p50 {t['p50']:.3f} ms, p99 {t['p99']:.3f} ms; paired by call p50 {p['p50']:.3f}, p99 {p['p99']:.3f} ms",
             f"gateway added ITL:  p99 {r['itl_added_p99_median_of_rounds_ms']:.3f} ms (median of rounds: {ri}); "
             f"pooled p50 {i['p50']:.3f} ms, p99 {i['p99']:.3f} ms"]
    if "floor_relay_added_ms" in r:
        f = r["floor_relay_added_ms"]
        lines.append(f"a bare TCP relay adds: TTFT p50 {f['ttft']['p50']:.3f} ms, p99 {f['ttft_p99_median_of_rounds']:.3f} ms; "
                     f"ITL p50 {f['itl']['p50']:.3f} ms, p99 {f['itl_p99_median_of_rounds']:.3f} ms (median of rounds)")
    cpp = r["cpu_us_per_chunk"]
    lines += [f"inside the gateway: request -> upstream p50 {ins['request_read_to_upstream_sent']['p50']:.3f} ms, "
              f"piece arrival -> write p50 {ins['piece_arrival_to_write']['p50']:.3f} ms, "
              f"p99 {ins['piece_arrival_to_write']['p99']:.3f} ms; CPU per token chunk: "
              + ", ".join(f"{k} {v:.0f} us" for k, v in cpp.items() if v is not None),
              f"bar p99 < {r['bar_p99_ms']:g} ms: {'pass' if r['pass'] else 'FAIL'}"]
    return "\n".join(lines)


# -- the floor: a bare TCP relay ------------------------------------------------------------------

class _Pipe(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int] | None = None, peer: "_Pipe | None" = None):
        self.upstream, self.peer, self.transport, self.pending = upstream, peer, None, []

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.upstream is not None:  # a client: open its upstream connection
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, self.peer = await asyncio.get_running_loop().create_connection(lambda: _Pipe(peer=self), *self.upstream)
        except OSError:
            self.transport.close()
            return
        for d in self.pending:
            self.peer.transport.write(d)
        self.pending = []

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def serve_relay(port: int, upstream_port: int) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Pipe(("127.0.0.1", upstream_port)), "127.0.0.1", port, backlog=2048)
        await server.serve_forever()
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gateway_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64, help="concurrent sessions (streams)")
    ap.add_argument("--calls", type=int, default=10, help="calls per session")
    ap.add_argument("--tokens", type=int, default=32, help="chunks per call")
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of one phase per path (alternating order)")
    ap.add_argument("--no-relay", action="store_true", help="skip the bare-relay path (the floor)")
    ap.add_argument("--out", default="results/gateway")
    ap.add_argument("--keep-raw", action="store_true", help="keep the per-request records and server/gateway logs")
    ap.add_argument("--serve-relay", nargs=2, type=int, metavar=("PORT", "UPSTREAM_PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_relay:
        serve_relay(*a.serve_relay)
        return 0
    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    r = measure(Path(a.out), a.streams, a.calls, a.tokens, a.ttft_ms, a.itl_ms, a.rounds, not a.no_relay,
                command=f"python -m tools.gateway_overhead {argv_s}".strip(), keep_raw=a.keep_raw)
    print(summary(r))
    print(f"wrote {Path(a.out) / 'overhead.json'} ({time.monotonic() - t0:.0f} s)")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
