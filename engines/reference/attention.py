"""Attention over the paged KV cache in plain PyTorch: the CPU path and the readable reference
that the Triton kernels (triton_attention.py) are tested against. backend.py chooses between the
two; neither imports the other.

The batch layout (flat "varlen" batches, block tables, slot mapping) is AttentionMetadata's, in
attention_metadata.py. New tokens attend causally among themselves and to all of their
sequence's earlier tokens, i.e. query k of a sequence with q_len new tokens sees keys
[0, seq_len - q_len + k].

KV cache layout, per layer: key and value caches of shape [num_blocks, block_size, num_kv_heads,
head_dim].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engines.reference.attention_metadata import AttentionMetadata

# Bound on heads x queries x keys of one masked attention call (the mask, and the scores where sdpa
# materializes them): long chunks after cached context are split into query chunks, short ones
# packed together. Whole prompts need no mask and are not split (see _plan_groups).
_MAX_SCORE_ELEMS = 1 << 24


def store_kv_torch(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Write new tokens' K and V ([num_tokens, num_kv_heads, head_dim]) into their cache slots."""
    n_kv, d = key.shape[1], key.shape[2]
    k_cache.view(-1, n_kv, d).index_copy_(0, slot_mapping, key)
    v_cache.view(-1, n_kv, d).index_copy_(0, slot_mapping, value)


