"""Interleaved A/B results (`tierbench ab`: ab.json and requests.parquet): per-round figures, the
comparison paired by round, and what the A/B gate reads.

A round is one variant playing the whole materialized workload. Rounds alternate A B B A A B ...,
so a pair is two adjacent rounds, one of each variant, and slow drift of the machine (20-40%
between runs minutes apart on a shared 2-core machine) hits both sides of a pair alike. Each
metric's ratio B/A is taken per pair, and its interval is Student's t over the pairs' log ratios:
the between-round spread is in it, which a bootstrap within one run cannot see (it treats the
machine's speed as fixed). Log ratios make the interval of A/B exactly the inverse of B/A's.
Within each pair, the session bootstrap (per call where the same calls ran on both sides) is kept
as the within-round interval, to show how much of the spread is the calls and how much the
machine.

Counters (engine steps, prompt tokens computed, prefix hits, client token totals) are summed over
each variant's rounds of complete pairs and compared exactly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.compare import HIGHER_IS_BETTER, compare_latency, split_metric
from analysis.metrics import summarize
from analysis.stats import Interval

AB_METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "itl_p99", "e2el_p50", "e2el_p99",
              "output_throughput")
CLIENT_COUNTERS = ("completed", "failed", "total_input_tokens", "total_output_tokens")
VERDICTS = ("B better", "B worse", "no difference measured")


def round_values(requests: pd.DataFrame, label: str) -> dict:
    """One round's figures (latencies in ms, throughput per second) and client counters."""
    s = summarize(requests[requests["tier"] == label])
    return {k: s.get(k) for k in (*AB_METRICS, *CLIENT_COUNTERS, "duration_s")}


def log_t_interval(ratios, confidence: float) -> Interval:
    """Geometric mean of per-pair ratios with a two-sided Student-t interval on their logs."""
    r = np.asarray([x for x in ratios if x is not None and x > 0 and math.isfinite(x)], dtype=float)
    method = "t over round pairs (log ratio)"
    if not r.size:
        return Interval(None, None, None, confidence, 0, 0, method)
    logs = np.log(r)
    m = float(logs.mean())
    if r.size < 2:
        return Interval(math.exp(m), None, None, confidence, 1, 1, method)
    half = float(sps.t.ppf((1 + confidence) / 2, r.size - 1) * logs.std(ddof=1) / math.sqrt(r.size))
    return Interval(math.exp(m), math.exp(m - half), math.exp(m + half), confidence, int(r.size), int(r.size), method)


def verdict(metric: str, ratio: Interval) -> str:
    """'B better' / 'B worse' only where the interval of B/A excludes 1; else no difference."""
    if ratio.lo is None or ratio.hi is None:
        return VERDICTS[2]
    higher = metric in HIGHER_IS_BETTER
    if ratio.hi < 1:
        return VERDICTS[1] if higher else VERDICTS[0]
    if ratio.lo > 1:
        return VERDICTS[0] if higher else VERDICTS[1]
    return VERDICTS[2]


def complete_pairs(rounds: list[dict]) -> list[tuple[dict, dict]]:
    """(A round, B round) of every pair whose two rounds both finished."""
    by_pair: dict[int, dict[str, dict]] = {}
    for r in rounds:
        if r.get("status") == "ok":
            by_pair.setdefault(r["pair"], {})[r["variant"]] = r
    return [(p["A"], p["B"]) for _, p in sorted(by_pair.items()) if "A" in p and "B" in p]


def _within_round(requests: pd.DataFrame, a: dict, b: dict, metric: str, confidence: float, n_boot: int) -> dict | None:
    lat = split_metric(metric)
    if not lat:
        return None
    ra, rb = requests[requests["tier"] == a["label"]], requests[requests["tier"] == b["label"]]
    c = compare_latency(ra, rb, lat[0], lat[1], confidence, n_boot, seed=a["pair"])
    return {"pair": a["pair"], **c.ratio.to_dict(), "paired": c.paired}


def compare_ab(requests: pd.DataFrame, rounds: list[dict], confidence: float = 0.95,
               metrics=AB_METRICS, n_boot: int = 1000) -> dict:
    """metric -> {a, b (medians over rounds), pair_ratios, ratio (t over pairs), within_round, verdict}.
    Rounds must carry `values` (round_values) and `label`."""
    pairs = complete_pairs(rounds)
    out = {}
    for m in metrics:
        ratios = [b["values"][m] / a["values"][m] if a["values"].get(m) and b["values"].get(m) is not None else None
                  for a, b in pairs]
        iv = log_t_interval(ratios, confidence)
        av = [a["values"].get(m) for a, _ in pairs]
        bv = [b["values"].get(m) for _, b in pairs]
        out[m] = {"a": _median(av), "b": _median(bv), "pair_ratios": ratios, "ratio": iv.to_dict(),
                  "higher_is_better": m in HIGHER_IS_BETTER, "verdict": verdict(m, iv),
                  "within_round": [w for a, b in pairs if (w := _within_round(requests, a, b, m, confidence, n_boot))]}
    return out


def counter_totals(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant, over the rounds of complete pairs: engine counters and client counters summed."""
    totals: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    for pair in complete_pairs(rounds):
        for r in pair:
            t = totals[r["variant"]]
            for k, v in {**(r.get("counters") or {}), **{c: r["values"].get(c) for c in CLIENT_COUNTERS}}.items():
                if v is not None:
                    t[k] = t.get(k, 0.0) + float(v)
    return totals


def load_ab(path: str | Path) -> dict:
    """ab.json of an A/B directory (or the file itself); ValueError naming the file when it is not one."""
    p = Path(path)
    f = p / "ab.json" if p.is_dir() else p
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{f}: not an A/B result ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("kind") != "tierbench-ab":
        raise ValueError(f"{f}: field 'kind': expected 'tierbench-ab' (written by `tierbench ab`)")
    return data


def is_ab(path: str | Path) -> bool:
    p = Path(path)
    return (p / "ab.json").is_file() if p.is_dir() else p.name == "ab.json"


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def format_ab(ab: dict) -> str:
    """The comparison as a text table: medians over rounds, B/A with its interval, the verdict."""
    c = ab["comparison"]
    conf = ab.get("confidence", 0.95)
    lines = [f"{'metric':18s} {'A':>10s} {'B':>10s} {'B/A':>7s}  {conf:.0%} interval over {ab.get('pairs', 0)} pairs"]
    for m, row in c.items():
        r = row["ratio"]
        iv = f"[{r['lo']:.3f}, {r['hi']:.3f}]" if r.get("lo") is not None else "-"
        est = f"{r['estimate']:.3f}" if r.get("estimate") is not None else "-"
        lines.append(f"{m:18s} {_fmt(row['a']):>10s} {_fmt(row['b']):>10s} {est:>7s}  {iv:18s} {row['verdict']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"
