"""The stages of the GPU benchmark (gpu_bench.py runs them in order, each under its own time
cap): correctness, decode step latency, offline throughput, an in-process agent replay, and
Hugging Face transformers `generate` on the same shapes. Each stage takes the shared `Bench` and a
deadline (time.monotonic()) and returns a JSON-able dict; work it cannot start before the
deadline is recorded as {"skipped": "time"}.

Shapes: `H100` is the real run (a Llama-3.1-8B-shaped model, random bf16 weights built on the
GPU); `TINY` runs every stage with tiny shapes on the CPU in well under two minutes, so the
script that meets the GPU has already run end to end.
"""
from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np
import torch

from engines.reference.agent_replay import replay, session_prompts
from engines.reference.engine import LLMEngine
from engines.reference.kernel_checks import check_kernels
from engines.reference.sequence import SamplingParams, Sequence
from engines.reference.weights import hf_parameter_views


@dataclass
class Shapes:
    model: str  # a named shape of config.py, random weights
    dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_bytes: int
    decode_batches: tuple[int, ...] = (1, 8, 32, 128)
    decode_contexts: tuple[int, ...] = (1024, 8192)  # the first is the headline's
    decode_steps: int = 20
    offline_requests: int = 1000
    prompt_len: int = 1024
    output_len: int = 128
    hf_batches: tuple[int, ...] = (64, 16, 1)  # 64 first: the headline
    agree_prompt_len: int = 200
    agree_tokens: int = 32
    agent_profile: str = "swe-agent"
    agent_sessions: int = 32
    agent_calls: int = 8
    agent_token_scale: float = 0.25  # the longest session then decodes ~2k tokens: ~20 s on an H100
    agent_max_context: int = 8192
    agent_think_scale: float = 0.01
    caps_s: dict = field(default_factory=lambda: {"correctness": 45, "decode": 35, "profile": 20, "offline": 80, "hf": 45,
                                                  "agent": 40})


H100 = Shapes(model="llama-3.1-8b", dtype="bfloat16", max_model_len=9216, max_num_seqs=256,
              max_num_batched_tokens=16384, kv_cache_bytes=37 << 30)  # 256 x 1,152 tokens fit
TINY = Shapes(model="tiny-llama", dtype="float32", max_model_len=512, max_num_seqs=128, max_num_batched_tokens=2048,
              kv_cache_bytes=64 << 20, decode_contexts=(64, 256), decode_steps=5, offline_requests=64,
              prompt_len=64, output_len=16, agree_prompt_len=40, agree_tokens=8, agent_sessions=8, agent_calls=3,
              agent_token_scale=0.05, agent_max_context=512, agent_think_scale=0.001,
              caps_s={"correctness": 40, "decode": 20, "profile": 20, "offline": 20, "hf": 20, "agent": 20})


@dataclass
class Bench:
    engine: LLMEngine
    shapes: Shapes
    rng: np.random.Generator

    @property
    def device(self) -> torch.device:
        return self.engine.runner.device

    def token_range(self) -> tuple[int, int]:
        """Ids for synthetic prompts: above the tiny vocabulary's specials (0-4), below Llama 3's
        (128000 and up)."""
        cfg = self.engine.model_config
        return 5, min([t for t in cfg.eos_token_ids + [cfg.bos_token_id or 0] if t > 1000] + [cfg.vocab_size])

    def prompts(self, n: int, length: int) -> list[list[int]]:
        return self.rng.integers(*self.token_range(), (n, length)).tolist()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def decode_sequences(b: Bench, n: int, ctx: int) -> list[Sequence]:
    """n sequences at context ctx, ready to decode: blocks allocated from the engine's pool, the
    cache left as it is (a step's time does not depend on the values). Free with release()."""
    seqs = []
    for i, ids in enumerate(b.prompts(n, ctx + 1)):
        s = Sequence(f"fake-{i}", ids, greedy(1), None, time.monotonic())
        if not b.engine.kv.allocate_slots(s, ctx + 1):
            release(b, seqs)
            raise MemoryError(f"{n} sequences of {ctx} tokens do not fit in the KV cache")
        s.num_computed_tokens = ctx
        seqs.append(s)
    return seqs


def release(b: Bench, seqs: list[Sequence]) -> None:
    for s in seqs:
        b.engine.kv.free(s)


# -- correctness ---------------------------------------------------------------------------------

def stage_correctness(b: Bench, deadline: float) -> dict:
    out = {"kernels": check_kernels(b.device.type)}
    out["kernels_ok"] = all(r["ok"] for r in out["kernels"])
    out["graph_vs_eager"] = graph_vs_eager(b, deadline)
    out["prepare"] = prepare_checks(b) if time.monotonic() < deadline else {"skipped": "time"}
    return out


