"""The in-repo reference engine: a small, readable LLM inference engine for Llama-family models
with a paged KV cache, prefix caching with agent-session-aware eviction, a token-budget scheduler
with chunked prefill and preemption, and an offline API. Correct on the CPU in plain PyTorch,
fast there with C++ kernels built at first use; Triton kernels on CUDA.

Modules, each named for what it holds:
  config.py           EngineConfig (every knob) and ModelConfig (the model's shape, named shapes)
  sequence.py         SamplingParams, per-request state (Sequence), StepOutput, Output
  block_pool.py       the KV block pool, prefix cache (chained block hashes), eviction order,
                      and per-sequence block tables (KVCacheManager)
  retention.py        the retention policies of free cached blocks (--kv-retention): agent-aware,
                      lru, next-call
  scheduler.py        token-budget scheduling, chunked prefill, preemption, QueueFullError
  attention_metadata.py  AttentionMetadata: the flat batch layout both attention implementations read
  attention.py        the paged attention op and KV store in PyTorch (the CPU path, the reference)
  triton_attention.py the Triton kernels of the same op: split-KV decode, prefill, KV store
  triton_ops.py       Triton kernels for RMSNorm with residual, rotary embedding, SiLU-and-multiply
  cpu_attention.py    the paged attention op through a C++ kernel that reads the cache in place
  cpu_ops.py          RMSNorm with residual, rotary embedding, SiLU-and-multiply in C++ (CPU)
  cpp_build.py        building, caching and loading those C++ extensions (csrc/), with fallback
  backend.py          the backend choice (torch, cpp or triton) and the kernels each provides
  model.py            the Llama decoder (fused QKV and gate-up projections)
  weights.py          building the model; HF safetensors loading; dummy weights
  sampler.py          greedy / temperature / top-k / top-p / seeded sampling
  model_runner.py     batch buffers, model execution, sampling per step
  cuda_graph.py       decode steps through CUDA graphs at padded batch sizes
  engine.py           LLMEngine: add_request / step / abort / generate / stats
  serve_args.py       the `serve` command's options (light: no torch import)
  server.py           the OpenAI-compatible HTTP server: the FastAPI app, serve(), run_from_args()
  api_protocol.py     request validation and response bodies of the server
  tokenizer.py        the server's tokenizer, chat template, prompt ids, incremental detokenization
  engine_loop.py      the engine thread and one request in flight (queues, stop strings, aborts)
  sse.py              the streaming (server-sent events) response
  metrics.py          the server's Prometheus /metrics

The offline benchmark against HF transformers is tools/offline_benchmark.py. The GPU benchmark is
gpu_bench.py (python -m engines.reference.gpu_bench), with its stages in bench_stages.py, the
in-process agent replay in agent_replay.py and the kernel checks in kernel_checks.py.

May import: traces/ (only to materialize token ids), the standard library and third-party packages.
"""
import importlib

# Imported on first use (PEP 562): `tierbench --help` and `serve_args` must not pay for torch.
_EXPORTS = {"EngineConfig": "config", "ModelConfig": "config", "NAMED_CONFIGS": "config", "LLMEngine": "engine",
            "QueueFullError": "scheduler", "Output": "sequence", "SamplingParams": "sequence", "StepOutput": "sequence"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"engines.reference.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'engines.reference' has no attribute {name!r}")
