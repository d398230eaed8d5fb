"""Fitting a workload profile (traces/profile.py) to any trace.

Every distribution is reduced to its quantile function on the profile's knots, so a profile
keeps the shape of the workload and nothing of any single session. The per-call quantities come
from traces.stats.call_series: `kept` (the prefix an infinite cache shares with the previous
call) is what separates full keeps, edits and compactions.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np

from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL, Trace
from traces.quantiles import round_sig
from traces.profile import (DEFAULT_COMPLEXITY_MIX, KNOTS, STOP_UNKNOWN, STOPS, Context, PartialKeep, Profile,
                            Quantiles, Subagents)
from traces.stats import CallSeries, call_series

FEW_VALUES = 12  # integer data with at most this many distinct values get knots at the atoms' edges
MIN_SAMPLES = 30  # a by-stop-reason table with fewer samples falls back to the pooled fit
SHRINK = 0.75  # a partial keep whose new prompt is below this fraction of the previous one is a compaction
LIMIT_NEAR = 0.9  # a compaction from at least this fraction of its session's largest prompt is a context limit
SIZE_STEP = 1.2  # size bins start as a geometric grid with this ratio ...
BIN_SHARE = 1 / 40  # ... merged until each holds at least this share of the transitions
MIN_BIN = 200  # ... and at least this many
DEFAULT_BLOCK_SIZE = 16  # synthetic block size when the trace has none (vLLM's default)


def fit_quantiles(values, log: bool = True, integer: bool | None = None) -> Quantiles | None:
    """The quantile function of `values` on the profile knots; None when there are no values.

    Integer data (auto-detected unless `integer` is given) are treated as atoms spread uniformly
    over [x, x + 1): the quantile function is then continuous and flooring a draw from it gives
    back the atoms' probabilities exactly (think times recorded at 1 s resolution, small counts)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    x = np.maximum(x, 0.0)
    if integer is None:
        integer = bool(np.all(x == np.floor(x)))
    p = np.asarray(KNOTS)
    if integer:
        v, counts = np.unique(x, return_counts=True)
        w = counts / x.size
        hi = np.cumsum(w)
        lo = hi - w
        if v.size <= FEW_VALUES:
            # Few distinct values: knots at every atom's edges, so that no mass leaks into the
            # gaps between atoms (the fixed grid would interpolate across them).
            p = np.concatenate([[0.0], np.repeat(hi[:-1], 2) + np.tile([0.0, 1e-9], v.size - 1), [1.0]])
            q = np.concatenate([[v[0]], np.ravel(np.column_stack([v[:-1] + 1, v[1:]])), [v[-1] + 1]])
            q = q - np.tile([0.0, 1e-6], v.size)  # stay inside [v, v + 1) so flooring gives v
            return Quantiles([float(k) for k in p], [float(t) for t in q], log=log, integer=True)
        j = np.minimum(np.searchsorted(hi, p, side="left"), len(v) - 1)
        q = v[j] + np.clip((p - lo[j]) / w[j], 0.0, 1.0)
    else:
        q = np.quantile(x, p)
    q = np.maximum.accumulate([round_sig(float(v)) for v in q])  # rounding must not break monotonicity
    return Quantiles([float(k) for k in p], [float(v) for v in q], log=log, integer=integer)


def _shares(keys: np.ndarray) -> dict[str, float]:
    """Each stop reason's share, rounded, summing to exactly 1."""
    if keys.size == 0:
        return {k: float(k == STOP_UNKNOWN) for k in STOPS}
    p = {k: round_sig(float((keys == k).mean())) for k in STOPS}
    top = max(p, key=p.get)
    p[top] = 1.0 - sum(v for k, v in p.items() if k != top)
    return p


def _stop_key(stop: str | None) -> str:
    return stop if stop in (STOP_TOOL, STOP_END) else STOP_UNKNOWN


def shared_prefix_blocks(trace: Trace) -> int:
    """The leading blocks common to a majority of top-level sessions' first calls (global hash
    scope only). Chained hashes make "the same id at position j" mean "the same first j+1 blocks",
    so the prefix grows while the most common id at the next position is held by a majority."""
    if trace.hash_scope != "global" or not trace.block_size:
        return 0
    firsts = [s.calls[0].hash_ids for s in trace.sessions
              if s.parent_id is None and s.calls and s.calls[0].hash_ids is not None]
    need = len(firsts) / 2
    if not firsts:
        return 0
    j = 0
    while True:
        col = [int(ids[j]) for ids in firsts if len(ids) > j]
        if len(col) <= need:
            return j
        _, counts = np.unique(col, return_counts=True)
        if counts.max() <= need:
            return j
        j += 1


