"""The scheduler: which sequences run this step, and how many of their tokens.

One token budget per step (max_num_batched_tokens) covers everything, handed out in this order:
  1. every running decode its one token: a decode is never held back by a prefill;
  2. prefill work, cut to what is left of the budget: first the next chunks of running prefills,
     then waiting sequences (prefix-cache hits taken off their prompt, the rest chunked to fit).
     Both in the prefill order: with "fcfs" (the default), arrival order (running prefills in
     order of admission); with "shortest", fewest prompt tokens left to compute first (prefix
     hits excluded), except that a sequence waiting longer than max_prefill_wait (since its
     arrival), or resuming after preemption, goes before all of those, oldest first.
Shortest-first lowers the mean TTFT of a burst of mixed prompts (under FCFS every short prompt
behind a long one waits for all of it), but the long prompts wait for the short ones, and where
the tail of TTFT is made of long prompts, as in the Azure replay (examples/azure-cpu.toml), the
tail grows: there the longest prompt of the largest burst (1,730 tokens) got its first token after
94-117 ms in the A/B rounds at commit f56c076 (shortest-first), against 65-74 ms under FCFS at
19ca36e, with slower kernels. So FCFS is the default. The wait bound keeps a long prompt from being starved by a stream of short
ones: past it, the order is FCFS.
The budget bounds one step's time, and with it how long every decode in the step waits: on the
CPU its default is small (config.CPU_TOKEN_BUDGET, measured), so a burst of long prompts runs
as several short steps with the decodes in each. Prompts are not regrouped by length: the
attention op runs each whole prompt unpadded (attention.py), so grouping would save nothing.
When the pool runs out of blocks, the newest running sequence is preempted: its blocks are
released (cached ones stay reusable) and it goes back to the head of the queue to be recomputed
later. Like vLLM v1, a step that preempted admits nothing new.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from engines.reference.block_pool import KVCacheManager
from engines.reference.sequence import Sequence, Status


class QueueFullError(RuntimeError):
    """The waiting queue is at max_waiting. The server answers 503 with Retry-After."""

    def __init__(self, max_waiting: int) -> None:
        super().__init__(f"waiting queue is full ({max_waiting} requests)")
        self.max_waiting = max_waiting


@dataclass
class SchedulerCounters:
    preemptions: int = 0
    recomputed_tokens: int = 0  # tokens computed again after preemption (prefix hits excluded)
    steps: int = 0
    prompt_tokens_computed: int = 0  # prefill tokens run through the model (cache hits excluded)
    generation_tokens: int = 0


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # per seq, this step
    total_tokens: int


PREFILL_ORDERS = ("shortest", "fcfs")


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_batched_tokens: int, max_num_seqs: int,
                 prefill_order: str = "fcfs", max_prefill_wait_s: float = 0.1) -> None:
        if prefill_order not in PREFILL_ORDERS:
            raise ValueError(f"prefill_order must be one of {', '.join(PREFILL_ORDERS)}")
        self.kv = kv
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.prefill_order = prefill_order
        self.max_prefill_wait_s = max_prefill_wait_s
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in order of admission: the last is preempted first
        self.counters = SchedulerCounters()
        # prefix-cache hits of waiting sequences, looked up once for the prefill order (admission
        # looks again: the cache may have changed by then)
        self._hit_tokens: dict[str, int] = {}

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.kv.pool.touch_session(seq.session_id)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        seqs: list[Sequence] = []
        counts: list[int] = []
        preemptions_before = self.counters.preemptions

        # 1.-2. running sequences: the budget goes to decodes first, then to prefill chunks;
        # blocks are allocated oldest first, so that a preemption (which takes the newest) never
        # hits a sequence already scheduled in this step
        planned = self._plan_running(budget)
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            n = planned.get(seq.request_id)
            if n is None:
                i += 1
                continue
            if not self._allocate_or_preempt(seq, n):
                break  # seq was the newest left and went itself
            seqs.append(seq)
            counts.append(n)
            budget -= n
            i += 1

        # 2. waiting sequences, in the prefill order; none after a preemption (as vLLM v1:
        # admitting new work while evicting running work would thrash)
        now = time.monotonic()
        admit = (self.waiting and budget > 0 and self.counters.preemptions == preemptions_before
                 and len(self.running) < self.max_num_seqs)  # else not even sorted
        for seq in self._waiting_in_order(now) if admit else ():
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            hits = self.kv.get_computed_blocks(seq) if seq.num_computed_tokens == 0 else []
            num_hit = len(hits) * self.kv.block_size
            n = min(seq.num_tokens - seq.num_computed_tokens - num_hit, budget)
            if not self.kv.allocate_slots(seq, n, hits):
                break  # the first in order waits for blocks: none jumps ahead of it
            self.waiting.remove(seq)
            self._hit_tokens.pop(seq.request_id, None)
            seq.num_computed_tokens += num_hit
            if seq.num_cached_tokens < 0:  # first admission (not a resume after preemption)
                seq.num_cached_tokens = num_hit
                seq.first_scheduled_time = now
                self.kv.record_prefix_lookup(seq, len(hits))
            seq.status = Status.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n

        for seq, n in zip(seqs, counts):
            start = seq.num_computed_tokens
            if start < seq.max_computed_tokens:
                self.counters.recomputed_tokens += min(start + n, seq.max_computed_tokens) - start
            if start < seq.num_prompt_tokens:
                self.counters.prompt_tokens_computed += min(start + n, seq.num_prompt_tokens) - start
        self.counters.steps += 1
        return ScheduledBatch(seqs, counts, self.max_num_batched_tokens - budget)

    def _prefill_key(self, seq: Sequence, now: float, left: int) -> tuple:
        """Sort key of the prefill order (module docstring); `left`: prompt tokens to compute."""
        if (self.prefill_order == "fcfs" or seq.num_preemptions
                or now - seq.arrival_time > self.max_prefill_wait_s):
            return (0, seq.arrival_time, 0)
        return (1, left, seq.arrival_time)

    def _waiting_in_order(self, now: float) -> list[Sequence]:
        if self.prefill_order == "fcfs":
            return list(self.waiting)

        def left(seq: Sequence) -> int:
            hit = 0
            if seq.num_computed_tokens == 0:
                hit = self._hit_tokens.get(seq.request_id)
                if hit is None:
                    hit = len(self.kv.get_computed_blocks(seq)) * self.kv.block_size
                    self._hit_tokens[seq.request_id] = hit
            return seq.num_tokens - seq.num_computed_tokens - hit

        return sorted(self.waiting, key=lambda s: self._prefill_key(s, now, left(s)))

    def _plan_running(self, budget: int) -> dict[str, int]:
        """Tokens per running sequence this step: one per decode, then prefill chunks in the
        prefill order, until the budget is spent."""
        planned = {}
        for seq in self.running:
            if budget > 0 and seq.num_tokens - seq.num_computed_tokens == 1:
                planned[seq.request_id] = 1
                budget -= 1
        prefills = [s for s in self.running if s.num_tokens - s.num_computed_tokens > 1]
        if self.prefill_order != "fcfs" and len(prefills) > 1:
            now = time.monotonic()
            prefills.sort(key=lambda s: self._prefill_key(s, now, s.num_tokens - s.num_computed_tokens))
        for seq in prefills:
            left = seq.num_tokens - seq.num_computed_tokens
            if budget > 0:
                planned[seq.request_id] = min(left, budget)
                budget -= planned[seq.request_id]
        return planned

    def _allocate_or_preempt(self, seq: Sequence, n: int) -> bool:
        """Blocks for n more tokens of seq, preempting the newest running sequences until they
        fit. False when seq itself had to be preempted."""
        while not self.kv.allocate_slots(seq, n):
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.max_computed_tokens = max(seq.max_computed_tokens, seq.num_computed_tokens)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire seq (finished or aborted): cache its full blocks, release them."""
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._hit_tokens.pop(seq.request_id, None)
        self.kv.cache_full_blocks(seq)
        self.kv.free(seq)