def graph_vs_eager(b: Bench, deadline: float) -> dict:
    """Greedy outputs with decode graphs on and off, same prompts, prefix cache reset between:
    a batch of 8 (a capture size: the same GEMM shapes both ways) and of 3 (padded to 4)."""
    engine, runner = b.engine, b.engine.runner
    if runner.graphs is None:
        return {"skipped": "graphs off (enforce_eager)"}
    out = {}
    for n in (8, 3):
        if time.monotonic() > deadline:
            out[f"batch_{n}"] = {"skipped": "time"}
            continue
        prompts = b.prompts(n, b.shapes.agree_prompt_len)
        tokens = {}
        try:
            for graphs in (True, False):
                runner.use_graphs = graphs
                engine.reset_prefix_cache()
                tokens[graphs] = [o.output_token_ids for o in engine.generate(prompts, greedy(b.shapes.agree_tokens))]
        finally:
            runner.use_graphs = True
        first_diff = [next((i for i, (x, y) in enumerate(zip(g, e)) if x != y), None)
                      for g, e in zip(tokens[True], tokens[False])]
        out[f"batch_{n}"] = {"padded_to": runner.graphs.padded_size(n), "sequences": n,
                             "identical": sum(d is None for d in first_diff), "first_divergence": first_diff,
                             "tokens_each": b.shapes.agree_tokens}
    return out


def _peak_growth(fn) -> int:
    tracemalloc.start()
    try:
        fn()  # warm: rows written, caches filled
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def prepare_growth(runner, seqs: list[Sequence], prepare=None) -> int:
    """Bytes of host memory a decode step's preparation holds at its peak at len(seqs) sequences
    beyond what it holds at 8: what grows with the batch (Python's allocation tracer sees numpy's
    array data, so one array per step of one entry per sequence would show). `prepare` defaults
    to runner.prepare."""
    prepare = prepare or runner.prepare
    few, ones8, ones = seqs[:8], [1] * 8, [1] * len(seqs)
    return _peak_growth(lambda: prepare(seqs, ones)) - _peak_growth(lambda: runner.prepare(few, ones8))


def prepare_checks(b: Bench) -> dict:
    """A decode step's preparation at 256 sequences: time per call, host memory that grows with
    the batch (against 8 sequences), and on CUDA device allocations and synchronizations (none
    allowed: torch's sync debug mode set to raise)."""
    runner = b.engine.runner
    seqs = decode_sequences(b, min(256, runner.config.max_num_seqs), 48)
    try:
        ones = [1] * len(seqs)
        out = {"sequences": len(seqs), "host_peak_growth_bytes_vs_8": prepare_growth(runner, seqs)}
        t = time.perf_counter()
        for _ in range(100):
            runner.prepare(seqs, ones)
        out["prepare_us"] = (time.perf_counter() - t) / 100 * 1e6
        if b.device.type == "cuda":
            b.sync()
            before = torch.cuda.memory_stats(b.device)["allocation.all.allocated"]
            torch.cuda.set_sync_debug_mode("error")
            try:
                runner.prepare(seqs, ones)
                out["syncs"] = 0
            except RuntimeError as e:
                out["syncs"], out["sync_error"] = 1, str(e)[:300]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            out["device_allocations"] = torch.cuda.memory_stats(b.device)["allocation.all.allocated"] - before
        return out
    finally:
        release(b, seqs)


# -- decode step latency -----------------------------------------------------------------------

