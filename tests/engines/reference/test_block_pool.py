"""BlockPool / KVCacheManager: hashing, reuse, reference counts, eviction order."""
from __future__ import annotations

import pytest

from engines.reference.block_pool import ROOT_HASH, BlockPool, KVCacheManager, NoFreeBlocksError, hash_block
from engines.reference.sequence import SamplingParams, Sequence

BS = 4


def seq(tokens, session=None, rid="r"):
    return Sequence(request_id=rid, prompt_token_ids=list(tokens), params=SamplingParams(), session_id=session,
                    arrival_time=0.0)


def run_prefill(kv: KVCacheManager, s: Sequence) -> int:
    """Schedule s's whole prompt as the scheduler would; returns the prefix hit tokens."""
    hits = kv.get_computed_blocks(s)
    n_hit = len(hits) * kv.block_size
    assert kv.allocate_slots(s, s.num_tokens - n_hit, hits)
    s.num_computed_tokens = s.num_tokens
    if s.num_cached_tokens < 0:
        s.num_cached_tokens = n_hit
    kv.cache_full_blocks(s)
    return n_hit


def test_chained_hash_depends_on_parent():
    a = hash_block(ROOT_HASH, [1, 2, 3, 4])
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(hash_block(ROOT_HASH, [9, 9, 9, 9]), [5, 6, 7, 8])
    assert hash_block(ROOT_HASH, [1, 2, 3, 4]) == a


def test_prefix_reuse_and_refcounts():
    pool = BlockPool(16)
    kv = KVCacheManager(pool, BS)
    a = seq(range(10), rid="a")
    assert run_prefill(kv, a) == 0
    assert len(a.block_table) == 3 and pool.num_free_blocks == 13
    assert len(pool.cached) == 2  # two full blocks; the partial third is not cached
    # same first 8 tokens: two blocks shared while both run
    b = seq(list(range(8)) + [50, 51, 52], rid="b")
    assert run_prefill(kv, b) == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert [pool.blocks[i].ref_cnt for i in a.block_table[:2]] == [2, 2]
    assert pool.num_free_blocks == 12
    kv.free(a)
    assert [pool.blocks[i].ref_cnt for i in b.block_table[:2]] == [1, 1]
    kv.free(b)
    assert pool.num_free_blocks == 16
    # freed but still cached: a third request hits them
    c = seq(range(12), rid="c")
    assert run_prefill(kv, c) == 8


def test_last_token_is_never_served_from_cache():
    pool = BlockPool(16)
    kv = KVCacheManager(pool, BS)
    a = seq(range(8))
    run_prefill(kv, a)
    kv.free(a)
    b = seq(range(8))  # fully cached prompt: still one block (with the last token) to compute
    assert run_prefill(kv, b) == 4


def test_output_blocks_are_cached_for_the_next_call():
    pool = BlockPool(16)
    kv = KVCacheManager(pool, BS)
    a = seq(range(6), session="s")
    run_prefill(kv, a)
    for t in (100, 101, 102, 103):  # decode: each step computes the previously sampled token
        a.token_ids.append(t)
        assert kv.allocate_slots(a, a.num_tokens - a.num_computed_tokens)
        a.num_computed_tokens = a.num_tokens
        kv.cache_full_blocks(a)
    a.token_ids.append(104)  # sampled last, never computed
    kv.free(a)
    nxt = seq(list(range(6)) + [100, 101, 102, 103, 104, 7, 8, 9], session="s")
    assert run_prefill(kv, nxt) == 8  # blocks [0..3] and [4, 5, 100, 101]; [102, 103, 104, 7] was not computed


def test_hash_collision_free_duplicate_stays_uncached():
    pool = BlockPool(8)
    kv = KVCacheManager(pool, BS)
    a, b = seq(range(5), rid="a"), seq(range(5), rid="b")
    # both miss (scheduled in the same step), both compute block 0; only one copy is cached
    for s in (a, b):
        assert kv.get_computed_blocks(s) == []
        assert kv.allocate_slots(s, s.num_tokens)
    for s in (a, b):
        s.num_computed_tokens = s.num_tokens
        kv.cache_full_blocks(s)
    assert len(pool.cached) == 1
    kv.free(a)
    kv.free(b)
    assert pool.num_free_blocks == 8


def test_free_uncached_blocks_go_before_cached_ones():
    pool = BlockPool(4)
    kv = KVCacheManager(pool, BS)
    a = seq(range(6))  # one full (cached) block + one partial
    run_prefill(kv, a)
    full, partial = a.block_table
    kv.free(a)
    assert pool.eviction_order() == [2, 3, partial, full]
    got = pool.allocate(3)
    assert full not in got and pool.counters.evictions == 0
    assert pool.allocate(1) == [full]
    assert pool.counters.evictions == 1 and not pool.cached


