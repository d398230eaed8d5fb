"""Triton kernels for the paged KV cache: store K/V by slot mapping, and one attention kernel for
prefill and decode alike (see attention_metadata.py for the batch layout, attention.py for the
cache layout).

Written against the triton 3.6 language (nothing newer) and tested on the CPU under
TRITON_INTERPRET=1. On a GPU, tl.dot needs tiles of at least 16 on every side: block_size >= 16
and head_dim >= 16 (the query tile is padded to 16 rows here).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engines.reference.attention_metadata import AttentionMetadata


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_cs, stride_ch,
                     num_kv_heads, head_dim, block_size,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per token; a negative slot (padding) stores nothing
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    blk = slot // block_size
    off = slot % block_size
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    # A scalar branch, not a scalar term in the mask: triton 3.9's interpreter rejects a mask
    # that mixes a scalar bool into a tensor.
    if slot >= 0:
        mask = (h < num_kv_heads) & (d < head_dim)
        dst = blk * stride_cb + off * stride_cs + h * stride_ch + d
        k = tl.load(key_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
        tl.store(k_cache_ptr + dst, k, mask=mask)
        v = tl.load(value_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
        tl.store(v_cache_ptr + dst, v, mask=mask)


@triton.jit
def _paged_attention_kernel(out_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                            block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
                            scale,
                            stride_qt, stride_qh, stride_ot, stride_oh,
                            stride_cb, stride_cs, stride_ch, stride_bt,
                            head_dim,
                            GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_F32: tl.constexpr):
    # Program (sequence, query tile, kv head). A tile holds BLOCK_Q consecutive new tokens times
    # the GROUP query heads sharing this kv head, so each K/V block is loaded once for all of them.
    # Online softmax over the sequence's blocks, stopping at the tile's causal limit.
    seq = tl.program_id(0)
    q_tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    first_pos = seq_len - q_len  # position of the sequence's first new token

    m = tl.arange(0, BLOCK_M)
    qi = q_tile * BLOCK_Q + m // GROUP_PAD  # new-token index within the sequence
    g = m % GROUP_PAD
    row_ok = (qi < q_len) & (g < GROUP)
    head = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    tok = (q_start + qi).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    q_pos = first_pos + qi

    # keys this tile can see: up to its last query's position; none for an empty tile
    tile_end = tl.minimum(first_pos + (q_tile + 1) * BLOCK_Q, seq_len)
    num_blocks = tl.cdiv(tile_end, BLOCK_SIZE) * (q_tile * BLOCK_Q < q_len).to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    s = tl.arange(0, BLOCK_SIZE)
    kv_off = s[:, None] * stride_cs + kv_head * stride_ch + d[None, :]
    for j in range(0, num_blocks):
        phys = tl.load(block_tables_ptr + seq * stride_bt + j).to(tl.int64)
        k = tl.load(k_cache_ptr + phys * stride_cb + kv_off, mask=d_ok[None, :], other=0.0)
        v = tl.load(v_cache_ptr + phys * stride_cb + kv_off, mask=d_ok[None, :], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_M, BLOCK_SIZE]
        key_pos = j * BLOCK_SIZE + s
        visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] < seq_len)
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(scores - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def store_kv_triton(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    num_tokens, n_kv, d = key.shape
    assert key.stride(2) == 1 and value.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        n_kv, d, k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(n_kv), BLOCK_D=triton.next_power_of_2(d))


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float) -> torch.Tensor:
    num_tokens, n_heads, d = q.shape
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    out = torch.empty_like(q)
    num_seqs = meta.num_seqs
    if num_tokens == 0 or num_seqs == 0:
        return out
    if block_size < 16 and not triton.knobs.runtime.interpret:
        raise ValueError(f"the Triton attention kernel needs block_size >= 16, not {block_size}")
    group = n_heads // n_kv
    group_pad = triton.next_power_of_2(group)
    # at least 16 rows per tile (tl.dot's minimum); prefills get taller tiles to reuse K/V more
    block_m = max(16, group_pad) if meta.max_query_len == 1 else max(64, group_pad)
    block_q = block_m // group_pad
    grid = (num_seqs, triton.cdiv(meta.max_query_len, block_q), n_kv)
    _paged_attention_kernel[grid](
        out, q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        d,
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_SIZE=block_size,
        # the interpreter multiplies bf16 as raw uint16 (numpy has no bf16): upcast there
        DOT_F32=q.dtype == torch.float32 or triton.knobs.runtime.interpret)
    return out