def stage_decode(b: Bench, deadline: float) -> dict:
    """Wall time of runner.execute for a decode step (inputs, forward, sampling, tokens back on the
    host) at each batch and context, graphs on and off, on the same weights."""
    engine, runner = b.engine, b.engine.runner
    cells = []
    for ctx in b.shapes.decode_contexts:
        for bs in b.shapes.decode_batches:
            blocks = bs * -(-(ctx + 1) // engine.config.block_size)
            if blocks > engine.pool.num_free_blocks:
                cells.append({"batch": bs, "context": ctx, "skipped": "memory",
                              "note": f"needs {blocks} KV blocks, the cache has {engine.pool.num_free_blocks} free"})
                continue
            seqs = decode_sequences(b, bs, ctx)
            try:
                for graphs in (True, False) if runner.graphs is not None else (False,):
                    cell = {"batch": bs, "context": ctx, "graphs": graphs}
                    cells.append(cell)
                    if time.monotonic() > deadline:
                        cell["skipped"] = "time"
                        continue
                    runner.use_graphs = graphs
                    ones = [1] * bs
                    for _ in range(3):
                        runner.execute(seqs, ones)
                    t = time.perf_counter()
                    for _ in range(b.shapes.decode_steps):
                        runner.execute(seqs, ones)
                    cell["ms_per_step"] = (time.perf_counter() - t) / b.shapes.decode_steps * 1e3
                    cell["decode_path"] = runner.decode_path
            finally:
                runner.use_graphs = runner.graphs is not None
                release(b, seqs)
    return {"cells": cells, "steps_timed": b.shapes.decode_steps}


def decode_ms(cells: list[dict], batch: int, context: int, graphs: bool) -> float | None:
    for c in cells:
        if c["batch"] == batch and c["context"] == context and c.get("graphs", False) == graphs:
            return c.get("ms_per_step")
    return None


# -- offline throughput --------------------------------------------------------------------------

def run_requests(b: Bench, prompts: list[list[int]], n_out: int, deadline: float) -> dict:
    """All requests at once, stepped to completion (or the deadline: the rest aborted)."""
    engine = b.engine
    engine.reset_prefix_cache()
    t = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(f"offline-{i}", p, greedy(n_out))
    done = out_tokens = 0
    while engine.has_unfinished():
        if time.monotonic() > deadline:
            for i in range(len(prompts)):
                engine.abort(f"offline-{i}")
            while engine.has_unfinished():
                engine.step()
            elapsed = time.perf_counter() - t
            return {"skipped": "time", "completed": done, "elapsed_s": elapsed, "partial_req_per_s": done / elapsed}
        for o in engine.step():
            if o.finished:
                done += 1
                out_tokens += o.num_output_tokens
    elapsed = time.perf_counter() - t
    return {"requests": len(prompts), "elapsed_s": elapsed, "req_per_s": len(prompts) / elapsed,
            "output_tok_per_s": out_tokens / elapsed,
            "total_tok_per_s": (out_tokens + sum(map(len, prompts))) / elapsed}


def stage_offline(b: Bench, deadline: float) -> dict:
    s = b.shapes
    run_requests(b, b.prompts(min(32, s.offline_requests), s.prompt_len), 4, deadline)  # warm-up
    out = run_requests(b, b.prompts(s.offline_requests, s.prompt_len), s.output_len, deadline)
    stats = b.engine.stats()
    out.update({"prompt_len": s.prompt_len, "output_len": s.output_len,
                "preemptions": stats["preemptions"], "steps": stats["steps"]})
    return out


# -- Hugging Face transformers generate ----------------------------------------------------------

def hf_twin(b: Bench):
    """HF transformers' LlamaForCausalLM on the engine's own weights (views of the fused
    projections, no copy): the same model, HF's eager generate()."""
    from torch import nn
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HFLlama
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = b.engine.model_config
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope.update(cfg.rope_scaling)
    hf_cfg = LlamaConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                         num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                         intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size, head_dim=cfg.head_dim,
                         rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
                         tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope)
    with torch.device("meta"):
        hf = HFLlama(hf_cfg)
    views = hf_parameter_views(b.engine.runner.model)
    for name, _ in list(hf.named_parameters()):
        owner, attr = name.rsplit(".", 1)
        hf.get_submodule(owner)._parameters[attr] = nn.Parameter(views[name], requires_grad=False)
    if cfg.tie_word_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    with torch.device(b.device):
        hf.model.rotary_emb = LlamaRotaryEmbedding(hf_cfg)
    return hf.eval()


def hf_generate(hf, b: Bench, prompts: list[list[int]], n_out: int) -> tuple[torch.Tensor, float]:
    ids = torch.tensor(prompts, device=b.device)
    b.sync()
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_out, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    b.sync()
    return out[:, ids.shape[1]:], time.perf_counter() - t


def stage_hf(b: Bench, deadline: float) -> dict:
    s = b.shapes
    if b.device.type == "cuda":
        torch.cuda.empty_cache()  # the engine's freed activations: HF's prefill wants the room
    hf = hf_twin(b)
    hf_generate(hf, b, b.prompts(1, 16), 2)  # warm-up
    rows = []
    for bs in s.hf_batches:
        row = {"batch": bs}
        rows.append(row)
        if time.monotonic() > deadline:
            row["skipped"] = "time"
            continue
        prompts = b.prompts(bs, s.prompt_len)
        eng = run_requests(b, prompts, s.output_len, deadline)
        if "skipped" in eng:
            row.update(eng)
            continue
        hf_out, hf_s = hf_generate(hf, b, prompts, s.output_len)
        row.update({"engine_output_tok_per_s": eng["output_tok_per_s"],
                    "hf_output_tok_per_s": bs * s.output_len / hf_s, "hf_s": hf_s, "engine_s": eng["elapsed_s"]})
        row["speedup"] = row["engine_output_tok_per_s"] / row["hf_output_tok_per_s"]
        # the first token comes from one prefill on the same weights: informative agreement
        firsts = [tok for o in b.engine.generate(prompts[:4], greedy(1)) for tok in o.output_token_ids]
        row["first_token_agreement"] = float(np.mean([f == int(h[0]) for f, h in zip(firsts, hf_out[:4])]))
    del hf
    if b.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"rows": rows, "prompt_len": s.prompt_len, "output_len": s.output_len,
            "hf": "transformers generate(), eager, sdpa attention, greedy, same weights"}


# -- agent replay --------------------------------------------------------------------------------

def stage_agent(b: Bench, deadline: float) -> dict:
    s = b.shapes
    prompts, outputs, thinks = session_prompts(s.agent_profile, s.agent_sessions, s.agent_calls,
                                               s.agent_token_scale, s.agent_max_context, b.token_range())
    b.engine.reset_prefix_cache()
    result = replay(b.engine, prompts, outputs, thinks, s.agent_think_scale, deadline - 1.0)
    out = result.summary()
    out.update({"profile": s.agent_profile, "sessions": s.agent_sessions, "calls_per_session": s.agent_calls,
                "token_scale": s.agent_token_scale, "max_context": s.agent_max_context,
                "think_scale": s.agent_think_scale})
    if result.timed_out:
        out["skipped"] = "time"
    return out
