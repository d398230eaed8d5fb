"""The Llama-family decoder: RMSNorm, RoPE (with Llama-3 frequency scaling), grouped-query
attention over the paged KV cache, SwiGLU MLP. Q, K and V are one matmul (qkv_proj), and so are
the MLP's gate and up projections (gate_up_proj); weights.py maps HF checkpoints onto them.

Inputs are flat: all scheduled tokens of all sequences in one [num_tokens] batch, with positions
and the attention metadata saying which token belongs where.

The modules run the kernels of their `kernels` attribute (backend.py; set for the whole model by
use_kernels): attention and the KV store always, and where the backend has them, fused RMSNorm
with residual, in-place rotary embedding and SiLU-and-multiply instead of the PyTorch code here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engines.reference.attention_metadata import AttentionMetadata
from engines.reference.backend import TORCH_KERNELS, Kernels
from engines.reference.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, computed exactly as HF transformers does (float32 throughout) so the
    rotations agree bit for bit."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    sc = cfg.rope_scaling
    if not sc:
        return inv_freq
    factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old_len = sc["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are divided by factor, short ones kept, the band between interpolated
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to max_len (float32, as HF computes them)."""

    def __init__(self, cfg: ModelConfig, max_len: int) -> None:
        super().__init__()
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
        self.register_buffer("cos", freqs.cos(), persistent=False)  # [max_len, head_dim / 2]
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def for_positions(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Once per step, for all layers: cos as [T, 1, D] and sin with the rotation's signs
        folded in, (-sin, sin), so that apply() is two products and a sum."""
        cos, sin = self.cos[positions], self.sin[positions]
        return (torch.cat((cos, cos), dim=-1).unsqueeze(1).to(dtype),
                torch.cat((-sin, sin), dim=-1).unsqueeze(1).to(dtype))

    @staticmethod
    def apply(x: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """HF's "rotate half" convention: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). Swapping
        the halves is a flip of a [.., 2, D/2] view; the result is bitwise HF's."""
        cos, sin = rot
        T, h, d = x.shape
        swapped = x.view(T, h, 2, d // 2).flip(2).view(T, h, d)
        return x * cos + swapped * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels = TORCH_KERNELS

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With `residual`: add it first and return (normed, new residual), saving a pass."""
        if self.kernels.add_rms_norm is not None:
            return self.kernels.add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = self.head_dim ** -0.5
        self.rope = rope  # one table shared by all layers (its buffers are non-persistent)
        self.kernels = TORCH_KERNELS
        self.k_cache: torch.Tensor | None = None  # [num_blocks, block_size, n_kv, head_dim], set by the runner
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, rot, meta: AttentionMetadata) -> torch.Tensor:
        """rot: the positions where the kernels rotate in place, else RotaryEmbedding.for_positions'."""
        T, ker = x.shape[0], self.kernels
        qkv = self.qkv_proj(x)
        # rotate q and k together: one pass over both
        if ker.rotary is not None:
            ker.rotary(qkv, rot, self.rope.cos, self.rope.sin, self.n_heads + self.n_kv, self.head_dim)
            q = qkv[:, :self.q_size].view(T, self.n_heads, self.head_dim)
            k = qkv[:, self.q_size:self.q_size + self.kv_size].view(T, self.n_kv, self.head_dim)
        else:
            qk = self.rope.apply(qkv[:, :self.q_size + self.kv_size].view(T, self.n_heads + self.n_kv, self.head_dim),
                                 rot)
            q, k = qk[:, :self.n_heads], qk[:, self.n_heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(T, self.n_kv, self.head_dim)
        ker.store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        o = ker.attention(q, self.k_cache, self.v_cache, meta, self.scale, k, v)
        return self.o_proj(o.reshape(T, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.kernels = TORCH_KERNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels.silu_and_mul is not None:
            return self.down_proj(self.kernels.silu_and_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).split([self.inter, self.inter], dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rope)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, rot: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, rot, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class Decoder(nn.Module):
    """Parameter names match HF's `model.*` below LlamaForCausalLM, with the two fused projections."""

    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, rope) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int) -> None:
        super().__init__()
        self.config = cfg
        rope = RotaryEmbedding(cfg, max_len)
        self.model = Decoder(cfg, rope)
        self.rope = rope
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.kernels = TORCH_KERNELS

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]

    def use_kernels(self, kernels: Kernels) -> None:
        for m in self.modules():
            if hasattr(m, "kernels"):
                m.kernels = kernels

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states after the final norm, [num_tokens, hidden]."""
        h = self.model.embed_tokens(input_ids)
        rot = positions if self.kernels.rotary is not None else self.rope.for_positions(positions, h.dtype)
        residual = None
        for layer in self.model.layers:
            h, residual = layer(h, residual, rot, meta)
        h, _ = self.model.norm(h, residual)
        return h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
