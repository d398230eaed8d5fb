"""The tier gateway: a real HTTP proxy, in its own process, in front of each tier's engine. Calls
arrive at one URL; a routing policy picks the tier; the gateway injects the tier's network delay
(and, where a tier asks for them, faults) and records the decision with the call.

    python -m bench.tiers.gateway --config gateway.json --port 9000 [--host 127.0.0.1] [--log calls.jsonl]

Modules, in the order a call meets them:

    config.py    the config: tiers, routing table, seed, body limit (load_config, gateway_config,
                 build_policy)
    proxy.py     the proxy (Gateway): endpoints, routing, faults, the call log; serve() runs it
    http1.py     HTTP/1.1 requests parsed by llhttp (httptools), their limits, chunked framing, error bodies
    upstream.py  the keep-alive connection pool to each tier's engine; its answers parsed by llhttp
    relay.py     a routed call's request upstream and its answer back (where a reset or stall strikes)
    delay.py     the injected delay: Link (when), Timers (sub-millisecond sleeps), Downlink (writes)
    process.py   GatewayProcess: the gateway in its own process (a free port, waits for /health,
                 stops on every exit path)
    __main__.py  the process's command line

Routing: `policy.choose(CallInfo) -> (tier_name, reason)`, the policy from
`bench.tiers.routing.make_policy(config["routing"], tiers)` (no routing table: every call to the
first tier). A request header `x-tierbench-tier: NAME` forces a tier (reason "forced by
x-tierbench-tier"). CallInfo is bench.tiers.routing.call_info_from_request's reading of the body
and the optional headers x-tierbench-session (else X-Session-Id), x-tierbench-call-index,
x-tierbench-complexity. A policy with an `observe(tier, call, record)` method is told each call's
outcome (the log record below).

Delay: one RTT is drawn per call from the tier's profile (seeded: `seed` and the tier's name). The
request is forwarded upstream RTT/2 after it was read (uplink); every piece of the response is
delivered RTT/2 after it arrived from upstream (downlink), each on its own schedule (arrival +
RTT/2, never accumulating, never reordered), so TTFT grows by one RTT and the ITL keeps its shape.
A non-streamed body is returned RTT/2 after upstream's answer is complete. A profile's jitter
adds uniform(-j, +j) to each transfer's delay, its bandwidth bytes * 8 / rate (transfers queue on
the link).

Faults (a tier's `faults`, bench/tiers/network.py FaultProfile): drawn per call from their own
seeded RNG, only on a tier that has some (a tier without faults draws nothing and adds nothing). A
spike adds spike_ms to the call's RTT; an error answers error_status without calling the engine,
one RTT after the request; a stall holds everything after the first chunk of a stream's body (a
whole answer: the answer) stall_ms longer; a reset sends that first chunk, then resets the
connection (TCP RST) where the rest would have gone out (a whole answer: in its place) and closes the
upstream connection, so the engine aborts the request.

The decision travels with the response: headers x-tierbench-tier, x-tierbench-rtt-ms (the drawn
RTT, a spike included), x-tierbench-route-reason and, on a call with injected faults,
x-tierbench-faults (e.g. "stall,spike"). Upstream's header fields and body are forwarded as they
are; a stream is re-framed in chunks as its pieces arrive. `--log PATH` appends one JSON line per
call: request_id, session, call_index, tier, rtt_ms, reason, status, stream, error, faults (the
injected ones: [] or some of "reset", "stall", "error", "spike"), and perf_counter timestamps (the
system-wide monotonic clock, so comparable with the client's) of when the gateway held and
released each part: received (the request read: uplink hold starts), upstream_sent (released to
the engine), upstream_first and upstream_last (the first and last body bytes from upstream:
downlink holds start), first_out and last_out (their release to the client), done; plus
wall-clock `time`. With --trace-chunks also every piece's arrival and release time (`chunks_in`,
`chunks_out`).

Errors: an unreachable upstream gives 502, an upstream error status is passed back with an
OpenAI-style error body ({"error": {"message", "type", "code"}}); upstream's own JSON error body
is kept as it is.

Requests: HTTP/1.1 (keep-alive, pipelining, Content-Length or chunked bodies) parsed by llhttp; a
malformed one (bad chunk size, header flood, both Content-Length and Transfer-Encoding, ...) gets
400 and a closed connection, a body over max_body_bytes (4 MiB by default) 413. A request under
way whose next bytes take over 60 s is dropped; idle connections cost a file descriptor and stay.

Implementation: plain asyncio streams (uvloop when installed) on both sides, one keep-alive
connection pool per upstream, no timeouts on streams, no access log; every read from upstream is
parsed and its body pieces go out at once, with no task switch in between.
"""
from bench.tiers.gateway.config import GatewayConfig, build_policy, gateway_config, load_config
from bench.tiers.gateway.delay import Downlink, Link, Timers
from bench.tiers.gateway.http1 import HTTPError, RequestParser
from bench.tiers.gateway.process import GatewayProcess
from bench.tiers.gateway.proxy import Gateway, serve

__all__ = ["GatewayProcess", "GatewayConfig", "gateway_config", "load_config", "build_policy", "Gateway", "serve",
           "Link", "Downlink", "Timers", "RequestParser", "HTTPError"]
