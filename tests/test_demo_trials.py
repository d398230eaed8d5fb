"""tools/demo_trials.py's comparison: the verdict follows the interval over runs, and a metric
vLLM reports as zero in a run (tokens that arrive together) is left out, not divided by."""
from __future__ import annotations

from tools.demo_trials import ratio


def runs(pairs):
    return [{"values": {"reference": {"m": a}, "vllm": {"m": b}}} for a, b in pairs]


def test_verdicts_follow_the_interval():
    assert ratio(runs([(5, 10), (5.5, 10), (4.8, 10)]), "m")["verdict"] == "at or below"
    assert ratio(runs([(20, 10), (21, 10), (19, 10)]), "m")["verdict"] == "above"
    r = ratio(runs([(8, 10), (12, 10), (10, 10)]), "m")
    assert r["verdict"] == "no difference measured" and r["lo"] < 1 < r["hi"]


def test_zero_values_are_left_out():
    r = ratio(runs([(5, 10), (5, 0), (5.2, 10), (4.9, 10)]), "m")
    assert r["n"] == 3 and r["verdict"] == "at or below"
    assert ratio(runs([(5, 0), (5, 10)]), "m")["verdict"] == "not comparable"
