"""The in-repo reference engine: a small, readable LLM inference engine for Llama-family models
with a paged KV cache, prefix caching with agent-session-aware eviction, a token-budget scheduler
with chunked prefill and preemption, and an offline API. Correct on the CPU in plain PyTorch;
Triton attention kernels on CUDA.

Modules, each named for what it holds:
  config.py           EngineConfig (every knob) and ModelConfig (the model's shape, named shapes)
  sequence.py         SamplingParams, per-request state (Sequence), StepOutput, Output
  block_pool.py       the KV block pool, prefix cache (chained block hashes), eviction order,
                      and per-sequence block tables (KVCacheManager)
  scheduler.py        token-budget scheduling, chunked prefill, preemption, QueueFullError
  attention.py        the paged attention op and KV store: batch layout, torch implementation,
                      backend choice
  triton_attention.py the Triton kernels of the same op
  model.py            the Llama decoder (fused QKV and gate-up projections)
  weights.py          building the model; HF safetensors loading; dummy weights
  sampler.py          greedy / temperature / top-k / top-p / seeded sampling
  model_runner.py     batch buffers, model execution, sampling per step
  engine.py           LLMEngine: add_request / step / abort / generate / stats
  benchmark.py        `python -m engines.reference.benchmark`: offline throughput vs HF transformers
  server.py, api_protocol.py  the OpenAI-compatible HTTP server over LLMEngine

May import: traces/ (only to materialize token ids), the standard library and third-party packages.
"""
from engines.reference.config import NAMED_CONFIGS, EngineConfig, ModelConfig
from engines.reference.engine import LLMEngine
from engines.reference.scheduler import QueueFullError
from engines.reference.sequence import Output, SamplingParams, StepOutput

__all__ = ["EngineConfig", "LLMEngine", "ModelConfig", "NAMED_CONFIGS", "Output", "QueueFullError",
           "SamplingParams", "StepOutput"]
