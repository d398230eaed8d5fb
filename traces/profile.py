"""Workload profiles: the shape of an agent workload, fitted from a trace, from which synthetic
sessions are drawn (traces/synth.py) and which traces/fit.py estimates.

A profile stores distributions as shapes, never as samples (traces/quantiles.py), so it is small
(a few KB), says nothing about any one recorded session, and can be edited by hand. Its context
model (how each call's prompt follows from the previous one: full keeps, edits, compactions) is
in traces/context.py. This module holds the Profile itself, its JSON round trip (with the
helpers of traces/profile_json.py) and `scale_profile`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from traces.context import Context, PartialKeep
from traces.errors import TraceError
from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL
from traces.profile_json import Reader, compact_json, require_sum
from traces.quantiles import KNOTS, Quantiles, round_sig

# The names other modules import from here (the quantile and context types moved out).
__all__ = ["DEFAULT_COMPLEXITY_MIX", "KNOTS", "STOP_UNKNOWN", "STOPS", "VERSION", "Context", "PartialKeep",
           "Profile", "Quantiles", "Subagents", "scale_profile"]


VERSION = 1
STOP_UNKNOWN = "unknown"
STOPS = (STOP_TOOL, STOP_END, STOP_UNKNOWN)  # the keys of every by-stop-reason table

# The default complexity mix when the trace has no labels. The seed article reports that 70-80%
# of an agent's calls can be served by a small model: simple + moderate = 0.75 of the calls go to
# small-model tiers, the remaining 0.25 need the large model.
DEFAULT_COMPLEXITY_MIX = {"simple": 0.5, "moderate": 0.25, "complex": 0.25}


@dataclass
class Subagents:
    """Subagent fan-out: after each call of a top-level session a subagent session is spawned
    with `spawn_probability`; it has its own length and first prompt, and otherwise follows the
    profile's context, stop, output and think-time model."""
    spawn_probability: float
    calls_per_session: Quantiles
    first_prompt_tokens: Quantiles


