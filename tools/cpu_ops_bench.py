"""The model's elementwise ops on the CPU: its PyTorch code (model.py) against the fused C++ ops
(engines/reference/cpu_ops.py), with one torch thread as the engine runs it.

    python -m tools.cpu_ops_bench [--repeats 30] [--threads 1] [--fresh-pages]

Shapes: a 3625-token prefill of the tiny model (hidden 128, 4 query and 2 KV heads of 32,
intermediate 384) and 512 tokens of a Llama-8B-like layer (hidden 4096, 32 and 8 heads of 128,
intermediate 14336), float32. Per op, the median milliseconds of one call (one layer's worth)
for torch and cpp, their ratio, and whether the outputs are bitwise equal. The torch rotary is
RotaryEmbedding.apply; the tables it reads (for_positions) are built once a step for all
layers, timed on their own row.

Memory: by default freed memory stays with the process (glibc's mallopt), so every call's
outputs reuse it as in a warmed-up engine, and the times are the ops' own. --fresh-pages keeps
glibc's defaults, under which a call's large outputs can come as fresh pages from the kernel,
whose page faults then dominate the smaller ops' times (for torch and cpp alike).
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from engines.reference import cpu_ops
from engines.reference.config import ModelConfig
from engines.reference.model import RMSNorm, RotaryEmbedding
from engines.reference.model_runner import keep_freed_memory
from tools.attention_bench import median_ms

SHAPES = {  # tokens, hidden, heads, KV heads, head_dim, intermediate
    "tiny": (3625, 128, 4, 2, 32, 384),
    "llama8b": (512, 4096, 32, 8, 128, 14336),
}


def cases(shape: str) -> list[tuple[str, Callable, Callable, Callable[[], bool]]]:
    """(op, torch call, cpp call, outputs bitwise equal?) on fresh random inputs."""
    T, hidden, H, KV, D, inter = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(T, hidden, generator=g), torch.randn(T, hidden, generator=g)
    norm = RMSNorm(hidden, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(hidden, generator=g))
    cfg = ModelConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=KV,
                      intermediate_size=inter, vocab_size=8, head_dim=D)
    rope = RotaryEmbedding(cfg, 8192)
    positions = torch.randint(0, 8192, (T,), generator=g)
    qkv = torch.randn(T, (H + 2 * KV) * D, generator=g)
    qk = qkv[:, :(H + KV) * D].view(T, H + KV, D)
    rot = rope.for_positions(positions, torch.float32)
    gate_up = torch.randn(T, 2 * inter, generator=g)

    def torch_silu():
        gate, up = gate_up.split([inter, inter], dim=-1)
        return F.silu(gate) * up

    def cpp_rotary():
        cpu_ops.rotary(qkv, positions, rope.cos, rope.sin, H + KV, D)

    def rotary_equal() -> bool:
        before = qkv.clone()
        expect = RotaryEmbedding.apply(qk, rot)
        cpp_rotary()
        equal = torch.equal(qk, expect)
        qkv.copy_(before)
        return equal

    def same(a, b) -> bool:
        return all(torch.equal(u, v) for u, v in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)

    return [
        ("rms_norm + residual", lambda: norm(x, r), lambda: cpu_ops.add_rms_norm(x, r, norm.weight, 1e-5),
         lambda: same(norm(x, r), cpu_ops.add_rms_norm(x, r, norm.weight, 1e-5))),
        ("rms_norm", lambda: norm(x), lambda: cpu_ops.add_rms_norm(x, None, norm.weight, 1e-5),
         lambda: same(norm(x), cpu_ops.add_rms_norm(x, None, norm.weight, 1e-5))),
        ("rotary (q and k heads)", lambda: RotaryEmbedding.apply(qk, rot), cpp_rotary, rotary_equal),
        ("rotary tables, once a step", lambda: rope.for_positions(positions, torch.float32), None, None),
        ("silu_and_mul", torch_silu, lambda: cpu_ops.silu_and_mul(gate_up),
         lambda: same(torch_silu(), cpu_ops.silu_and_mul(gate_up))),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--fresh-pages", action="store_true", help="glibc's default malloc: outputs may be fresh pages")
    args = ap.parse_args(argv)
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or args.repeats < 1 or args.threads < 1:
        ap.error(f"--shapes from {','.join(SHAPES)}; --repeats and --threads at least 1")
    torch.set_num_threads(args.threads)
    if not cpu_ops.available():
        print("the C++ fused ops are unavailable here (see the warning above)")
        return 1
    memory = "glibc defaults" if args.fresh_pages else (
        "freed memory reused" if keep_freed_memory() else "allocator defaults (mallopt unavailable)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {torch.backends.cpu.get_cpu_capability()}, {memory}")
    print(f"{'shape':8} {'op':28} {'torch ms':>9} {'cpp ms':>8} {'speedup':>8}  bitwise")
    for shape in shapes:
        with torch.no_grad():
            for name, torch_fn, cpp_fn, equal in cases(shape):
                t = median_ms(torch_fn, args.repeats)
                if cpp_fn is None:
                    print(f"{shape:8} {name:28} {t:9.3f} {'-':>8} {'-':>8}  -")
                    continue
                c = median_ms(cpp_fn, args.repeats)
                print(f"{shape:8} {name:28} {t:9.3f} {c:8.3f} {t / c:7.1f}x  {'yes' if equal() else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
