"""The groups the report shows (one engine/tier group of one run) and their numbers: latency
samples as analysis.compare takes them, and percentile intervals bootstrapped over sessions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.compare import itl_gaps, per_call
from analysis.metrics import group_key
from analysis.report_html import num
from analysis.rundata import Run
from analysis.stats import Interval, percentile_cis

QS = (50, 90, 99)
# (metric, label, format of a value in ms)
LATENCIES = (("ttft", "TTFT", "{:.1f}"), ("tpot", "TPOT", "{:.2f}"), ("itl", "ITL", "{:.2f}"),
             ("e2el", "E2EL", "{:.1f}"))


@dataclass
class Group:
    """One engine/tier group of one run, as the report shows it."""
    run: Run
    key: str            # 'engine' or 'engine@tier'
    label: str          # unique on the page: the key, or 'run / key' with several runs
    engine: str
    summary: dict
    rows: pd.DataFrame | None  # measured rows; None for a summary-only run
    intervals: dict = field(default_factory=dict)  # confidence -> latency_intervals (computed once)


def collect_groups(runs: list[Run]) -> list[Group]:
    """Every group of every run, in order, with labels unique on the page."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    out = []
    for run, name in zip(runs, names):
        keys = run.groups()
        if run.tiered:  # each scenario, then its calls per tier
            keys = [k for sc in keys for k in [sc, *(g for g in run.summary if g.startswith(f"{sc}@"))]]
        for key in keys:
            summary = run.summary.get(key, {})
            engine = str(summary.get("engine") or key.split("@", 1)[0])
            label = key if len(runs) == 1 else f"{name} / {key}"
            out.append(Group(run, key, label, engine, summary, run.group_rows(key) if run.has_rows else None))
    return out


def latency_samples(rows: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(values in seconds, session of each) of one latency over completed calls, as
    analysis.compare samples it (ITL: every gap; the others: one value per call)."""
    if metric == "itl":
        return itl_gaps(rows)
    pc = per_call(rows, metric)
    return pc["value"].to_numpy(dtype=float), pc["session"].to_numpy()


def latency_intervals(group: Group, confidence: float) -> dict[str, dict[float, Interval]]:
    """Per latency metric, p50/p90/p99 in ms with their session-bootstrap intervals; for a
    summary-only group the summary's point values without intervals."""
    if confidence in group.intervals:
        return group.intervals[confidence]
    out: dict[str, dict[float, Interval]] = group.intervals.setdefault(confidence, {})
    for metric, _, _ in LATENCIES:
        if group.rows is None:
            out[metric] = {float(q): Interval(num(group.summary.get(f"{metric}_p{q}")), None, None, confidence,
                                              method="summary only") for q in QS}
            continue
        values, sessions = latency_samples(group.rows, metric)
        cis = percentile_cis(values, sessions, QS, confidence=confidence)
        out[metric] = {q: _scaled(iv, 1000.0) for q, iv in cis.items()}
    return out


def makespan_intervals(group: Group, confidence: float) -> dict[float, Interval]:
    """Session makespan p50/p99 (s), each session its own resampling unit."""
    s = group_sessions(group)
    if s is None or not len(s):
        return {float(q): Interval(num(group.summary.get(f"makespan_p{q}_s")), None, None, confidence,
                                   method="summary only") for q in (50, 99)}
    m = pd.to_numeric(s["makespan_s"], errors="coerce").to_numpy(dtype=float)
    return percentile_cis(m, None, (50, 99), confidence=confidence)


def _scaled(iv: Interval, k: float) -> Interval:
    f = lambda v: None if v is None else v * k  # noqa: E731
    return Interval(f(iv.estimate), f(iv.lo), f(iv.hi), iv.confidence, iv.n, iv.clusters, iv.method)


def group_sessions(group: Group) -> pd.DataFrame | None:
    """The group's rows of the run's sessions table; None without one."""
    s = group.run.sessions
    if s is None or not len(s):
        return None
    keys = [group_key(e, t) for e, t in zip(s["engine"], s["tier"])]
    return s[[k == group.key for k in keys]]
