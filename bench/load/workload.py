"""The materialized workload of a run: every session's calls with exact prompt token ids, think
times and arrival offsets, ready for a load generator. Written once per run as workload.jsonl
(one session a line) so that locust worker processes read the very same prompts.

Every engine of a run gets this same workload. Prompts go as token ids to /v1/completions, so
every engine sees exactly the same tokens (and the trace's prefix sharing) whatever its tokenizer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import orjson

from traces.materialize import Materializer, TokenSpace, scale_trace
from traces.model import Trace


@dataclass
class CallPlan:
    index: int
    prompt_ids: list[int]
    max_tokens: int
    think_s: float = 0.0  # closed loop: wait after the previous response (already think-scaled)
    arrival_s: float | None = None  # open loop: offset from the run's start (already time-scaled)
    complexity: str | None = None  # the trace's label (simple | moderate | complex), for routing


@dataclass
class SessionPlan:
    id: str
    start_s: float  # offset of the session's first call from the run's start
    calls: list[CallPlan] = field(default_factory=list)


def token_space(model_dir: str | Path) -> TokenSpace:
    """Token ids a synthetic prompt may use: the model's vocabulary below its first special token
    past the low specials (the tiny model keeps specials at 0-4; Llama 3 at 128000+)."""
    d = Path(model_dir)
    vocab = json.loads((d / "config.json").read_text())["vocab_size"]
    specials: list[int] = []
    tok = d / "tokenizer.json"
    if tok.exists():
        specials = sorted(t["id"] for t in json.loads(tok.read_text()).get("added_tokens", []) if t.get("special", True))
    low = 0
    for s in specials:  # skip specials packed at the bottom
        if s == low:
            low += 1
    high = min([s for s in specials if s > low] + [vocab])
    return TokenSpace(low=low, high=high)


def build_workload(trace: Trace, model_dir: str | Path, *, sessions: int | None = None, token_scale: float = 1.0,
                   max_context: int | None = None, think_scale: float = 1.0, time_scale: float = 1.0,
                   session_rate: float | None = None, seed: int = 0,
                   calls_per_session: int | None = None) -> tuple[list[SessionPlan], Trace]:
    """Materialize the first `sessions` sessions of the trace (all when None). Session starts come
    from the trace (time-scaled) or, with `session_rate`, from a Poisson process with that rate.
    Returns the plans and the scaled trace (its meta says what scaling was done)."""
    import numpy as np

    pool = trace.sessions
    if calls_per_session:
        # sessions of exactly N calls (the article's 30-call task): long enough ones, cut at N
        pool = [replace(s, calls=s.calls[:calls_per_session]) for s in pool if len(s.calls) >= calls_per_session]
        if not pool:
            raise ValueError(f"no session of the trace has {calls_per_session} calls or more")
    picked = pool if sessions is None else pool[:sessions]
    sub = Trace(list(picked), source=trace.source, format=trace.format, block_size=trace.block_size,
                hash_scope=trace.hash_scope, meta=dict(trace.meta))
    if token_scale != 1.0 or max_context is not None:
        sub = scale_trace(sub, token_scale, max_context)
    tokenizer = None
    if any(c.messages for c in sub.calls()):
        from traces.text_tokens import ChatTokenizer
        tokenizer = ChatTokenizer(model_dir)
    mat = Materializer(sub, token_space(model_dir), tokenizer)
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.exponential(1.0 / session_rate, len(sub.sessions))) - 0.0 if session_rate else None
    t0 = min((s.calls[0].arrival_s for s in sub.sessions if s.calls and s.calls[0].arrival_s is not None), default=0.0)
    plans = []
    for si, s in enumerate(sub.sessions):
        if not s.calls:
            continue
        if starts is not None:
            start = float(starts[si]) if si else 0.0
        else:
            first = s.calls[0].arrival_s if s.calls[0].arrival_s is not None else (s.start_s or 0.0)
            start = (first - t0) * time_scale
        plan = SessionPlan(s.id, start)
        for k, c in enumerate(s.calls):
            arrival = None
            if c.arrival_s is not None and starts is None:
                arrival = (c.arrival_s - t0) * time_scale
            plan.calls.append(CallPlan(index=c.index, prompt_ids=mat.prompt_ids(si, k), max_tokens=max(1, c.output_tokens),
                                       think_s=(c.think_s or 0.0) * think_scale, arrival_s=arrival,
                                       complexity=c.complexity))
        plans.append(plan)
    sub.meta.update({"think_scale": think_scale, "time_scale": time_scale})
    if session_rate:
        sub.meta["session_rate"] = session_rate
    return plans, sub


def write_workload(plans: list[SessionPlan], path: Path) -> None:
    with open(path, "wb") as f:
        for p in plans:
            f.write(orjson.dumps(asdict(p)))
            f.write(b"\n")


def read_workload(path: Path) -> list[SessionPlan]:
    plans = []
    with open(path, "rb") as f:
        for line in f:
            d = orjson.loads(line)
            plans.append(SessionPlan(d["id"], d["start_s"], [CallPlan(**c) for c in d["calls"]]))
    return plans


def ideal_prefix_hit(plans: list[SessionPlan], block_size: int = 16) -> float | None:
    """Prompt tokens an infinite prefix cache with `block_size`-token blocks would serve, over all
    prompt tokens, calls taken in send order (session start + call position). The engines' hit
    ratio is reported against this: an engine at 1.0 caches everything a cache could."""
    from traces.text_tokens import chained_block_hashes

    calls = sorted(((p.start_s + (c.arrival_s or 0.0), k, c) for p in plans for k, c in enumerate(p.calls)),
                   key=lambda r: (r[0], r[1]))
    seen: set[int] = set()
    served = total = 0
    for _, _, c in calls:
        hashes = chained_block_hashes(c.prompt_ids, block_size).tolist()
        m = 0
        while m < len(hashes) and hashes[m] in seen:
            m += 1
        # an engine always computes at least the last prompt token
        served += min(m * block_size, len(c.prompt_ids) - 1)
        total += len(c.prompt_ids)
        seen.update(hashes)
    return served / total if total else None
