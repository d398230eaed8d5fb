"""The tier gateway (bench/tiers/gateway/) as a real process on loopback, in front of the instant
server (bench/measure/instant_server.py) and a small in-test upstream; the network profiles of
bench/tiers/network.py."""
from __future__ import annotations

import http.client
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import pytest

from bench.measure.instant_server import InstantServer
from bench.load.client import Record, StreamingClient
from bench.tiers.gateway import GatewayProcess, Link, RequestParser, build_policy, load_config
from bench.tiers.network import BUILTIN, NetworkProfile, Tier, parse_tier, rng_for
from bench.tiers.routing import CallInfo, call_info_from_request
from engines.process import free_port

D_MS = 50.0


# -- network profiles ---------------------------------------------------------------------------

def test_builtin_lognormal_rtts_span_their_range():
    expect = {"device": (0.2, 1.0), "metro": (10, 50), "regional": (50, 150), "central": (200, 500)}
    assert set(BUILTIN) == set(expect)
    for name, (lo, hi) in expect.items():
        rng = rng_for(0, name)
        x = np.array([BUILTIN[name].draw_rtt_s(rng) for _ in range(40000)]) * 1e3
        p5, p95 = np.percentile(x, [5, 95])
        assert p5 == pytest.approx(lo, rel=0.04) and p95 == pytest.approx(hi, rel=0.04), (name, p5, p95)
        assert x.min() > 0
    # seeded: the same sequence again, another tier's is independent
    a = [BUILTIN["metro"].draw_rtt_s(rng_for(7, "edge")) for _ in range(3)]
    assert a == [BUILTIN["metro"].draw_rtt_s(rng_for(7, "edge")) for _ in range(3)]
    r1, r2 = rng_for(7, "edge"), rng_for(7, "cloud")
    assert [BUILTIN["metro"].draw_rtt_s(r1) for _ in range(3)] != [BUILTIN["metro"].draw_rtt_s(r2) for _ in range(3)]
    assert NetworkProfile("lab", rtt_ms=50).draw_rtt_s(random.Random(0)) == 0.05


def test_parse_tier():
    assert parse_tier("metro") == BUILTIN["metro"]
    lab = parse_tier("lab:50")
    assert lab.name == "lab" and lab.rtt_ms == 50 and lab.fixed
    assert parse_tier("zero:0").rtt_ms == 0
    for bad, why in [("", "built-in profile"), ("mars", "not a built-in profile"), ("lab:x", "not a number"),
                     ("lab:-5", ">= 0"), ("lab:inf", ">= 0"), (":50", "not a valid tier name"),
                     ("a b:5", "not a valid tier name"), ("lab:5,drop_rate=0.1", "unknown fault key"),
                     ("lab:5,reset_rate=1.5", r"reset_rate: must be in \[0, 1\]"),
                     ("lab:5,stall_ms=-1", "stall_ms: must be >= 0"), ("lab:5,spike_rate", "KEY=VALUE")]:
        with pytest.raises(ValueError, match=why):
            parse_tier(bad)


