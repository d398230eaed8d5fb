"""Run `tierbench calibrate` N times in a row (default 10) and write every run's figures, with
provenance, to one JSON file: each run's TTFT and ITL p99 overheads (and the rest of its
calibration.json), the machine's load average before it, and over the runs the median and the
worst of both p99s against the bars (median <= 1 ms, worst <= 2 ms by default). Every run writes
into its own temporary directory: no committed result is touched but the JSON named by --out.

    .venv/bin/python -m tools.calibrate_runs                 # 10 runs, 64 sessions, one process
    .venv/bin/python -m tools.calibrate_runs --sessions 256 --workers 2 --bar-median 2 --bar-worst 0 \\
        --out results/calibrate/runs-256-workers2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engines.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
KEPT = ("requests", "ok", "matched", "ttft_overhead_ms", "itl_overhead_ms", "first_call_ttft_overhead_ms",
        "server_read_lateness_ms", "client_stamps", "pass", "load")


def one_run(sessions: int, workers: int, calls: int, tokens: int) -> dict:
    """One `tierbench calibrate` in a fresh process and directory: its calibration.json's figures."""
    with tempfile.TemporaryDirectory(prefix="tierbench-calibrate-") as d:
        cmd = [sys.executable, "-m", "bench", "calibrate", "--sessions", str(sessions), "--workers", str(workers),
               "--calls", str(calls), "--tokens", str(tokens), "--out", d]
        load = os.getloadavg()
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        path = Path(d) / "calibration.json"
        if not path.exists():
            raise SystemExit(f"calibrate failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads(path.read_text())
    return {"exit": proc.returncode, "wall_s": round(time.monotonic() - t0, 1), "load_average_before": load,
            **{k: report.get(k) for k in KEPT}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.calibrate_runs", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="locust worker processes (calibrate's default: 0)")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--bar-median", type=float, default=1.0, help="ms, on the median of the runs' p99s")
    ap.add_argument("--bar-worst", type=float, default=2.0, help="ms, on the worst run's p99s (0: no bar)")
    ap.add_argument("--out", default=str(REPO / "results" / "calibrate" / "runs.json"))
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be >= 1")
    runs = []
    for i in range(a.runs):
        r = one_run(a.sessions, a.workers, a.calls, a.tokens)
        runs.append(r)
        print(f"run {i + 1}/{a.runs}: TTFT p99 {r['ttft_overhead_ms']['p99']:.3f} ms, ITL p99 "
              f"{r['itl_overhead_ms']['p99']:.3f} ms ({r['ok']}/{r['requests']} ok, load before "
              f"{r['load_average_before'][0]:.2f})", flush=True)
    figures = {}
    for metric in ("ttft", "itl"):
        p99 = [r[f"{metric}_overhead_ms"]["p99"] for r in runs]
        figures[metric] = {"p99_ms_per_run": p99, "median_p99_ms": statistics.median(p99), "worst_p99_ms": max(p99)}
    ok = all(f["median_p99_ms"] <= a.bar_median and (not a.bar_worst or f["worst_p99_ms"] <= a.bar_worst)
             for f in figures.values())
    out = {"what": "tierbench calibrate run N times in a row; client overhead p99 per run",
           "command": "python -m tools.calibrate_runs " + " ".join(argv if argv is not None else sys.argv[1:]),
           "sessions": a.sessions, "workers": a.workers, "calls_per_session": a.calls, "tokens": a.tokens,
           "bars_ms": {"median_p99": a.bar_median, "worst_p99": a.bar_worst or None}, "pass": ok,
           **figures, "runs": runs, **provenance()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    for metric, f in figures.items():
        print(f"{metric.upper()} overhead p99 over {a.runs} runs: median {f['median_p99_ms']:.3f} ms, "
              f"worst {f['worst_p99_ms']:.3f} ms")
    print(f"bars (median <= {a.bar_median:g} ms" + (f", worst <= {a.bar_worst:g} ms" if a.bar_worst else "")
          + f"): {'pass' if ok else 'FAIL'}; wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
