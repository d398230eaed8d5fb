"""Workload profiles: the shape of an agent workload, fitted from a trace, from which synthetic
sessions are drawn (traces/synth.py) and which traces/fit.py estimates.

A profile stores distributions as shapes, never as samples: each is a monotone quantile function
on a fixed grid of probability knots (`Quantiles`), interpolated in log space for heavy-tailed
quantities (tokens, seconds) and linearly for fractions. So a profile is small (a few KB), says
nothing about any one recorded session, and can be edited by hand.

The context model (what makes prompt sizes and prefix reuse come out right). For call k >= 1 of a
session, given the previous call's prompt of P tokens, one of three transitions happens:
  - full keep (the common case: an agent appends to its history): every complete block of the
    previous prompt is kept as the prefix, then `appended_tokens` new tokens follow (the previous
    output plus the tool observation, or the user's next message);
  - edit (a partial keep after which the prompt keeps about its size: the harness rewrote or
    dropped part of the history, e.g. old reasoning on a new user turn): the kept prefix is
    `kept_fraction` x P and the new prompt `size_ratio` x P;
  - compact (a partial keep after which the prompt shrinks: context compaction into a summary):
    the same two quantities from their own distributions.
Edits depend on what just happened (their chance is per previous stop reason). Compactions
happen when a session's context is full: each session has a context limit, drawn from the
distribution of sessions' largest prompts among sessions of about its length (`limit_tokens`,
one per bin of calls per session), and a call whose prompt would exceed it is compacted instead;
`p_compact` adds compactions at any size (a user's manual /compact). The appended tokens depend
on how full the context is (one distribution per bin of the previous prompt size): agents read
the most files early. A per-session limit tied to session length, not a per-size chance, is
what makes prompt sizes plateau the way real sessions do: in a trace that mixes 200k- and
1M-token context windows, long sessions that compact near 160k and shorter ones that grow to
800k are different sessions, and a chance per size would let every session drift past the
plateau.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from traces.errors import TraceError
from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL

VERSION = 1
STOP_UNKNOWN = "unknown"
STOPS = (STOP_TOOL, STOP_END, STOP_UNKNOWN)  # the keys of every by-stop-reason table

# Probability knots of every fitted quantile function: 27 knots, every 0.05 in the body and
# denser in both tails, so the interpolated CDF is within a few hundredths of the data's.
KNOTS = (0.0, 0.002, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
         0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.998, 1.0)

# The default complexity mix when the trace has no labels. The seed article reports that 70-80%
# of an agent's calls can be served by a small model: simple + moderate = 0.75 of the calls go to
# small-model tiers, the remaining 0.25 need the large model.
DEFAULT_COMPLEXITY_MIX = {"simple": 0.5, "moderate": 0.25, "complex": 0.25}


@dataclass
class Quantiles:
    """A distribution of a non-negative quantity as its quantile function: `q[i]` is the value at
    probability `p[i]`; between knots the function is linear in log1p(value) when `log`, else
    linear in the value. `integer`: draws are floored to integers (integer data are fitted as
    atoms spread evenly over [x, x + 1), so flooring a draw gives back the data's atoms, e.g. think
    times at 1 s resolution). `p` is the fixed grid KNOTS unless the JSON gives its own (the fit
    does for integer data with few distinct values: knots at the atoms' edges)."""
    p: list[float]
    q: list[float]
    log: bool = True
    integer: bool = False

    @classmethod
    def constant(cls, value: float, integer: bool = False) -> Quantiles:
        # Flooring a constant integer must give it back: store value + 0.5 for integer constants.
        v = float(value) + (0.5 if integer else 0.0)
        return cls([0.0, 1.0], [v, v], log=False, integer=integer)

    def quantile(self, u: np.ndarray | float) -> np.ndarray:
        """The value at probability u (array in, array out), before integer flooring."""
        p = np.asarray(self.p, float)
        q = np.asarray(self.q, float)
        if self.log:
            return np.expm1(np.interp(u, p, np.log1p(q)))
        return np.interp(u, p, q)

    def cdf(self, x: float) -> float:
        """P(X <= x) of the interpolated quantile function (its inverse)."""
        p = np.asarray(self.p, float)
        q = np.asarray(self.q, float)
        if self.log:
            return float(np.interp(np.log1p(max(x, 0.0)), np.log1p(q), p))
        return float(np.interp(x, q, p))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return self.at(rng.random(size))

    def at(self, u: np.ndarray | float) -> np.ndarray | float:
        """The draw for uniform(s) u: the quantile, floored for integer quantities."""
        x = self.quantile(u)
        if self.integer:
            x = np.floor(x + 1e-9)  # expm1(log1p(4.0)) is 3.9999999999999996
        return np.maximum(x, 0.0)

    def median(self) -> float:
        return float(self.at(0.5))

    def scaled(self, factor: float, integer: bool | None = None) -> Quantiles:
        """The distribution of factor x X (still a quantile function: scaling keeps it monotone)."""
        return Quantiles(list(self.p), [_round(v * factor) for v in self.q], self.log,
                         self.integer if integer is None else integer)

    def clipped(self, lo: float | None = None, hi: float | None = None) -> Quantiles:
        """The distribution of min(max(X, lo), hi) (clipping keeps it monotone)."""
        q = np.asarray(self.q, float)
        q = np.clip(q, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)
        return Quantiles(list(self.p), [float(v) for v in q], self.log, self.integer)

    def to_dict(self) -> dict:
        d = {"q": list(self.q), "log": self.log, "integer": self.integer}
        if tuple(self.p) != KNOTS:  # the default grid is left implicit: it keeps profiles small
            d = {"p": list(self.p), **d}
        return d

    @classmethod
    def from_dict(cls, r: _Reader, key: str | None) -> Quantiles:
        d = r if key is None else r.obj(key)
        q = d.floats("q")
        p = d.floats("p") if "p" in d.data else list(KNOTS)
        if len(p) < 2 or len(p) != len(q):
            raise d.error("p", f"needs at least 2 knots, as many in 'q' as in 'p' (got {len(p)} and {len(q)})")
        if p[0] != 0.0 or p[-1] != 1.0 or any(b <= a for a, b in zip(p, p[1:])):
            raise d.error("p", "knots must rise strictly from 0 to 1")
        if any(v < 0 for v in q):
            raise d.error("q", "values must be >= 0")
        if any(b < a for a, b in zip(q, q[1:])):
            raise d.error("q", "values must not decrease (a quantile function is monotone)")
        return cls(p, q, d.bool("log", True), d.bool("integer", False))


@dataclass
class PartialKeep:
    """A partial keep: the kept prefix and the new prompt, both relative to the previous prompt
    (appended tokens = new prompt - kept prefix). Relative, because a rewritten or compacted
    context scales with the context it replaces."""
    kept_fraction: Quantiles
    size_ratio: Quantiles


@dataclass
class Context:
    """The per-call context transition (see the module docstring)."""
    max_context_tokens: int  # no prompt exceeds it
    limit_edges: list[float]  # calls-per-session bin edges; len(limit_edges) + 1 bins
    limit_tokens: list[Quantiles]  # per bin: the session's context limit (a prompt that would exceed it is compacted)
    p_compact: float  # compactions at any size, per call
    p_edit: dict[str, float]  # by the previous call's stop reason
    edit: PartialKeep | None
    compact: PartialKeep | None
    size_edges: list[float]  # previous-prompt-size bin edges (tokens); len(size_edges) + 1 bins
    appended_tokens: list[Quantiles]  # after a full keep, per size bin

    def bin_of(self, prev_prompt: float) -> int:
        return int(np.searchsorted(self.size_edges, prev_prompt, side="right"))

    def draw_limit(self, u: float, calls: int, at_least: float) -> float:
        """A session's context limit for a uniform draw `u`, given the session's length and that
        its first prompt fits under it."""
        q = self.limit_tokens[int(np.searchsorted(self.limit_edges, calls, side="right"))]
        lo = float(q.cdf(at_least))
        u = lo + (1.0 - lo) * u
        return min(max(float(q.quantile(u)), at_least), float(self.max_context_tokens))


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
        return _compact_json(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, data: str | bytes | dict, path: str | Path = "<profile>") -> Profile:
        """Parse and validate a profile; TraceError names the field (a dotted key path)."""
        if not isinstance(data, dict):
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise TraceError(path, f"invalid JSON ({e})") from None
        r = _Reader(data, path, "")
        version = r.get("tierbench_profile", VERSION)
        if version != VERSION:
            raise r.error("tierbench_profile", f"unsupported profile version {version!r} (this tierbench reads {VERSION})")
        stops = r.obj("stop_probabilities")
        stop_p = {k: stops.prob(k) for k in stops.keys(STOPS)}
        _require_sum(stops, stop_p)
        last_p = stop_p
        if r.get("last_stop_probabilities") is not None:
            last = r.obj("last_stop_probabilities")
            last_p = {k: last.prob(k) for k in last.keys(STOPS)}
            _require_sum(last, last_p)
        used = [k for k in STOPS if stop_p.get(k, 0) > 0 or last_p.get(k, 0) > 0]
        context = _read_context(r.obj("context"), used)
        out_r = r.obj("output_tokens")
        think_r = r.obj("think_s")
        mix_r = r.obj("complexity_mix")
        mix = {k: mix_r.prob(k) for k in mix_r.keys(COMPLEXITIES)}
        _require_sum(mix_r, mix)
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


def _read_context(ctx: _Reader, used_stops: list[str]) -> Context:
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


def _binned(ctx: _Reader, key: str, bins: int) -> list[Quantiles]:
    items = ctx.need(key)
    if not isinstance(items, list) or len(items) != bins:
        raise ctx.error(key, f"needs one distribution per bin ({bins})")
    return [Quantiles.from_dict(_Reader(a, ctx.path, ctx.field(f"{key}[{i}]")), None) for i, a in enumerate(items)]


# -- validation helpers ------------------------------------------------------------------------

class _Reader:
    """A JSON object being validated, with the dotted path of where it sits for error messages."""

    def __init__(self, data: object, path: str | Path, where: str):
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise TraceError(path, f"expected an object, got {type(data).__name__}", None, where or None)
        self.data = data

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> TraceError:
        return TraceError(self.path, message, None, self.field(key))

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def need(self, key: str) -> object:
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def obj(self, key: str) -> _Reader:
        return _Reader(self.need(key), self.path, self.field(key))

    def keys(self, allowed: tuple[str, ...], required: list[str] = ()) -> list[str]:
        for k in self.data:
            if k not in allowed:
                raise self.error(k, f"unknown key (expected one of {', '.join(allowed)})")
        for k in required:
            if k not in self.data:
                raise self.error(k, "missing")
        return [k for k in allowed if k in self.data]

    def number(self, key: str) -> float:
        v = self.need(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, f"expected a finite number, got {v!r}")
        return float(v)

    def prob(self, key: str) -> float:
        v = self.number(key)
        if not 0.0 <= v <= 1.0:
            raise self.error(key, f"a probability must be in [0, 1], got {v:g}")
        return v

    def int(self, key: str, minimum: int = 0) -> int:
        v = self.need(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise self.error(key, f"expected an integer, got {v!r}")
        if v < minimum:
            raise self.error(key, f"must be >= {minimum}, got {v}")
        return int(v)

    def str(self, key: str, default: str | None = None) -> str:
        v = self.need(key) if default is None else self.get(key, default)
        if not isinstance(v, str):
            raise self.error(key, f"expected a string, got {v!r}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {v!r}")
        return v

    def floats(self, key: str) -> list[float]:
        v = self.need(key)
        if not isinstance(v, list) or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise self.error(key, "expected a list of finite numbers")
        return [float(x) for x in v]


def _require_sum(r: _Reader, probs: dict[str, float]) -> None:
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-4:  # stored shares are rounded to 5 digits
        raise TraceError(r.path, f"probabilities must sum to 1, got {total:g}", None, r.where)


def _round(v: float, digits: int = 5) -> float:
    """Round to significant digits: a profile stores shapes, and 5 digits keep it small."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    return float(f"{v:.{digits}g}")


def _compact_json(d: dict) -> str:
    """Indented JSON whose quantile lists stay on one line each: small and diffable."""
    text = orjson.dumps(d, option=orjson.OPT_INDENT_2).decode()
    out, buf = [], None
    for line in text.splitlines():
        s = line.strip()
        if buf is not None:
            buf.append(s)
            if s.startswith("]"):
                out.append(buf[0] + "".join(buf[1:-1]) + s)
                buf = None
            continue
        if s.endswith("[") and ('"p": [' in s or '"q": [' in s):
            buf = [line]
            continue
        out.append(line)
    return "\n".join(out)


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
            size_edges=[_round(e * token_scale) for e in c.size_edges],
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
    return Quantiles(list(q.p), [_round(v) for v in np.maximum.accumulate(vals)], q.log, q.integer)
