"""A sweep's figures, read from its points' run directories (bench/sweep/ writes them).

Per point: throughputs, latency percentiles with session-bootstrap intervals, makespan for
sessions, and whether the SLOs hold. Between points: whether the engine saturated. Over points:
the SLO capacity bracket.

SLOs are early-stop rules ('ttft_p99<=2000', milliseconds; analysis.stats.EarlyStopRule), plus
'makespan_pQ<=SECONDS' for agent sessions, each decided with the rule's binomial test on every
call (session, for makespan) of the point at its end (a decision a run's own early stop took
stands). A point holds its SLOs when every rule is 'met' (at the rule's confidence), fails when one is
'missed', and is 'undecided' otherwise (too few calls): no evidence either way, so the capacity
search leaves it out. The capacity is the highest load shown to hold below the lowest load shown
to fail.

Saturation (the test, each at the sweep's confidence):
  open loop    the server fell behind the offered rate: it completed fewer than 90% of the
               calls/s offered, and TTFT grows over the point (Kendall's tau of TTFT against send
               time > 0, one-sided p < 1 - confidence): queues build while throughput stays put.
  closed loop  going from n to m sessions, request throughput rose by less than 10% of the rise in
               sessions (X_m / X_n < 1 + 0.1 (m / n - 1)), and TTFT p50 rose: the lower bound of
               the session-bootstrap interval of its ratio m/n lies above 1.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import EarlyStopRule, percentile_cis, unpaired_ratio

FALL_BEHIND = 0.9  # open loop: completed/offered below this is falling behind
CLOSED_GAIN = 0.1  # closed loop: throughput must rise by this share of the rise in sessions
LATENCIES = ("ttft", "tpot", "e2el")
_MAKESPAN = re.compile(r"\s*makespan_p(\d+(?:\.\d+)?)\s*<=\s*(\d+(?:\.\d+)?)\s*s?\s*")


def parse_slo(text: str, confidence: float) -> EarlyStopRule:
    """'ttft_p99<=2000' (ms), or 'makespan_p90<=30' (seconds); ValueError naming the text."""
    m = _MAKESPAN.fullmatch(text)
    if m:
        q = float(m.group(1))
        if not 0 < q < 100:
            raise ValueError(f"SLO {text!r}: percentile must be between 0 and 100")
        # decided once, on the point's sessions: one look, the whole error rate
        return EarlyStopRule("makespan", q, float(m.group(2)) * 1000, confidence, min_samples=8, max_looks=1)
    try:
        return EarlyStopRule.parse(text, confidence)
    except ValueError:
        raise ValueError(f"SLO {text!r}: expected METRIC_pQ<=BOUND with METRIC one of ttft, tpot, itl, e2el "
                         "(bound in ms) or makespan (bound in s), e.g. ttft_p99<=2000 or makespan_p90<=60") from None


def rule_name(rule: EarlyStopRule) -> str:
    if rule.metric == "makespan":
        return f"makespan_p{rule.percentile:g}<={rule.bound_ms / 1000:g}s"
    return f"{rule.metric}_p{rule.percentile:g}<={rule.bound_ms:g}"


def _ok_calls(requests: pd.DataFrame) -> pd.DataFrame:
    df = requests[(requests["status"] == "ok")]
    if "warmup" in df:
        df = df[~df["warmup"].fillna(False).astype(bool)]
    return df


def call_values_ms(requests: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(values in ms, session of each) for ttft | tpot | e2el | itl over completed, measured calls,
    with analysis.compare's definitions (per_call, itl_gaps)."""
    from analysis.compare import itl_gaps, per_call

    df = _ok_calls(requests)
    if metric == "itl":
        v, s = itl_gaps(df)
        return v * 1000, s
    pc = per_call(df, metric)
    keep = pc["value"].notna().to_numpy()
    return pc["value"].to_numpy(dtype=float)[keep] * 1000, pc["session"].to_numpy()[keep]


def decide(rule: EarlyStopRule, requests: pd.DataFrame, sessions: pd.DataFrame, early: dict | None) -> dict:
    """One SLO at one point: {'rule', 'decision': met | missed | undecided, 'n', 'over_bound'}.
    A decision the run's early stop took stands; otherwise the rule is decided on every value."""
    name = rule_name(rule)
    if early and early.get("decision") in ("met", "missed"):
        return {"rule": name, "decision": early["decision"], "n": early.get("calls"),
                "over_bound": early.get("over_bound"), "when": "during the run"}
    if rule.metric == "makespan":
        v = pd.to_numeric(sessions["makespan_s"], errors="coerce").dropna().to_numpy(dtype=float) * 1000
    else:
        v, _ = call_values_ms(requests, rule.metric)
    # a call-level rule spends alpha / max_looks at this look (Bonferroni over the looks a run's
    # early stop may have taken too); a makespan rule is looked at only here, with the whole alpha
    d = rule.decide(v)
    return {"rule": name, "decision": d or "undecided", "n": int(v.size), "over_bound": int((v > rule.bound_ms).sum()),
            "when": "at the end"}


def verdict(decisions: list[dict]) -> str:
    """pass: every SLO met; fail: one missed; undecided: otherwise (no SLOs: pass)."""
    if any(d["decision"] == "missed" for d in decisions):
        return "fail"
    if all(d["decision"] == "met" for d in decisions):
        return "pass"
    return "undecided"


