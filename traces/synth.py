"""The synthetic agent workload generator: sessions drawn from a profile (traces/profile.py).

Deterministic: the same profile, session count and seed give the identical trace. The session
lengths and first-prompt sizes are stratified over the N sessions (one draw from each 1/N slice of
their distributions, in random order): a benchmark of a few dozen sessions then has the profile's
mix of short and long sessions rather than a lucky or unlucky one, which is most of the variance
between two synthetic workloads. Everything else in session i comes from its own random stream
(seed, i), and the arrival process has a stream of its own, so changing the rate moves sessions
in time without changing them.

Prompts carry hash ids (hash scope "global", the profile's block size): the shared prefix blocks
(the same ids in every session: system prompt and tool definitions), then ids of the session's
own. Call k's ids are the kept prefix of call k-1's ids followed by fresh ids for the appended
tokens, so an infinite prefix cache sees exactly the reuse the profile implies.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from traces.errors import TraceError
from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL, Call, Session, Trace
from traces.profile import STOP_UNKNOWN, STOPS, Profile

_STOP_VALUE = {STOP_TOOL: STOP_TOOL, STOP_END: STOP_END, STOP_UNKNOWN: None}


def bundled_profiles() -> list[str]:
    """Names of the profiles that ship with tierbench (traces/profiles/NAME.json)."""
    root = resources.files("traces") / "profiles"
    if not root.is_dir():
        return []
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A bundled profile by name, or a profile JSON file by path."""
    s = str(name_or_path)
    path = Path(s)
    if s.endswith(".json") or path.is_file() or "/" in s or "\\" in s:
        if not path.exists():
            raise TraceError(path, "no such profile file", None, "profile")
        return Profile.load(path)
    res = resources.files("traces") / "profiles" / f"{s}.json"
    if not res.is_file():
        names = ", ".join(bundled_profiles()) or "none"
        raise TraceError(s, f"unknown profile (bundled: {names}; or give a profile JSON file)", None, "profile")
    return Profile.from_json(res.read_bytes(), f"profile:{s}")


