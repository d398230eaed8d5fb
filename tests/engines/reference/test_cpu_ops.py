"""The C++ fused ops (engines/reference/cpu_ops.py) against the model's PyTorch code (model.py)
and float64 references, on the tiny model's shapes and a Llama-8B-like layer's; then the engine
with them in place of the PyTorch code. g++ is on every machine of this project: a failed build
fails these tests.

Bounds. float32: each op is a few roundings of unit 2^-24 (6e-8) after float32 inputs, plus the
RMSNorm's cascade sum of up to 4096 squares (a few more, relative to the sum); 1e-6 (about 17
units of the largest value's last place) holds against the float64 reference, and against
PyTorch's float32 result, whose own error is of the same size. Where PyTorch's vector widths are
known (x86 with AVX2 or AVX-512: cpu_ops passes them to the C++ code) the results are PyTorch's
bits, in float32 and bfloat16, and the tests assert that. bfloat16: inputs rounded to 8 bits of
precision and the result rounded again, 1.6e-2 against the float64 reference (as
test_triton.py's kernels).
"""
from __future__ import annotations

import logging
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.reference import cpp_build, cpu_ops
from engines.reference.attention import paged_attention_torch, store_kv_torch
from engines.reference.backend import TORCH_KERNELS, Kernels
from engines.reference.config import ModelConfig
from engines.reference.cpp_build import Extension
from engines.reference.kernel_checks import rel_err, rms_norm_reference, rotary_reference, silu_and_mul_reference
from engines.reference.model import RMSNorm, RotaryEmbedding

# hidden, query heads, KV heads, head_dim, intermediate, tokens
SHAPES = {"tiny": (128, 4, 2, 32, 384, 300), "llama8b": (4096, 32, 8, 128, 14336, 33)}
TOL = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2}
BITWISE = platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


@pytest.fixture(scope="module", autouse=True)
def built():
    cpu_ops.EXTENSION._build()  # raises with the compiler's message, where load() would only warn
    assert cpu_ops.available()


