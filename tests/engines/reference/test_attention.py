"""The paged attention op (torch implementation) against a dense float64 reference
(engines/reference/kernel_checks.py, shared with the Triton tests and the GPU benchmark)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.reference.attention import paged_attention_torch, store_kv_torch
from engines.reference.backend import resolve_backend
from engines.reference.kernel_checks import dense_reference, make_batch, random_seqs, rel_err


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
    out = paged_attention_torch(q, kc, vc, meta, scale)
    assert rel_err(out, dense_reference(q, seqs, dense, group, scale)) < 1e-5


@pytest.mark.parametrize("group", [1, 4, 8])
def test_paged_attention_long_contexts(group):
    """Contexts up to 4096: decodes, a fresh long prompt, and a chunk after long cached context."""
    n_kv, d, bs = 1, 64, 16
    seqs = [(4096, 1), (1, 1), (2049, 1), (1500, 1500), (4096, 37)]
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, bs, seed=group)
    scale = d ** -0.5
    out = paged_attention_torch(q, kc, vc, meta, scale)
    assert rel_err(out, dense_reference(q, seqs, dense, group, scale)) < 1e-5


def test_prefill_split_into_query_chunks(monkeypatch):
    """Prefills too big for one call are cut into query chunks and packed; same answer."""
    import engines.reference.attention as attention

    monkeypatch.setattr(attention, "_MAX_SCORE_ELEMS", 4096)
    seqs = [(300, 1), (200, 200), (150, 60), (90, 90), (5, 5)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, seed=3)
    out = paged_attention_torch(q, kc, vc, meta, 0.25)
    assert len(meta.torch_plan) > 3
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 1e-5


def test_bfloat16_close():
    seqs = [(100, 1), (64, 64), (80, 16)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 32, 16, dtype=torch.bfloat16, seed=5)
    out = paged_attention_torch(q, kc, vc, meta, 32 ** -0.5)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 32 ** -0.5)) < 2e-2


def test_store_kv_writes_slots():
    kc = torch.zeros(4, 16, 2, 8)
    vc = torch.zeros_like(kc)
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    store_kv_torch(k, v, kc, vc, torch.tensor([5, 16 * 3 + 15, 16]))
    assert torch.equal(kc[0, 5], k[0]) and torch.equal(kc[3, 15], k[1]) and torch.equal(vc[1, 0], v[2])
    assert int((kc != 0).sum()) == k.numel()  # nothing else written


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("TIERBENCH_ATTENTION", raising=False)
    from engines.reference import cpu_attention

    assert resolve_backend("cpu") == ("cpp" if cpu_attention.available() else "torch")
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
    out = paged_attention_torch(q, kc, vc, meta, 0.25, key=key, value=value)
    assert any(g.fresh for g in meta.torch_plan)
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 1e-5
    meta.torch_plan = None
    assert torch.allclose(out, paged_attention_torch(q, kc, vc, meta, 0.25), atol=1e-6)
