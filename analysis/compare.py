"""Two runs compared: candidate / baseline for each latency percentile, with intervals.

Paired where the same calls ran on both sides (the same session, call index and token counts for
most calls): the per-call values are matched and sessions resampled jointly. Unpaired otherwise
(independent session resamples, plus a Mann-Whitney U test). ITL is pooled over gaps, not one
value per call, so it is always compared unpaired. Throughputs are point ratios for single runs;
with repetitions (groups 'engine@repN'), `repeated_runs` gives a between-run t-interval.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.rundata import Run
from analysis.stats import Comparison, Interval, paired_ratio, t_interval, unpaired_ratio

LATENCIES = ("ttft", "tpot", "e2el", "itl")
HIGHER_IS_BETTER = {"request_throughput", "output_throughput", "total_token_throughput", "goodput",
                    "prefix_cache_hit_ratio", "prefix_hit_vs_ideal", "completed", "good_completed"}
PAIRED_MIN_SHARE = 0.8  # paired when at least this share of each side's calls match
_REP = re.compile(r"^(?P<engine>.*)@rep\d+$")


@dataclass
class CompareRow:
    baseline_group: str
    candidate_group: str
    metric: str                 # 'ttft_p99', 'output_throughput', ...
    baseline: float | None      # ms for latencies, per second for throughputs
    candidate: float | None
    ratio: Interval             # candidate / baseline
    paired: bool = False
    n_pairs: int = 0
    mann_whitney_p: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    def to_dict(self) -> dict:
        return {"baseline_group": self.baseline_group, "candidate_group": self.candidate_group,
                "metric": self.metric, "baseline": self.baseline, "candidate": self.candidate,
                "ratio": self.ratio.to_dict(), "paired": self.paired, "n_pairs": self.n_pairs,
                "mann_whitney_p": self.mann_whitney_p, "higher_is_better": self.higher_is_better}


def split_metric(name: str) -> tuple[str, float | None] | None:
    """'ttft_p99' -> ('ttft', 99.0); 'e2el_mean' -> ('e2el', None); None for a non-latency name."""
    m = re.fullmatch(r"(ttft|tpot|itl|e2el)_(p\d+(?:\.\d+)?|median|mean)", name)
    if not m:
        return None
    stat = m.group(2)
    return m.group(1), (None if stat == "mean" else 50.0 if stat == "median" else float(stat[1:]))


def per_call(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per completed call: session, call_index, expected tokens and the metric in seconds
    (TPOT only for outputs longer than one token, as vLLM defines it)."""
    ok = df[df["status"] == "ok"]
    num = lambda c: pd.to_numeric(ok[c], errors="coerce").to_numpy(dtype=float)  # noqa: E731
    sent, first, last = num("sent"), num("first_token"), num("last_token")
    out = pd.to_numeric(ok["output_tokens"], errors="coerce").fillna(pd.to_numeric(ok["chunks"], errors="coerce"))
    out = out.to_numpy(dtype=float)
    if metric == "ttft":
        v = first - sent
    elif metric == "e2el":
        v = last - sent
    elif metric == "tpot":
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(out > 1, (last - first) / (out - 1), np.nan)
    else:
        raise ValueError(f"per_call: {metric!r} has no per-call value")
    session = ok["session"].fillna("").astype(str)
    session = session.where(session != "", ok["request_id"].astype(str))
    return pd.DataFrame({"session": session.to_numpy(), "call_index": pd.to_numeric(ok["call_index"], errors="coerce"),
                         "p": pd.to_numeric(ok["expected_prompt_tokens"], errors="coerce"),
                         "o": pd.to_numeric(ok["expected_output_tokens"], errors="coerce"), "value": v})


