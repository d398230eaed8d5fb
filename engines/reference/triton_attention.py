"""Triton kernels for the paged KV cache: store K/V by slot mapping; decode attention with split-KV
(flash-decoding); prefill and chunked-prefill attention with a causal mask. See
attention_metadata.py for the batch layout, attention.py for the cache layout and the PyTorch
reference these are tested against.

Decode: each program takes one sequence, one KV head and all the query heads that share it
(grouped-query attention: each K/V tile is loaded once for the whole group), and the keys are cut
into splits of SPLIT_TOKENS. A second kernel merges the splits' partial results by their
log-sum-exp. The split length is a constant, not a function of the batch, so a sequence's result
does not depend on what else is in the batch or on how many programs the grid has: a CUDA graph
captured for a padded batch (grid sized for max_model_len) and an eager step give the same bits.

Written against the triton 3.6 language (nothing newer) and tested on the CPU under
TRITON_INTERPRET=1. On a GPU, tl.dot needs tiles of at least 16 on every side: the query-head
group is padded to 16 rows, key tiles are 16 tokens or more, and head_dim is padded to 16.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from engines.reference.attention_metadata import AttentionMetadata

SPLIT_TOKENS = 256  # keys per decode split
DECODE_TILE = 64  # keys per decode loop iteration
PREFILL_TILE = 32  # keys per prefill loop iteration


def interpreting() -> bool:
    """Whether @triton.jit runs kernels in the interpreter (read when the kernels were decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_cs, stride_ch,
                     num_kv_heads, head_dim, block_size,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per token; a negative slot stores nothing
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
def _load_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, stride_cb, stride_cs, stride_ch,
                  kv_head, tok, ok, d, d_ok, BLOCK_SIZE: tl.constexpr, DOT_F32: tl.constexpr):
    """K and V [len(tok), BLOCK_D] of one kv head at the sequence's token positions `tok` (those
    not `ok` read as zeros), each token's page looked up in the block table."""
    page = tl.load(block_tables_ptr + seq * stride_bt + tok // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
    kv_off = (page * stride_cb + (tok % BLOCK_SIZE) * stride_cs + kv_head * stride_ch)[:, None] + d[None, :]
    k = tl.load(k_cache_ptr + kv_off, mask=ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(v_cache_ptr + kv_off, mask=ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit(do_not_specialize=["programs_per_head"])
def _decode_split_kernel(part_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                         block_tables_ptr, seq_lens_ptr, scale,
                         stride_qt, stride_qh, stride_ps, stride_ph, stride_cb, stride_cs, stride_ch, stride_bt,
                         head_dim, programs_per_head,
                         GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, TILE: tl.constexpr,
                         DOT_F32: tl.constexpr):
    # Program (sequence, kv head, p) takes splits p, p + programs_per_head, ... of the sequence's
    # keys; for each it writes the group's softmax-weighted values and their log-sum-exp.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, GROUP_PAD)
    g_ok = g < GROUP
    head = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    n = tl.arange(0, TILE)
    row = seq.to(tl.int64) * stride_ps + head * stride_ph  # [GROUP_PAD] offsets into the partials
    for split in range(tl.program_id(2), tl.cdiv(seq_len, SPLIT), programs_per_head):
        end = tl.minimum(split * SPLIT + SPLIT, seq_len)
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
        for t0 in range(split * SPLIT, end, TILE):
            tok = t0 + n
            ok = tok < end
            k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, stride_cb, stride_cs,
                                 stride_ch, kv_head, tok, ok, d, d_ok, BLOCK_SIZE, DOT_F32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [GROUP_PAD, TILE]
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a key
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m_i = m_new
        dst = row + split * (BLOCK_D + 1)
        tl.store(part_ptr + dst[:, None] + d[None, :], acc / l_i[:, None], mask=g_ok[:, None] & d_ok[None, :])
        tl.store(part_ptr + dst + BLOCK_D, m_i + tl.log(l_i), mask=g_ok)


@triton.jit
def _decode_merge_kernel(out_ptr, part_ptr, seq_lens_ptr, stride_ot, stride_oh, stride_ps, stride_ph,
                         head_dim, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr):
    # Program (sequence, head): the splits in order, weighted by exp(lse - running max).
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    base = part_ptr + seq.to(tl.int64) * stride_ps + head * stride_ph
    e_max = -float("inf")
    e_sum = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for split in range(0, tl.cdiv(seq_len, SPLIT)):
        o = tl.load(base + split * (BLOCK_D + 1) + d, mask=d_ok, other=0.0)
        lse = tl.load(base + split * (BLOCK_D + 1) + BLOCK_D)
        new_max = tl.maximum(lse, e_max)
        alpha = tl.exp(e_max - new_max)
        w = tl.exp(lse - new_max)
        acc = acc * alpha + w * o
        e_sum = e_sum * alpha + w
        e_max = new_max
    tl.store(out_ptr + seq.to(tl.int64) * stride_ot + head * stride_oh + d,
             (acc / e_sum).to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit(do_not_specialize=["first_seq"])
def _prefill_kernel(out_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, scale, first_seq,
                    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
                    head_dim,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, DOT_F32: tl.constexpr):
    # Program (sequence, query tile, kv head). A tile holds BLOCK_Q consecutive new tokens times
    # the GROUP query heads sharing this kv head, so each K/V tile is loaded once for all of them.
    # Online softmax over the keys up to the tile's last query (causal), TILE keys at a time.
    seq = tl.program_id(0) + first_seq
    q_tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    first_pos = seq_len - q_len  # position of the sequence's first new token
    if q_tile * BLOCK_Q < q_len:
        m = tl.arange(0, BLOCK_M)
        qi = q_tile * BLOCK_Q + m // GROUP_PAD  # new-token index within the sequence
        g = m % GROUP_PAD
        row_ok = (qi < q_len) & (g < GROUP)
        head = kv_head * GROUP + g
        d = tl.arange(0, BLOCK_D)
        d_ok = d < head_dim
        tok_q = (q_start + qi).to(tl.int64)
        q = tl.load(q_ptr + tok_q[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        q_pos = first_pos + qi
        kv_end = tl.minimum(first_pos + (q_tile + 1) * BLOCK_Q, seq_len)  # keys this tile can see

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n = tl.arange(0, TILE)
        for t0 in range(0, kv_end, TILE):
            tok = t0 + n
            ok = tok < kv_end
            k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, stride_cb, stride_cs,
                                 stride_ch, kv_head, tok, ok, d, d_ok, BLOCK_SIZE, DOT_F32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_M, TILE]
            s = tl.where((tok[None, :] <= q_pos[:, None]) & ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m_i = m_new
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok_q[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
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


@functools.lru_cache(maxsize=None)
def _programs_wanted(device: torch.device) -> int:
    """Enough decode programs to fill the GPU (4 per SM); the interpreter runs them one by one."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def decode_attention(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, max_seq_len: int, scale: float,
                     programs_per_head: int | None = None) -> None:
    """Split-KV decode for one query token per sequence: q, out [num_seqs, num_heads, head_dim].
    max_seq_len bounds seq_lens (it sizes the grid and the partials, not the result)."""
    num_seqs, n_heads, d = q.shape
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    max_splits = triton.cdiv(max_seq_len, SPLIT_TOKENS)
    if programs_per_head is None:
        programs_per_head = triton.cdiv(_programs_wanted(q.device), num_seqs * n_kv)
    programs_per_head = max(1, min(programs_per_head, max_splits))
    block_d = max(16, triton.next_power_of_2(d))
    # per (sequence, head, split): block_d weighted values, then the log-sum-exp
    partials = torch.empty(num_seqs, n_heads, max_splits, block_d + 1, dtype=torch.float32, device=q.device)
    dot_f32 = q.dtype == torch.float32 or interpreting()  # the interpreter multiplies bf16 as raw bits
    _decode_split_kernel[(num_seqs, n_kv, programs_per_head)](
        partials, q, k_cache, v_cache, block_tables, seq_lens, scale,
        q.stride(0), q.stride(1), partials.stride(0), partials.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        d, programs_per_head,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_D=block_d,
        BLOCK_SIZE=block_size, SPLIT=SPLIT_TOKENS, TILE=DECODE_TILE, DOT_F32=dot_f32)
    _decode_merge_kernel[(num_seqs, n_heads)](
        out, partials, seq_lens, out.stride(0), out.stride(1), partials.stride(0), partials.stride(1),
        d, SPLIT=SPLIT_TOKENS, BLOCK_D=block_d)


def prefill_attention(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, first_seq: int, scale: float) -> None:
    """Causal attention for sequences first_seq.. of the batch (their new tokens attend to the
    cached context and, causally, to each other); out and q are the whole flat batch."""
    n_heads, d = q.shape[1], q.shape[2]
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    group_pad = triton.next_power_of_2(group)
    block_q = max(1, 64 // group_pad)  # 64-row tiles: at least 16 for tl.dot, K/V reused 64 times
    grid = (meta.num_seqs - first_seq, triton.cdiv(meta.max_query_len, block_q), n_kv)
    _prefill_kernel[grid](
        out, q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale, first_seq,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        d,
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_SIZE=block_size, TILE=PREFILL_TILE,
        DOT_F32=q.dtype == torch.float32 or interpreting())


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float, key: torch.Tensor | None = None,
                           value: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim] -> out, same shape; the new tokens' K/V already stored.
    The leading decodes go through split-KV decode, the rest through the prefill kernel. `key`
    and `value` are accepted for the torch implementation's signature and not read."""
    out = torch.empty_like(q)
    assert q.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    if q.shape[0] == 0 or meta.num_seqs == 0:
        return out
    nd = meta.num_decodes
    if nd:  # decodes come first: token i is sequence i's
        decode_attention(out[:nd], q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd],
                         meta.max_seq_len, scale)
    if nd < meta.num_seqs:
        prefill_attention(out, q, k_cache, v_cache, meta, nd, scale)
    return out
