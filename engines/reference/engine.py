"""The offline engine API: add requests, step, read outputs; or generate() for a whole batch.

Threading: one thread runs step() in a loop; add_request() and abort() may be called from any
other thread. They put work in an inbox that step() drains first (or apply it at once when no
step is running), so the scheduler and block pool are only ever touched under the step lock.
All timestamps are time.monotonic() seconds; pass arrival_time on that clock.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import time
from collections import deque

import torch

from engines.reference.block_pool import BlockPool, KVCacheManager
from engines.reference.config import NAMED_CONFIGS, EngineConfig, resolve_model_config
from engines.reference.model_runner import ModelRunner
from engines.reference.scheduler import QueueFullError, Scheduler
from engines.reference.sequence import Output, SamplingParams, Sequence, StepOutput


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = resolve_model_config(config.model)
        if config.load_format != "dummy" and config.model in NAMED_CONFIGS:
            raise ValueError(f"{config.model!r} is a named shape without weights: use load_format='dummy'")
        self.max_model_len = config.max_model_len or min(self.model_config.max_position_embeddings, 32768)
        self.runner = ModelRunner(config, self.model_config, self.max_model_len)
        self.pool = BlockPool(self.runner.num_blocks, config.enable_prefix_caching, config.kv_retention)
        self.kv = KVCacheManager(self.pool, config.block_size)
        self.scheduler = Scheduler(self.kv, config.max_num_batched_tokens, config.max_num_seqs,
                                   config.prefill_order, config.max_prefill_wait_ms / 1000.0)
        self.eos_token_ids = frozenset(self.model_config.eos_token_ids)

        self._inbox: deque[tuple[str, object]] = deque()
        self._inbox_lock = threading.Lock()  # guards _inbox and _ids
        self._step_lock = threading.Lock()  # held while the scheduler/pool are touched
        self._ids: set[str] = set()  # ids of unfinished requests, including those in the inbox
        self._seqs: dict[str, Sequence] = {}  # unfinished requests the scheduler knows
        self._abort_outputs: list[StepOutput] = []
        self._gen_counter = itertools.count()

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams | None = None,
                    session_id: str | None = None, arrival_time: float | None = None) -> None:
        """Queue a request. Raises QueueFullError when max_waiting requests are already waiting,
        ValueError for a request that can never run (empty, too long, ids out of the vocabulary,
        larger than the whole KV cache) or a duplicate id. Safe from any thread."""
        self._add(request_id, prompt_token_ids, sampling_params, session_id, arrival_time, check_queue=True)

    def _add(self, request_id, prompt_token_ids, params, session_id, arrival_time, check_queue: bool) -> Sequence:
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise ValueError("empty prompt")
        if min(prompt) < 0 or max(prompt) >= self.model_config.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.model_config.vocab_size})")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room below max_model_len={self.max_model_len}")
        longest = min(len(prompt) + params.max_tokens, self.max_model_len)
        if -(-longest // self.config.block_size) > self.pool.num_blocks:
            raise ValueError(f"a request of up to {longest} tokens does not fit in the KV cache "
                             f"({self.pool.num_blocks} blocks of {self.config.block_size})")
        seq = Sequence(request_id=request_id, prompt_token_ids=prompt, params=params, session_id=session_id,
                       arrival_time=time.monotonic() if arrival_time is None else arrival_time)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        with self._inbox_lock:
            if request_id in self._ids:
                raise ValueError(f"request id {request_id!r} is already in use")
            if check_queue and self.config.max_waiting is not None:
                queued = len(self.scheduler.waiting) + sum(1 for kind, _ in self._inbox if kind == "add")
                if queued >= self.config.max_waiting:
                    raise QueueFullError(self.config.max_waiting)
            self._ids.add(request_id)
            self._inbox.append(("add", seq))
        self._apply_inbox_if_idle()
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request and release its KV blocks (full ones stay in the prefix cache). Its
        final StepOutput (finish_reason "abort") comes out of the next step(). Unknown or finished
        ids are ignored. Safe from any thread: applied at once unless a step is running, then at
        the start of the next one."""
        with self._inbox_lock:
            self._inbox.append(("abort", request_id))
        self._apply_inbox_if_idle()

    def _apply_inbox_if_idle(self) -> None:
        if self._step_lock.acquire(blocking=False):
            try:
                self._drain_inbox()
            finally:
                self._step_lock.release()

    def _drain_inbox(self) -> None:
        while True:
            with self._inbox_lock:
                if not self._inbox:
                    return
                kind, item = self._inbox.popleft()
            if kind == "add":
                self._seqs[item.request_id] = item
                self.scheduler.add(item)
            else:
                seq = self._seqs.get(item)
                if seq is not None:
                    self.scheduler.finish(seq, "abort")
                    self._retire(seq)
                    self._abort_outputs.append(self._step_output(seq, []))

    def _retire(self, seq: Sequence) -> None:
        del self._seqs[seq.request_id]
        with self._inbox_lock:
            self._ids.discard(seq.request_id)

    # -- stepping ------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_unfinished() or bool(self._abort_outputs)

    def step(self) -> list[StepOutput]:
        """Schedule and run one batch. Returns an output for every request that got a token or
        finished (aborts included) in this step."""
        with self._step_lock:
            self._drain_inbox()
            outputs, self._abort_outputs = self._abort_outputs, []
            if not self.scheduler.has_unfinished():
                return outputs
            batch = self.scheduler.schedule()
            if not batch.seqs:
                return outputs
            if self.config.step_delay_ms > 0:
                time.sleep(self.config.step_delay_ms / 1000.0)
            tokens = self.runner.execute(batch.seqs, batch.num_new_tokens)
            now = time.monotonic()
            counters = self.scheduler.counters
            for seq, n, tok in zip(batch.seqs, batch.num_new_tokens, tokens):
                seq.num_computed_tokens += n
                if tok is None:  # prefill chunk: more of the prompt to go
                    self.kv.cache_full_blocks(seq)
                    continue
                seq.token_ids.append(tok)
                seq.token_times.append(now)
                counters.generation_tokens += 1
                reason = self._check_stop(seq, tok)
                if reason is None:
                    self.kv.cache_full_blocks(seq)
                else:
                    self.scheduler.finish(seq, reason)
                    self._retire(seq)
                outputs.append(self._step_output(seq, [tok]))
            return outputs

    def _check_stop(self, seq: Sequence, tok: int) -> str | None:
        p = seq.params
        n_out = seq.num_output_tokens
        if n_out >= p.min_tokens:
            if tok in p.stop_token_ids:
                seq.stop_reason = tok
                return "stop"
            if not p.ignore_eos and tok in self.eos_token_ids:
                return "stop"
        if n_out >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _step_output(self, seq: Sequence, new: list[int]) -> StepOutput:
        return StepOutput(
            request_id=seq.request_id, new_token_ids=new, finished=seq.is_finished,
            finish_reason=seq.finish_reason, cached_tokens=max(seq.num_cached_tokens, 0),
            num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens,
            token_times=seq.token_times[-len(new):] if new else [], arrival_time=seq.arrival_time,
            first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.token_times[0] if seq.token_times else None,
            stop_reason=seq.stop_reason, session_id=seq.session_id)

    # -- offline batch -------------------------------------------------------------------------
    def generate(self, prompts_token_ids: list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 session_ids: list[str | None] | None = None) -> list[Output]:
        """Run prompts to completion; outputs in prompt order. Ignores max_waiting. Not for use
        while another thread is stepping this engine."""
        n = len(prompts_token_ids)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params or SamplingParams()] * n
        batch_id = next(self._gen_counter)
        seqs = [self._add(f"generate-{batch_id}-{i}", p, sp, session_ids[i] if session_ids else None, None,
                          check_queue=False)
                for i, (p, sp) in enumerate(zip(prompts_token_ids, sampling_params))]
        while any(not s.is_finished for s in seqs):
            self.step()
        return [Output(request_id=s.request_id, prompt_token_ids=s.prompt_token_ids,
                       output_token_ids=s.output_token_ids, finish_reason=s.finish_reason,
                       cached_tokens=max(s.num_cached_tokens, 0), arrival_time=s.arrival_time,
                       first_scheduled_time=s.first_scheduled_time, token_times=list(s.token_times),
                       num_preemptions=s.num_preemptions, stop_reason=s.stop_reason) for s in seqs]

    def warm_up(self) -> float:
        """Run the step kinds a server meets first (a burst of whole prompts, decodes, a prompt
        after cached context) on made-up tokens, leaving no trace (see untraced). The first steps
        of a fresh process are slow (kernel selection, allocator growth, lazy imports: a burst of 8
        prompts took 64 ms cold, 46 ms warm on the tiny model), and a server should pay that before
        it says healthy, not on its first users, as vLLM does with its profiling run. Returns the
        seconds it took."""
        t0 = time.monotonic()
        vocab = self.model_config.vocab_size
        lens = [n for n in (16, 200, 300, 500) if n + 8 < self.max_model_len]
        prompts = [[(7 * j + 3 * i + 1) % vocab for j in range(n)] for i, n in enumerate(lens)]
        params = SamplingParams(max_tokens=4, ignore_eos=True)
        with self.untraced():
            self.generate(prompts, params)
            self.generate([p + p[:40] for p in prompts[-2:]], params)  # chunks after a cached prefix
        return time.monotonic() - t0

    @contextlib.contextmanager
    def untraced(self):
        """Work done inside leaves no trace: the scheduler's, cache's and pool's counters are put
        back afterwards and the prefix cache is emptied. For warm-ups, with nothing else running."""
        counters = [(obj, copy.copy(obj.counters)) for obj in (self.scheduler, self.kv, self.pool)]
        try:
            yield
        finally:
            for obj, saved in counters:  # in place: others may hold the counter objects
                vars(obj.counters).update(vars(saved))
            self.reset_prefix_cache()

    def reset_prefix_cache(self) -> int:
        """Forget all cached blocks not in use (e.g. between benchmark runs). Returns how many."""
        with self._step_lock:
            return self.pool.reset_prefix_cache()

    # -- introspection -------------------------------------------------------------------------
    def stats(self) -> dict:
        """A snapshot of queue, KV cache and prefix-cache counters (cumulative since start)."""
        sc, cc, pc = self.scheduler.counters, self.kv.counters, self.pool.counters
        return {
            "num_waiting": len(self.scheduler.waiting) + sum(1 for k, _ in list(self._inbox) if k == "add"),
            "num_running": len(self.scheduler.running),
            "kv_usage": self.pool.usage,
            "num_free_blocks": self.pool.num_free_blocks,
            "num_total_blocks": self.pool.num_blocks,
            "num_cached_blocks": len(self.pool.cached),
            "block_size": self.config.block_size,
            "prefix_hit_rate": cc.hit_rate,
            "prefix_queried_tokens": cc.queried_tokens,
            "prefix_hit_tokens": cc.hit_tokens,
            "prefix_hit_blocks": cc.hit_blocks,
            "prefix_miss_blocks": cc.miss_blocks,
            "prefix_miss_tokens": cc.queried_tokens - cc.hit_tokens,
            "prefix_lost_blocks": cc.lost_blocks,
            "evictions": pc.evictions,
            "preemptions": sc.preemptions,
            "recomputed_tokens": sc.recomputed_tokens,
            "prompt_tokens_computed": sc.prompt_tokens_computed,
            "generation_tokens": sc.generation_tokens,
            "steps": sc.steps,
            "attention_backend": self.runner.backend,
            "decode_path": self.runner.decode_path,
            "kv_retention": self.pool.retention,
        }