@dataclass
class Profile:
    """Everything traces/synth.py needs to draw sessions of one workload."""
    name: str
    source: str  # what the profile describes, in words
    fitted_from: dict  # {path, format, sessions, subagent_sessions, calls, date}; {} when made by hand
    block_size: int  # tokens per hash block of synthetic prompts
    arrival_rate_per_s: float | None  # Poisson session arrivals; None: closed loop (rate given at run time)
    calls_per_session: Quantiles  # top-level sessions
    shared_prefix_tokens: int  # system prompt + tool definitions, the same blocks in every session
    first_prompt_tokens: Quantiles  # first call's prompt beyond the shared prefix
    context: Context
    output_tokens: dict[str, Quantiles]  # by the call's own stop reason
    stop_probabilities: dict[str, float]  # over STOPS, summing to 1: every call but a session's last
    last_stop_probabilities: dict[str, float]  # ... and a session's last call (an agent ends on a final answer)
    think_s: dict[str, Quantiles]  # gap before a call, by the previous call's stop reason
    complexity_mix: dict[str, float]  # over COMPLEXITIES, summing to 1
    subagents: Subagents | None
    notes: list[str] = field(default_factory=list)

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        def partial(k: PartialKeep | None):
            return None if k is None else {"kept_fraction": k.kept_fraction.to_dict(), "size_ratio": k.size_ratio.to_dict()}
        c = self.context
        return {
            "tierbench_profile": VERSION,
            "name": self.name,
            "source": self.source,
            "notes": list(self.notes),
            "fitted_from": dict(self.fitted_from),
            "block_size": self.block_size,
            "arrival_rate_per_s": self.arrival_rate_per_s,
            "calls_per_session": self.calls_per_session.to_dict(),
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "first_prompt_tokens": self.first_prompt_tokens.to_dict(),
            "context": {
                "max_context_tokens": c.max_context_tokens,
                "limit_edges": list(c.limit_edges),
                "limit_tokens": [q.to_dict() for q in c.limit_tokens],
                "p_compact": c.p_compact,
                "p_edit": dict(c.p_edit),
                "edit": partial(c.edit),
                "compact": partial(c.compact),
                "size_edges": list(c.size_edges),
                "appended_tokens": [q.to_dict() for q in c.appended_tokens],
            },
            "stop_probabilities": dict(self.stop_probabilities),
            "last_stop_probabilities": dict(self.last_stop_probabilities),
            "output_tokens": {k: v.to_dict() for k, v in self.output_tokens.items()},
            "think_s": {k: v.to_dict() for k, v in self.think_s.items()},
            "complexity_mix": dict(self.complexity_mix),
            "subagents": None if self.subagents is None else {
                "spawn_probability": self.subagents.spawn_probability,
                "calls_per_session": self.subagents.calls_per_session.to_dict(),
                "first_prompt_tokens": self.subagents.first_prompt_tokens.to_dict(),
            },
        }

    def to_json(self) -> str:
        return compact_json(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, data: str | bytes | dict, path: str | Path = "<profile>") -> Profile:
        """Parse and validate a profile; TraceError names the field (a dotted key path)."""
        if not isinstance(data, dict):
            import orjson  # here, not at the top: the GPU benchmark reads profiles without orjson

            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise TraceError(path, f"invalid JSON ({e})") from None
        r = Reader(data, path, "")
        version = r.get("tierbench_profile", VERSION)
        if version != VERSION:
            raise r.error("tierbench_profile", f"unsupported profile version {version!r} (this tierbench reads {VERSION})")
        stop_p = _distribution(r, "stop_probabilities", STOPS)
        last_p = stop_p
        if r.get("last_stop_probabilities") is not None:
            last_p = _distribution(r, "last_stop_probabilities", STOPS)
        used = [k for k in STOPS if stop_p.get(k, 0) > 0 or last_p.get(k, 0) > 0]
        context = _read_context(r.obj("context"), used)
        out_r = r.obj("output_tokens")
        think_r = r.obj("think_s")
        mix = _distribution(r, "complexity_mix", COMPLEXITIES)
        sub = None
        if r.get("subagents") is not None:
            s = r.obj("subagents")
            sub = Subagents(s.prob("spawn_probability"), Quantiles.from_dict(s, "calls_per_session"),
                            Quantiles.from_dict(s, "first_prompt_tokens"))
        rate = r.get("arrival_rate_per_s")
        if rate is not None:
            rate = r.number("arrival_rate_per_s")
            if rate <= 0:
                raise r.error("arrival_rate_per_s", "must be > 0 (or null for closed loop)")
        fitted = r.get("fitted_from", {})
        if not isinstance(fitted, dict):
            raise r.error("fitted_from", "expected an object")
        notes = r.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise r.error("notes", "expected a list of strings")
        return cls(
            name=r.str("name"),
            source=r.str("source", ""),
            fitted_from=fitted,
            block_size=r.int("block_size", minimum=1),
            arrival_rate_per_s=rate,
            calls_per_session=Quantiles.from_dict(r, "calls_per_session"),
            shared_prefix_tokens=r.int("shared_prefix_tokens"),
            first_prompt_tokens=Quantiles.from_dict(r, "first_prompt_tokens"),
            context=context,
            output_tokens={k: Quantiles.from_dict(out_r, k) for k in out_r.keys(STOPS, required=used)},
            stop_probabilities=stop_p,
            last_stop_probabilities=last_p,
            think_s={k: Quantiles.from_dict(think_r, k) for k in think_r.keys(STOPS, required=used)},
            complexity_mix=mix,
            subagents=sub,
            notes=list(notes),
        )

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TraceError(path, f"cannot read ({e.strerror or e})") from None
        return cls.from_json(data, path)