class _Ids:
    """Hash ids: 1..shared for the shared prefix, then a counter for everything session-owned."""

    def __init__(self, shared_blocks: int):
        self.shared = np.arange(1, shared_blocks + 1, dtype=np.int64)
        self.next = shared_blocks + 1

    def fresh(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return out


def synthesize(profile: Profile, sessions: int, seed: int, rate: float | None = None) -> Trace:
    """`sessions` top-level sessions (plus the subagent sessions they spawn) drawn from `profile`.

    With an arrival rate (`rate`, else the profile's), sessions start as a Poisson process (the
    first at 0) and each call's arrival_s is its session's start plus the think times before it:
    service time is not included, so these are the arrivals of a zero-latency server (an
    open-loop replay schedules them; a closed-loop replay uses think_s). Without a rate,
    arrival_s and start_s are None."""
    if sessions < 0:
        raise TraceError(f"profile:{profile.name}", f"sessions must be >= 0, got {sessions}", None, "sessions")
    rate = rate if rate is not None else profile.arrival_rate_per_s
    if rate is not None and rate <= 0:
        raise TraceError(f"profile:{profile.name}", f"rate must be > 0, got {rate:g}", None, "rate")
    root = np.random.SeedSequence(seed)
    arrivals_seq, sessions_seq, strata_seq = root.spawn(3)
    arrival_rng = np.random.default_rng(arrivals_seq)
    strata = np.random.default_rng(strata_seq)
    u_calls, u_first = (_stratified(strata, sessions) for _ in range(2))
    lengths = [max(1, int(_draw(profile.calls_per_session, u))) for u in u_calls]
    # Context limits are stratified within each session-length bin they are drawn for.
    limit_bin = np.searchsorted(profile.context.limit_edges, lengths, side="right")
    u_limit = np.empty(sessions)
    for b in np.unique(limit_bin):
        m = np.flatnonzero(limit_bin == b)
        u_limit[m] = _stratified(strata, m.size)
    ids = _Ids(profile.shared_prefix_tokens // profile.block_size)
    out: list[Session] = []
    t = 0.0
    for i, seq in enumerate(sessions_seq.spawn(sessions)):
        rng = np.random.default_rng(seq)
        start = None
        if rate is not None:
            if i > 0:
                t += float(arrival_rng.exponential(1.0 / rate))
            start = t
        n = lengths[i]
        first = profile.shared_prefix_tokens + int(_draw(profile.first_prompt_tokens, u_first[i]))
        session, _ = draw_session(profile, rng, ids, f"s{i:05d}", n, first, start, shared=True,
                                  u_limit=float(u_limit[i]))
        out.append(session)
        sub = profile.subagents
        if sub is None or sub.spawn_probability <= 0:
            continue
        spawn = np.flatnonzero(rng.random(n) < sub.spawn_probability)
        for j, k in enumerate(spawn):
            m = max(1, int(sub.calls_per_session.sample(rng)))
            p0 = max(1, int(sub.first_prompt_tokens.sample(rng)))
            child, _ = draw_session(profile, rng, ids, f"s{i:05d}/agent{j + 1}", m, p0,
                                    session.calls[k].arrival_s, shared=False)
            child.parent_id, child.parent_call = session.id, int(k)
            out.append(child)
    meta = {
        "profile": profile.name,
        "seed": seed,
        "arrival_rate_per_s": rate,
        "shared_prefix_tokens": (profile.shared_prefix_tokens // profile.block_size) * profile.block_size,
        "arrivals": ("Poisson session starts; a call's arrival_s = its session's start + the think times before it "
                     "(service time not included)") if rate is not None else "closed loop: no arrival times",
    }
    return Trace(out, source=f"profile:{profile.name}", format="synth", block_size=profile.block_size,
                 hash_scope="global", meta=meta)


def draw_session(profile: Profile, rng: np.random.Generator, ids: _Ids, sid: str, n: int, first_prompt: int,
                 start: float | None, shared: bool = True, u_limit: float | None = None) -> tuple[Session, list[int]]:
    """One session of n calls starting with a `first_prompt`-token prompt; returns it and, per
    call, the tokens kept as a prefix from the previous call (-1 for call 0): the context model's
    own record, which tests compare with the hash ids."""
    bs = profile.block_size
    keys = [k for k in STOPS if profile.stop_probabilities.get(k, 0.0) > 0 or profile.last_stop_probabilities.get(k, 0.0) > 0]
    probs = np.array([profile.stop_probabilities.get(k, 0.0) for k in keys])
    last = np.array([profile.last_stop_probabilities.get(k, 0.0) for k in keys])
    stops = rng.choice(len(keys), size=n, p=probs / probs.sum())
    stops[-1] = rng.choice(len(keys), p=last / last.sum())
    # Everything that does not depend on the evolving context is drawn up front, per call.
    output = np.empty(n)
    for j, k in enumerate(keys):
        m = stops == j
        output[m] = profile.output_tokens[k].sample(rng, int(m.sum()))
    cmix = np.array([profile.complexity_mix.get(c, 0.0) for c in COMPLEXITIES])
    complexity = rng.choice(len(COMPLEXITIES), size=n, p=cmix / cmix.sum())
    prev_key = [keys[s] for s in stops[:-1]]
    think = np.zeros(n)
    for k in keys:
        m = np.flatnonzero([pk == k for pk in prev_key]) + 1
        if m.size:
            think[m] = profile.think_s[k].sample(rng, m.size)
    ctx = profile.context
    u = rng.random(n)
    u_app = rng.random(n)  # appended tokens are drawn per size bin, so by quantile here
    partial = {}
    for kind in ("edit", "compact"):
        pk = getattr(ctx, kind)
        if pk is not None:
            partial[kind] = (pk.kept_fraction.sample(rng, n), pk.size_ratio.sample(rng, n))
    cap = ctx.max_context_tokens
    first_prompt = min(max(1, int(first_prompt)), cap)
    limit = ctx.draw_limit(rng.random() if u_limit is None else u_limit, n, first_prompt)

    session = Session(sid, start_s=start)
    kept_record = [-1]
    prompt = first_prompt
    shared_blocks = min(len(ids.shared), prompt // bs) if shared else 0
    nblocks = -(-prompt // bs)
    hash_ids = np.concatenate([ids.shared[:shared_blocks], ids.fresh(nblocks - shared_blocks)])
    clock = start
    for k in range(n):
        if k > 0:
            prev = prompt
            b = ctx.bin_of(prev)
            p_edit = min(ctx.p_edit.get(prev_key[k - 1], 0.0), 1.0 - ctx.p_compact)
            kind = "compact" if u[k] < ctx.p_compact else "edit" if u[k] < ctx.p_compact + p_edit else "full"
            if kind == "full":
                kept = (prev // bs) * bs
                prompt = kept + int(_draw(ctx.appended_tokens[b], u_app[k]))
            else:
                kept, prompt = _partial(partial[kind], k, prev, bs)
            if prompt > limit and "compact" in partial:  # a full context is compacted, as agents do
                kept, prompt = _partial(partial["compact"], k, prev, bs)
            prompt = max(1, min(prompt, cap))
            kept = min(kept, (prompt // bs) * bs)
            keep_blocks = kept // bs
            hash_ids = np.concatenate([hash_ids[:keep_blocks], ids.fresh(-(-prompt // bs) - keep_blocks)])
            kept_record.append(kept)
            if clock is not None:
                clock += float(think[k])
        session.calls.append(Call(
            session_id=sid, index=k, prompt_tokens=int(prompt), output_tokens=max(1, int(output[k])),
            arrival_s=clock, think_s=float(think[k]) if k > 0 else None, hash_ids=hash_ids,
            stop=_STOP_VALUE[keys[stops[k]]], model=None, complexity=COMPLEXITIES[complexity[k]],
        ))
    return session, kept_record


def _stratified(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniforms, one in each slice [i/n, (i+1)/n), in random order."""
    return (rng.permutation(n) + rng.random(n)) / max(n, 1)


def _draw(q, u: float) -> float:
    return float(q.at(u))


def _partial(draws: tuple[np.ndarray, np.ndarray], k: int, prev: int, bs: int) -> tuple[int, int]:
    """(kept tokens, new prompt tokens) after a partial keep of a `prev`-token prompt."""
    kept_frac, ratio = draws
    kept = int(kept_frac[k] * prev) // bs * bs
    return kept, max(kept + 1, int(round(ratio[k] * prev)))
