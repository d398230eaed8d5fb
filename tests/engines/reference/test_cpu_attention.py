"""The C++ paged attention kernel (engines/reference/cpu_attention.py) against the dense float64
reference and the torch path, and its fallback where it cannot be built. g++ is on every machine
of this project: a failed build fails these tests."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.reference import cpp_build, cpu_attention
from engines.reference.attention import paged_attention_torch
from engines.reference.backend import load_kernels, resolve_backend
from engines.reference.cpp_build import Extension
from engines.reference.kernel_checks import dense_reference, make_batch, random_seqs, rel_err


@pytest.fixture(scope="module", autouse=True)
def built():
    cpu_attention.EXTENSION._build()  # raises with the compiler's message, where load() would only warn
    assert cpu_attention.available()


def check(seqs, n_kv, group, d, block_size, seed, dtype=torch.float32, tol=1e-5):
    q, kc, vc, meta, dense = make_batch(seqs, n_kv, group, d, block_size, dtype=dtype, seed=seed)
    scale = d ** -0.5
    out = cpu_attention.paged_attention_cpp(q, kc, vc, meta, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, dense_reference(q, seqs, dense, group, scale)) < tol
    assert rel_err(out, paged_attention_torch(q, kc, vc, meta, scale)) < tol


@pytest.mark.parametrize("group", [1, 2, 4, 8])  # 2: the tiny model, its decodes one item for all heads
@pytest.mark.parametrize("block_size", [16, 32])
def test_matches_dense_and_torch(group, block_size):
    rng = np.random.default_rng(group * 100 + block_size)
    seqs = random_seqs(rng, n_decode=5, n_prefill=4, max_ctx=300) + [(1, 1)]  # and a one-token sequence
    seqs = sorted(seqs, key=lambda s: s[1] != 1)
    check(seqs, 2 if group < 8 else 1, group, 32, block_size, seed=group + block_size)


@pytest.mark.parametrize("group", [1, 4, 8])
def test_long_contexts(group):
    """Contexts up to 4096: decodes, a fresh long prompt, and a chunk after long cached context."""
    check([(4096, 1), (1, 1), (2049, 1), (1500, 1500), (4096, 37)], 1, group, 64, 16, seed=group)


@pytest.mark.parametrize("d", [64, 80, 128])
def test_head_dims(d):
    """Items of few rows (decodes) and of many (prefills) are scored in different ways, with a
    crossover that depends on head_dim; 80 is not a multiple of the 8 dims done at a time. A
    group of 32 query heads splits one token's heads over several items."""
    check([(700, 1), (33, 1), (300, 120), (45, 45)], 2, 4, d, 16, seed=d)
    check([(130, 1), (90, 20)], 1, 32, d, 16, seed=d + 1)


@pytest.mark.slow
def test_avx2_build(monkeypatch):
    """Without AVX-512 the kernel's wide vectors are 8 lanes, not 16 (a build of its own, cached)."""
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("no AVX2 CPU to run an AVX2 build on")
    e = cpu_attention.EXTENSION
    ext = Extension(e.name, e.source.name, [f if f != "-march=native" else "-march=x86-64-v3" for f in e.cflags],
                    e.ldflags, e.what)._build()
    seqs = [(700, 1), (5, 1), (300, 120), (45, 45), (90, 3)]
    for group, d in ((2, 32), (4, 128)):
        q, kc, vc, meta, dense = make_batch(seqs, 2, group, d, 16, seed=group)
        out = ext.paged_attention(q, kc, vc, meta.block_tables, meta.seq_lens, meta.query_start_loc, d ** -0.5)
        assert rel_err(out, dense_reference(q, seqs, dense, group, d ** -0.5)) < 1e-5


def test_bfloat16():
    check([(100, 1), (64, 64), (80, 16), (500, 200)], 2, 2, 32, 16, seed=5, dtype=torch.bfloat16, tol=2e-2)


def test_strided_inputs_as_the_model_passes_them():
    """q is a view into the fused qkv projection, the block table a column slice of the runner's."""
    seqs = [(300, 1), (20, 1), (200, 64)]
    q, kc, vc, meta, dense = make_batch(seqs, 2, 2, 32, 16, seed=9)
    qkv = torch.randn(q.shape[0], 8 * 32)
    qkv[:, :4 * 32] = q.reshape(q.shape[0], -1)
    q_view = qkv[:, :4 * 32].view(q.shape[0], 4, 32)
    meta.block_tables = meta.block_tables[:, :19]  # 19 blocks hold 300 tokens
    assert not q_view.is_contiguous() and not meta.block_tables.is_contiguous()
    out = cpu_attention.paged_attention_cpp(q_view, kc, vc, meta, 0.2)
    assert rel_err(out, dense_reference(q, seqs, dense, 2, 0.2)) < 1e-5