def matches_torch(got: torch.Tensor, expect: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == expect.dtype and got.shape == expect.shape
    if BITWISE:
        assert torch.equal(got, expect), f"{(got != expect).sum().item()} elements differ from PyTorch's"
    assert rel_err(got, expect) <= TOL[dtype]


def rms_norm_module(weight: torch.Tensor, eps: float) -> RMSNorm:
    m = RMSNorm(weight.shape[0], eps).to(weight.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
    m.weight.requires_grad_(False)
    m.kernels = TORCH_KERNELS  # the model's own PyTorch code
    return m


# -- RMSNorm with the residual add -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_add_rms_norm(shape, dtype):
    hidden, *_, tokens = SHAPES[shape]
    g = torch.Generator().manual_seed(hidden)
    x, r = (3 * torch.randn(tokens, hidden, generator=g)).to(dtype), torch.randn(tokens, hidden, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    x0, r0 = x.clone(), r.clone()
    norm = rms_norm_module(w, 1e-5)

    out = cpu_ops.add_rms_norm(x, None, w, 1e-5)
    matches_torch(out, norm(x), dtype)
    assert rel_err(out, rms_norm_reference(x, w, 1e-5)) <= TOL[dtype]

    out, res = cpu_ops.add_rms_norm(x, r, w, 1e-5)
    expect, expect_res = norm(x, r)
    assert torch.equal(res, expect_res)  # one rounding of the sum, PyTorch's
    matches_torch(out, expect, dtype)
    assert rel_err(out, rms_norm_reference(x.double() + r.double(), w, 1e-5)) <= TOL[dtype]
    assert torch.equal(x, x0) and torch.equal(r, r0)


@pytest.mark.parametrize("hidden", [1, 7, 100, 3000, 3072, 16 * 4 * 8 * 9 + 5])
def test_add_rms_norm_sizes_and_strided_rows(hidden):
    """Rows shorter than a vector, with scalar tails, and long enough for the cascade's second
    level; x and the residual as column slices of wider tensors, as views of a projection are."""
    g = torch.Generator().manual_seed(hidden)
    wide_x, wide_r = torch.randn(9, hidden + 5, generator=g), torch.randn(9, hidden + 3, generator=g)
    x, r = wide_x[:, 2:2 + hidden], wide_r[:, :hidden]
    w = 1 + 0.1 * torch.randn(hidden, generator=g)
    assert not x.is_contiguous() and not r.is_contiguous()
    norm = rms_norm_module(w, 1e-6)
    out, res = cpu_ops.add_rms_norm(x, r, w, 1e-6)
    expect, expect_res = norm(x, r)
    matches_torch(out, expect, torch.float32)
    assert torch.equal(res, expect_res)
    matches_torch(cpu_ops.add_rms_norm(x, None, w, 1e-6), norm(x), torch.float32)


def test_add_rms_norm_empty_and_bad_input():
    w = torch.ones(16)
    out, res = cpu_ops.add_rms_norm(torch.empty(0, 16), torch.empty(0, 16), w, 1e-5)
    assert out.shape == res.shape == (0, 16)
    with pytest.raises(RuntimeError, match="weight"):
        cpu_ops.add_rms_norm(torch.randn(2, 16), None, torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        cpu_ops.add_rms_norm(torch.randn(2, 16), torch.randn(3, 16), w, 1e-5)


# -- rotary embedding --------------------------------------------------------------------------

def rope_for(shape: str, max_len: int = 4096) -> RotaryEmbedding:
    hidden, heads, kv, d, inter, _ = SHAPES[shape]
    cfg = ModelConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv,
                      intermediate_size=inter, vocab_size=8, head_dim=d, rope_theta=500000.0,
                      rope_scaling=LLAMA3_SCALING if shape == "llama8b" else None)
    return RotaryEmbedding(cfg, max_len)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_rotary_matches_rotary_embedding_apply(shape, dtype):
    """Query and key heads rotated in place as RotaryEmbedding.apply rotates them (positions a
    strided view, repeats included); the value heads untouched."""
    _, heads, kv, d, _, tokens = SHAPES[shape]
    rope = rope_for(shape)
    g = torch.Generator().manual_seed(d)
    qkv = torch.randn(tokens, (heads + 2 * kv) * d, generator=g).to(dtype)
    positions = torch.randint(0, 4096, (2 * tokens,), generator=g)[::2]
    positions[:3] = torch.tensor([0, 4095, 0])
    assert not positions.is_contiguous()
    rotated = (heads + kv) * d
    expect = RotaryEmbedding.apply(qkv[:, :rotated].view(tokens, heads + kv, d), rope.for_positions(positions, dtype))

    got = qkv.clone()
    assert cpu_ops.rotary(got, positions, rope.cos, rope.sin, heads + kv, d) is None
    matches_torch(got[:, :rotated].view(tokens, heads + kv, d), expect, dtype)
    assert torch.equal(got[:, rotated:], qkv[:, rotated:])
    full = rotary_reference(qkv, positions, rope.cos, rope.sin, heads + kv, d)
    assert rel_err(got, full) <= TOL[dtype]


def test_rotary_touches_only_the_first_heads():
    _, heads, kv, d, _, tokens = SHAPES["tiny"]
    rope = rope_for("tiny")
    qkv = torch.randn(tokens, (heads + 2 * kv) * d, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(tokens) * 7 % 4096
    got = qkv.clone()
    cpu_ops.rotary(got, positions, rope.cos, rope.sin, heads, d)  # the query heads alone
    rot = rope.for_positions(positions, torch.float32)
    expect = RotaryEmbedding.apply(qkv[:, :heads * d].view(tokens, heads, d), rot)
    matches_torch(got[:, :heads * d].view(tokens, heads, d), expect, torch.float32)
    assert torch.equal(got[:, heads * d:], qkv[:, heads * d:])
    assert not torch.equal(got[1:, :heads * d], qkv[1:, :heads * d])  # position 0 is the identity, the others not


def test_rotary_rejects_positions_outside_the_tables():
    rope = rope_for("tiny", max_len=64)
    qkv = torch.randn(2, 8 * 32)
    with pytest.raises(RuntimeError, match="position 64"):
        cpu_ops.rotary(qkv, torch.tensor([3, 64]), rope.cos, rope.sin, 6, 32)
    with pytest.raises(RuntimeError, match="position -1"):
        cpu_ops.rotary(qkv, torch.tensor([-1, 0]), rope.cos, rope.sin, 6, 32)


# -- SiLU and multiply -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inter", [SHAPES["tiny"][4], SHAPES["llama8b"][4], 100, 24, 1])
def test_silu_and_mul(inter, dtype):
    """Model sizes, and sizes with a scalar tail in PyTorch's loop (100, 24, 1); gates out to
    +-120, past where exp overflows or underflows."""
    g = torch.Generator().manual_seed(inter)
    gate_up = 3 * torch.randn(9, 2 * inter, generator=g)
    gate_up[0, :inter] = torch.linspace(-120, 120, inter)
    gate_up = gate_up.to(dtype)
    gate, up = gate_up.split([inter, inter], dim=-1)
    out = cpu_ops.silu_and_mul(gate_up)
    matches_torch(out, F.silu(gate) * up, dtype)  # model.MLP's expression
    assert rel_err(out, silu_and_mul_reference(gate_up)) <= TOL[dtype]
    assert torch.isfinite(out).all()


def test_results_do_not_depend_on_the_thread_count():
    """at::parallel_for splits the tokens; each row is computed alone, so the bits are the same."""
    hidden, heads, kv, d, inter, _ = SHAPES["tiny"]
    g = torch.Generator().manual_seed(5)
    x, r, w = torch.randn(3000, hidden, generator=g), torch.randn(3000, hidden, generator=g), torch.rand(hidden) + 0.5
    qkv, gate_up = torch.randn(3000, (heads + 2 * kv) * d, generator=g), torch.randn(3000, 2 * inter, generator=g)
    rope, positions = rope_for("tiny"), torch.randint(0, 4096, (3000,), generator=g)

    def run():
        rotated = qkv.clone()
        cpu_ops.rotary(rotated, positions, rope.cos, rope.sin, heads + kv, d)
        return [*cpu_ops.add_rms_norm(x, r, w, 1e-5), rotated, cpu_ops.silu_and_mul(gate_up)]

    one = run()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = run()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# -- loading -----------------------------------------------------------------------------------

def fresh_extension(monkeypatch, source=None) -> Extension:
    e = cpu_ops.EXTENSION
    fresh = Extension(e.name, e.source.name, e.cflags, e.ldflags, e.what)
    if source is not None:
        fresh.source = source
    monkeypatch.setattr(cpu_ops, "EXTENSION", fresh)
    return fresh


def test_no_cpp_switch_warns_once_and_the_ops_raise(monkeypatch, caplog):
    fresh_extension(monkeypatch)
    monkeypatch.setenv("TIERBENCH_NO_CPP", "1")
    with caplog.at_level(logging.WARNING, logger=cpp_build.__name__):
        assert not cpu_ops.available() and not cpu_ops.available()
    assert len([r for r in caplog.records if "TIERBENCH_NO_CPP" in r.getMessage()]) == 1
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_ops.silu_and_mul(torch.randn(2, 8))


def test_failed_build_warns_and_is_unavailable(monkeypatch, caplog, tmp_path):
    """A source that does not compile: one warning line, available() False."""
    bad = tmp_path / "cpu_ops.cpp"
    bad.write_text("this is not C++;\n")
    fresh_extension(monkeypatch, bad)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("TIERBENCH_NO_CPP", raising=False)
    with caplog.at_level(logging.WARNING, logger=cpp_build.__name__):
        assert not cpu_ops.available()
    (record,) = [r for r in caplog.records if r.name == cpp_build.__name__]
    assert "unavailable" in record.getMessage() and "\n" not in record.getMessage()


# -- the engine on the ops ---------------------------------------------------------------------

def test_engine_with_cpp_ops_matches_torch_and_hf(tiny_model_dir, hf_greedy):
    """Greedy outputs with the three C++ ops in the model (the PyTorch paged attention kept)
    equal the PyTorch code's and HF's, through chunked prefill and mixed decode batches."""
    from collections import Counter

    from engines.reference import EngineConfig, LLMEngine, SamplingParams

    calls: Counter = Counter()

    def counted(fn):
        def run(*args):
            calls[fn.__name__] += 1
            return fn(*args)
        return run

    def engine(kernels: Kernels | None) -> LLMEngine:
        e = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=64, max_model_len=256,
                                   attention_backend="torch", max_num_batched_tokens=48))
        if kernels is not None:
            e.runner.model.use_kernels(kernels)
        return e

    cpp = Kernels("cpp-test", store_kv_torch, paged_attention_torch, counted(cpu_ops.add_rms_norm),
                  counted(cpu_ops.rotary), counted(cpu_ops.silu_and_mul))
    with_cpp, plain = engine(cpp), engine(None)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(5, 3000, n).tolist() for n in (1, 9, 70, 130)]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (12, 20, 8, 16)]
    got = [o.output_token_ids for o in with_cpp.generate(prompts, params)]
    assert got == [o.output_token_ids for o in plain.generate(prompts, params)]
    assert got == [hf_greedy(p, sp.max_tokens) for p, sp in zip(prompts, params)]
    # every step ran them: a norm before each layer's attention and MLP and at the end, a rotary
    # and a SiLU per layer (2 layers)
    steps = with_cpp.stats()["steps"]
    assert calls == {"add_rms_norm": 5 * steps, "rotary": 2 * steps, "silu_and_mul": 2 * steps}
