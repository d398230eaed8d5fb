"""Per-layer paged attention on the CPU: the torch path (attention.paged_attention_torch) against
the C++ kernel (cpu_attention.py), with one torch thread as the engine runs it.

    python -m tools.attention_bench [--repeats 5] [--shapes tiny,llama8b] [--threads 1]

Cases: (a) 32 decodes with contexts 500-3000, (b) 4 chunks of 256 new tokens after 2000 cached,
(c) one fresh 1024-token prompt. Columns: median milliseconds of one layer's attention for the
torch path and for cpp (paged_attention_cpp, what the "cpp" backend runs), and torch / cpp. The
torch path's grouping is planned by a warm-up call and reused, as by every layer after a step's
first; the largest difference between the two outputs is checked too.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from engines.reference import cpu_attention
from engines.reference.attention import paged_attention_torch
from engines.reference.attention_metadata import AttentionMetadata

SHAPES = {  # heads, KV heads, head_dim
    "tiny": (4, 2, 32),  # engines/tiny_model.py, model "tiny"
    "llama8b": (32, 8, 128),
}


def cases(rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """name -> [(seq_len, new tokens)], decodes first as the runner orders them."""
    return {
        "32 decodes, ctx 500-3000": [(int(c), 1) for c in rng.integers(500, 3001, size=32)],
        "4 x 256 new after 2000 cached": [(2256, 256)] * 4,
        "1 fresh 1024-token prompt": [(1024, 1024)],
    }


def make_step(seqs, n_heads: int, n_kv: int, d: int, block_size: int = 16, seed: int = 0):
    """A random paged cache holding the sequences at shuffled blocks, the step's q and metadata."""
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-ctx // block_size) for ctx, _ in seqs]
    perm = torch.randperm(sum(blocks), generator=g)
    k_cache = torch.randn(sum(blocks), block_size, n_kv, d, generator=g)
    v_cache = torch.randn(sum(blocks), block_size, n_kv, d, generator=g)
    table = torch.zeros(len(seqs), max(blocks), dtype=torch.int32)
    for i, (start, n) in enumerate(zip(np.cumsum([0] + blocks[:-1]), blocks)):
        table[i, :n] = perm[start:start + n].to(torch.int32)
    q_lens = np.array([n for _, n in seqs])
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    sl = np.array([c for c, _ in seqs], dtype=np.int32)
    q = torch.randn(int(qsl[-1]), n_heads, d, generator=g)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(int(qsl[-1]), dtype=torch.int64), query_start_loc=torch.from_numpy(qsl),
        seq_lens=torch.from_numpy(sl), block_tables=table, num_decodes=int((q_lens == 1).sum()),
        max_query_len=int(q_lens.max()), max_seq_len=int(sl.max()), query_start_loc_cpu=qsl, seq_lens_cpu=sl)
    return q, k_cache, v_cache, meta


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: plans the torch path's groups
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", default="tiny,llama8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the engine runs 1)")
    args = ap.parse_args(argv)
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        ap.error(f"--shapes: unknown {', '.join(unknown)}")
    if not cpu_attention.available():
        print("attention_bench: the C++ kernel could not be built (see the warning above)")
        return 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}, ms per layer")
    print(f"{'shape':8} {'case':32} {'torch':>9} {'cpp':>9} {'speedup':>8} {'max rel. diff':>14}")
    for shape in shapes:
        n_heads, n_kv, d = SHAPES[shape]
        for name, seqs in cases(np.random.default_rng(0)).items():
            q, kc, vc, meta = make_step(seqs, n_heads, n_kv, d)
            scale = d ** -0.5
            t_torch = median_ms(lambda: paged_attention_torch(q, kc, vc, meta, scale), args.repeats)
            t_cpp = median_ms(lambda: cpu_attention.paged_attention_cpp(q, kc, vc, meta, scale), args.repeats)
            ref = paged_attention_torch(q, kc, vc, meta, scale)
            diff = ((cpu_attention.paged_attention_cpp(q, kc, vc, meta, scale) - ref).abs().max() / ref.abs().max())
            print(f"{shape:8} {name:32} {t_torch:9.3f} {t_cpp:9.3f} {t_torch / t_cpp:7.2f}x {diff.item():14.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
