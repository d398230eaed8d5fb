"""The paged attention op (torch implementation) against a dense float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.reference.attention import paged_attention, resolve_backend, store_kv
from engines.reference.attention_metadata import AttentionMetadata


def make_batch(seqs, n_kv, group, d, block_size, dtype=torch.float32, seed=0, device="cpu"):
    """seqs: [(ctx_len, q_len)], decodes (q_len 1) first. Writes every token's K/V into a paged
    cache at shuffled physical blocks and returns (q, k_cache, v_cache, meta, dense K/V per seq)."""
    g = torch.Generator().manual_seed(seed)
    blocks_per = [-(-ctx // block_size) for ctx, _ in seqs]
    num_blocks = sum(blocks_per) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, p = [], 0
    for nb in blocks_per:
        tables.append(perm[p:p + nb])
        p += nb
    k_cache = torch.zeros(num_blocks, block_size, n_kv, d, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    dense = []
    for (ctx, _), table in zip(seqs, tables):
        k = torch.randn(ctx, n_kv, d, generator=g).to(dtype)
        v = torch.randn(ctx, n_kv, d, generator=g).to(dtype)
        slots = torch.tensor([table[i // block_size] * block_size + i % block_size for i in range(ctx)])
        store_kv(k.to(device), v.to(device), k_cache, v_cache, slots.to(device))
        dense.append((k.double(), v.double()))
    max_blocks = max(blocks_per)
    bt = torch.zeros(len(seqs), max_blocks + 2, dtype=torch.int32)  # wider than needed, as in the runner
    for i, t in enumerate(tables):
        bt[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
    q_lens = np.array([q for _, q in seqs], dtype=np.int32)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    sl = np.array([c for c, _ in seqs], dtype=np.int32)
    nd = int((q_lens == 1).sum())
    assert (q_lens[:nd] == 1).all(), "decodes first"
    q = torch.randn(int(qsl[-1]), n_kv * group, d, generator=g).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(int(qsl[-1]), dtype=torch.int64, device=device),
        query_start_loc=torch.from_numpy(qsl).to(device), seq_lens=torch.from_numpy(sl).to(device),
        block_tables=bt.to(device), num_decodes=nd, max_query_len=int(q_lens.max()),
        max_seq_len=int(sl.max()),
        query_start_loc_cpu=qsl, seq_lens_cpu=sl)
    return q.to(device), k_cache, v_cache, meta, dense


def dense_reference(q, seqs, dense, group, scale):
    """float64, one sequence at a time: query j of a run of q_len new tokens sees keys up to
    position ctx - q_len + j."""
    q = q.double().cpu()
    out = torch.empty_like(q)
    start = 0
    for (ctx, q_len), (k, v) in zip(seqs, dense):
        qi = q[start:start + q_len]  # [q_len, H, d]
        kk = k.repeat_interleave(group, dim=1)  # [ctx, H, d]
        vv = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qi, kk) * scale
        q_pos = torch.arange(ctx - q_len, ctx)[:, None]
        scores = scores.masked_fill(torch.arange(ctx)[None, :] > q_pos, float("-inf"))
        out[start:start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)
        start += q_len
    return out


def rel_err(a, ref):
    return ((a.double().cpu() - ref).abs().max() / ref.abs().max()).item()


def random_seqs(rng, n_decode, n_prefill, max_ctx):
    seqs = [(int(rng.integers(1, max_ctx + 1)), 1) for _ in range(n_decode)]
    for _ in range(n_prefill):
        ctx = int(rng.integers(1, max_ctx + 1))
        kind = rng.integers(3)
        q_len = ctx if kind == 0 else int(rng.integers(1, ctx + 1))  # fresh prompt, or a chunk after cached context
        seqs.append((ctx, q_len))
    return seqs


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_attention_matches_dense(group, block_size):
    rng = np.random.default_rng(group * 100 + block_size)
    n_kv, d = 2 if group < 8 else 1, 32
    seqs = random_seqs(rng, n_decode=5, n_prefill=4, max_ctx=300)
    seqs += [(1, 1)]  # a one-token sequence
    seqs = sorted(seqs, key=lambda s: s[1] != 1)
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, block_size, seed=group + block_size)
    scale = d ** -0.5
    out = paged_attention(q, kc, vc, meta, scale, backend="torch")
    assert rel_err(out, dense_reference(q, seqs, dense, group, scale)) < 1e-5


@pytest.mark.parametrize("group", [1, 4, 8])
def test_paged_attention_long_contexts(group):
    """Contexts up to 4096: decodes, a fresh long prompt, and a chunk after long cached context."""
    n_kv, d, bs = 1, 64, 16
    seqs = [(4096, 1), (1, 1), (2049, 1), (1500, 1500), (4096, 37)]
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, bs, seed=group)
    scale = d ** -0.5
    out = paged_attention(q, kc, vc, meta, scale, backend="torch")
    assert rel_err(out, dense_reference(q, seqs, dense, group, scale)) < 1e-5


def test_prefill_split_into_query_chunks(monkeypatch):
    """Prefills too big for one call are cut into query chunks and packed; same answer."""
    import engines.reference.attention as attention

    monkeypatch.setattr(attention, "_MAX_SCORE_ELEMS", 4096)
    seqs = [(300, 1), (200, 200), (150, 60), (90, 90), (5, 5)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, seed=3)
    out = paged_attention(q, kc, vc, meta, 0.25, backend="torch")
    assert len(meta.torch_plan) > 3
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 1e-5


def test_bfloat16_close():
    seqs = [(100, 1), (64, 64), (80, 16)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 32, 16, dtype=torch.bfloat16, seed=5)
    out = paged_attention(q, kc, vc, meta, 32 ** -0.5, backend="torch")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 32 ** -0.5)) < 2e-2


def test_store_kv_writes_slots():
    kc = torch.zeros(4, 16, 2, 8)
    vc = torch.zeros_like(kc)
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    store_kv(k, v, kc, vc, torch.tensor([5, 16 * 3 + 15, 16]))
    assert torch.equal(kc[0, 5], k[0]) and torch.equal(kc[3, 15], k[1]) and torch.equal(vc[1, 0], v[2])
    assert int((kc != 0).sum()) == k.numel()  # nothing else written


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("TIERBENCH_ATTENTION", raising=False)
    assert resolve_backend("cpu") == "torch"
    assert resolve_backend("cuda") == "triton"
    assert resolve_backend("cuda", "torch") == "torch"
    monkeypatch.setenv("TIERBENCH_ATTENTION", "torch")
    assert resolve_backend("cuda") == "torch"
    assert resolve_backend("cpu", "triton") == "triton"  # an explicit choice beats the environment
    with pytest.raises(ValueError):
        resolve_backend("cpu", "flash")


def test_new_keys_passed_directly_give_the_same_answer():
    """The model passes this step's K/V too; prompts without cached context read them instead of
    the cache. Same result as reading the cache."""
    seqs = [(64, 64), (64, 64), (64, 64)]  # fresh prompts of equal length: the shortcut applies
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, seed=11)
    key = torch.cat([k for k, _ in dense]).float()
    value = torch.cat([v for _, v in dense]).float()
    out = paged_attention(q, kc, vc, meta, 0.25, key=key, value=value)
    assert any(g.fresh for g in meta.torch_plan)
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 1e-5
    meta.torch_plan = None
    assert torch.allclose(out, paged_attention(q, kc, vc, meta, 0.25), atol=1e-6)
