"""The model's elementwise work on the CPU through a C++ extension (csrc/cpu_ops.cpp): RMSNorm
fused with the residual add, rotary embedding in place on the fused QKV projection, and
SiLU-and-multiply, each one pass over its rows instead of PyTorch's chain of ops. The functions
have the signatures of backend.Kernels' fused fields (triton_ops.py's contracts).

They round where model.py's PyTorch code rounds, computing in float32 between; with one torch
thread on x86 (AVX2 or AVX-512) they give its bits, in float32 and bfloat16. Two of PyTorch's
choices depend on the vector widths it runs at on this CPU, which are passed on each call: the
order of the RMSNorm's sum (SUM_LANES) and which elements silu leaves to scalar code
(ELEMENTWISE_LANES). Elsewhere the results stay within a few units of the last place.

Built and loaded by cpp_build.py (at first use, cached per source, flags and CPU). Where it
cannot be built, or with TIERBENCH_NO_CPP=1, a warning is logged once and available() is False;
the functions then raise, and the model keeps its PyTorch code.
"""
from __future__ import annotations

import torch

from engines.reference.cpp_build import Extension

# -ffp-contract=off: no fused multiply-adds where PyTorch rounds the product and the sum apart;
# -fopenmp: at::parallel_for is an inline OpenMP loop, serial when compiled without it
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]
EXTENSION = Extension("tierbench_cpu_ops", "cpu_ops.cpp", CFLAGS, ["-fopenmp"],
                      "C++ fused ops unavailable, the model's PyTorch code runs them")

# float32 lanes of torch's vectors (ATen/cpu/vec) here: its elementwise kernels run at its CPU
# capability's width (8 for the generic 32-byte vector); its sum kernel has no AVX-512 build
# (SumKernel.cpp registers none), so an AVX-512 CPU sums at AVX2's width
ELEMENTWISE_LANES = {"AVX512": 16, "AVX2": 8, "SVE256": 8, "NEON": 4}.get(torch.backends.cpu.get_cpu_capability(), 8)
SUM_LANES = min(ELEMENTWISE_LANES, 8)


def available() -> bool:
    """Whether the extension is built and loaded (building it on the first call)."""
    return EXTENSION.load() is not None


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """RMSNorm of x + residual ([tokens, hidden]): the normed tensor, or with a residual
    (normed, x + residual), as model.RMSNorm returns."""
    return _require().add_rms_norm(x, residual, weight, eps, SUM_LANES)


def rotary(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           num_heads: int, head_dim: int) -> None:
    """Rotate the first num_heads heads of each row of `qkv` ([tokens, heads * head_dim], rows
    contiguous) in place by the angles of `positions`; cos, sin: [max_len, head_dim / 2] float32."""
    _require().rotary(qkv, positions, cos, sin, num_heads, head_dim)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[tokens, 2 * inter] (gate, then up) -> silu(gate) * up, [tokens, inter]."""
    return _require().silu_and_mul(gate_up, 4 * ELEMENTWISE_LANES)


def _require():
    ext = EXTENSION.load()
    if ext is None:
        raise RuntimeError("the C++ fused ops are unavailable (see the warning logged when loading them)")
    return ext
