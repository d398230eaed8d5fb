"""Faults injected on purpose by the tier gateway (bench/tiers/network.py FaultProfile): read from
`--tier` options and [[tiers]] tables, bad ones exit 2 naming the flag or field; over 1,000 calls
through the real gateway in front of the instant server every kind is injected at its rate
(within the binomial 99% interval), recorded with the call, and seen by the client as what it is;
a run through faulty tiers reports their effect on each scenario's makespan."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from bench.load.client import Record, StreamingClient
from bench.measure.instant_server import InstantServer
from bench.tiers.gateway import GatewayProcess
from bench.tiers.network import NO_FAULTS, FaultProfile, Tier, parse_tier, tier_faults

REPO = Path(__file__).resolve().parents[3]
RATE, STALL_MS, SPIKE_MS = 0.05, 400.0, 400.0


def test_fault_profiles_from_tier_options_and_tables():
    fp = tier_faults("central,reset_rate=0.01, stall_rate=0.02,stall_ms=500,error_rate=0.03,error_status=502")
    assert (fp.reset_rate, fp.stall_rate, fp.stall_ms, fp.error_rate, fp.error_status) == (0.01, 0.02, 500, 0.03, 502)
    assert parse_tier("central,spike_rate=0.01").name == "central" and tier_faults("lab:5") is NO_FAULTS
    t = Tier.from_dict({"name": "c", "url": "http://h:1", "rtt_ms": 5, "faults": {"spike_rate": 0.01}})
    assert t.faults.spike_rate == 0.01 and t.faults.spike_ms == 2000 and Tier.from_dict(t.to_dict()) == t
    in_profile = Tier.from_dict({"name": "c", "url": "http://h:1", "profile": "lab:5,reset_rate=0.5"})
    assert in_profile.faults.reset_rate == 0.5 and in_profile.network.rtt_ms == 5
    assert not Tier.from_dict({"name": "c", "url": "http://h:1", "rtt_ms": 5}).faults.active
    with pytest.raises(ValueError, match="not both"):
        Tier.from_dict({"name": "c", "url": "http://h:1", "profile": "lab:5,reset_rate=0.5", "faults": {}})
    # one draw decides reset | stall | error (never two), another the spike; seeded
    fp = FaultProfile(reset_rate=0.2, stall_rate=0.3, error_rate=0.1, spike_rate=0.25)
    draws = [fp.draw(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(1)
    got = [fp.draw(rng) for _ in range(20000)]
    for fate, p in (("reset", 0.2), ("stall", 0.3), ("error", 0.1), (None, 0.4)):
        assert abs(sum(f == fate for f, _ in got) / len(got) - p) < 0.015
    assert abs(sum(s for _, s in got) / len(got) - 0.25) < 0.015
    for bad, key in [({"reset_rate": 1.5}, "reset_rate"), ({"stall_ms": -1}, "stall_ms"),
                     ({"error_status": 404}, "error_status"), ({"reset_rate": 0.6, "stall_rate": 0.6}, "reset_rate"),
                     ({"spike_rate": "often"}, "spike_rate")]:
        with pytest.raises(ValueError, match=key):
            FaultProfile(**bad)


def tierbench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_bad_faults_exit_2_naming_the_flag_or_field(tmp_path):
    base = '[[engines]]\nkind = "reference"\n[[tiers]]\nname = "edge"\nrtt_ms = 5\n'
    cases = {"faults = { reset_rate = 1.5 }\n": ("tiers[0].faults.reset_rate", "[0, 1]"),
             "faults = { stall_ms = -5 }\n": ("tiers[0].faults.stall_ms", ">= 0"),
             "faults = { drop_rate = 0.1 }\n": ("tiers[0].faults.drop_rate", "unknown fault"),
             "faults = { error_status = 404 }\n": ("tiers[0].faults.error_status", "500-599"),
             "faults = 0.1\n": ("tiers[0].faults", "expected a table")}
    for body, (field, why) in cases.items():
        p = tmp_path / "t.toml"
        p.write_text(base + body)
        r = tierbench("run", str(p), "--out", str(tmp_path / "o"), "--quiet", timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (body, r.stderr)
        assert f"field '{field}'" in lines[0] and why in lines[0] and "t.toml:6" in lines[0], (body, lines)
    for opt, why in [("lab:5,reset_rate=2", "reset_rate: must be in [0, 1]"), ("lab:5,stall_ms=-1", "stall_ms"),
                     ("lab:5,drop_rate=0.1", "drop_rate: unknown fault key")]:
        r = tierbench("run", "--tier", opt, "--out", str(tmp_path / "o"), timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "--tier" in lines[0] and why in lines[0], (opt, r.stderr)


@pytest.fixture(scope="module")
def instant(tmp_path_factory):
    with InstantServer(tmp_path_factory.mktemp("instant"), ttft_ms=2, itl_ms=10) as server:
        yield server.url


def test_injected_rates_over_a_thousand_calls(instant, tmp_path):
    """Each fault at 5% over 1,200 calls: the count of each, in the gateway's log and in the
    client's records alike, lies in the binomial 99% interval; every injected fault shows at the
    client as what it is, and no call without one fails."""
    n = 1200
    faults = {"reset_rate": RATE, "stall_rate": RATE, "stall_ms": STALL_MS, "error_rate": RATE,
              "spike_rate": RATE, "spike_ms": SPIKE_MS}
    config = {"tiers": [{"name": "flaky", "url": instant, "rtt_ms": 0, "faults": faults}], "seed": 11}

    def worker(w: int) -> list[Record]:
        client, out = StreamingClient(gw.base_url), []
        for k in range(w, n, 16):
            rid = f"c{k}"
            out.append(client.stream("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3}, Record(rid),
                                     {"X-Request-Id": rid}))
        client.close()
        return out

    with GatewayProcess(config, tmp_path) as gw:
        with ThreadPoolExecutor(16) as ex:
            recs = {r.request_id: r for rs in ex.map(worker, range(16)) for r in rs}
        calls = {c["request_id"]: c for c in gw.calls(at_least=n)}
    assert len(recs) == len(calls) == n

    def client_saw(r: Record) -> set[str]:
        seen = set()
        if r.http_status == 503:
            seen.add("error")
        elif r.status != "ok":
            seen.add("reset")
        elif max(np.diff(r.chunk_times), default=0) >= STALL_MS / 1e3:
            seen.add("stall")
        if (r.network_s or 0) >= SPIKE_MS / 1e3:
            seen.add("spike")
        return seen

    lo, hi = binom.interval(0.99, n, RATE)
    for kind in ("reset", "stall", "error", "spike"):
        logged = sum(kind in c["faults"] for c in calls.values())
        seen = sum(kind in client_saw(r) for r in recs.values())
        print(f"\n{kind}: {logged} in the gateway's log, {seen} in the client's records, of {n} calls "
              f"(rate {logged / n:.4f}; binomial 99% interval at {RATE}: [{lo:.0f}, {hi:.0f}])", end="")
        assert lo <= logged <= hi and seen == logged, kind
    for rid, c in calls.items():  # call by call: the client saw exactly what was injected
        assert client_saw(recs[rid]) == set(c["faults"]), (rid, c, recs[rid])
        if "spike" in c["faults"]:
            assert recs[rid].first_token is None or recs[rid].first_token - recs[rid].sent >= SPIKE_MS / 1e3
        if "error" in c["faults"]:
            assert c["status"] == 503 and c["upstream_sent"] is None  # it never reached the engine


@pytest.mark.slow
def test_a_run_reports_the_faults_effect_on_makespan(instant, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    faulty = "flaky:20,reset_rate=0.1,stall_rate=0.1,stall_ms=300,error_rate=0.1,spike_rate=0.1,spike_ms=300"
    r = tierbench("run", "--trace", "profile:demo", "--sessions", "12", "--model", str(tiny_model_dir), "--engine",
                  instant, "--tier", "clean:20", "--tier", faulty, "--users", "6", "--think-scale", "0.02",
                  "--out", str(out), "--quiet")
    assert r.returncode in (0, 1), r.stderr[-3000:]  # failed calls (the injected ones) may make the run exit 1
    info = json.loads((out / "run.json").read_text())
    reps = {name: info["engines"][name]["repetitions"][0] for name in ("clean", "flaky")}
    assert not any(reps["clean"]["faults"][k] for k in ("reset", "stall", "error", "spike"))  # routed to "clean"
    logged = [json.loads(line) for line in (out / reps["flaky"]["gateway_calls"]).read_text().splitlines()]
    counts = reps["flaky"]["faults"]
    assert counts["calls"] == len(logged) and sum(counts[k] for k in ("reset", "stall", "error", "spike")) > 0
    assert all(counts[k] == sum(k in c["faults"] for c in logged) for k in ("reset", "stall", "error", "spike"))
    scen = json.loads((out / "claims.json").read_text())["scenarios"]
    assert "faults" not in scen["clean"]
    eff = scen["flaky"]["faults"]
    assert {k: eff[k] for k in counts} == counts
    assert 0 < eff["sessions_hit"] <= eff["sessions"] == 12 and eff["lost_per_session_s"] > 0
    html = (out / "report.html").read_text()
    assert "injected faults: effect on makespan" in html and f"{eff['sessions_hit']}/12 sessions hit" in html
