"""The paged KV cache's bookkeeping: a pool of fixed-size blocks with reference counts and a prefix
cache (`BlockPool`), and the per-sequence layer over it (`KVCacheManager`): block tables, prefix
matching by chained block hashes, allocation for the tokens of a step, release.

Eviction order for free blocks (a free block is one no running sequence references):
  1. blocks holding nothing reusable (no hash) go first;
  2. then cached blocks, in the order of the retention policy (`--kv-retention`, retention.py):
     agent-aware (the default) goes session by session, the session idle longest first (a
     session's activity is a request arriving for it or releasing its blocks), and within a
     session the block released longest ago first; lru goes by release time alone; next-call goes
     session by session, the session predicted to call again last first. A sequence releases its
     blocks tail first, so a session loses its newest context before the prefix it shares with
     others.
Requests without a session share one anonymous session, which makes agent-aware's order plain LRU.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable

from engines.reference.retention import make_retention
from engines.reference.sequence import Sequence

# The parent "hash" of a sequence's first block. A constant (not hash(None)) so hashes agree
# across processes on Python 3.11, where hash(None) depends on the address of None.
ROOT_HASH = 0x5EED


def hash_block(parent_hash: int, token_ids: Iterable[int]) -> int:
    """Chained block hash: equal hashes mean equal tokens in this block and in every block before it.
    Python's tuple hash of ints is deterministic (no per-process salt) and 64-bit; a collision
    would serve wrong KV, at odds of ~n^2/2^64 for n cached blocks."""
    return hash((parent_hash, tuple(token_ids)))


class NoFreeBlocksError(RuntimeError):
    pass


@dataclass(eq=False)
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None  # set while the block is in the prefix cache


@dataclass
class PoolCounters:
    evictions: int = 0  # cached blocks whose contents were dropped to make room


EVICTED_MEMORY = 1 << 18  # hashes of evicted blocks remembered (~25 MB at most), newest kept


class BlockPool:
    """Blocks, reference counts, the hash -> block map, and the free-block eviction order."""

    def __init__(self, num_blocks: int, enable_caching: bool = True, retention: str = "agent-aware",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if num_blocks < 1:
            raise ValueError("need at least one KV block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.retention = retention  # the policy's name
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.cached: dict[int, int] = {}  # block hash -> block id
        self._free_plain: deque[int] = deque(range(num_blocks))  # free, nothing cached
        self._free_cached = make_retention(retention)  # free cached blocks in eviction order
        self._clock = clock  # what next-call measures think times with (tests pass their own)
        self._num_free = num_blocks
        self.counters = PoolCounters()
        # hashes evicted and not cached again: a later prompt that misses one lost it to eviction
        self._evicted: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some sequence."""
        return 1.0 - self._num_free / self.num_blocks

    def touch_session(self, session_id: str | None) -> None:
        """A request of the session arrived: under agent-aware its free cached blocks move to the
        back of the eviction order; next-call measures the session's think time."""
        self._free_cached.arrive(session_id, self._clock())

    def lookup(self, block_hash: int) -> int | None:
        return self.cached.get(block_hash)

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on blocks (prefix-cache hits); free ones leave the eviction order."""
        for bid in block_ids:
            block = self.blocks[bid]
            if block.ref_cnt == 0:
                self._take_free(bid)
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[int]:
        """n fresh blocks with one reference each; may evict cached blocks (see module docstring)."""
        if n > self._num_free:
            raise NoFreeBlocksError(f"need {n} blocks, {self._num_free} free")
        out = [self._free_plain.popleft() for _ in range(min(n, len(self._free_plain)))]
        for bid in self._free_cached.evict(n - len(out)):
            block = self.blocks[bid]
            del self.cached[block.block_hash]
            self._remember_evicted(block.block_hash)
            block.block_hash = None
            self.counters.evictions += 1
            out.append(bid)
        for bid in out:
            self.blocks[bid].ref_cnt = 1
        self._num_free -= n
        return out

    def free(self, block_ids: Iterable[int], session_id: str | None = None, call_ended: bool = True) -> None:
        """Drop one reference from each block, in the given order, which becomes the eviction order
        among them. Counts as activity of `session_id`; `call_ended` is False for a preemption
        (the request waits to run again), which next-call does not take for the end of a call."""
        newly_cached = []
        for bid in block_ids:
            block = self.blocks[bid]
            block.ref_cnt -= 1
            assert block.ref_cnt >= 0, f"block {bid} freed twice"
            if block.ref_cnt:
                continue
            self._num_free += 1
            if block.block_hash is None:
                self._free_plain.append(bid)
            else:
                newly_cached.append(bid)
        self._free_cached.release(newly_cached, session_id, call_ended, self._clock())

    def cache_block(self, block_id: int, block_hash: int) -> bool:
        """Register a full, computed block under its hash. False (left uncached) when caching is
        off or another block already holds that hash: one copy serves every later request."""
        if not self.enable_caching or block_hash in self.cached:
            return False
        block = self.blocks[block_id]
        assert block.block_hash is None and block.ref_cnt > 0
        block.block_hash = block_hash
        self.cached[block_hash] = block_id
        self._evicted.pop(block_hash, None)  # computed again: cached, no longer lost
        return True

    def was_cached(self, block_hash: int) -> bool:
        """Cached now, or evicted since the last reset (of the newest EVICTED_MEMORY evictions)."""
        return block_hash in self.cached or block_hash in self._evicted

    def _remember_evicted(self, block_hash: int) -> None:
        self._evicted[block_hash] = None
        if len(self._evicted) > EVICTED_MEMORY:
            self._evicted.popitem(last=False)

    def reset_prefix_cache(self) -> int:
        """Forget every free cached block (running sequences keep theirs). Returns how many."""
        dropped = self._free_cached.clear()
        for bid in dropped:
            block = self.blocks[bid]
            del self.cached[block.block_hash]
            block.block_hash = None
            self._free_plain.append(bid)
        self._evicted.clear()  # a fresh start: misses from here on are not losses
        return len(dropped)

    def eviction_order(self) -> list[int]:
        """Free block ids in the order allocate() would hand them out (for tests and debugging)."""
        return list(self._free_plain) + self._free_cached.order()

    def _take_free(self, bid: int) -> None:
        block = self.blocks[bid]
        if block.block_hash is None:
            self._free_plain.remove(bid)  # O(n), but only reachable for uncached blocks, i.e. never via hits
        else:
            self._free_cached.remove(bid)
        self._num_free -= 1


@dataclass
class CacheCounters:
    queried_tokens: int = 0  # prompt tokens looked up in the prefix cache (first schedule only)
    hit_tokens: int = 0
    hit_blocks: int = 0
    miss_blocks: int = 0  # full prompt blocks looked up and not found
    lost_blocks: int = 0  # of those, blocks cached earlier and lost to eviction (recomputed because of it)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class KVCacheManager:
    """Block tables of sequences over a BlockPool."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self.counters = CacheCounters()

    def _extend_hashes(self, seq: Sequence, num_blocks: int) -> None:
        hashes, bs, toks = seq.block_hashes, self.block_size, seq.token_ids
        parent = hashes[-1] if hashes else ROOT_HASH
        for i in range(len(hashes), num_blocks):
            parent = hash_block(parent, toks[i * bs:(i + 1) * bs])
            hashes.append(parent)

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """Leading blocks of seq's tokens already in the prefix cache. At most (num_tokens - 1) //
        block_size blocks, so at least one token is left to compute: the step that computes it
        produces the logits to sample from."""
        if not self.pool.enable_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._extend_hashes(seq, max_blocks)
        hits = []
        for h in seq.block_hashes[:max_blocks]:
            bid = self.pool.lookup(h)
            if bid is None:
                break
            hits.append(bid)
        return hits

    def record_prefix_lookup(self, seq: Sequence, num_hit_blocks: int) -> None:
        """Count a request's first admission towards the prefix hit rate (resumes after
        preemption are recomputation, counted by the scheduler instead)."""
        c = self.counters
        c.queried_tokens += seq.num_prompt_tokens
        c.hit_tokens += num_hit_blocks * self.block_size
        c.hit_blocks += num_hit_blocks
        c.miss_blocks += seq.num_prompt_tokens // self.block_size - num_hit_blocks
        # a block hash chains its whole prefix, so a missed block found cached (stranded behind an
        # evicted one) or among the evicted was computed before under this very prefix: eviction's cost
        c.lost_blocks += sum(1 for h in seq.block_hashes[num_hit_blocks:] if self.pool.was_cached(h))

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, computed_blocks: list[int] = ()) -> bool:
        """Give seq blocks for `computed_blocks` (prefix hits, new to seq) plus num_new_tokens more
        tokens. False, and nothing changed, when the pool is short."""
        bs = self.block_size
        total = seq.num_computed_tokens + len(computed_blocks) * bs + num_new_tokens
        need = max(0, -(-total // bs) - len(seq.block_table) - len(computed_blocks))
        # hits on free blocks take them out of the free count too
        free_hits = sum(1 for b in computed_blocks if self.pool.blocks[b].ref_cnt == 0)
        if need > self.pool.num_free_blocks - free_hits:
            return False
        if computed_blocks:
            self.pool.touch(computed_blocks)
            seq.block_table.extend(computed_blocks)
            seq.num_cached_blocks = len(seq.block_table)
        if need:
            seq.block_table.extend(self.pool.allocate(need))
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks of seq that are full and computed. Called after every step, so a
        session's next call finds its whole previous prompt and output (all but the last sampled
        token, whose KV is never computed) in the cache."""
        if not self.pool.enable_caching:
            return
        n_full = seq.num_computed_tokens // self.block_size
        if n_full <= seq.num_cached_blocks:
            return
        self._extend_hashes(seq, n_full)
        for i in range(seq.num_cached_blocks, n_full):
            self.pool.cache_block(seq.block_table[i], seq.block_hashes[i])
        seq.num_cached_blocks = n_full

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks, tail first (see the module docstring for why). A sequence not
        finished is being preempted: its call has not ended."""
        self.pool.free(reversed(seq.block_table), seq.session_id, call_ended=seq.is_finished)
        seq.block_table = []
        seq.num_cached_blocks = 0