def test_lru_by_session_then_block():
    pool = BlockPool(12)
    kv = KVCacheManager(pool, BS)
    s1 = seq(range(100, 108), session="A", rid="a1")
    s2 = seq(range(200, 208), session="B", rid="b1")
    s3 = seq(range(300, 312), session="A", rid="a2")
    for s in (s1, s2, s3):
        run_prefill(kv, s)
    blocks = {s.request_id: list(s.block_table) for s in (s1, s2, s3)}
    # release order: A (a1), B, A (a2) -> A is the most recently active session
    kv.free(s1)
    kv.free(s2)
    kv.free(s3)
    order = pool.eviction_order()
    assert len(order) == 12
    # the 5 never-used blocks first, then session B's, then session A's (a1's before a2's; tail first)
    assert order[:5] == [b for b in order[:5] if b not in sum(blocks.values(), [])]
    assert order[5:7] == blocks["b1"][::-1]
    assert order[7:] == blocks["a1"][::-1] + blocks["a2"][::-1]
    # a new request of session B makes B the most recent: A is now evicted first
    pool.touch_session("B")
    order = pool.eviction_order()
    assert order[5:] == blocks["a1"][::-1] + blocks["a2"][::-1] + blocks["b1"][::-1]
    pool.allocate(6)
    assert pool.counters.evictions == 1
    # session A's oldest block chain lost its tail first: a1's first block is still cached
    assert pool.blocks[blocks["a1"][0]].block_hash is not None
    assert pool.blocks[blocks["a1"][1]].block_hash is None


def test_anonymous_requests_are_plain_lru():
    pool = BlockPool(4)
    kv = KVCacheManager(pool, BS)
    a, b = seq(range(4), rid="a"), seq(range(10, 14), rid="b")
    run_prefill(kv, a)
    run_prefill(kv, b)
    blocks = a.block_table + b.block_table
    kv.free(a)
    kv.free(b)
    assert pool.eviction_order() == [2, 3] + blocks  # released first, evicted first


def test_allocate_fails_cleanly_when_short():
    pool = BlockPool(4)
    kv = KVCacheManager(pool, BS)
    a = seq(range(12))
    assert kv.allocate_slots(a, 12)
    b = seq(range(50, 58))
    assert not kv.allocate_slots(b, 8)  # needs 2, 1 free: nothing changes
    assert b.block_table == [] and pool.num_free_blocks == 1
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(2)
    kv.free(a)
    assert pool.num_free_blocks == 4


def test_hits_on_free_blocks_count_against_free_space():
    pool = BlockPool(3)
    kv = KVCacheManager(pool, BS)
    a = seq(range(9))
    run_prefill(kv, a)  # 3 blocks, 2 cached
    kv.free(a)
    b = seq(list(range(8)) + [40, 41, 42, 43, 44])  # hits 2 free blocks, needs 2 more: only 1 left
    hits = kv.get_computed_blocks(b)
    assert len(hits) == 2
    assert not kv.allocate_slots(b, b.num_tokens - 8, hits)
    assert pool.num_free_blocks == 3


def test_caching_disabled():
    pool = BlockPool(8, enable_caching=False)
    kv = KVCacheManager(pool, BS)
    a = seq(range(9))
    run_prefill(kv, a)
    kv.free(a)
    assert not pool.cached
    assert run_prefill(kv, seq(range(9))) == 0


def test_misses_lost_to_eviction_are_counted_stranded_blocks_included():
    pool = BlockPool(3, retention="lru")
    kv = KVCacheManager(pool, BS)
    a = seq(range(9), rid="a")  # two full blocks and one partial
    run_prefill(kv, a)
    b0, b1, _ = a.block_table
    kv.free(a)
    pool.touch([b1])
    pool.free([b1])  # b1 released last: LRU evicts b0 first
    taken = pool.allocate(2)  # the empty partial block, then b0's contents go
    assert pool.counters.evictions == 1 and pool.blocks[b1].block_hash is not None

    def lookup(tokens, rid):
        s = seq(tokens, rid=rid)
        hits = kv.get_computed_blocks(s)
        kv.record_prefix_lookup(s, len(hits))
        return len(hits)

    # block 0 was evicted, block 1 is still cached but stranded behind it: both recomputed because of eviction
    assert lookup(range(9), "again") == 0 and kv.counters.lost_blocks == 2
    assert kv.counters.miss_blocks == 2
    assert lookup(range(50, 59), "new") == 0 and kv.counters.lost_blocks == 2  # never cached: not lost
    pool.free(taken)
    pool.reset_prefix_cache()
    assert lookup(range(9), "after reset") == 0 and kv.counters.lost_blocks == 2  # a fresh start forgets


def test_a_block_cached_again_is_no_longer_lost():
    pool = BlockPool(2, retention="lru")
    kv = KVCacheManager(pool, BS)
    a = seq(range(5), rid="a")  # one full block, one partial
    run_prefill(kv, a)
    h = a.block_hashes[0]
    kv.free(a)
    pool.free(pool.allocate(2))  # evicts it
    assert pool.was_cached(h) and h not in pool.cached
    b = seq(range(5), rid="b")
    run_prefill(kv, b)  # computes it again
    assert h in pool.cached and h not in pool._evicted
