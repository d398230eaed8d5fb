"""Characterization of a trace: the `trace stats --json` keys of docs/metrics.md and the per-call
series that plots and the workload fitter need."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traces.model import STOP_END, STOP_TOOL, Trace


def dist(values) -> dict | None:
    """{mean, p50, p90, p99, max} with linear-interpolation percentiles; None when empty."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if a.size == 0:
        return None
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


@dataclass
class CallSeries:
    """Flat per-call arrays in session order, for statistics, plots and fitting."""
    session: np.ndarray  # index of the call's session in trace.sessions
    index: np.ndarray  # call index within its session
    prompt: np.ndarray
    output: np.ndarray
    think: np.ndarray  # NaN where unknown (first calls, open-loop traces)
    prev_stop: np.ndarray  # stop reason of the previous call in the session ('' if none/unknown)
    cached: np.ndarray  # prompt tokens an infinite prefix cache would serve (0 without prefix info)
    kept: np.ndarray  # prompt tokens shared as a prefix with the previous call of the session (-1 for call 0)


def call_series(trace: Trace) -> CallSeries:
    n = trace.num_calls
    session = np.empty(n, np.int64)
    index = np.empty(n, np.int64)
    prompt = np.empty(n, np.int64)
    output = np.empty(n, np.int64)
    think = np.full(n, np.nan)
    prev_stop = np.empty(n, dtype=object)
    i = 0
    for si, s in enumerate(trace.sessions):
        last = ""
        for c in s.calls:
            session[i], index[i], prompt[i], output[i] = si, c.index, c.prompt_tokens, c.output_tokens
            if c.think_s is not None:
                think[i] = c.think_s
            prev_stop[i] = last if c.index > 0 else ""
            last = c.stop or ""
            i += 1
    cached, kept = prefix_reuse(trace)
    return CallSeries(session, index, prompt, output, think, prev_stop, cached, kept)


def prefix_reuse(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per call, in session order: (tokens served by an infinite prefix cache, tokens shared as a
    prefix with the previous call of the same session).

    An infinite cache serves the longest prefix of a call's blocks already seen in its scope (the
    whole trace for global hashes, the root session for session-scoped hashes), with calls taken
    in arrival order. Chained hashes make "leading blocks all seen" the right test."""
    n = trace.num_calls
    cached = np.zeros(n, np.int64)
    kept = np.full(n, -1, np.int64)
    bs = trace.block_size or 0
    if not bs:
        return cached, kept
    roots = trace.root_of()
    order = []  # (arrival, scope, position, call, previous call in session)
    pos = 0
    for s in trace.sessions:
        prev = None
        scope = roots[s.id] if trace.hash_scope == "session" else ""
        for c in s.calls:
            t = c.arrival_s if c.arrival_s is not None else float(pos)
            order.append((t, pos, scope, c, prev))
            prev = c
            pos += 1
    order.sort(key=lambda r: (r[0], r[1]))
    seen: dict[str, set] = {}
    last_in_scope: dict[str, np.ndarray] = {}
    for _, p, scope, c, prev in order:
        ids = c.hash_ids if c.hash_ids is not None else np.empty(0, np.int64)
        if prev is not None and prev.hash_ids is not None:
            kept[p] = min(common_prefix_len(ids, prev.hash_ids) * bs, c.prompt_tokens)
        elif prev is not None:
            kept[p] = 0
        s = seen.setdefault(scope, set())
        # Fast path: the previous prompt of this scope usually covers most of the prefix.
        last = last_in_scope.get(scope)
        m = common_prefix_len(ids, last) if last is not None else 0
        while m < len(ids) and int(ids[m]) in s:
            m += 1
        cached[p] = min(m * bs, c.prompt_tokens)
        if m < len(ids):
            s.update(ids[m:].tolist())
        last_in_scope[scope] = ids
    return cached, kept


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading hash blocks two calls share."""
    k = min(len(a), len(b))
    if k == 0:
        return 0
    diff = np.flatnonzero(a[:k] != b[:k])
    return int(diff[0]) if diff.size else k


def trace_stats(trace: Trace, series: CallSeries | None = None) -> dict:
    """The documented keys (docs/metrics.md), plus a few more that characterization needs."""
    cs = series or call_series(trace)
    top = [s for s in trace.sessions if s.parent_id is None]
    arrivals = [c.arrival_s for c in trace.calls() if c.arrival_s is not None]
    duration = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else None
    tool_gaps = cs.think[(cs.prev_stop == STOP_TOOL) & ~np.isnan(cs.think)]
    any_stop = any(c.stop for c in trace.calls())
    think = tool_gaps if any_stop else cs.think[~np.isnan(cs.think)]
    total_prompt = int(cs.prompt.sum())
    stops = [c.stop or "unknown" for c in trace.calls()]
    out = {
        "format": trace.format,
        "source": trace.source,
        "sessions": len(top),
        "subagent_sessions": len(trace.sessions) - len(top),
        "calls": trace.num_calls,
        "duration_s": duration,
        "calls_per_session": dist([len(s.calls) for s in top]),
        "input_tokens": dist(cs.prompt),
        "output_tokens": dist(cs.output),
        "think_time_s": dist(think),
        "think_time_after_end_turn_s": dist(cs.think[(cs.prev_stop == STOP_END) & ~np.isnan(cs.think)]),
        "prefix_reuse_ratio": (float(cs.cached.sum() / total_prompt) if trace.block_size and total_prompt else None),
        "arrival_rate_per_s": (trace.num_calls / duration if duration else None),
        "stop_reasons": {k: stops.count(k) / len(stops) for k in sorted(set(stops))} if stops else {},
        "block_size": trace.block_size,
    }
    return out


def reuse_by_call_index(cs: CallSeries, max_index: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(call index, mean cached/prompt at that index, number of calls) for plots."""
    idx = np.minimum(cs.index, max_index)
    ratio = np.where(cs.prompt > 0, cs.cached / np.maximum(cs.prompt, 1), 0.0)
    ks = np.unique(idx)
    means = np.array([ratio[idx == k].mean() for k in ks])
    counts = np.array([(idx == k).sum() for k in ks])
    return ks, means, counts
