"""The readers on the shared real traces and on small files written here, and the native and
Mooncake writers."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tests.conftest import shared
from traces.load import detect, load_trace
from traces.model import STOP_END, STOP_TOOL
from traces.mooncake import write_mooncake
from traces.native import write_native
from traces.stats import trace_stats


def test_weka_shared_matches_source_figures(weka_trace):
    st = trace_stats(weka_trace)
    # SOURCE.txt (710 sessions upstream; 568 here): calls/session p50 45, think after tool_use
    # p50 9 s, 96.3% block reuse within a conversation.
    assert st["sessions"] == 568
    assert 40 <= st["calls_per_session"]["p50"] <= 50
    assert 7 <= st["think_time_s"]["p50"] <= 11
    assert 0.94 <= st["prefix_reuse_ratio"] <= 0.98
    assert 90_000 <= st["input_tokens"]["p50"] <= 120_000
    assert 0.80 <= st["stop_reasons"]["tool_call"] <= 0.90
    assert weka_trace.block_size == 64 and weka_trace.hash_scope == "session"


def test_weka_subagents_have_parents(weka_trace):
    subs = [s for s in weka_trace.sessions if s.parent_id]
    assert subs, "the shared WEKA file has subagent sessions"
    ids = {s.id for s in weka_trace.sessions}
    for s in subs:
        assert s.parent_id in ids
        assert s.parent_call is not None and s.parent_call >= 0
        parent = next(p for p in weka_trace.sessions if p.id == s.parent_id)
        assert s.calls[0].arrival_s >= parent.calls[s.parent_call].arrival_s


def test_mooncake_shared():
    t = load_trace(shared("mooncake"))
    st = trace_stats(t)
    assert st["calls"] == 12031 and t.block_size == 512
    assert st["input_tokens"]["p50"] == 6909
    assert 0.33 <= st["prefix_reuse_ratio"] <= 0.42  # SOURCE: 36.6% of blocks
    assert 3.2 <= st["arrival_rate_per_s"] <= 3.6


def test_azure_shared():
    t = load_trace(shared("azure-llm-2023"))
    st = trace_stats(t)
    assert st["calls"] == 8819
    assert st["input_tokens"]["p50"] == 1469 and st["output_tokens"]["p50"] == 13
    assert st["prefix_reuse_ratio"] is None
    assert abs(st["duration_s"] - 3436) < 2


def test_detect_shared_directories():
    assert detect(shared("weka-kv-cache-tester"))[0] == "weka"
    assert detect(shared("mooncake"))[0] == "mooncake"
    assert detect(shared("azure-llm-2023"))[0] == "azure"
    fmt, files = detect(shared("mini-swe-agent-gemini3-swebench"))
    assert fmt == "swe" and [f.name for f in files] == ["trajectories_raw.jsonl.gz"]


def _weka_record(i: int, n: int = 3) -> dict:
    reqs = []
    ids: list[int] = []
    for k in range(n):
        ids = ids + [1000 * i + k * 10 + j for j in range(2)]
        reqs.append({"t": 10.0 * k, "type": "n", "model": "m", "in": 64 * len(ids) + 5, "out": 7,
                     "hash_ids": list(ids), "stop": "tool_use" if k < n - 1 else "end_turn",
                     "think_time": 0.0 if k == 0 else 3.0})
    return {"id": f"trace_{i:04d}", "block_size": 64, "hash_id_scope": "local", "tool_tokens": 10,
            "system_tokens": 5, "requests": reqs}


def test_weka_single_file_directory_and_bundle_agree(tmp_path):
    d = tmp_path / "traces"
    d.mkdir()
    for i in range(3):
        (d / f"trace_{i:04d}.json").write_text(json.dumps(_weka_record(i)))
    bundle = tmp_path / "bundle.jsonl.gz"
    with gzip.open(bundle, "wt") as f:
        for i in range(3):
            f.write(json.dumps(_weka_record(i)) + "\n")
    single = load_trace(d / "trace_0000.json")
    from_dir = load_trace(d)
    from_bundle = load_trace(bundle)
    assert len(single.sessions) == 1 and len(from_dir.sessions) == len(from_bundle.sessions) == 3
    a, b = from_dir.sessions[2].calls, from_bundle.sessions[2].calls
    assert [c.prompt_tokens for c in a] == [c.prompt_tokens for c in b]
    assert a[1].think_s == 3.0 and a[0].think_s is None
    assert a[0].stop == STOP_TOOL and a[-1].stop == STOP_END
    st = trace_stats(from_dir)
    # call k keeps all 2k blocks of call k-1: cached = 128k tokens of 128(k+1)+5
    expect = sum(128 * k for k in range(3)) / sum(128 * (k + 1) + 5 for k in range(3))
    assert st["prefix_reuse_ratio"] == pytest.approx(expect)


def test_native_round_trip(tmp_path, weka_trace):
    sub = next(s for s in weka_trace.sessions if s.parent_id)
    parent = next(s for s in weka_trace.sessions if s.id == sub.parent_id)
    picked = [s for s in weka_trace.sessions[:3] if s.id not in (sub.id, parent.id)] + [parent, sub]
    small = type(weka_trace)(picked, source="x", format="weka", block_size=64, hash_scope="session")
    out = tmp_path / "t.jsonl"
    write_native(small, out)
    back = load_trace(out)
    assert back.format == "native" and back.block_size == 64 and back.hash_scope == "session"
    assert [s.id for s in back.sessions] == [s.id for s in small.sessions]
    for s1, s2 in zip(small.sessions, back.sessions):
        assert s1.parent_id == s2.parent_id and s1.parent_call == s2.parent_call
        for c1, c2 in zip(s1.calls, s2.calls):
            assert (c1.prompt_tokens, c1.output_tokens, c1.think_s, c1.stop, c1.arrival_s) == \
                   (c2.prompt_tokens, c2.output_tokens, c2.think_s, c2.stop, c2.arrival_s)
            assert np.array_equal(c1.hash_ids, c2.hash_ids)
    assert trace_stats(back)["prefix_reuse_ratio"] == pytest.approx(trace_stats(small)["prefix_reuse_ratio"])


def test_mooncake_writer_round_trip(tmp_path, weka_trace):
    small = type(weka_trace)(weka_trace.sessions[:20], source="x", format="weka", block_size=64, hash_scope="session")
    out = tmp_path / "m.jsonl"
    notes = write_mooncake(small, out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == small.num_calls == notes["requests"]
    ts = [r["timestamp"] for r in rows]
    assert ts == sorted(ts)
    back = load_trace(out)
    assert back.format == "mooncake" and back.block_size == 512
    # Re-blocking to 512 tokens loses at most one partial block per call: reuse stays close.
    r_small = trace_stats(small)["prefix_reuse_ratio"]
    r_back = trace_stats(back)["prefix_reuse_ratio"]
    assert r_back <= r_small + 1e-9 and r_small - r_back < 0.05
    # Session-scoped ids must not collide across sessions after renumbering: the first blocks
    # of two different sessions (both "1, 2, 3..." upstream) get different ids.
    firsts = {tuple(r["hash_ids"][:1]) for r in rows if r["hash_ids"]}
    assert len(firsts) > 1


def test_tracelab_shared_example():
    t = load_trace(shared("tracelab-examples") / "round_trace.derived.jsonl")
    assert t.format == "tracelab" and len(t.sessions) == 2 and t.num_calls == 19
    claude = next(s for s in t.sessions if s.id.startswith("claude"))
    # Round 1 waits for round 0's slowest tool (a 19.3 s WebSearch), not its first result.
    assert claude.calls[1].think_s == pytest.approx(19.29, abs=0.05)
    # Round k keeps prefix_tokens of round k-1 (16-token blocks): 29,380 of 35,740 in round 1.
    st = trace_stats(t)
    assert 0.7 < st["prefix_reuse_ratio"] < 0.95
    assert claude.calls[4].stop == STOP_END and claude.calls[0].stop == STOP_TOOL
