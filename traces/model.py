"""The trace model: a Trace holds sessions, a session holds its calls in order.

A call is one LLM request of an agent. Closed-loop replay uses `think_s` (the tool or human gap
between the previous response and this call); open-loop replay uses `arrival_s`. The prompt's
structure is either chained block hashes (`hash_ids`, `Trace.block_size` tokens each: equal ids
mean equal, reusable KV blocks) or real message text (`messages`: the chat messages appended
since the previous call of the session; for call 0, the whole prompt).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STOP_TOOL = "tool_call"
STOP_END = "end_turn"
COMPLEXITIES = ("simple", "moderate", "complex")


@dataclass
class Call:
    session_id: str
    index: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float | None = None  # offset from the trace's start (open loop), where known
    think_s: float | None = None  # gap after the previous response before this call, where known
    hash_ids: np.ndarray | None = None  # int64 chained block hashes covering the prompt
    messages: list[dict] | None = None  # text traces: messages appended since the previous call
    stop: str | None = None  # STOP_TOOL, STOP_END, or None when unknown
    model: str | None = None  # the model the recording used (a hint for routing)
    complexity: str | None = None  # one of COMPLEXITIES, where known


@dataclass
class Session:
    id: str
    calls: list[Call] = field(default_factory=list)
    parent_id: str | None = None  # subagent sessions: the session that spawned it
    parent_call: int | None = None  # ... and the index of the call after which it was spawned
    start_s: float | None = None  # arrival of the session's first call, where known


@dataclass
class Trace:
    sessions: list[Session]
    source: str = ""  # the file or profile it came from
    format: str = ""  # reader name: weka, swe, mooncake, azure, native, synth
    block_size: int | None = None  # tokens per hash block
    hash_scope: str = "global"  # "global": equal ids are equal blocks everywhere; "session": only within a root session
    meta: dict = field(default_factory=dict)  # reader notes, token scaling applied, tokenizer used, ...

    def calls(self):
        """Every call of every session, sessions in order."""
        for s in self.sessions:
            yield from s.calls

    @property
    def num_calls(self) -> int:
        return sum(len(s.calls) for s in self.sessions)

    def root_of(self) -> dict[str, str]:
        """Session id -> id of its root session (itself unless it is a subagent)."""
        parent = {s.id: s.parent_id for s in self.sessions}
        roots = {}
        for sid in parent:
            r = sid
            while parent.get(r):
                r = parent[r]
            roots[sid] = r
        return roots