def point_figures(run_dir: Path, requests: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Throughputs, latency p50/p90/p99 with intervals (ms), makespan p50/p90 with intervals (s);
    requests: the point's requests.parquet, read once by the caller."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    summary = next(iter((info.get("summary") or {}).values()), {})
    out: dict = {k: summary.get(k) for k in ("completed", "failed", "duration_s", "request_throughput",
                                             "output_throughput", "total_token_throughput")}
    for metric in LATENCIES:
        v, s = call_values_ms(requests, metric)
        cis = percentile_cis(v, s, (50, 90, 99), confidence=confidence)
        for q, iv in cis.items():
            out[f"{metric}_p{q:g}_ms"] = iv.to_dict()
    sp = Path(run_dir) / "sessions.parquet"
    sessions = pd.read_parquet(sp) if sp.exists() else pd.DataFrame({"makespan_s": [], "session": []})
    ms = pd.to_numeric(sessions["makespan_s"], errors="coerce").to_numpy(dtype=float)
    keep = ~np.isnan(ms)
    cis = percentile_cis(ms[keep], sessions["session"].astype(str).to_numpy()[keep], (50, 90), confidence=confidence)
    out["makespan_p50_s"], out["makespan_p90_s"] = cis[50.0].to_dict(), cis[90.0].to_dict()
    out["sessions"] = int(keep.sum())
    users = (info.get("spec") or {}).get("load", {}).get("users")
    tput = summary.get("output_throughput")
    # the Pareto axes (vLLM's plot_pareto): output tokens/s per user against in total
    out["output_throughput_per_user"] = tput / users if tput is not None and users else None
    return out


def open_loop_saturated(requests: pd.DataFrame, offered_rate: float, duration_s: float | None,
                        confidence: float = 0.95) -> dict:
    """The open-loop saturation test (module doc) at one point."""
    from scipy.stats import kendalltau

    df = _ok_calls(requests)
    sent = pd.to_numeric(df["sent"], errors="coerce").to_numpy(dtype=float)
    ttft = pd.to_numeric(df["first_token"], errors="coerce").to_numpy(dtype=float) - sent
    keep = ~np.isnan(ttft)
    span = duration_s or (float(np.nanmax(sent) - np.nanmin(sent)) if sent.size > 1 else 0.0)
    achieved = keep.sum() / span if span else None
    tau = p = None
    if keep.sum() >= 8:
        r = kendalltau(sent[keep], ttft[keep], alternative="greater")
        tau, p = float(r.statistic), float(r.pvalue)
    behind = achieved is not None and achieved < FALL_BEHIND * offered_rate
    growing = p is not None and tau > 0 and p < 1 - confidence
    return {"saturated": bool(behind and growing), "achieved_rate": achieved, "offered_rate": offered_rate,
            "ttft_trend_tau": tau, "ttft_trend_p": p,
            "test": f"achieved < {FALL_BEHIND:g} x offered and TTFT rising over the point (Kendall, p < {1 - confidence:.2g})"}


def closed_loop_saturated(prev: pd.DataFrame, prev_n: int, prev_rate: float | None, cur: pd.DataFrame, cur_n: int,
                          cur_rate: float | None, confidence: float = 0.95) -> dict:
    """The closed-loop saturation test (module doc) from the point at prev_n to the one at cur_n."""
    need = 1 + CLOSED_GAIN * (cur_n / prev_n - 1)
    gain = cur_rate / prev_rate if prev_rate and cur_rate is not None else None
    a, sa = call_values_ms(prev, "ttft")
    b, sb = call_values_ms(cur, "ttft")
    ratio = unpaired_ratio(a, sa, b, sb, 50, confidence=confidence).ratio
    flat = gain is not None and gain < need
    queued = ratio.lo is not None and ratio.lo > 1
    return {"saturated": bool(flat and queued), "throughput_gain": gain, "gain_needed": need,
            "ttft_p50_ratio": ratio.to_dict(),
            "test": f"throughput rose < {CLOSED_GAIN:g} x the rise in sessions and TTFT p50 rose (interval > 1)"}


def capacity(loads_and_verdicts: list[tuple[float, str]]) -> dict:
    """The bracket from decided points: the highest load that passed below the lowest that failed.
    Undecided points are no evidence either way: they are listed, not used. Monotone loads are
    assumed (a pass above a failure is reported, not used)."""
    pts = sorted(loads_and_verdicts)
    failing = [x for x, v in pts if v == "fail"]
    first_fail = failing[0] if failing else None
    passing = [x for x, v in pts if v == "pass" and (first_fail is None or x < first_fail)]
    out = {"lo": passing[-1] if passing else None, "hi": first_fail,
           "undecided": [x for x, v in pts if v == "undecided"],
           "non_monotone": [x for x, v in pts if v == "pass" and first_fail is not None and x > first_fail]}
    if not passing and first_fail is None:
        out["problem"] = "no load measured was decided (too few calls per point to decide the SLOs)"
    elif out["lo"] is None:
        out["problem"] = "the lowest load measured already fails"
    elif first_fail is None:
        out["problem"] = "the highest load measured still passes"
    return out