def test_tier_from_dict():
    t = Tier.from_dict({"name": "edge", "url": "http://127.0.0.1:1/", "profile": "metro", "jitter_ms": 2,
                        "model": "small", "price_per_m_output": 0.5})
    assert t.network.rtt_p95_ms == 50 and t.network.jitter_ms == 2 and t.url == "http://127.0.0.1:1"
    assert Tier.from_dict(t.to_dict()) == t
    assert Tier.from_dict({"name": "lab", "url": "http://h:1", "rtt_ms": 50}).network.rtt_ms == 50
    assert Tier.from_dict({"name": "x", "url": "http://h:1", "rtt_p5_ms": 5, "rtt_p95_ms": 9}).network.median_rtt_ms \
        == pytest.approx((5 * 9) ** 0.5)
    assert Tier.from_dict({"name": "central", "url": "http://h:1"}).network == BUILTIN["central"]
    for bad, why in [({"name": "x", "rtt_ms": 5}, "url"), ({"name": "x", "url": "http://h:1"}, "no network profile"),
                     ({"name": "x", "url": "http://h:1", "profile": "metro", "rtt_ms": 3}, "not both"),
                     ({"name": "x", "url": "http://h:1", "rtt_p5_ms": 5}, "both"),
                     ({"name": "x", "url": "http://h:1", "rtt_ms": "fast"}, "must be a number"),
                     ({"name": "x", "url": "ftp://h", "rtt_ms": 1}, "http"),
                     ({"url": "http://h:1", "rtt_ms": 1}, "name")]:
        with pytest.raises(ValueError, match=why):
            Tier.from_dict(bad)
    with pytest.raises(ValueError, match="duplicate"):
        load_config({"tiers": [{"name": "a", "url": "http://h:1", "rtt_ms": 1}] * 2})
    tiers = [Tier.from_dict({"name": "a", "url": "http://h:1", "rtt_ms": 1})]
    assert tuple(build_policy({}, tiers).choose(CallInfo())) == ("a", "fixed")  # no routing table: the first tier
    assert tuple(build_policy({"policy": "fixed", "tier": "a"}, tiers).choose(CallInfo()))[0] == "a"
    with pytest.raises(ValueError, match="nope"):
        build_policy({"policy": "fixed", "tier": "nope"}, tiers)
    with pytest.raises(ValueError, match="nope"):  # a bad routing table fails in the parent, not in the child
        GatewayProcess({"tiers": [t.to_dict() for t in tiers], "routing": {"policy": "fixed", "tier": "nope"}}, "/tmp")


def test_links_keep_order_and_add_bandwidth():
    net = NetworkProfile("j", rtt_ms=20, jitter_ms=5, bandwidth_mbps=8)
    link = Link(0.010, net, random.Random(1))
    dues = [link.due(t * 0.001, 1000) for t in range(200)]  # 1 ms per 1000 bytes at 8 Mbit/s
    assert all(b >= a for a, b in zip(dues, dues[1:]))
    assert all(d >= t * 0.001 + 0.001 for t, d in enumerate(dues))
    plain = Link(0.025, NetworkProfile("p", rtt_ms=50), random.Random(0))
    assert [plain.due(t, 10) for t in (1.0, 1.5, 1.7)] == pytest.approx([1.025, 1.525, 1.725])


def test_request_parser_in_any_split():
    """Requests split anywhere (pipelined, chunked bodies with extensions and trailers) come out whole."""
    wire = (b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: h\r\nX-Session-Id: s\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1a;x=1\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: y\r\n\r\n"
            b"GET /health HTTP/1.0\r\n\r\n")
    for step in (1, 2, 3, 7, len(wire)):
        rp = RequestParser()
        for i in range(0, len(wire), step):
            rp.feed(wire[i:i + step])
        assert rp.error is None
        a, b, c = rp.ready
        assert (a.method, a.path, a.target, a.h["x-session-id"], a.body, a.keep_alive) == \
            ("POST", "/v1/completions", "/v1/completions?x=1", "s", b"hello", True)
        assert (b.path, b.body, b.keep_alive) == ("/v1/chat/completions", b"hello" + b"z" * 26, True)
        assert (c.method, c.body, c.keep_alive) == ("GET", b"", False)  # HTTP/1.0 without keep-alive
        assert rp.ready and not rp.pending


def test_call_info():
    """What the gateway hands the policy: bench.tiers.routing's reading of a request and its headers."""
    c = call_info_from_request({"prompt": [1, 2, 3]}, {"x-tierbench-session": "s", "x-tierbench-call-index": "4",
                                                       "x-tierbench-complexity": "complex"})
    assert (c.prompt_tokens, c.prompt_text, c.session, c.call_index, c.complexity) == (3, "", "s", 4, "complex")
    c = call_info_from_request({"messages": [{"role": "user", "content": "a"}]}, {"x-session-id": "t"})
    assert (c.prompt_text, c.session, c.call_index) == ("a", "t", None)


