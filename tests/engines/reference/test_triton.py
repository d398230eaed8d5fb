"""The Triton kernels against the torch implementation, on the CPU under TRITON_INTERPRET=1.
Skipped where triton is not installed."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from tests.engines.reference.test_attention import dense_reference, make_batch, rel_err  # noqa: E402

from engines.reference.attention import paged_attention, store_kv  # noqa: E402


MODULE = "engines.reference.triton_attention"


def _triton_python_modules() -> list[str]:
    return [k for k in sys.modules if (k == "triton" or k.startswith("triton.")) and not k.startswith("triton._C")]


@pytest.fixture(scope="module")
def interpreted():
    """engines.reference.triton_attention with TRITON_INTERPRET=1. @triton.jit reads that variable
    when it decorates, triton's own tl.* helpers included, and triton is often imported already
    (transformers imports it), so the Python part of triton and our module are imported afresh
    (the compiled extension stays) and the originals are put back afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    saved = {k: sys.modules.pop(k) for k in _triton_python_modules() + [MODULE] if k in sys.modules}
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
        yield importlib.import_module(MODULE)
    finally:
        for k in _triton_python_modules() + [MODULE]:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        mp.undo()


def test_store_kv_kernel(interpreted):
    kc, vc = torch.zeros(6, 16, 2, 16), torch.zeros(6, 16, 2, 16)
    kc2, vc2 = kc.clone(), vc.clone()
    qkv = torch.randn(9, 3 * 2 * 16)  # K and V as strided views into a fused projection, as in the model
    k, v = qkv[:, 32:64].view(9, 2, 16), qkv[:, 64:].view(9, 2, 16)
    slots = torch.tensor([0, 17, 95, 33, 34, 50, 2, 80, 81])
    store_kv(k, v, kc, vc, slots, backend="torch")
    interpreted.store_kv_triton(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    # negative slots (padding) are skipped
    interpreted.store_kv_triton(k[:2], v[:2], kc2, vc2, torch.tensor([-1, 5]))
    assert torch.equal(kc2[0, 5], k[1]) and torch.equal(kc2[0, 0], kc[0, 0])


@pytest.mark.parametrize("group,block_size", [(1, 16), (4, 16), (8, 32), (4, 32)])
def test_attention_kernel_matches(interpreted, group, block_size):
    n_kv, d = (2 if group < 8 else 1), 16
    seqs = [(40, 1), (1, 1), (77, 1), (33, 33), (70, 20), (17, 5)]
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, block_size, seed=group)
    out = interpreted.paged_attention_triton(q, kc, vc, meta, d ** -0.5)
    ref = paged_attention(q, kc, vc, meta, d ** -0.5, backend="torch")
    assert rel_err(out, dense_reference(q, seqs, dense, group, d ** -0.5)) < 1e-5
    assert (out - ref).abs().max() < 1e-5


def test_attention_kernel_decode_only_and_bf16(interpreted):
    seqs = [(50, 1), (3, 1), (129, 1)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, seed=7)
    out = interpreted.paged_attention_triton(q, kc, vc, meta, 0.25)
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 1e-5
    seqs = [(30, 1), (40, 12)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 16, 16, dtype=torch.bfloat16, seed=8)
    out = interpreted.paged_attention_triton(q, kc, vc, meta, 0.25)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.25)) < 2e-2


def test_engine_with_triton_backend(interpreted, tiny_model_dir, hf_greedy):
    from engines.reference import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=32, max_model_len=256,
                                    attention_backend="triton", max_num_batched_tokens=16))
    assert engine.stats()["attention_backend"] == "triton"
    prompts = [[5, 9, 200, 31, 77, 1000, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], [300, 301]]
    outs = engine.generate(prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert [o.output_token_ids for o in outs] == [hf_greedy(p, 4) for p in prompts]


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
