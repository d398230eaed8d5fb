"""Configuration: the model's shape (`ModelConfig`, read from an HF config.json or a named shape)
and the engine's one knob object (`EngineConfig`)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.reference.retention import POLICIES as RETENTION_POLICIES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """The shape of a Llama-family decoder. Field names follow HF's config.json."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": ..., ...} or None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_hf_dict(cls, d: dict) -> ModelConfig:
        # transformers >= 5 writes `rope_parameters` (theta inside); older versions write
        # `rope_theta` at top level and `rope_scaling` (with "type" or "rope_type").
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"unsupported rope type {rope_type!r} (supported: default, llama3)")
        scaling = None
        if rope_type == "llama3":
            scaling = {"rope_type": "llama3", **{k: rope[k] for k in
                       ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}}
        eos = d.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 8192),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            eos_token_ids=eos_ids,
            bos_token_id=d.get("bos_token_id"),
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a checkpoint directory's config.json (or a config.json path). EOS ids from
        generation_config.json are added: Llama-3 instruct models list their end-of-turn ids there."""
        p = Path(path)
        cfg_file = p if p.is_file() else p / "config.json"
        cfg = cls.from_hf_dict(json.loads(cfg_file.read_text()))
        gen_file = cfg_file.parent / "generation_config.json"
        if gen_file.exists():
            eos = json.loads(gen_file.read_text()).get("eos_token_id")
            for e in [eos] if isinstance(eos, int) else (eos or []):
                if e not in cfg.eos_token_ids:
                    cfg.eos_token_ids.append(e)
        return cfg


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Shapes for random-weight (load_format="dummy") runs: the engine's cost without a download.
NAMED_CONFIGS: dict[str, dict] = {
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072,
                         eos_token_ids=[128001, 128008, 128009], bos_token_id=128000),
    "llama-3.1-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                          intermediate_size=28672, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                          rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072,
                          eos_token_ids=[128001, 128008, 128009], bos_token_id=128000),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, head_dim=64, rms_norm_eps=1e-5,
                         rope_theta=500000.0, rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         eos_token_ids=[128001, 128008, 128009], bos_token_id=128000),
    # A model 15x the tiny one's compute (8 layers of 512, ~30M parameters) with the tiny model's
    # vocabulary, so the tiny tokenizer serves it: the "large central model" of CPU tier studies.
    "mini-llama": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                       intermediate_size=1536, vocab_size=3072, rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling={**_LLAMA3_ROPE, "original_max_position_embeddings": 1024},
                       max_position_embeddings=8192, eos_token_ids=[1, 4], bos_token_id=0),
    # The shape of engines/tiny_model.py's test checkpoint.
    "tiny-llama": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=384, vocab_size=3072, rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling={**_LLAMA3_ROPE, "original_max_position_embeddings": 1024},
                       max_position_embeddings=8192, eos_token_ids=[1, 4], bos_token_id=0),
}


def resolve_model_config(model: str) -> ModelConfig:
    """`model` is a named shape, a checkpoint directory, or a config.json path."""
    if model in NAMED_CONFIGS:
        return ModelConfig(**NAMED_CONFIGS[model])
    p = Path(model)
    if p.is_dir() and (p / "config.json").exists() or p.is_file():
        return ModelConfig.from_pretrained(p)
    raise ValueError(f"model {model!r} is neither a named config ({', '.join(NAMED_CONFIGS)}) "
                     "nor a directory with config.json")


# The CPU's default token budget per step: the largest budget whose longest decode stall stays
# under 15 ms when a burst of six prompts (3,625 tokens) lands next to four running decodes on the
# tiny model (`python -m tools.token_budget`, results/reference-cpu/token-budget.json, measured at
# 154342a: 1024 gave 12.5 ms, 2048 18.2 ms, while the burst's last first token came 39.0 vs 35.5
# ms after it arrived; the tool's docstring says why the bound is 15 ms, no longer 20).
CPU_TOKEN_BUDGET = 1024


@dataclass
class EngineConfig:
    """Every knob of the reference engine.

    KV cache size: `num_blocks` if set, else `kv_cache_memory_bytes` if set, else on CUDA
    `gpu_memory_utilization` of the free memory after loading weights, else 1 GiB.
    """

    model: str  # checkpoint dir, config.json path, or a NAMED_CONFIGS key (with load_format="dummy")
    load_format: str = "auto"  # "auto"/"safetensors": read the checkpoint; "dummy": random weights
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"  # "cpu" or "cuda[:n]"
    seed: int = 0  # dummy weights and unseeded sampling
    max_model_len: int | None = None  # None: min(max_position_embeddings, 32768)
    # KV cache
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    kv_retention: str = "agent-aware"  # which free cached blocks go first: retention.POLICIES
    # Scheduler
    # Token budget per step: decodes + prefill chunks. None: 8192 on CUDA, CPU_TOKEN_BUDGET on the
    # CPU, where a step's time grows with its tokens and every decode in it waits that long.
    max_num_batched_tokens: int | None = None
    max_num_seqs: int = 256  # running sequences at most
    max_waiting: int | None = None  # waiting requests at most; add_request beyond raises QueueFullError
    # Order of prefill work (scheduler.py): "fcfs", or "shortest" prompt left first except that
    # requests waiting longer than max_prefill_wait_ms go first, oldest first
    prefill_order: str = "fcfs"
    max_prefill_wait_ms: float = 100.0
    # Execution
    # auto (cuda -> triton, else cpp, or torch where the C++ kernel cannot be built) | torch | cpp | triton;
    # env TIERBENCH_ATTENTION
    attention_backend: str = "auto"
    # Decode steps through CUDA graphs captured at padded batch sizes (cuda_graph.py). None: graphs
    # on CUDA with the triton backend, eager elsewhere. False on the CPU runs the graphs' padded
    # path eagerly (what the tests check); True never pads.
    enforce_eager: bool | None = None
    cuda_graph_max_batch: int = 512  # largest captured batch (also capped by max_num_seqs and the token budget)
    num_threads: int | None = None  # torch intra-op threads on CPU (None: leave torch's default)
    # A fixed sleep added to every engine step. It exists to check that benchmark regression gates
    # catch slowdowns: run once with 0 and once with, say, 20 and the gate must fail the second.
    step_delay_ms: float = 0.0
    warmup: bool = True  # the server warms its engine, tokenizer and HTTP stack before it listens

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError("load_format must be auto, safetensors or dummy")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.kv_retention not in RETENTION_POLICIES:
            raise ValueError(f"kv_retention must be one of {', '.join(RETENTION_POLICIES)}")
        if self.attention_backend not in ("auto", "torch", "cpp", "triton"):
            raise ValueError("attention_backend must be auto, torch, cpp or triton")
        if self.cuda_graph_max_batch < 1:
            raise ValueError("cuda_graph_max_batch must be >= 1")
        if self.prefill_order not in ("shortest", "fcfs"):
            raise ValueError("prefill_order must be shortest or fcfs")
        if self.max_prefill_wait_ms < 0:
            raise ValueError("max_prefill_wait_ms must be >= 0")
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = 8192 if self.device.startswith("cuda") else CPU_TOKEN_BUDGET
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