def fit_profile(trace: Trace, name: str, *, source: str | None = None,
                series: CallSeries | None = None) -> Profile:
    """A profile of `trace`. Works for any trace: without prefix information (no hash ids) every
    call is fitted as a full rewrite (reuse 0, no shared prefix); single-call traces fit one call
    per session and, where arrivals are known, a Poisson session rate."""
    cs = series or call_series(trace)
    notes: list[str] = []
    n = len(cs.prompt)
    sub_of_session = np.array([s.parent_id is not None for s in trace.sessions], bool)
    is_sub = sub_of_session[cs.session] if n else np.zeros(0, bool)
    stop = np.array([_stop_key(c.stop) for c in trace.calls()], dtype=object)
    first = cs.index == 0
    prev_key = np.array([_stop_key(s or None) for s in cs.prev_stop], dtype=object)
    prev_prompt = np.r_[0, cs.prompt[:-1]] if n else np.zeros(0, np.int64)
    later = ~first & (prev_prompt > 0)

    has_prefix = bool(trace.block_size) and any(c.hash_ids is not None and len(c.hash_ids) for c in trace.calls())
    bs = int(trace.block_size or DEFAULT_BLOCK_SIZE)
    top = [s for s in trace.sessions if s.parent_id is None]

    # Shared prefix: what the reader knows (WEKA's system + tool tokens), else estimated.
    if "shared_prefix_tokens" in trace.meta:
        shared = int(trace.meta["shared_prefix_tokens"])
    elif has_prefix:
        shared = shared_prefix_blocks(trace) * bs
        if trace.hash_scope != "global":
            notes.append("hash ids are session-scoped: no shared prefix across sessions could be estimated")
    else:
        shared = 0
    top_first = first & ~is_sub
    first_extra = fit_quantiles(np.maximum(cs.prompt[top_first] - shared, 0)) or Quantiles.constant(0, True)

    context = fit_context(cs, prev_prompt, prev_key, later, has_prefix, bs, notes)
    # Stops, outputs, think times.
    calls_of = np.bincount(cs.session, minlength=len(trace.sessions)) if n else np.zeros(0, np.int64)
    last = cs.index == calls_of[cs.session] - 1 if n else np.zeros(0, bool)
    stop_p = _shares(stop[~last]) if (~last).any() else _shares(stop)
    last_p = _shares(stop[last])
    pooled_out = fit_quantiles(cs.output) or Quantiles.constant(0, True)
    output = {k: (fit_quantiles(cs.output[stop == k]) if (stop == k).sum() >= MIN_SAMPLES else pooled_out)
              for k in STOPS}
    known_think = later & np.isfinite(cs.think) if n else np.zeros(0, bool)
    pooled_think = fit_quantiles(cs.think[known_think])
    if pooled_think is None:
        pooled_think = Quantiles.constant(0.0)
        if later.any():
            notes.append("the trace records no think times: think time 0")
    think = {}
    for k in STOPS:
        m = known_think & (prev_key == k)
        think[k] = fit_quantiles(cs.think[m]) if m.sum() >= MIN_SAMPLES else pooled_think

    # Complexity labels, where the trace has them.
    labels = [c.complexity for c in trace.calls() if c.complexity in COMPLEXITIES]
    if labels:
        mix = {k: labels.count(k) / len(labels) for k in COMPLEXITIES}
        mix = {k: round_sig(v) for k, v in mix.items()}
        mix["simple"] = round_sig(1.0 - mix["moderate"] - mix["complex"])
    else:
        mix = dict(DEFAULT_COMPLEXITY_MIX)
        notes.append("no complexity labels in the trace: the default mix simple 0.5 / moderate 0.25 / complex 0.25 "
                     "(the seed article's 70-80% of calls that a small model can serve)")

    # Subagents.
    subs = [s for s in trace.sessions if s.parent_id is not None and s.calls]
    subagents = None
    if subs:
        top_calls = sum(len(s.calls) for s in top)
        subagents = Subagents(
            spawn_probability=round_sig(len(subs) / max(top_calls, 1)),
            calls_per_session=fit_quantiles([len(s.calls) for s in subs]),
            first_prompt_tokens=fit_quantiles([s.calls[0].prompt_tokens for s in subs]),
        )

    if has_prefix and top and all(len(s.calls) == 1 for s in trace.sessions):
        notes.append("single-call sessions: prefix sharing between calls beyond the shared prefix (multi-turn "
                     "conversations the trace does not link) is not modelled, so synthetic reuse is lower")

    # Session arrivals: a Poisson rate where the sessions' start times are known and spread.
    starts = [s.start_s if s.start_s is not None else s.calls[0].arrival_s for s in top if s.calls]
    starts = np.array([t for t in starts if t is not None], float)
    rate = None
    if starts.size >= 2 and starts.max() > starts.min():
        rate = round_sig(float((starts.size - 1) / (starts.max() - starts.min())))
    else:
        notes.append("no session arrival process in the trace: closed loop (give a rate at run time)")

    return Profile(
        name=name,
        source=source or f"fitted from the {trace.format or 'unknown'} trace {trace.source}",
        fitted_from={"path": trace.source, "format": trace.format, "sessions": len(top),
                     "subagent_sessions": len(subs), "calls": int(n), "hash_scope": trace.hash_scope,
                     "date": _dt.date.today().isoformat()},
        block_size=bs,
        arrival_rate_per_s=rate,
        calls_per_session=fit_quantiles([len(s.calls) for s in top]) or Quantiles.constant(1, True),
        shared_prefix_tokens=int(shared),
        first_prompt_tokens=first_extra,
        context=context,
        output_tokens=output,
        stop_probabilities=stop_p,
        last_stop_probabilities=last_p,
        think_s=think,
        complexity_mix=mix,
        subagents=subagents,
        notes=notes,
    )


