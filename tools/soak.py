"""Soak the reference server: a steady open-loop rate for a long time, memory and KV blocks
sampled every second (bench/measure/soak.py does the work; results/soak-cpu/ has the committed run).

    python -m tools.soak --minutes 10 --rate 4 --out results/soak-cpu/soak.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.measure.soak import MEMORY_BAR, soak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=4.0, help="calls per second (Poisson)")
    ap.add_argument("--out", default="results/soak-cpu/soak.json")
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args(argv)
    r = soak(args.minutes, args.rate, Path(args.out), model=args.model)
    print(f"{r['completed']} calls ok, {r['errors']} errors; memory growth after warm-up "
          f"{r['memory_growth_after_warmup']:.2%} (bar < {MEMORY_BAR:.0%}); free KV blocks "
          f"{r['free_blocks_start']:.0f} -> {r['free_blocks_end']:.0f}; wrote {args.out}")
    return 0 if r["pass_memory"] and r["pass_free_blocks"] else 1


if __name__ == "__main__":
    sys.exit(main())