def test_bad_metadata_is_an_error_not_a_stray_read():
    seqs = [(40, 1), (20, 5)]
    q, kc, vc, meta, _ = make_batch(seqs, 2, 2, 16, 16, seed=1)
    meta.block_tables[1, 0] = kc.shape[0]  # one past the last block
    with pytest.raises(RuntimeError, match="out of range"):
        cpu_attention.paged_attention_cpp(q, kc, vc, meta, 0.25)
    meta.seq_lens[1] = 16 * meta.block_tables.shape[1] + 1  # more tokens than the table has blocks for
    with pytest.raises(RuntimeError, match="sequence 1"):
        cpu_attention.paged_attention_cpp(q, kc, vc, meta, 0.25)


def test_threads_split_the_work_without_changing_the_answer():
    seqs = [(900, 1), (40, 1), (600, 1), (300, 300), (1200, 100)]
    q, kc, vc, meta, _ = make_batch(seqs, 2, 4, 64, 16, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_attention.paged_attention_cpp(q, kc, vc, meta, 0.125)
        torch.set_num_threads(4)
        four = cpu_attention.paged_attention_cpp(q, kc, vc, meta, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, four)  # each (sequence, head, query tile) is computed the same way on any thread


def test_backend_is_cpp_on_the_cpu(monkeypatch):
    monkeypatch.delenv("TIERBENCH_ATTENTION", raising=False)
    assert resolve_backend("cpu") == "cpp"
    assert resolve_backend("cpu", "torch") == "torch"
    assert resolve_backend("cuda") == "triton"
    assert load_kernels("cpp").name == "cpp"


def test_cache_key_covers_cpu_and_flags(monkeypatch):
    """A -march=native build must never be loaded on another CPU, nor one with other flags."""
    e = cpu_attention.EXTENSION
    here = e.build_dir()
    monkeypatch.setattr(cpp_build, "_cpu_id", lambda: "another CPU")
    other_cpu = e.build_dir()
    other_flags = Extension(e.name, e.source.name, e.cflags + ["-DX"], e.ldflags, e.what).build_dir()
    assert len({here, other_cpu, other_flags}) == 3


@pytest.fixture
def fresh_loader(monkeypatch) -> Extension:
    """The loader as in a new process, restored afterwards."""
    e = cpu_attention.EXTENSION
    fresh = Extension(e.name, e.source.name, e.cflags, e.ldflags, e.what)
    monkeypatch.setattr(cpu_attention, "EXTENSION", fresh)
    return fresh


def fallback_runs(caplog):
    seqs = [(200, 1), (90, 30)]
    q, kc, vc, meta, _ = make_batch(seqs, 2, 2, 16, 16, seed=2)
    with caplog.at_level(logging.WARNING, logger=cpp_build.__name__):
        outs = [cpu_attention.paged_attention_cpp(q, kc, vc, meta, 0.25) for _ in range(2)]
    assert not cpu_attention.available()
    meta.torch_plan = None
    for out in outs:
        assert torch.equal(out, paged_attention_torch(q, kc, vc, meta, 0.25))
    warnings = [r for r in caplog.records if r.name == cpp_build.__name__]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()  # once per process, one line
    return warnings[0].getMessage()


def test_no_cpp_env_forces_the_torch_path(fresh_loader, monkeypatch, caplog):
    monkeypatch.setenv("TIERBENCH_NO_CPP", "1")
    assert "TIERBENCH_NO_CPP" in fallback_runs(caplog)
    monkeypatch.delenv("TIERBENCH_ATTENTION", raising=False)
    assert resolve_backend("cpu") == "torch"


def test_failed_build_warns_once_and_falls_back(fresh_loader, monkeypatch, tmp_path, caplog):
    """A real failed build: a source that does not compile, in an empty cache."""
    bad = tmp_path / "paged_attention.cpp"
    bad.write_text("this is not C++\n")
    fresh_loader.source = bad
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    assert "unavailable" in fallback_runs(caplog)


@pytest.mark.parametrize("group", [1, 2, 32])
def test_wide_item_edges(group):
    """Prefill items hold up to 64 rows (four vectors of 16 with AVX-512): prompts whose rows fall
    just below, on and past those edges, fresh and after cached context, and keys that end inside
    a scoring pass of four or eight keys."""
    seqs = [(n, n) for n in (3, 7, 8, 9, 16, 31, 32, 33, 65)] + [(n + 40, n) for n in (8, 17, 33, 64)]
    check(seqs, 2 if group < 32 else 1, group, 32, 16, seed=group)
