"""Host overhead of a decode step's preparation: ModelRunner.prepare() at 256 sequences.

    python -m tools.prepare_benchmark [--sequences 256] [--context 1024] [--out results/reference-cpu/prepare.json]

What it times: the decode path of prepare() (one pass writing scalars into the persistent
buffers, block-table rows appended to only where a sequence grew), on sequences that advance by
one token per step as in real decoding (a new block every block_size steps). For comparison it
times the general (prefill-capable, vectorized) path on the same decode batches, and it measures
the host memory a call holds at its peak beyond what a call at 8 sequences holds: what grows
with the batch (numpy's array data is traced; zero means no array is allocated per sequence).
On the CPU there is nothing to synchronize; on CUDA the copies are asynchronous from pinned
memory (the GPU benchmark checks both with torch's sync debug mode and allocation counters).

The model is the tiny named shape with random weights: prepare() never reads it. Timings depend
on the machine and its load (in the provenance block); use --repeats on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from engines.provenance import provenance
from engines.reference.bench_stages import prepare_growth
from engines.reference.config import EngineConfig
from engines.reference.engine import LLMEngine
from engines.reference.sequence import SamplingParams, Sequence


def _sequences(engine: LLMEngine, n: int, ctx: int) -> list[Sequence]:
    seqs = []
    for i in range(n):
        s = Sequence(str(i), [5 + (i + j) % 3000 for j in range(ctx + 1)], SamplingParams(), None, 0.0)
        assert engine.kv.allocate_slots(s, ctx + 1)
        s.num_computed_tokens = ctx
        seqs.append(s)
    return seqs


def _advance(engine: LLMEngine, seqs: list[Sequence]) -> None:
    """What a decode step leaves behind: one more token each, a block where one filled up."""
    for s in seqs:
        s.token_ids.append(7)
        s.num_computed_tokens += 1
        assert engine.kv.allocate_slots(s, 1)


def _time_steps(engine: LLMEngine, fn, seqs: list[Sequence], steps: int) -> list[float]:
    """Microseconds per call, one per step, the sequences advancing between calls (untimed)."""
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
        _advance(engine, seqs)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--context", type=int, default=1024, help="tokens of context per sequence at the start")
    ap.add_argument("--steps", type=int, default=200, help="decode steps timed per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/reference-cpu/prepare.json", help="JSON result ('' to skip)")
    args = ap.parse_args(argv)
    prov = provenance(command=" ".join(["python -m tools.prepare_benchmark"] + ([shlex.join(argv)] if argv else [])))

    n, ctx, bs = args.sequences, args.context, 16
    blocks = n * (-(-(ctx + args.steps * args.repeats * 2 + 1) // bs) + 1)
    engine = LLMEngine(EngineConfig(model="tiny-llama", load_format="dummy", max_num_seqs=n, num_blocks=blocks,
                                    max_model_len=ctx + args.steps * args.repeats * 2 + 64, block_size=bs))
    runner = engine.runner
    seqs = _sequences(engine, n, ctx)
    ones = [1] * n
    runner.prepare(seqs, ones)  # rows written once, as after the prefill that preceded decoding
    decode, general = [], []
    for _ in range(args.repeats):
        decode.append(statistics.median(_time_steps(engine, lambda: runner.prepare(seqs, ones), seqs, args.steps)))
        general.append(statistics.median(
            _time_steps(engine, lambda: runner._prepare_mixed(seqs, ones), seqs, args.steps)))
    growth = prepare_growth(runner, seqs)
    result = {
        "sequences": n, "context_start": ctx, "block_size": bs, "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "decode_prepare_us": statistics.median(decode), "decode_prepare_us_repeats": decode,
        "general_path_us": statistics.median(general), "general_path_us_repeats": general,
        "host_peak_growth_bytes_vs_8_sequences": growth,
        "provenance": prov,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"prepare() at {n} sequences: decode path {result['decode_prepare_us']:.0f} us/step "
          f"(general path {result['general_path_us']:.0f} us), peak growth vs 8 sequences {growth} B"
          + (f"; wrote {args.out}" if args.out else ""))
    return result


if __name__ == "__main__":
    main()
