"""The A/B comparison and gate (analysis/ab.py, analysis/gate.py run_ab_gate) on synthetic round
results whose true ratios are known: identical variants under a drifting machine pass, a 15%
slowdown fails, counters are exact, and too few pairs decide nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.ab import complete_pairs, counter_totals, log_t_interval, verdict
from analysis.gate import GateInputError, gate_failed, run_ab_gate


def synthetic_ab(ratio: float, pairs: int, rng: np.random.Generator, noise: float = 0.03, drift: float = 0.4,
                 counters_b: dict | None = None) -> dict:
    """Rounds A B, B A, ...: the machine's speed drifts by up to `drift` over the run (hitting both
    rounds of a pair alike), each round adds `noise` of its own; B's true TPOT is `ratio` x A's."""
    rounds, comparison = [], {}
    values = {"A": [], "B": []}
    for k in range(pairs):
        speed = 1 + drift * k / max(1, pairs - 1)
        for v in (("A", "B") if k % 2 == 0 else ("B", "A")):
            tpot = 5.0 * speed * (ratio if v == "B" else 1.0) * math.exp(rng.normal(0, noise))
            counters = {"steps": 601.0, "prompt_tokens_computed": 3468.0}
            if v == "B" and counters_b:
                counters.update(counters_b)
            r = {"index": len(rounds), "pair": k, "variant": v, "label": f"round{len(rounds):02d}", "status": "ok",
                 "counters": counters, "values": {"tpot_p50": tpot, "output_throughput": 1000.0 / tpot,
                                                  "completed": 31, "failed": 0, "total_input_tokens": 12540,
                                                  "total_output_tokens": 601}}
            rounds.append(r)
            values[v].append(r)
    for m in ("tpot_p50", "output_throughput"):
        pr = [b["values"][m] / a["values"][m] for a, b in complete_pairs(rounds)]
        comparison[m] = {"a": None, "b": None, "pair_ratios": pr}
    return {"kind": "tierbench-ab", "rounds": rounds, "comparison": comparison, "pairs": pairs}


def test_identical_variants_pass_despite_drift_and_a_15pct_slowdown_fails():
    rng = np.random.default_rng(7)
    false_alarms = sum(gate_failed(run_ab_gate(synthetic_ab(1.0, 16, rng), ["tpot_p50", "output_throughput"], 10))
                       for _ in range(200))
    detections = sum(gate_failed(run_ab_gate(synthetic_ab(1.15, 16, rng), ["tpot_p50", "output_throughput"], 10))
                     for _ in range(200))
    # a drift of 40% across the run is larger than the allowance: unpaired, it would fail identical code
    assert false_alarms <= 2 and detections >= 190, (false_alarms, detections)


def test_counters_are_summed_per_variant_and_gated_exactly():
    rng = np.random.default_rng(1)
    ab = synthetic_ab(1.0, 4, rng)
    assert counter_totals(ab["rounds"])["A"]["steps"] == 4 * 601
    assert not gate_failed(run_ab_gate(ab, ["steps", "completed", "total_output_tokens"], 10))
    changed = synthetic_ab(1.0, 4, rng, counters_b={"steps": 602.0})
    v = run_ab_gate(changed, ["steps"], 10)
    assert gate_failed(v) and v[0].kind == "exact" and "2404 -> 2408" in v[0].reason


def test_a_died_round_leaves_its_pair_out():
    ab = synthetic_ab(1.0, 3, np.random.default_rng(2))
    ab["rounds"][3]["status"] = "died"  # pair 1's second round
    assert [a["pair"] for a, _ in complete_pairs(ab["rounds"])] == [0, 2]
    assert counter_totals(ab["rounds"])["B"]["steps"] == 2 * 601


def test_one_pair_decides_nothing_and_unknown_metrics_are_named():
    ab = synthetic_ab(1.0, 1, np.random.default_rng(3))
    v = run_ab_gate(ab, ["tpot_p50"], 10)
    assert gate_failed(v) and "fewer than two complete round pairs" in v[0].reason
    with pytest.raises(GateInputError, match="unknown A/B metric 'ttft_p42'"):
        run_ab_gate(synthetic_ab(1.0, 2, np.random.default_rng(3)), ["ttft_p42"], 10)
    with pytest.raises(GateInputError, match="no complete round pair"):
        run_ab_gate({"rounds": []}, ["tpot_p50"], 10)


def test_log_t_interval_is_symmetric_in_the_log_and_inverts():
    r = [1.10, 1.20, 1.15, 1.05]
    iv, inv = log_t_interval(r, 0.95), log_t_interval([1 / x for x in r], 0.95)
    assert iv.estimate == pytest.approx(math.exp(np.mean(np.log(r))))
    assert iv.lo == pytest.approx(1 / inv.hi) and iv.hi == pytest.approx(1 / inv.lo)
    assert iv.lo < iv.estimate < iv.hi and iv.n == 4
    assert log_t_interval([1.1], 0.95).lo is None  # one pair: no interval


def test_verdict_words_follow_the_interval():
    from analysis.stats import Interval
    assert verdict("tpot_p50", Interval(1.2, 1.1, 1.3, 0.95)) == "B worse"
    assert verdict("tpot_p50", Interval(0.8, 0.7, 0.9, 0.95)) == "B better"
    assert verdict("tpot_p50", Interval(1.05, 0.95, 1.15, 0.95)) == "no difference measured"
    assert verdict("output_throughput", Interval(1.2, 1.1, 1.3, 0.95)) == "B better"
    assert verdict("output_throughput", Interval(0.8, 0.7, 0.9, 0.95)) == "B worse"