def itl_gaps(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every inter-chunk gap of completed calls (seconds), with its call's session."""
    ok = df[df["status"] == "ok"]
    session = ok["session"].fillna("").astype(str)
    session = session.where(session != "", ok["request_id"].astype(str))  # no session: the call is its own
    vals, sess = [], []
    for s, gaps in zip(session, ok["itl"]):
        vals.extend(gaps)
        sess.extend([s] * len(gaps))
    return np.asarray(vals, dtype=float), np.asarray(sess, dtype=object)


def compare_latency(a: pd.DataFrame, b: pd.DataFrame, metric: str, q: float | None, confidence: float,
                     n_boot: int, seed: int) -> Comparison:
    """Percentile q of one latency (ttft|tpot|e2el|itl) of rows b against rows a, paired per call
    where the same calls ran on both sides."""
    if metric == "itl":
        va, sa = itl_gaps(a)
        vb, sb = itl_gaps(b)
        return unpaired_ratio(va, sa, vb, sb, q, confidence=confidence, n_boot=n_boot, seed=seed)
    pa, pb = per_call(a, metric), per_call(b, metric)
    keys = ["session", "call_index", "p", "o"]
    m = pa.dropna(subset=["value"]).merge(pb.dropna(subset=["value"]), on=keys, suffixes=("_a", "_b"))
    na, nb = pa["value"].notna().sum(), pb["value"].notna().sum()
    if len(m) and len(m) >= PAIRED_MIN_SHARE * max(na, nb):
        return paired_ratio(m["value_a"], m["value_b"], m["session"], q, confidence=confidence, n_boot=n_boot,
                            seed=seed)
    return unpaired_ratio(pa["value"], pa["session"], pb["value"], pb["session"], q, confidence=confidence,
                          n_boot=n_boot, seed=seed)


def pair_groups(a: Run, b: Run) -> list[tuple[str, str]]:
    """Groups compared: those present in both runs; when there are none in common and each run
    has exactly one group, that one against that one."""
    ga, gb = a.groups(), b.groups()
    common = [g for g in ga if g in gb]
    if common:
        return [(g, g) for g in common]
    if len(ga) == 1 and len(gb) == 1:
        return [(ga[0], gb[0])]
    return []


def compare_metric(a: Run, ga: str, b: Run, gb: str, name: str, *, confidence: float = 0.95,
                   n_boot: int = 2000, seed: int = 0) -> CompareRow:
    """One metric of group ga of run a (baseline) against group gb of run b (candidate)."""
    lat = split_metric(name)
    if lat and a.has_rows and b.has_rows:
        metric, q = lat
        c = compare_latency(a.group_rows(ga), b.group_rows(gb), metric, q, confidence, n_boot, seed)
        scale = 1000.0  # seconds -> ms, as in the summaries
        return CompareRow(ga, gb, name, _scaled(c.baseline, scale), _scaled(c.candidate, scale), c.ratio,
                          c.paired, c.n_pairs, c.mann_whitney_p)
    va, vb = _summary_value(a, ga, name), _summary_value(b, gb, name)
    ratio = vb / va if va not in (None, 0) and vb is not None else None
    return CompareRow(ga, gb, name, va, vb, Interval(ratio, None, None, confidence, 0, 0, "point (one value per run: no interval)"))


def _scaled(v, k):
    return None if v is None else v * k


def _summary_value(run: Run, group: str, name: str) -> float | None:
    s = run.summary.get(group, {})
    v = s.get(name)
    if v is None:
        v = (s.get("engine_counters") or {}).get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if isinstance(v, float) and math.isnan(v) else float(v)


DEFAULT_METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "itl_p99", "e2el_p50", "e2el_p99",
                   "output_throughput", "request_throughput")


def compare_runs(a: Run, b: Run, metrics=DEFAULT_METRICS, *, confidence: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> list[CompareRow]:
    """Every metric for every pair of groups (pair_groups); [] when no group pairs up."""
    return [compare_metric(a, ga, b, gb, m, confidence=confidence, n_boot=n_boot, seed=seed)
            for ga, gb in pair_groups(a, b) for m in metrics]


def repeated_runs(run: Run, metric: str, confidence: float = 0.95) -> dict[str, Interval]:
    """Per engine, the between-repetition t-interval of a summary metric over its 'engine@repN'
    groups (AIPerf's view of repeated runs)."""
    per: dict[str, list[float]] = {}
    for g in run.summary:
        m = _REP.match(g)
        if m:
            v = _summary_value(run, g, metric)
            if v is not None:
                per.setdefault(m.group("engine"), []).append(v)
    return {e: t_interval(v, confidence) for e, v in per.items()}


def format_compare(rows: list[CompareRow], baseline_name: str = "baseline", candidate_name: str = "candidate") -> str:
    """A terminal table: one line per group and metric."""
    if not rows:
        return "(no groups in common to compare)"
    pct = int(round(rows[0].ratio.confidence * 100))
    header = ["group", "metric", baseline_name, candidate_name, "ratio", f"{pct}% CI", "test"]
    lines = []
    for r in rows:
        grp = r.baseline_group if r.baseline_group == r.candidate_group else f"{r.baseline_group}->{r.candidate_group}"
        ci = "-" if r.ratio.lo is None else f"[{r.ratio.lo:.3f}, {r.ratio.hi:.3f}]"
        test = (f"paired n={r.n_pairs}" if r.paired else
                f"MWU p={r.mann_whitney_p:.3g}" if r.mann_whitney_p is not None else r.ratio.method or "-")
        lines.append([grp, r.metric, _fmt(r.baseline), _fmt(r.candidate), _fmt(r.ratio.estimate, ratio=True), ci, test])
    widths = [max(len(x[i]) for x in [header] + lines) for i in range(len(header))]
    fmt = lambda x: "  ".join(c.ljust(w) if i < 2 or i == 6 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))  # noqa: E731
    return "\n".join([fmt(header), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt(x) for x in lines])


def _fmt(v, ratio: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if ratio else f"{v:.2f}"
