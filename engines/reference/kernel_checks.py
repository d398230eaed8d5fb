"""Checks of the kernels against dense float64 references, shared by the tests (on the CPU, the
Triton kernels interpreted) and the GPU benchmark's correctness stage (compiled, on fresh random
inputs): paged batches with their dense K/V, the references, and one function that runs every
Triton kernel once per dtype and reports its error.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from engines.reference.attention import store_kv_torch
from engines.reference.attention_metadata import AttentionMetadata

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # max error over max |reference|


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
        store_kv_torch(k.to(device), v.to(device), k_cache, v_cache, slots.to(device))
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
    return ((a.double().cpu() - ref.double().cpu()).abs().max() / ref.double().cpu().abs().max()).item()


def random_seqs(rng, n_decode, n_prefill, max_ctx):
    seqs = [(int(rng.integers(1, max_ctx + 1)), 1) for _ in range(n_decode)]
    for _ in range(n_prefill):
        ctx = int(rng.integers(1, max_ctx + 1))
        kind = rng.integers(3)
        q_len = ctx if kind == 0 else int(rng.integers(1, ctx + 1))  # fresh prompt, or a chunk after cached context
        seqs.append((ctx, q_len))
    return seqs


def rms_norm_reference(x, weight, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def rotary_reference(qkv, positions, cos, sin, num_heads, head_dim):
    """float64 copy of qkv [T, heads * head_dim] with its first num_heads heads rotated."""
    T = qkv.shape[0]
    out = qkv.double().cpu().reshape(T, -1, head_dim).clone()
    half = head_dim // 2
    c, s = cos[positions.cpu()].double().cpu()[:, None], sin[positions.cpu()].double().cpu()[:, None]
    x1, x2 = out[:, :num_heads, :half].clone(), out[:, :num_heads, half:].clone()
    out[:, :num_heads, :half], out[:, :num_heads, half:] = x1 * c - x2 * s, x2 * c + x1 * s
    return out.reshape(T, -1)


def silu_and_mul_reference(gate_up):
    gate, up = gate_up.double().cpu().chunk(2, dim=-1)
    return gate * torch.sigmoid(gate) * up


def check_kernels(device: str, dtypes=(torch.float32, torch.bfloat16), seed: int = 0,
                  head_dim: int = 128, group: int = 4) -> list[dict]:
    """Every Triton kernel once per dtype on fresh random inputs of a Llama-like head layout,
    against the float64 references. Rows: kernel, dtype, error (max error over max |reference|,
    0 for the exact KV store), tolerance, ok."""
    ta = importlib.import_module("engines.reference.triton_attention")
    ops = importlib.import_module("engines.reference.triton_ops")
    rows = []

    def add(kernel, dtype, err, tol):
        rows.append({"kernel": kernel, "dtype": str(dtype).replace("torch.", ""), "error": err, "tolerance": tol,
                     "ok": bool(err <= tol)})

    g = torch.Generator().manual_seed(seed)
    small = device == "cpu"  # the interpreter runs programs one by one: small shapes
    d = 32 if small else head_dim
    for dtype in dtypes:
        tol = TOLERANCE[dtype]
        decodes = [(40, 1), (1, 1), (300 if small else 3000, 1), (257, 1)]
        prefills = [(33, 33), (70, 20), (140 if small else 1500, 40)]
        for name, seqs in (("decode (split-KV)", decodes), ("prefill (causal, chunked)", prefills),
                           ("mixed decode + prefill", decodes + prefills)):
            q, kc, vc, meta, dense = make_batch(seqs, 2, group, d, 16, dtype=dtype, seed=seed, device=device)
            out = ta.paged_attention_triton(q, kc, vc, meta, d ** -0.5)
            add(f"attention: {name}", dtype, rel_err(out, dense_reference(q, seqs, dense, group, d ** -0.5)), tol)
        k = torch.randn(9, 2, d, generator=g).to(dtype).to(device)
        slots = torch.tensor([0, 17, 95, 33, 34, 50, 2, 80, -1], device=device)
        kc = torch.zeros(6, 16, 2, d, dtype=dtype, device=device)
        vc = torch.zeros_like(kc)
        ta.store_kv_triton(k, k, kc, vc, slots)
        kr, vr = torch.zeros_like(kc), torch.zeros_like(vc)
        store_kv_torch(k[:8], k[:8], kr, vr, slots[:8])
        add("store K/V by slot", dtype, 0.0 if torch.equal(kc, kr) and torch.equal(vc, vr) else 1.0, 0.0)
        hidden = 256 if small else 4096
        x, r = (torch.randn(5, hidden, generator=g).to(dtype).to(device) for _ in range(2))
        w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype).to(device)
        out, res = ops.add_rms_norm(x, r, w, 1e-5)
        add("RMSNorm + residual", dtype, max(rel_err(out, rms_norm_reference(x.double() + r.double(), w, 1e-5)),
                                             rel_err(res, x.double() + r.double())), tol)
        positions = torch.tensor([0, 1, 1000, 4095, 77], device=device)
        freqs = torch.outer(torch.arange(4096, dtype=torch.float32), 1.0 / 10000 ** (torch.arange(0, d, 2) / d))
        cos, sin = freqs.cos().to(device), freqs.sin().to(device)
        qkv = torch.randn(5, 6 * group * d, generator=g).to(dtype).to(device)
        ref = rotary_reference(qkv, positions, cos, sin, 5 * group, d)
        ops.rotary(qkv, positions, cos, sin, 5 * group, d)
        add("rotary embedding", dtype, rel_err(qkv, ref), tol)
        gate_up = torch.randn(5, 2 * (1536 if small else 14336), generator=g).to(dtype).to(device)
        add("SiLU and multiply", dtype, rel_err(ops.silu_and_mul(gate_up), silu_and_mul_reference(gate_up)), tol)
    return rows
