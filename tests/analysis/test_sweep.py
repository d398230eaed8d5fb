"""analysis/sweep.py on hand-built requests tables: SLO decisions, the saturation tests, the
capacity bracket."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.sweep import (capacity, closed_loop_saturated, decide, open_loop_saturated, parse_slo, rule_name,
                            verdict)


def calls(sent, ttft, sessions=None, out=5, tpot=0.01) -> pd.DataFrame:
    sent = np.asarray(sent, dtype=float)
    ttft = np.asarray(ttft, dtype=float)
    n = len(sent)
    return pd.DataFrame({"status": ["ok"] * n, "sent": sent, "first_token": sent + ttft,
                         "last_token": sent + ttft + tpot * (out - 1), "output_tokens": [out] * n,
                         "session": sessions if sessions is not None else [f"s{i % 40}" for i in range(n)],
                         "request_id": [f"r{i}" for i in range(n)], "itl": [[tpot] * (out - 1)] * n,
                         "call_index": np.arange(n), "chunks": [out] * n, "expected_prompt_tokens": [10] * n,
                         "expected_output_tokens": [out] * n})


def test_slo_rules_parse_and_name():
    assert rule_name(parse_slo("ttft_p99<=2000", 0.95)) == "ttft_p99<=2000"
    r = parse_slo("makespan_p90<=30s", 0.95)
    assert r.metric == "makespan" and r.bound_ms == 30000 and rule_name(r) == "makespan_p90<=30s"
    with pytest.raises(ValueError, match="METRIC_pQ<=BOUND"):
        parse_slo("throughput_p50<=3", 0.95)


def test_decisions_at_the_end_and_from_the_run():
    fast = calls(np.arange(400) * 0.1, np.full(400, 0.05))  # every TTFT 50 ms
    slow = calls(np.arange(400) * 0.1, np.full(400, 0.5))
    rule = parse_slo("ttft_p90<=100", 0.95)
    empty = pd.DataFrame({"makespan_s": []})
    assert decide(rule, fast, empty, None)["decision"] == "met"
    assert decide(rule, slow, empty, None)["decision"] == "missed"
    few = calls(np.arange(10) * 0.1, np.full(10, 0.05))
    assert decide(rule, few, empty, None)["decision"] == "undecided"  # 10 calls decide nothing
    early = {"decision": "missed", "calls": 64, "over_bound": 30}
    d = decide(rule, fast, empty, early)  # what the run decided stands
    assert d["decision"] == "missed" and d["when"] == "during the run"
    ms = parse_slo("makespan_p90<=10", 0.95)
    sessions = pd.DataFrame({"makespan_s": np.full(60, 4.0)})
    assert decide(ms, fast, sessions, None)["decision"] == "met"
    assert decide(ms, fast, sessions.assign(makespan_s=20.0), None)["decision"] == "missed"
    assert verdict([{"decision": "met"}, {"decision": "met"}]) == "pass"
    assert verdict([{"decision": "met"}, {"decision": "undecided"}]) == "undecided"
    assert verdict([{"decision": "undecided"}, {"decision": "missed"}]) == "fail"


def test_open_loop_saturation_needs_both_falling_behind_and_growing_queues():
    rng = np.random.default_rng(0)
    n = 300
    # offered 10/s; served 5/s with TTFT growing as the queue builds
    sent = np.sort(rng.uniform(0, 60, n))
    grow = 0.05 + sent * 0.2 + rng.exponential(0.05, n)
    r = open_loop_saturated(calls(sent, grow), offered_rate=10.0, duration_s=60.0)
    assert r["saturated"] and r["achieved_rate"] == pytest.approx(5.0) and r["ttft_trend_p"] < 0.05
    # keeping up: 300 calls in 30 s at 10/s offered, TTFT flat
    sent = np.sort(rng.uniform(0, 30, n))
    flat = 0.05 + rng.exponential(0.05, n)
    r = open_loop_saturated(calls(sent, flat), offered_rate=10.0, duration_s=30.0)
    assert not r["saturated"] and r["achieved_rate"] == pytest.approx(10.0)
    # behind but TTFT flat (e.g. a short tail of the workload): not saturated on throughput alone
    assert not open_loop_saturated(calls(sent, flat), offered_rate=20.0, duration_s=30.0)["saturated"]


def test_closed_loop_saturation_is_flat_throughput_with_rising_ttft():
    rng = np.random.default_rng(1)
    a = calls(np.arange(200) * 0.1, 0.05 + rng.exponential(0.01, 200))
    b = calls(np.arange(200) * 0.1, 0.20 + rng.exponential(0.01, 200))
    r = closed_loop_saturated(a, 4, 10.0, b, 8, 10.3, 0.95)
    assert r["saturated"] and r["gain_needed"] == pytest.approx(1.1) and r["ttft_p50_ratio"]["lo"] > 1
    assert not closed_loop_saturated(a, 4, 10.0, b, 8, 18.0, 0.95)["saturated"]  # throughput still rising
    same = calls(np.arange(200) * 0.1, 0.05 + rng.exponential(0.01, 200))
    assert not closed_loop_saturated(a, 4, 10.0, same, 8, 10.0, 0.95)["saturated"]  # no queueing


def test_capacity_bracket():
    c = capacity([(1, "pass"), (2, "pass"), (4, "fail"), (8, "fail")])
    assert (c["lo"], c["hi"]) == (2, 4) and "problem" not in c
    c = capacity([(1, "pass"), (2, "undecided"), (4, "pass"), (8, "fail"), (16, "pass")])  # undecided: no evidence
    assert (c["lo"], c["hi"], c["undecided"], c["non_monotone"]) == (4, 8, [2], [16])
    assert capacity([(1, "fail"), (2, "fail")])["problem"] == "the lowest load measured already fails"
    assert capacity([(1, "undecided"), (2, "fail")])["problem"] == "the lowest load measured already fails"
    assert "too few calls" in capacity([(1, "undecided"), (2, "undecided")])["problem"]
    assert capacity([(1, "pass"), (2, "pass")])["problem"] == "the highest load measured still passes"
