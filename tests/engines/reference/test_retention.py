"""The KV retention policies (--kv-retention): eviction order of free cached blocks under
agent-aware, lru and next-call, prefix hits and reset under each, the option's parsing and its
/metrics line. Time is a settable clock passed to BlockPool, so think times are exact."""
from __future__ import annotations

import argparse

import pytest

from engines.reference.block_pool import BlockPool, KVCacheManager
from engines.reference.config import EngineConfig
from engines.reference.metrics import ServerMetrics, render_metrics
from engines.reference.retention import POLICIES, ThinkTimes
from engines.reference.sequence import SamplingParams, Sequence, Status
from engines.reference.serve_args import add_serve_arguments, engine_overrides_from_args

BS = 4


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(policy: str, num_blocks: int) -> tuple[BlockPool, KVCacheManager, Clock]:
    clock = Clock()
    pool = BlockPool(num_blocks, retention=policy, clock=clock)
    return pool, KVCacheManager(pool, BS), clock


def prompt(session: str, n: int) -> list[int]:
    base = {"A": 100, "B": 200, "C": 300, "D": 400}[session]
    return list(range(base, base + n))


def arrive(pool: BlockPool, clock: Clock, t: float, session: str, n_tokens: int) -> Sequence:
    """A request of `session` arrives at t and runs its whole prompt at once (as the scheduler
    would: touch_session on arrival, prefix hits, allocation, caching)."""
    clock.t = t
    s = Sequence(request_id=f"{session}{t}", prompt_token_ids=prompt(session, n_tokens), params=SamplingParams(),
                 session_id=session, arrival_time=t)
    pool.touch_session(session)
    kv = KVCacheManager(pool, BS)
    hits = kv.get_computed_blocks(s)
    assert kv.allocate_slots(s, s.num_tokens - len(hits) * BS, hits)
    s.num_computed_tokens = s.num_tokens
    kv.cache_full_blocks(s)
    return s


def release(pool: BlockPool, clock: Clock, t: float, s: Sequence, finished: bool = True) -> list[int]:
    """The call ends at t (or, finished=False, its sequence is preempted). Returns its blocks in
    the order it releases them (tail first)."""
    clock.t = t
    if finished:
        s.status = Status.FINISHED
    blocks = s.block_table[::-1]
    KVCacheManager(pool, BS).free(s)
    return blocks


def three_sessions(policy: str):
    """A, B, C with two calls each; B thinks longest and is released last:
      t=1 A released, 2 B released, 2 A arrives (gap 1), 3 C released, 5 C arrives (gap 2),
      6 A released, 7 C released, 12 B arrives (gap 10), 13 B released, 14 A's next request arrives.
    Each second call extends the first by a block (two prefix hits, one new block): 3 blocks each,
    the first two released at the first call's end and again at the second's."""
    pool, _, clock = make(policy, 9)
    first = {x: arrive(pool, clock, 0.0, x, 8) for x in "ABC"}
    release(pool, clock, 1.0, first["A"])
    release(pool, clock, 2.0, first["B"])
    a2 = arrive(pool, clock, 2.0, "A", 12)
    release(pool, clock, 3.0, first["C"])
    c2 = arrive(pool, clock, 5.0, "C", 12)
    tail_first = {"A": release(pool, clock, 6.0, a2), "C": release(pool, clock, 7.0, c2)}
    b2 = arrive(pool, clock, 12.0, "B", 12)
    tail_first["B"] = release(pool, clock, 13.0, b2)
    clock.t = 14.0
    pool.touch_session("A")  # A's third request arrives (waiting, not yet scheduled)
    return pool, tail_first


@pytest.mark.parametrize("policy, order", [
    ("lru", "ACB"),          # by release time alone: A's blocks went at 6, C's at 7, B's at 13
    ("agent-aware", "CBA"),  # last activity: C at 7, B at 13, A at 14 (its request arrived)
    # predicted next call: B 13 + 10 = 23, C 7 + 2 = 9; A is calling now, so it goes last
    ("next-call", "BCA"),
])
def test_eviction_order_differs_by_policy(policy, order):
    pool, blocks = three_sessions(policy)
    assert pool.counters.evictions == 0 and pool.num_free_blocks == 9
    expected = [b for x in order for b in blocks[x]]
    assert pool.eviction_order() == expected
    got = pool.allocate(4)
    assert got == expected[:4]
    assert pool.counters.evictions == 4
    assert sorted(pool.cached.values()) == sorted(expected[4:])


def test_next_call_evicts_a_later_release_that_returns_later():
    """C is released after B but thinks as long: its next call is predicted later, so its blocks
    go first, where agent-aware and lru would take B's (idle longer, released earlier)."""
    pool, _, clock = make("next-call", 12)
    b, c = arrive(pool, clock, 0.0, "B", 8), arrive(pool, clock, 0.0, "C", 8)
    release(pool, clock, 1.0, c)
    release(pool, clock, 2.0, b)
    c = arrive(pool, clock, 21.0, "C", 12)  # gap 20
    b = arrive(pool, clock, 22.0, "B", 12)  # gap 20
    b_blocks = release(pool, clock, 30.0, b)  # B: next call at 50
    c_blocks = release(pool, clock, 31.0, c)  # C: next call at 51
    assert pool.eviction_order()[-6:] == c_blocks + b_blocks
    # C's next gap is short: EWMA 0.3 * 1 + 0.7 * 20 = 14.3, next call at 33 + 14.3, before B's
    c = arrive(pool, clock, 32.0, "C", 16)
    c_blocks = release(pool, clock, 33.0, c)
    assert pool.eviction_order()[-7:] == b_blocks + c_blocks
    assert pool.allocate(pool.num_free_blocks - 4) and pool.counters.evictions == 3
    assert sorted(pool.cached.values()) == sorted(c_blocks)