def fit_context(cs: CallSeries, prev_prompt: np.ndarray, prev_key: np.ndarray, later: np.ndarray,
                has_prefix: bool, bs: int, notes: list[str]) -> Context:
    """The context transition model from the calls after the first (`later`)."""
    n = len(cs.prompt)
    if has_prefix:
        kept = np.maximum(cs.kept, 0)
        # The last block or two of a prompt may change without the history being edited (a
        # partial block is completed, a chat template closes the turn differently).
        full = later & (prev_prompt - kept <= max(2 * bs, 128))
    else:
        kept = np.zeros(n, np.int64)
        full = np.zeros(n, bool)
        notes.append("the trace has no prefix information: every call is fitted as a full rewrite (reuse 0)")
    prev = np.maximum(prev_prompt, 1)
    frac = np.minimum(kept / prev, 1.0)
    ratio = cs.prompt / prev
    compact = later & ~full & (ratio < SHRINK)
    edit = later & ~full & ~compact
    # After a full keep the synthetic prompt keeps every complete block of the previous one, so
    # appended tokens are counted from there: then prompt growth, not just reuse, is reproduced.
    grown = np.maximum(cs.prompt - (prev_prompt // bs) * bs, 0)

    # Context limits: a session's largest prompt, by session length (long sessions are the ones
    # that fill their context). A compaction from (nearly) that largest prompt is the session
    # hitting its limit; the synthetic sessions do it when a prompt would exceed theirs.
    n_sessions = int(cs.session.max()) + 1 if n else 0
    smax = np.zeros(n_sessions)
    np.maximum.at(smax, cs.session, cs.prompt)
    calls = np.bincount(cs.session, minlength=n_sessions)
    limit_edges = calls_bins(calls)
    lb = np.searchsorted(limit_edges, calls, side="right")
    limits = [fit_quantiles(smax[lb == i]) for i in range(len(limit_edges) + 1)]
    at_limit = compact & (prev_prompt >= LIMIT_NEAR * smax[cs.session])
    other = compact & ~at_limit
    p_compact = round_sig(float(other.sum() / max(later.sum(), 1)))
    if not has_prefix:  # reuse 0: every call "compacts" to nothing and the whole prompt is new
        compact, edit = later.copy(), np.zeros(n, bool)
        p_compact = 1.0

    edges = size_bins(prev_prompt[later])
    b = np.searchsorted(edges, prev_prompt, side="right")
    pooled_app = fit_quantiles(grown[full]) or Quantiles.constant(0, True)
    appended = []
    for i in range(len(edges) + 1):
        m = full & (b == i)
        appended.append(fit_quantiles(grown[m]) if m.sum() >= MIN_SAMPLES else pooled_app)
    p_edit = {}
    for k in STOPS:
        m = later & (prev_key == k)
        if m.sum() < MIN_SAMPLES:
            m = later
        p_edit[k] = round_sig(float(edit[m].sum() / max(m.sum(), 1)))
    partial = {}
    for kind, m in (("edit", edit), ("compact", compact)):
        partial[kind] = PartialKeep(fit_quantiles(frac[m], log=False, integer=False),
                                    fit_quantiles(ratio[m], integer=False)) if m.any() else None
    return Context(max_context_tokens=int(cs.prompt.max()) if n else 1, limit_edges=limit_edges,
                   limit_tokens=limits, p_compact=p_compact, p_edit=p_edit, edit=partial["edit"],
                   compact=partial["compact"], size_edges=edges, appended_tokens=appended)


def calls_bins(calls: np.ndarray, bins: int = 4) -> list[float]:
    """Edges splitting sessions into about `bins` equal groups by length (fewer when lengths
    repeat or sessions are few: at least 50 sessions a group)."""
    bins = int(min(bins, max(1, calls.size // 50)))
    qs = np.quantile(calls, np.linspace(0, 1, bins + 1)[1:-1]) if bins > 1 else []
    edges = sorted({float(np.ceil(q)) for q in qs if q > calls.min()})
    return edges


def size_bins(prev_prompts: np.ndarray) -> list[float]:
    """Edges of previous-prompt-size bins: a geometric grid (ratio SIZE_STEP) merged left to right
    until every bin holds enough transitions to estimate a compaction chance and a distribution."""
    x = np.sort(np.asarray(prev_prompts, float))
    if x.size == 0:
        return []
    need = max(MIN_BIN, int(x.size * BIN_SHARE))
    lo, hi = max(x[0], 1.0), x[-1]
    grid = lo * SIZE_STEP ** np.arange(1, int(np.ceil(np.log(hi / lo) / np.log(SIZE_STEP))) + 1) if hi > lo else []
    edges: list[float] = []
    start = 0  # index in x where the current bin starts
    for e in grid:
        end = int(np.searchsorted(x, e, side="left"))
        if end - start >= need and x.size - end >= need:
            edges.append(round_sig(float(e), 3))
            start = end
    return edges
