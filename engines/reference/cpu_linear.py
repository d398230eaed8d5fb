"""Linear layers through oneDNN on the CPU, weights packed once at engine start.

PyTorch runs a float32 F.linear on the CPU through MKL, and MKL runs AVX2 kernels on AMD CPUs
("zen"), where oneDNN (also inside PyTorch) uses AVX-512 wherever the CPU has it. On this
project's machine (AMD EPYC with AVX-512, one thread) oneDNN ran the tiny model's projections
2.0-2.4x faster than F.linear: 1,024 tokens through 128 -> 768 took 0.84 ms against 1.96 ms, 64
tokens through the 128 -> 3,072 LM head 0.22 against 0.51 ms. On a CPU where MKL uses AVX-512
itself the two should be alike.

pack_linears() reorders every projection's weight into oneDNN's blocked layout (a copy: the
module keeps its weight for the rows where F.linear is faster, and for the checkpoint's names).
Below MIN_ROWS rows (one decode) MKL's matrix-vector path is faster and runs. Results agree with
F.linear to float32 rounding (a different order of the sums where the input dimension is large:
greedy outputs stay identical to HF's in the engine tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 4  # one thread, tiny model: 1 row 0.008 ms (MKL) vs 0.015 ms (oneDNN), 8 rows 0.027 vs 0.019


def padded_rows(rows: int) -> int:
    """The row count a call runs at. oneDNN compiles and caches a kernel per input shape, ~0.6 MB
    each (1,021 row counts through one 128 -> 768 projection grew the process by 626 MB), so rows
    are padded to a few sizes: multiples of 16 up to 256, of 128 up to 1,024, then of 512."""
    step = 16 if rows <= 256 else 128 if rows <= 1024 else 512
    return -(-rows // step) * step


def available() -> bool:
    """Whether this PyTorch has oneDNN with the packed-linear ops (internal ops of its CPU build)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """Stands in for an nn.Linear without bias: same weight (and state-dict name), plus its packed copy."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.weight = linear.weight
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        # every padded size a step can use, compiled now: not on a user's request, and the
        # process's memory does not grow later
        with torch.inference_mode():
            rows = MIN_ROWS
            while rows <= max(batch_hint, MIN_ROWS):
                self(torch.zeros(rows, self.weight.shape[1]))
                rows = padded_rows(rows) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows < MIN_ROWS:
            return F.linear(x, self.weight)
        padded = padded_rows(rows)
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")[:rows]


def pack_linears(model: nn.Module, batch_hint: int) -> int:
    """Replace the model's float32 CPU linears without bias by PackedLinear. Returns how many."""
    if not available():
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.bias is None and child.weight.device.type == "cpu"
               and child.weight.dtype == torch.float32]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child, batch_hint))
    return len(targets)
