"""The backend choice: which implementation runs a step's kernels: torch, cpp or Triton.

"torch" is plain PyTorch (attention.py): the readable reference, and the CPU fallback. "cpp" is
the CPU's fast path, C++ compiled at first use (cpp_build.py): the paged-attention kernel
(cpu_attention.py, which falls back to the torch path where it cannot be built) and the fused
RMSNorm with residual, rotary embedding and SiLU-and-multiply (cpu_ops.py; where they cannot be
built the model's PyTorch code runs them). "triton" is
the Triton kernels (triton_attention.py for the paged KV cache, triton_ops.py for the fused
RMSNorm with residual, rotary embedding and SiLU-and-multiply). Neither the torch nor the Triton
implementation imports the other; this module imports them all, Triton only when it is chosen
(a CPU machine needs no triton).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from engines.reference import attention, cpu_attention, cpu_ops

BACKENDS = ("torch", "cpp", "triton")


def resolve_backend(device: torch.device | str, requested: str = "auto") -> str:
    """Which implementation runs: `requested` unless "auto", then $TIERBENCH_ATTENTION if set,
    then triton on CUDA, elsewhere cpp where its kernel builds (building it now, not in the
    first step) and torch where it does not."""
    if requested == "auto":
        requested = os.environ.get("TIERBENCH_ATTENTION", "auto")
    if requested == "auto":
        if torch.device(device).type == "cuda":
            return "triton"
        return "cpp" if cpu_attention.available() else "torch"
    if requested not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS} or auto, not {requested!r}")
    return requested


@dataclass(frozen=True)
class Kernels:
    """The operations a backend provides. The fused ones are None for torch (and for cpp where
    they cannot be built): the model's own PyTorch code (model.py) runs them."""

    name: str
    # store_kv(key, value, k_cache, v_cache, slot_mapping)
    store_kv: Callable
    # attention(q, k_cache, v_cache, meta, scale, key, value) -> out
    attention: Callable
    # add_rms_norm(x, residual | None, weight, eps) -> out, or (out, x + residual)
    add_rms_norm: Callable | None = None
    # rotary(qkv, positions, cos, sin, num_heads, head_dim): the first num_heads heads, in place
    rotary: Callable | None = None
    # silu_and_mul(gate_up) -> silu(gate) * up
    silu_and_mul: Callable | None = None


TORCH_KERNELS = Kernels("torch", attention.store_kv_torch, attention.paged_attention_torch)
CPP_KERNELS = Kernels("cpp", attention.store_kv_torch, cpu_attention.paged_attention_cpp)
CPP_FUSED_KERNELS = Kernels("cpp", attention.store_kv_torch, cpu_attention.paged_attention_cpp,
                            cpu_ops.add_rms_norm, cpu_ops.rotary, cpu_ops.silu_and_mul)


def load_kernels(backend: str) -> Kernels:
    if backend == "torch":
        return TORCH_KERNELS
    if backend == "cpp":  # builds the fused ops now, at engine start, not in the first step
        return CPP_FUSED_KERNELS if cpu_ops.available() else CPP_KERNELS
    if backend != "triton":
        raise ValueError(f"attention backend must be one of {BACKENDS}, not {backend!r}")
    # through sys.modules (not the package's attributes), where the tests put the interpreted kernels
    triton_attention = importlib.import_module("engines.reference.triton_attention")
    triton_ops = importlib.import_module("engines.reference.triton_ops")
    return Kernels("triton", triton_attention.store_kv_triton, triton_attention.paged_attention_triton,
                   triton_ops.add_rms_norm, triton_ops.rotary, triton_ops.silu_and_mul)
