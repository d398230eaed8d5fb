"""Materialized token ids reproduce the trace's prefix sharing exactly, scaled or not."""
from __future__ import annotations

import numpy as np
import pytest

from traces.materialize import Materializer, TokenSpace, scale_trace
from traces.model import Call, Session, Trace

SPACE = TokenSpace(low=10, high=2000, seed=0)


def lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def make_trace(scope: str = "global") -> Trace:
    """Two sessions sharing a 3-block system prefix; each call appends blocks to the previous."""
    sessions = []
    for si in range(2):
        calls, ids = [], [1, 2, 3]
        for k in range(4):
            ids = ids + [100 * (si + 1) + 10 * k + j for j in range(2)]
            calls.append(Call(f"s{si}", k, prompt_tokens=16 * len(ids) + 5, output_tokens=8,
                              hash_ids=np.asarray(ids, np.int64)))
        sessions.append(Session(f"s{si}", calls))
    return Trace(sessions, block_size=16, hash_scope=scope)


def test_same_block_same_ids_across_calls_and_sessions():
    t = make_trace()
    m = Materializer(t, SPACE)
    a0, a1 = m.prompt_ids(0, 0), m.prompt_ids(0, 1)
    b0 = m.prompt_ids(1, 0)
    assert len(a0) == t.sessions[0].calls[0].prompt_tokens
    assert lcp(a0, a1) == 16 * 5  # every full block of call 0 reappears; the 5-token tail is call 0's own
    assert lcp(a0, b0) == 16 * 3  # the shared system prefix, across sessions
    assert all(SPACE.low <= x < SPACE.high for x in a0 + a1 + b0)
    assert Materializer(t, SPACE).prompt_ids(0, 1) == a1  # deterministic


def test_session_scope_keeps_sessions_apart():
    t = make_trace("session")
    m = Materializer(t, SPACE)
    assert lcp(m.prompt_ids(0, 0), m.prompt_ids(1, 0)) < 16
    assert lcp(m.prompt_ids(0, 2), m.prompt_ids(0, 3)) == 16 * 9


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.1, 0.03])
def test_scaling_preserves_prefix_structure(scale):
    t = scale_trace(make_trace(), token_scale=scale)
    assert t.meta["token_scale"] == scale
    m = Materializer(t, SPACE)
    for k in range(3):
        a, b = m.prompt_ids(0, k), m.prompt_ids(0, k + 1)
        assert len(a) == t.sessions[0].calls[k].prompt_tokens
        blocks = len(t.sessions[0].calls[k].hash_ids)
        shared = int(np.floor(blocks * 16 * scale))  # tokens of the shared blocks after scaling
        assert lcp(a, b) >= min(shared, len(a))
        assert lcp(a, b) <= len(a)


def test_max_context_caps_prompt_and_records_it():
    t = scale_trace(make_trace(), max_context=100)
    assert t.meta["max_context"] == 100 and t.meta["capped_calls"] > 0
    m = Materializer(t, SPACE)
    for si, s in enumerate(t.sessions):
        for k, c in enumerate(s.calls):
            assert c.prompt_tokens + c.output_tokens <= 100
            assert len(m.prompt_ids(si, k)) == c.prompt_tokens


def test_text_messages_are_shortened_not_reordered():
    t = Trace([Session("a", [Call("a", 0, 10, 2, messages=[{"role": "user", "content": "x" * 100}])])])
    s = scale_trace(t, 0.1)
    assert s.sessions[0].calls[0].messages[0]["content"] == "x" * 10
    assert t.sessions[0].calls[0].messages[0]["content"] == "x" * 100  # the original is untouched
