"""The Triton kernels against float64 dense references, on the CPU under TRITON_INTERPRET=1:
paged attention (split-KV decode, prefill, chunked prefill), the KV store, the fused RMSNorm with
residual, rotary embedding and SiLU-and-multiply; then the engine on them, eager and through the
padded decode path. Skipped where triton is not installed."""
from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from engines.reference.attention import paged_attention_torch, store_kv_torch  # noqa: E402
from engines.reference.kernel_checks import (dense_reference, make_batch, random_seqs, rel_err,  # noqa: E402
                                             rms_norm_reference, rotary_reference, silu_and_mul_reference)

MODULES = ["engines.reference.triton_attention", "engines.reference.triton_ops"]


def _triton_python_modules() -> list[str]:
    return [k for k in sys.modules if (k == "triton" or k.startswith("triton.")) and not k.startswith("triton._C")]


@pytest.fixture(scope="module")
def interpreted():
    """triton_attention and triton_ops (as .attention, .ops) with TRITON_INTERPRET=1. @triton.jit reads that variable
    when it decorates, triton's own tl.* helpers included, and triton is often imported already
    (transformers imports it), so the Python part of triton and our modules are imported afresh
    (the compiled extension stays) and the originals are put back afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    saved = {k: sys.modules.pop(k) for k in _triton_python_modules() + MODULES if k in sys.modules}
    try:
        import triton.runtime.interpreter as interp

        # triton <= 3.6's interpreter holds scalars as 1-element arrays and int()s them for
        # runtime loop bounds, which numpy >= 2.4 refuses (triton-lang/triton#9171). Test-only shim.
        if hasattr(interp, "_patch_lang_tensor"):
            orig = interp._patch_lang_tensor

            def patched(tensor, scope):
                orig(tensor, scope)
                scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

            mp.setattr(interp, "_patch_lang_tensor", patched)
        yield SimpleNamespace(attention=importlib.import_module(MODULES[0]), ops=importlib.import_module(MODULES[1]))
    finally:
        for k in _triton_python_modules() + MODULES:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        package = sys.modules["engines.reference"]
        for k in MODULES:  # the package attributes too, which importing set to the interpreted copies
            name = k.rsplit(".", 1)[1]
            if k in saved:
                setattr(package, name, saved[k])
            elif hasattr(package, name):
                delattr(package, name)
        mp.undo()


# -- attention ---------------------------------------------------------------------------------

def test_store_kv_kernel(interpreted):
    kc, vc = torch.zeros(6, 16, 2, 16), torch.zeros(6, 16, 2, 16)
    kc2, vc2 = kc.clone(), vc.clone()
    qkv = torch.randn(9, 3 * 2 * 16)  # K and V as strided views into a fused projection, as in the model
    k, v = qkv[:, 32:64].view(9, 2, 16), qkv[:, 64:].view(9, 2, 16)
    slots = torch.tensor([0, 17, 95, 33, 34, 50, 2, 80, 81])
    store_kv_torch(k, v, kc, vc, slots)
    interpreted.attention.store_kv_triton(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    # negative slots store nothing
    interpreted.attention.store_kv_triton(k[:2], v[:2], kc2, vc2, torch.tensor([-1, 5]))
    assert torch.equal(kc2[0, 5], k[1]) and torch.equal(kc2[0, 0], kc[0, 0])


@pytest.mark.parametrize("group,block_size", [(1, 16), (4, 16), (8, 32), (4, 8)])
def test_attention_matches_dense(interpreted, group, block_size):
    """Decodes (split-KV, contexts across several splits) and prefills (fresh prompts and chunks
    after cached context) in one batch."""
    n_kv, d = (2 if group < 8 else 1), 16
    seqs = [(40, 1), (1, 1), (600, 1), (257, 1), (33, 33), (70, 20), (17, 5), (300, 40)]
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, block_size, seed=group)
    out = interpreted.attention.paged_attention_triton(q, kc, vc, meta, d ** -0.5)
    assert rel_err(out, dense_reference(q, seqs, dense, group, d ** -0.5)) < 1e-5
    assert (out - paged_attention_torch(q, kc, vc, meta, d ** -0.5)).abs().max() < 1e-5


def test_attention_random_batches(interpreted):
    rng = np.random.default_rng(5)
    for trial in range(3):
        seqs = random_seqs(rng, n_decode=4, n_prefill=3, max_ctx=400)
        seqs = sorted(seqs, key=lambda s: s[1] != 1)
        q, kc, vc, meta, dense = make_batch(seqs, 2, 4, 32, 16, seed=trial)
        out = interpreted.attention.paged_attention_triton(q, kc, vc, meta, 32 ** -0.5)
        assert rel_err(out, dense_reference(q, seqs, dense, 4, 32 ** -0.5)) < 1e-5


def test_decode_split_kv_is_independent_of_grid_and_bound(interpreted):
    """A sequence's decode result does not depend on the grid (programs per head) or on the
    bound that sizes it (max_seq_len: the real one eagerly, max_model_len in a graph): the same
    bits, which is what makes graph and eager decode agree exactly."""
    seqs = [(900, 1), (5, 1), (256, 1), (513, 1)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 4, 16, 16, seed=3)
    ref = dense_reference(q, seqs, dense, 4, 0.25)
    outs = []
    for programs, bound in [(1, 900), (2, 900), (3, 4096), (None, 2000)]:
        out = torch.empty_like(q)
        interpreted.attention.decode_attention(out, q, kc, vc, meta.block_tables, meta.seq_lens, bound, 0.25,
                                              programs_per_head=programs)
        assert rel_err(out, ref) < 1e-5
        outs.append(out)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_attention_bf16(interpreted):
    seqs = [(50, 1), (3, 1), (700, 1), (40, 12), (64, 64)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, dtype=torch.bfloat16, seed=8)
    out = interpreted.attention.paged_attention_triton(q, kc, vc, meta, 0.25)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 2e-2


# -- fused ops ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1.6e-2)])
def test_add_rms_norm(interpreted, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(7, 200, generator=g).to(dtype), torch.randn(7, 200, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(200, generator=g)).to(dtype)
    out = interpreted.ops.add_rms_norm(x, None, w, 1e-5)
    assert rel_err(out, rms_norm_reference(x, w, 1e-5)) < tol
    out, res = interpreted.ops.add_rms_norm(x, r, w, 1e-5)
    if dtype == torch.float32:
        assert torch.equal(res, x + r)  # the residual sum rounds as PyTorch's add does
    else:  # the interpreter truncates float32 to bfloat16 (a GPU rounds to nearest): one unit apart
        assert ((res.float() - (x + r).float()).abs() <= (x + r).float().abs() * 2 ** -7).all()
    assert rel_err(out, rms_norm_reference(x.double() + r.double(), w, 1e-5)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1.6e-2)])
def test_rotary(interpreted, dtype, tol):
    """Against the model's own tables (Llama-3 frequency scaling): 3 query heads and 1 key head
    rotated, the value head left alone."""
    from engines.reference.config import ModelConfig
    from engines.reference.model import RotaryEmbedding

    cfg = ModelConfig(hidden_size=96, num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=1,
                      intermediate_size=8, vocab_size=8, head_dim=32,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    rope = RotaryEmbedding(cfg, 64)
    qkv = torch.randn(5, (3 + 2) * 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    positions = torch.tensor([0, 3, 63, 17, 17])
    expect = rotary_reference(qkv, positions, rope.cos, rope.sin, 4, 32)
    got = qkv.clone()
    interpreted.ops.rotary(got, positions, rope.cos, rope.sin, 4, 32)
    assert rel_err(got, expect) < tol
    assert torch.equal(got[:, 4 * 32:], qkv[:, 4 * 32:])  # V untouched


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1.6e-2)])
def test_silu_and_mul(interpreted, dtype, tol):
    x = torch.randn(6, 2 * 1500, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert rel_err(interpreted.ops.silu_and_mul(x), silu_and_mul_reference(x)) < tol


def test_check_kernels_passes(interpreted):
    """The GPU benchmark's kernel check, run here on the interpreter: every kernel within its
    tolerance in float32 and bfloat16."""
    from engines.reference.kernel_checks import check_kernels

    rows = check_kernels("cpu")
    assert len(rows) == 2 * 7 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


# -- the engine on the kernels -----------------------------------------------------------------

@pytest.mark.parametrize("enforce_eager", [True, False])
def test_engine_with_triton_backend(interpreted, tiny_model_dir, hf_greedy, enforce_eager):
    """Greedy output equals HF's with every Triton kernel in the model, eagerly and through the
    padded decode path (three sequences pad to four lanes; one or two run unpadded)."""
    from engines.reference import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=32, max_model_len=256,
                                    attention_backend="triton", max_num_batched_tokens=16,
                                    enforce_eager=enforce_eager))
    stats = engine.stats()
    assert stats["attention_backend"] == "triton"
    assert stats["decode_path"] == ("eager" if enforce_eager else "padded-eager")
    assert engine.runner.model.kernels.add_rms_norm is interpreted.ops.add_rms_norm
    prompts = [[5, 9, 200, 31, 77, 1000, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], [300, 301],
               [7, 8, 9, 10]]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (4, 6, 3)]
    outs = engine.generate(prompts, params)
    assert [o.output_token_ids for o in outs] == [hf_greedy(p, sp.max_tokens) for p, sp in zip(prompts, params)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_kernels_on_gpu():
    from engines.reference.triton_attention import paged_attention_triton, store_kv_triton

    for group, bs, dtype in [(1, 16, torch.float32), (4, 16, torch.bfloat16), (8, 32, torch.float32)]:
        seqs = [(700, 1), (1, 1), (90, 1), (300, 300), (1000, 130)]
        q, kc, vc, meta, dense = make_batch(seqs, 1, group, 64, bs, dtype=dtype, device="cuda")
        out = paged_attention_triton(q, kc, vc, meta, 0.125)
        assert rel_err(out, dense_reference(q, seqs, dense, group, 0.125)) < (1e-5 if dtype == torch.float32 else 2e-2)
    k = torch.randn(5, 2, 64, device="cuda")
    kc, vc = torch.zeros(4, 16, 2, 64, device="cuda"), torch.zeros(4, 16, 2, 64, device="cuda")
    store_kv_triton(k, k, kc, vc, torch.tensor([0, 1, 17, 40, -1], device="cuda"))
    assert torch.equal(kc[2, 8], k[3]) and kc.abs().sum() == k[:4].abs().sum()