def test_think_time_is_an_ewma_and_new_sessions_use_the_mean():
    tt = ThinkTimes()
    tt.release("A", True, 0.0)
    tt.arrive("A", 10.0)  # gap 10
    tt.release("A", True, 12.0)
    tt.arrive("A", 12.0)  # gap 0: 0.3 * 0 + 0.7 * 10 = 7
    tt.arrive("A", 13.0)  # a second request of the same call measures nothing
    tt.release("A", True, 20.0)
    assert tt.next_call("A") == pytest.approx(27.0)
    tt.release("B", True, 0.0)
    tt.arrive("B", 1.0)  # gap 1
    tt.release("B", True, 5.0)
    tt.release("D", True, 5.0)  # no gap of its own: the mean over sessions, (7 + 1) / 2
    assert tt.next_call("B") == pytest.approx(6.0)
    assert tt.next_call("D") == pytest.approx(9.0)
    tt.release("D", False, 6.0)  # preempted: calling now
    assert tt.next_call("D") == float("-inf")


def test_next_call_without_any_gap_is_agent_aware():
    """No session has come back yet (the first arrivals measure nothing): no predictions, so the
    order is agent-aware's, idle longest first; then the first gap switches predictions on."""
    pool, _, clock = make("next-call", 6)
    seqs = {x: arrive(pool, clock, 0.0, x, 8) for x in "ABC"}
    blocks = {x: release(pool, clock, float(t + 1), seqs[x]) for t, x in enumerate("BAC")}
    assert pool.eviction_order() == blocks["B"] + blocks["A"] + blocks["C"]
    clock.t = 4.0
    pool.touch_session("B")  # gap 3, the mean for A and C too: A back at 5, C at 6, B calling now
    assert pool.eviction_order() == blocks["C"] + blocks["A"] + blocks["B"]


def test_next_call_keeps_a_preempted_session_last():
    """B's sequence is preempted: its request waits to run again, so B's blocks go last although a
    release at 14 with B's think time of 10 would predict B back last of all."""
    pool, _, clock = make("next-call", 6)
    seqs = {x: arrive(pool, clock, 0.0, x, 8) for x in "AB"}
    release(pool, clock, 1.0, seqs["A"])
    release(pool, clock, 2.0, seqs["B"])
    a = arrive(pool, clock, 3.0, "A", 12)  # gap 2
    b = arrive(pool, clock, 12.0, "B", 12)  # gap 10
    a_blocks = release(pool, clock, 13.0, a)  # A: next call at 15
    b_blocks = release(pool, clock, 14.0, b, finished=False)
    assert pool.eviction_order() == a_blocks + b_blocks


@pytest.mark.parametrize("policy", POLICIES)
def test_prefix_hits_and_reset_under_every_policy(policy):
    pool, kv, clock = make(policy, 8)
    a = arrive(pool, clock, 0.0, "A", 9)  # two cached blocks and a partial one
    a_table = list(a.block_table)
    release(pool, clock, 1.0, a)
    release(pool, clock, 3.0, arrive(pool, clock, 2.0, "B", 8))
    assert len(pool.cached) == 4
    again = arrive(pool, clock, 4.0, "A", 11)  # hits A's two cached blocks
    assert again.block_table[:2] == a_table[:2]
    assert [pool.blocks[b].ref_cnt for b in a_table[:2]] == [1, 1]
    assert not set(a_table[:2]) & set(pool.eviction_order())
    # the other 5 free blocks (B's two cached ones last) cover an allocation without touching A's
    assert pool.num_free_blocks == 5 and len(pool.allocate(5)) == 5
    assert pool.counters.evictions == 2 and sorted(pool.cached.values()) == sorted(a_table[:2])
    release(pool, clock, 5.0, again)
    assert set(a_table[:2]) <= set(pool.eviction_order())
    assert pool.reset_prefix_cache() == 2
    assert not pool.cached and pool.num_free_blocks == 3
    fresh = Sequence(request_id="x", prompt_token_ids=prompt("A", 11), params=SamplingParams(), session_id="A",
                     arrival_time=6.0)
    assert kv.get_computed_blocks(fresh) == []


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="kv_retention"):
        EngineConfig(model="m", kv_retention="mru")
    with pytest.raises(ValueError, match="mru"):
        BlockPool(4, retention="mru")


def test_cli_option_maps_and_rejects_unknown_names(capsys):
    p = add_serve_arguments(argparse.ArgumentParser(prog="serve"))
    assert engine_overrides_from_args(p.parse_args(["--model", "m"])) == {}
    ov = engine_overrides_from_args(p.parse_args(["--model", "m", "--kv-retention", "next-call"]))
    assert ov == {"kv_retention": "next-call"}
    assert EngineConfig(model="m", **ov).kv_retention == "next-call"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--model", "m", "--kv-retention", "mru"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("serve: error: argument --kv-retention: invalid choice: 'mru'")


def test_tierbench_serve_rejects_unknown_policy(capsys):
    from bench.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "m", "--load-format", "dummy", "--kv-retention", "mru"])
    assert e.value.code == 2
    assert "argument --kv-retention: invalid choice: 'mru'" in capsys.readouterr().err.splitlines()[-1]


def test_metrics_name_the_policy():
    text = render_metrics({"kv_retention": "lru"}, ServerMetrics(), "m", True)
    assert 'tierbench_kv_retention_info{model_name="m",policy="lru"} 1' in text.splitlines()
