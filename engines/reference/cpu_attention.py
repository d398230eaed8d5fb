"""Paged attention on the CPU through a C++ kernel (csrc/paged_attention.cpp) that reads the KV
cache in place: no per-layer gather of every sequence's blocks, no padding, one online-softmax
pass per (sequence, KV head, up to 16 query rows). backend.py's "cpp" backend; same signature and
answer as attention.paged_attention_torch.

Every sequence goes to the kernel, long fresh prompts included: with one thread it is faster
than the torch path's SDPA in every case measured (decodes, chunks after cached context, fresh
prompts up to 4096 tokens, float32 and bfloat16; tools/attention_bench.py), so the step is not split.

Built and loaded by cpp_build.py (at first use, cached per source, flags and CPU). Where it cannot
be built, or with TIERBENCH_NO_CPP=1, a warning is logged once and every call takes the torch path.
"""
from __future__ import annotations

import torch

from engines.reference.attention import paged_attention_torch
from engines.reference.attention_metadata import AttentionMetadata
from engines.reference.cpp_build import Extension

# -ffp-contract=fast: fused multiply-adds, which g++ leaves out under torch's -std=c++NN (ISO
# mode); -fopenmp: at::parallel_for is an inline OpenMP loop, serial when compiled without it
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]
EXTENSION = Extension("tierbench_paged_attention", "paged_attention.cpp", CFLAGS, ["-fopenmp"],
                      "C++ paged attention unavailable, using the torch path")


def available() -> bool:
    """Whether the kernel is built and loaded (building it on the first call)."""
    return EXTENSION.load() is not None


def paged_attention_cpp(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        meta: AttentionMetadata, scale: float, key: torch.Tensor | None = None,
                        value: torch.Tensor | None = None) -> torch.Tensor:
    """paged_attention_torch's contract: q [num_tokens, num_heads, head_dim] -> same shape, the new
    tokens' K/V already in the cache. `key`/`value` serve only the torch fallback."""
    ext = EXTENSION.load()
    if ext is None or q.device.type != "cpu":
        return paged_attention_torch(q, k_cache, v_cache, meta, scale, key, value)
    return ext.paged_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale)
