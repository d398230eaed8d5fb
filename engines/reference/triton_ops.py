"""Triton kernels for the rest of a step beside the GEMMs and attention: RMSNorm fused with the
residual add, rotary embedding in place on the fused QKV projection, SiLU-and-multiply.

Why fuse: at batch 1 on an H100 a decode step is the weights' read (~5 ms for an 8B model) plus
a few microseconds for every other kernel, and PyTorch runs each of these as several kernels
(RMSNorm alone: add, pow, mean, rsqrt, two products, casts). One kernel each keeps a layer near
its GEMMs' time.

Each kernel rounds where PyTorch's code in model.py rounds (the residual sum, the normalized
value before the weight, each rotary product, silu before the product), computing in float32
between, so bfloat16 results stay close to Hugging Face's. Triton 3.6 language only; tested on
the CPU under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rounded(x, ptr):
    """x rounded to ptr's element type and back to float32: a rounding PyTorch's code does."""
    return x.to(ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
                         stride_x, stride_r, stride_o, stride_ro, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < n_cols
    x = tl.load(x_ptr + row * stride_x + c, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + c, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + c, x, mask=ok)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, 0) / n_cols + eps)
    normed = _rounded(h * rstd, out_ptr)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + c, (normed * w).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_kernel(x_ptr, pos_ptr, cos_ptr, sin_ptr, stride_t, stride_cos, num_heads, head_dim, half,
                   BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # Program (token, block of heads): HF's rotate-half convention on each head, in place.
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    ok = (h[:, None] < num_heads) & (j[None, :] < half)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    # the tables are float32; HF casts them to the model's dtype before multiplying
    c = _rounded(tl.load(cos_ptr + pos * stride_cos + j, mask=j < half, other=0.0), x_ptr)[None, :]
    s = _rounded(tl.load(sin_ptr + pos * stride_cos + j, mask=j < half, other=0.0), x_ptr)[None, :]
    p1 = x_ptr + t * stride_t + h[:, None] * head_dim + j[None, :]
    x1 = tl.load(p1, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + half, mask=ok, other=0.0).to(tl.float32)
    o1 = _rounded(x1 * c, x_ptr) - _rounded(x2 * s, x_ptr)
    o2 = _rounded(x2 * c, x_ptr) + _rounded(x1 * s, x_ptr)
    tl.store(p1, o1.to(x_ptr.dtype.element_ty), mask=ok)
    tl.store(p1 + half, o2.to(x_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = c < n_cols
    gate = tl.load(x_ptr + row * stride_x + c, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + c, mask=ok, other=0.0).to(tl.float32)
    act = _rounded(gate / (1.0 + tl.exp(-gate)), out_ptr)
    tl.store(out_ptr + row * stride_o + c, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """RMSNorm of x + residual ([tokens, hidden]). Returns the normed tensor, or with a residual
    (normed, x + residual), as model.RMSNorm does."""
    T, H = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else out
    if T:
        res = residual if residual is not None else x
        block = triton.next_power_of_2(H)
        _add_rms_norm_kernel[(T,)](x, res, weight, out, res_out, x.stride(0), res.stride(0), out.stride(0),
                                   res_out.stride(0), H, eps, HAS_RESIDUAL=residual is not None, BLOCK=block,
                                   num_warps=min(16, max(1, block // 256)))
    return out if residual is None else (out, res_out)


def rotary(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           num_heads: int, head_dim: int) -> None:
    """Rotate the first num_heads heads (the query heads, then the key heads) of each row of the
    fused projection `qkv` ([tokens, heads * head_dim], rows contiguous) in place, by the angles
    of `positions` (cos, sin: [max_len, head_dim / 2] float32 tables)."""
    T = qkv.shape[0]
    assert qkv.stride(1) == 1 and cos.is_contiguous() and sin.is_contiguous()
    if T == 0:
        return
    block_h = min(8, triton.next_power_of_2(num_heads))
    half = head_dim // 2
    _rotary_kernel[(T, triton.cdiv(num_heads, block_h))](
        qkv, positions, cos, sin, qkv.stride(0), cos.stride(0), num_heads, head_dim, half,
        BLOCK_H=block_h, BLOCK_HALF=triton.next_power_of_2(half))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[tokens, 2 * inter] (gate, then up) -> silu(gate) * up, [tokens, inter]."""
    T, two_inter = gate_up.shape
    inter = two_inter // 2
    out = torch.empty(T, inter, dtype=gate_up.dtype, device=gate_up.device)
    if T:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_and_mul_kernel[(T, triton.cdiv(inter, block))](gate_up, out, gate_up.stride(0), out.stride(0), inter,
                                                              BLOCK=block)
    return out