def paged_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          meta: AttentionMetadata, scale: float, key: torch.Tensor | None = None,
                          value: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads, head_dim]. The new tokens'
    K and V must already be in the cache (store_kv_torch). `key`/`value`, the new tokens' K and V
    ([num_tokens, num_kv_heads, head_dim]), are optional: prompts with no cached context read
    them instead of the cache, saving a gather.

    The sequences are attended in padded groups (all decodes in one group, prefills in groups of
    bounded size), each group one scaled_dot_product_attention call over K/V gathered through its
    block tables. The grouping is planned once per step (the first layer to run) and reused by
    every layer."""
    if meta.torch_plan is None:
        meta.torch_plan = _plan_groups(meta, k_cache.shape[1], q.shape[1], q.device)
    out = torch.empty_like(q)
    n_heads, d = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[2]
    k_rows, v_rows = k_cache.view(k_cache.shape[0], -1), v_cache.view(v_cache.shape[0], -1)
    for g in meta.torch_plan:
        if g.q_index is None:
            qg = q[g.q_start:g.q_start + g.P * g.lq].view(g.P, g.lq, n_heads, d)
        else:
            qg = q.index_select(0, g.q_index).view(g.P, g.lq, n_heads, d)
        if g.fresh and key is not None:  # the keys are exactly this step's new tokens
            k = key[g.q_start:g.q_start + g.P * g.lq].view(g.P, g.lq, n_kv, d).transpose(1, 2)
            v = value[g.q_start:g.q_start + g.P * g.lq].view(g.P, g.lq, n_kv, d).transpose(1, 2)
        else:
            k = k_rows.index_select(0, g.kv_index).view(g.P, -1, n_kv, d)[:, :g.lk].transpose(1, 2)
            v = v_rows.index_select(0, g.kv_index).view(g.P, -1, n_kv, d)[:, :g.lk].transpose(1, 2)
        o = F.scaled_dot_product_attention(qg.transpose(1, 2), k, v, attn_mask=g.mask, is_causal=g.is_causal,
                                           scale=scale, enable_gqa=n_kv != n_heads).transpose(1, 2)
        if g.q_index is None:
            out[g.q_start:g.q_start + g.P * g.lq] = o.reshape(g.P * g.lq, n_heads, d)
        else:
            out.index_copy_(0, g.out_index, o.reshape(g.P * g.lq, n_heads, d)[g.valid])
    return out


@dataclass
class _Group:
    """P runs of new tokens attended in one padded call: run p is q_lens[p] consecutive flat
    tokens whose last one sits at position ctx[p] - 1 of its sequence."""

    P: int
    lq: int  # queries per run, padded
    lk: int  # keys per run, padded
    kv_index: torch.Tensor  # [P * blocks per run] physical blocks to gather
    q_start: int = 0  # when q_index is None: the runs are P x lq consecutive flat tokens from here
    q_index: torch.Tensor | None = None  # else: flat token of each padded query ...
    out_index: torch.Tensor | None = None  # ... and where the valid ones go
    valid: torch.Tensor | None = None  # [P * lq] bool: which padded queries are real
    mask: torch.Tensor | None = None  # float additive, [P or 1, 1, lq, lk]; None: see is_causal
    is_causal: bool = False
    fresh: bool = False  # equal contiguous runs with no cached context: keys = the new tokens


def _plan_groups(meta: AttentionMetadata, block_size: int, n_heads: int, device: torch.device) -> list[_Group]:
    qsl = meta.query_start_loc_cpu.astype(np.int64)
    q_starts, q_lens, ctxs = qsl[:-1], qsl[1:] - qsl[:-1], meta.seq_lens_cpu.astype(np.int64)
    bt = meta.block_tables
    groups = []
    nd = meta.num_decodes
    if nd:
        groups.append(_make_group(np.arange(nd), q_starts[:nd], q_lens[:nd], ctxs[:nd], bt, block_size, device))
    # Whole prompts with no cached context: one causal call per run of adjacent prompts of equal
    # length. sdpa's CPU flash kernel skips the masked half and never materializes the scores, so
    # neither padding to the longest prompt nor a mask (which makes it compute the full square)
    # is worth the fewer calls: a burst of 8 prompts of 193-409 tokens took 3x longer padded.
    # Other prefills (chunks after cached context): cut long ones into query chunks, pack
    # consecutive pieces while the padded heads x queries x keys stays under the bound.
    pieces = []  # (row, first flat token, q_len, ctx)
    i = nd
    while i < meta.num_seqs:
        ql, ctx = int(q_lens[i]), int(ctxs[i])
        if ql == ctx:
            j = i + 1
            while j < meta.num_seqs and q_lens[j] == ql and ctxs[j] == ql:
                j += 1
            rows = np.arange(i, j)
            groups.append(_make_group(rows, q_starts[i:j], q_lens[i:j], ctxs[i:j], bt, block_size, device))
            i = j
            continue
        chunk = max(1, _MAX_SCORE_ELEMS // (n_heads * ctx))
        for c0 in range(0, ql, chunk):
            c1 = min(ql, c0 + chunk)
            pieces.append((i, int(q_starts[i]) + c0, c1 - c0, ctx - ql + c1))
        i += 1
    group: list[tuple[int, int, int, int]] = []
    max_q = max_k = 0
    for piece in pieces + [None]:
        if group and (piece is None or n_heads * (len(group) + 1) * max(max_q, piece[2])
                      * max(max_k, piece[3]) > _MAX_SCORE_ELEMS):
            rows, starts, lens, cs = (np.array(x, dtype=np.int64) for x in zip(*group))
            groups.append(_make_group(rows, starts, lens, cs, bt, block_size, device))
            group, max_q, max_k = [], 0, 0
        if piece is not None:
            group.append(piece)
            max_q, max_k = max(max_q, piece[2]), max(max_k, piece[3])
    return groups


def _make_group(rows: np.ndarray, q_starts: np.ndarray, q_lens: np.ndarray, ctxs: np.ndarray,
                block_tables: torch.Tensor, block_size: int, device: torch.device) -> _Group:
    P, lq, lk = len(rows), int(q_lens.max()), int(ctxs.max())
    nb = -(-lk // block_size)
    if (np.diff(rows) == 1).all():  # consecutive rows: a slice, no gather
        bt = block_tables[int(rows[0]):int(rows[0]) + P, :nb]
    else:
        bt = block_tables.index_select(0, torch.from_numpy(rows).to(device))[:, :nb]
    g = _Group(P=P, lq=lq, lk=lk, kv_index=bt.reshape(-1).to(torch.int64))
    if (q_lens == lq).all() and (np.diff(q_starts) == lq).all():
        g.q_start = int(q_starts[0])
    else:  # ragged runs: pad each to lq by repeating its last token; only valid rows are written
        j = np.arange(lq)
        tok = q_starts[:, None] + np.minimum(j[None, :], q_lens[:, None] - 1)
        valid = j[None, :] < q_lens[:, None]
        g.q_index = torch.from_numpy(tok.reshape(-1)).to(device)
        g.out_index = torch.from_numpy(tok[valid]).to(device)
        g.valid = torch.from_numpy(valid.reshape(-1)).to(device)
    # query j of a run sits at position ctx - q_len + j and sees the keys up to it. Padding
    # queries (j >= q_len) see all the run's keys, so no row of the softmax is empty.
    uniform = (q_lens == lq).all() and (ctxs == lk).all()
    if uniform and (lq == 1 or lq == lk):
        g.is_causal = lq > 1  # decode: no mask at all; fresh prefill: causal == bottom-right causal
        g.fresh = lq == lk and g.q_index is None
        return g
    key_pos = np.arange(lk)
    if uniform:  # one mask for all runs
        q_pos = lk - lq + np.arange(lq)
        allowed = key_pos[None, None, :] <= q_pos[None, :, None]
    else:
        q_pos = (ctxs - q_lens)[:, None] + np.arange(lq)[None, :]
        allowed = (key_pos[None, None, :] <= q_pos[:, :, None]) & (key_pos[None, None, :] < ctxs[:, None, None])
    mask = np.where(allowed, np.float32(0), np.float32(-np.inf))[:, None]  # [P or 1, 1, lq, lk]
    g.mask = torch.from_numpy(mask).to(device)
    return g