# -- the gateway process ------------------------------------------------------------------------

class _Fake(BaseHTTPRequestHandler):
    """A non-streaming upstream: echoes what it got; model 'boom' gets a plain-text 500."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
        else:
            self._send(200, b"{}")

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req.get("messages", [{}])[0].get("content") == "boom":
            self._send(500, b"engine exploded", "text/plain")
            return
        self._send(200, json.dumps({"object": "text_completion", "model": req.get("model"), "path": self.path,
                                    "session": self.headers.get("x-tierbench-session"),
                                    "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}).encode())


@pytest.fixture(scope="module")
def instant(tmp_path_factory):
    with InstantServer(tmp_path_factory.mktemp("instant"), ttft_ms=10, itl_ms=5) as server:
        yield server.url


@pytest.fixture(scope="module")
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def gateway(instant, fake, tmp_path_factory):
    config = {"tiers": [{"name": "zero", "url": instant, "rtt_ms": 0},
                        {"name": "lab", "url": instant, "profile": f"lab:{D_MS:g}"},
                        {"name": "fake", "url": fake, "rtt_ms": 0, "model": "fake-served"},
                        {"name": "down", "url": f"http://127.0.0.1:{free_port()}", "rtt_ms": 0}],
              "routing": {"policy": "fixed", "tier": "zero"}, "seed": 3}
    with GatewayProcess(config, tmp_path_factory.mktemp("gw"), wait_upstreams=False) as gw:
        yield gw
    assert not gw.alive()


def _request(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_fixed_rtt_shifts_ttft_by_d_and_keeps_itl(instant, gateway):
    """D = 50 ms on a tier: the median TTFT grows by D (within 2 ms), the median ITL stays (within 1 ms)."""
    def worker(w: int) -> list[tuple[str, Record]]:
        out = []
        direct, via = StreamingClient(instant), StreamingClient(gateway.base_url)
        for k in range(8):  # interleaved, so both paths see the same load
            for name, client, extra in (("direct", direct, {}), ("gateway", via, {"x-tierbench-tier": "lab"})):
                rec = client.stream("/v1/completions", {"model": "instant", "prompt": [1, 2, 3], "max_tokens": 16},
                                    Record(f"{name}-{w}-{k}"), extra)
                out.append((name, rec))
        direct.close()
        via.close()
        return out

    with ThreadPoolExecutor(4) as ex:
        recs = [r for rs in ex.map(worker, range(4)) for r in rs]
    assert all(r.status == "ok" for _, r in recs), [r.error for _, r in recs if r.status != "ok"][:3]
    ttft = {p: np.median([(r.first_token - r.sent) * 1e3 for n, r in recs if n == p]) for p in ("direct", "gateway")}
    itl = {p: np.median([g * 1e3 for n, r in recs if n == p for g in np.diff(r.chunk_times)])
           for p in ("direct", "gateway")}
    shift = ttft["gateway"] - ttft["direct"]
    print(f"\nTTFT median direct {ttft['direct']:.3f} ms, via gateway at D={D_MS:g}: {ttft['gateway']:.3f} ms, "
          f"shift {shift:.3f} ms; ITL median {itl['direct']:.3f} -> {itl['gateway']:.3f} ms")
    assert abs(shift - D_MS) <= 2.0
    assert abs(itl["gateway"] - itl["direct"]) <= 1.0
    lab = [c for c in gateway.calls(at_least=32) if c["tier"] == "lab"]
    assert len(lab) >= 32 and all(c["rtt_ms"] == D_MS and c["status"] == 200 for c in lab)


def test_decision_headers_forced_tier_and_log(instant, gateway):
    body = {"model": "instant", "prompt": [1, 2, 3, 4], "max_tokens": 3, "stream": True}
    hdr = {"x-tierbench-session": "sess-1", "x-tierbench-call-index": "2", "x-request-id": "rid-1"}
    status, h, via = _request(gateway.base_url, "POST", "/v1/completions", body, hdr)
    assert status == 200 and h["content-type"] == "text/event-stream"
    assert h["x-tierbench-tier"] == "zero" and float(h["x-tierbench-rtt-ms"]) == 0.0 and h["x-tierbench-route-reason"]
    _, _, direct = _request(instant, "POST", "/v1/completions", body)
    assert via == direct  # the SSE bytes are upstream's, unchanged
    status, h, _ = _request(gateway.base_url, "POST", "/v1/completions", body, {**hdr, "x-tierbench-tier": "lab"})
    assert status == 200 and h["x-tierbench-tier"] == "lab" and float(h["x-tierbench-rtt-ms"]) == D_MS
    assert "forced" in h["x-tierbench-route-reason"]
    status, _, err = _request(gateway.base_url, "POST", "/v1/completions", body, {"x-tierbench-tier": "mars"})
    assert status == 400 and "unknown tier 'mars'" in json.loads(err)["error"]["message"]
    rec = next(c for c in gateway.calls() if c["request_id"] == "rid-1")
    assert (rec["session"], rec["call_index"], rec["tier"], rec["rtt_ms"], rec["status"]) == ("sess-1", 2, "zero", 0, 200)
    assert rec["received"] <= rec["upstream_sent"] <= rec["upstream_first"] <= rec["first_out"] <= rec["done"]


def test_non_streaming_and_upstream_errors(gateway):
    status, h, body = _request(gateway.base_url, "POST", "/v1/chat/completions",
                               {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                               {"x-tierbench-tier": "fake", "x-tierbench-session": "s9"})
    out = json.loads(body)
    assert status == 200 and h["x-tierbench-tier"] == "fake" and int(h["content-length"]) == len(body)
    assert (out["model"], out["path"], out["session"]) == ("fake-served", "/v1/chat/completions", "s9")
    # an upstream 5xx: its status, an OpenAI-style error body
    status, h, body = _request(gateway.base_url, "POST", "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "boom"}]}, {"x-tierbench-tier": "fake"})
    err = json.loads(body)["error"]
    assert status == 500 and "engine exploded" in err["message"] and err["code"] == 500
    # an upstream that is not there: 502, streaming or not
    for stream in (False, True):
        status, h, body = _request(gateway.base_url, "POST", "/v1/completions",
                                   {"prompt": "x", "max_tokens": 2, "stream": stream}, {"x-tierbench-tier": "down"})
        err = json.loads(body)["error"]
        assert status == 502 and h["x-tierbench-tier"] == "down" and "unreachable" in err["message"]
    # the project's client records it as an error, not an exception
    rec = StreamingClient(gateway.base_url).stream("/v1/completions", {"prompt": [1], "max_tokens": 2}, Record("e"),
                                                   {"x-tierbench-tier": "down"})
    assert rec.status == "error" and rec.http_status == 502 and "unreachable" in rec.error


def test_health_models_tiers(gateway, instant, fake, tmp_path):
    status, _, body = _request(gateway.base_url, "GET", "/health")
    assert status == 503 and list(json.loads(body)["down"]) == ["down"]
    status, _, body = _request(gateway.base_url, "GET", "/v1/models")
    assert status == 200 and {m["id"] for m in json.loads(body)["data"]} == {"instant", "fake", "fake-served"}
    status, _, body = _request(gateway.base_url, "GET", "/tiers")
    cfg = json.loads(body)
    assert status == 200 and [t["name"] for t in cfg["tiers"]] == ["zero", "lab", "fake", "down"] and cfg["seed"] == 3
    status, _, _ = _request(gateway.base_url, "GET", "/nope")
    assert status == 404
    # every upstream up: healthy, which is what start() waits for by default
    tiers = [Tier.from_dict({"name": "a", "url": instant, "rtt_ms": 0}), Tier.from_dict({"name": "b", "url": fake,
                                                                                       "profile": "device"})]
    with GatewayProcess(tiers, tmp_path, call_log=False) as gw:
        assert _request(gw.base_url, "GET", "/health")[0] == 200
        assert gw.calls() == []
    assert not gw.alive()