def _distribution(r: Reader, key: str, names) -> dict[str, float]:
    """A table of probabilities over `names` that must sum to 1 (errors name the field)."""
    table = r.obj(key)
    p = {k: table.prob(k) for k in table.keys(names)}
    require_sum(table, p)
    return p


def _read_context(ctx: Reader, used_stops: list[str]) -> Context:
    edges = ctx.floats("size_edges")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ctx.error("size_edges", "bin edges must rise strictly")
    appended = _binned(ctx, "appended_tokens", len(edges) + 1)
    limit_edges = ctx.floats("limit_edges")
    if any(b <= a for a, b in zip(limit_edges, limit_edges[1:])):
        raise ctx.error("limit_edges", "bin edges must rise strictly")
    limits = _binned(ctx, "limit_tokens", len(limit_edges) + 1)
    pe = ctx.obj("p_edit")
    p_edit = {k: pe.prob(k) for k in pe.keys(STOPS, required=used_stops)}
    p_compact = ctx.prob("p_compact")
    partial = {}
    for kind in ("edit", "compact"):
        if ctx.get(kind) is None:
            partial[kind] = None
            if kind == "edit" and any(v > 0 for v in p_edit.values()):
                raise ctx.error(kind, "missing, but p_edit > 0")
            if kind == "compact" and p_compact > 0:
                raise ctx.error(kind, "missing, but p_compact > 0")
            continue
        k = ctx.obj(kind)
        partial[kind] = PartialKeep(Quantiles.from_dict(k, "kept_fraction"), Quantiles.from_dict(k, "size_ratio"))
        if partial[kind].kept_fraction.q[-1] > 1.0:
            raise k.error("kept_fraction.q", "a kept fraction is at most 1")
    return Context(ctx.int("max_context_tokens", minimum=1), limit_edges, limits, p_compact, p_edit,
                   partial["edit"], partial["compact"], edges, appended)


def _binned(ctx: Reader, key: str, bins: int) -> list[Quantiles]:
    items = ctx.need(key)
    if not isinstance(items, list) or len(items) != bins:
        raise ctx.error(key, f"needs one distribution per bin ({bins})")
    return [Quantiles.from_dict(Reader(a, ctx.path, ctx.field(f"{key}[{i}]")), None) for i, a in enumerate(items)]


# -- derived profiles --------------------------------------------------------------------------

