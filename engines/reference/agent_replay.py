"""An agent workload replayed in process against an LLMEngine, closed loop: sessions drawn from a
bundled profile (traces/synth.py), each sending its next call when the previous one finished
plus its think time (scaled down), all sessions at once. No HTTP, no load generator: what it
measures is the engine's prefix cache on agentic reuse, against the ideal.

The ideal prefix hit is what an infinite cache with the engine's block size would serve: a
prompt's leading full blocks seen in any prompt sent before it (in the order the calls were
actually sent), less the last token, which an engine always computes.

Reads the profile with the standard library's json (traces' orjson reader is optional here).
"""
from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field, replace
from importlib import resources

from engines.reference.block_pool import ROOT_HASH, hash_block
from engines.reference.engine import LLMEngine
from engines.reference.sequence import SamplingParams


@dataclass
class ReplayResult:
    calls_planned: int
    calls_done: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ideal_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    sent: list[tuple[str, list[int]]] = field(default_factory=list, repr=False)  # (request id, prompt), in send order

    @property
    def hit(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    @property
    def ideal(self) -> float | None:
        return self.ideal_tokens / self.prompt_tokens if self.prompt_tokens else None

    def summary(self) -> dict:
        hit, ideal = self.hit, self.ideal
        return {"calls_planned": self.calls_planned, "calls_done": self.calls_done,
                "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "prefix_hit": hit, "ideal_prefix_hit": ideal,
                "prefix_hit_vs_ideal": hit / ideal if hit is not None and ideal else None,
                "elapsed_s": self.elapsed_s, "timed_out": self.timed_out}


def ideal_served(prompts: list[list[int]], block_size: int) -> list[int]:
    """Per prompt, in order: tokens an infinite prefix cache would serve from the prompts before."""
    seen: set[int] = set()
    served = []
    for ids in prompts:
        parent, m, hashes = ROOT_HASH, 0, []
        for b in range(len(ids) // block_size):
            parent = hash_block(parent, ids[b * block_size:(b + 1) * block_size])
            hashes.append(parent)
        while m < len(hashes) and hashes[m] in seen:
            m += 1
        served.append(min(m * block_size, len(ids) - 1))
        seen.update(hashes)
    return served


def session_prompts(profile_name: str, sessions: int, calls: int, token_scale: float, max_context: int,
                    vocab: tuple[int, int], seed: int = 0) -> tuple[list, list, list]:
    """Per session, its first `calls` calls': prompt ids, max output tokens, think times (s)."""
    from traces.materialize import Materializer, TokenSpace, scale_trace
    from traces.profile import Profile
    from traces.synth import synthesize

    text = (resources.files("traces") / "profiles" / f"{profile_name}.json").read_text()
    profile = Profile.from_json(json.loads(text), f"profile:{profile_name}")
    trace = synthesize(profile, sessions, seed)
    trace.sessions = [replace(s, calls=s.calls[:calls]) for s in trace.sessions if s.parent_id is None]
    trace = scale_trace(trace, token_scale, max_context)
    mat = Materializer(trace, TokenSpace(low=vocab[0], high=vocab[1]))
    prompts = [[mat.prompt_ids(si, k) for k in range(len(s.calls))] for si, s in enumerate(trace.sessions)]
    outputs = [[max(1, c.output_tokens) for c in s.calls] for s in trace.sessions]
    thinks = [[c.think_s or 0.0 for c in s.calls] for s in trace.sessions]
    return prompts, outputs, thinks


def replay(engine: LLMEngine, prompts: list[list[list[int]]], outputs: list[list[int]], thinks: list[list[float]],
           think_scale: float, deadline: float) -> ReplayResult:
    """Run every session's calls in order, all sessions concurrently, until done or `deadline`
    (time.monotonic()); at the deadline the calls in flight are aborted and left out."""
    result = ReplayResult(calls_planned=sum(len(p) for p in prompts))
    ready = [(0.0, si, 0) for si in range(len(prompts)) if prompts[si]]  # (due, session, call)
    heapq.heapify(ready)
    in_flight: dict[str, tuple[int, int]] = {}  # request id -> (session, call)
    done: set[str] = set()
    start = time.monotonic()
    while ready or in_flight:
        now = time.monotonic()
        if now > deadline:
            for rid in in_flight:
                engine.abort(rid)
            while engine.has_unfinished():
                engine.step()
            result.timed_out = True
            break
        while ready and ready[0][0] <= now - start:
            _, si, k = heapq.heappop(ready)
            rid = f"s{si}-c{k}"
            in_flight[rid] = (si, k)
            result.sent.append((rid, prompts[si][k]))
            engine.add_request(rid, prompts[si][k], SamplingParams(max_tokens=outputs[si][k], temperature=0.0,
                                                                    ignore_eos=True), session_id=f"s{si}")
        if not engine.has_unfinished():
            time.sleep(max(0.0, min(0.01, ready[0][0] - (time.monotonic() - start))) if ready else 0.0)
            continue
        for out in engine.step():
            if not out.finished or out.request_id not in in_flight:
                continue
            si, k = in_flight.pop(out.request_id)
            done.add(out.request_id)
            result.calls_done += 1
            result.prompt_tokens += out.num_prompt_tokens
            result.cached_tokens += out.cached_tokens
            result.output_tokens += out.num_output_tokens
            if k + 1 < len(prompts[si]):
                due = time.monotonic() - start + thinks[si][k + 1] * think_scale
                heapq.heappush(ready, (due, si, k + 1))
    result.elapsed_s = time.monotonic() - start
    # the ideal over the calls that completed, each against every prompt sent before it
    ideal = ideal_served([p for _, p in result.sent], engine.config.block_size)
    result.ideal_tokens = sum(n for (rid, _), n in zip(result.sent, ideal) if rid in done)
    return result