def scale_profile(profile: Profile, token_scale: float, think_scale: float, max_calls: int, *,
                  min_calls: int = 1, output_range: tuple[int, int] | None = None,
                  think_clip: tuple[float, float] | None = None, max_context: int | None = None,
                  name: str | None = None, note: str | None = None) -> Profile:
    """A scaled copy of a profile: the same workload shape at another size (e.g. a demo that runs
    in a minute on a CPU with a tiny model).

    - `token_scale` multiplies every prompt-side token count: the shared prefix, first prompts,
      appended tokens (and their size-bin edges), context limits, the maximum context and
      subagent first prompts. Relative quantities (kept fractions, size ratios, probabilities)
      are unchanged, so prefix reuse and the shape of prompt growth are kept.
    - Output tokens are multiplied by `token_scale` too, or, with `output_range=(lo, hi)`, mapped
      linearly so that their 5th..95th percentiles span [lo, hi] and clipped to it.
    - Think times are multiplied by `think_scale`, then clipped to `think_clip=(lo, hi)` if given.
    - Calls per session (top-level and subagent) are mapped linearly so that their 5th..95th
      percentiles span [min_calls, max_calls], and clipped to it; the session-length bins of the
      context limits move with them.
    - `max_context` caps the context (the scaled maximum, and every limit), e.g. at a model's
      context length.
    """
    if token_scale <= 0 or think_scale < 0 or not 1 <= min_calls <= max_calls:
        raise ValueError("need token_scale > 0, think_scale >= 0 and 1 <= min_calls <= max_calls")
    c = profile.context

    cap = max(1, int(round(c.max_context_tokens * token_scale)))
    if max_context is not None:
        cap = min(cap, int(max_context))

    def tokens(q: Quantiles) -> Quantiles:
        return q.scaled(token_scale)

    def outputs(q: Quantiles) -> Quantiles:
        return _span(q, *output_range) if output_range else q.scaled(token_scale)

    def calls(q: Quantiles) -> Quantiles:
        return _span(q, min_calls, max_calls)

    # Limit bins follow the calls' map; bins that collapse onto one length merge (the first stays).
    limit_edges, limits = [], [c.limit_tokens[0].scaled(token_scale).clipped(hi=cap)]
    to_calls = _span_map(profile.calls_per_session, min_calls, max_calls)
    for e, q in zip(c.limit_edges, c.limit_tokens[1:]):
        e2 = float(np.ceil(to_calls(e)))
        if e2 > (limit_edges[-1] if limit_edges else min_calls):
            limit_edges.append(e2)
            limits.append(q.scaled(token_scale).clipped(hi=cap))

    def think(q: Quantiles) -> Quantiles:
        q = q.scaled(think_scale, integer=False)  # 1 s resolution scaled is no longer whole seconds
        return q.clipped(*think_clip) if think_clip else q

    sub = profile.subagents
    notes = [note or (f"scaled from profile '{profile.name}' by scale_profile(token_scale={token_scale:g}, "
                      f"think_scale={think_scale:g}, max_calls={max_calls}, min_calls={min_calls}, "
                      f"output_range={list(output_range) if output_range else None}, "
                      f"think_clip={list(think_clip) if think_clip else None})")]
    return Profile(
        name=name or f"{profile.name}-scaled",
        source=f"{profile.source} (scaled)",
        fitted_from=dict(profile.fitted_from),
        block_size=profile.block_size,
        arrival_rate_per_s=profile.arrival_rate_per_s,
        calls_per_session=calls(profile.calls_per_session),
        shared_prefix_tokens=int(round(profile.shared_prefix_tokens * token_scale)),
        first_prompt_tokens=tokens(profile.first_prompt_tokens),
        context=Context(
            max_context_tokens=cap,
            limit_edges=limit_edges,
            limit_tokens=limits,
            p_compact=c.p_compact, p_edit=dict(c.p_edit), edit=c.edit, compact=c.compact,
            size_edges=[round_sig(e * token_scale) for e in c.size_edges],
            appended_tokens=[tokens(q) for q in c.appended_tokens],
        ),
        output_tokens={k: outputs(q) for k, q in profile.output_tokens.items()},
        stop_probabilities=dict(profile.stop_probabilities),
        last_stop_probabilities=dict(profile.last_stop_probabilities),
        think_s={k: think(q) for k, q in profile.think_s.items()},
        complexity_mix=dict(profile.complexity_mix),
        subagents=None if sub is None else Subagents(sub.spawn_probability, calls(sub.calls_per_session),
                                                     tokens(sub.first_prompt_tokens)),
        notes=notes + list(profile.notes),
    )


def _span_map(q: Quantiles, lo: float, hi: float):
    """The linear map taking q's 5th..95th percentiles onto [lo, hi], clipped there (an integer
    quantity onto [lo, hi + 1), so that flooring lands on lo..hi with their share)."""
    top = hi + (0.999 if q.integer else 0.0)
    a, b = float(q.quantile(0.05)), float(q.quantile(0.95))
    slope = (top - lo) / (b - a) if b > a else 0.0
    return lambda v: min(max(lo + (v - a) * slope, lo), top)


def _span(q: Quantiles, lo: float, hi: float) -> Quantiles:
    f = _span_map(q, lo, hi)
    vals = [f(v) for v in q.q]
    return Quantiles(list(q.p), [round_sig(v) for v in np.maximum.accumulate(vals)], q.log, q.integer)
