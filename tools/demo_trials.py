"""Does `make demo` show the reference engine at or below vLLM, tail included, run after run?

    .venv/bin/python -m tools.demo_trials               # -> results/demo-trials/trials.json

Runs `tierbench demo` REPEATS times, each a fresh pair of servers as a new user gets them (the
reference engine, then vLLM on the CPU; tiny model, float32, one thread each), and compares the
two per run: for TTFT, ITL and E2EL at p50 and p99 the ratio reference / vLLM, with a Student-t
interval over the runs' log ratios. A metric is "at or below" when the interval's upper bound is
<= 1, "above" when its lower bound is > 1, else "no difference measured". Each run's run.json
is kept under OUT/run-N/ (the request tables are dropped).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from analysis.ab import log_t_interval

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "demo-trials"
PROG = "python -m tools.demo_trials"
REPEATS = 5
METRICS = ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "e2el_p50", "e2el_p99")


def one_run(d: Path) -> dict:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bench", "demo", "--out", str(d)], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{PROG}: tierbench demo failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    for f in d.iterdir():
        if f.is_file() and f.name != "run.json":
            f.unlink()
    s = json.loads((d / "run.json").read_text())["summary"]
    return {"dir": d.name, "wall_s": round(time.monotonic() - t0, 1),
            "values": {e: {m: s[e].get(m) for m in METRICS} for e in ("reference", "vllm")}}


def ratio(runs: list[dict], metric: str, confidence: float = 0.95) -> dict:
    # a zero (vLLM's ITL p50 once: tokens that arrive together) has no log ratio: log_t_interval drops it
    r = log_t_interval([_ratio(x["values"], metric) for x in runs], confidence)
    if r.lo is None:
        return {"estimate": None, "lo": None, "hi": None, "n": r.n, "verdict": "not comparable"}
    verdict = "at or below" if r.hi <= 1 else "above" if r.lo > 1 else "no difference measured"
    return {"estimate": r.estimate, "lo": r.lo, "hi": r.hi, "n": r.n, "verdict": verdict}


def _ratio(values: dict, metric: str) -> float | None:
    a, b = values["reference"][metric], values["vllm"][metric]
    return a / b if a and b else None


def main(argv: list[str] | None = None) -> int:
    from engines.provenance import provenance

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--repeats", type=int, default=REPEATS)
    a = ap.parse_args(argv)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    out = Path(a.out)
    runs = []
    for i in range(a.repeats):
        runs.append(one_run(out / f"run-{i + 1}"))
        v = runs[-1]["values"]
        print(f"run {i + 1}: " + ", ".join(f"{m} {v['reference'][m]:.1f}/{v['vllm'][m]:.1f}" for m in METRICS),
              file=sys.stderr, flush=True)
    doc = {"what": "make demo, repeated: reference / vLLM per run", "command": command, "metrics": list(METRICS),
           "runs": runs, "ratios": {m: ratio(runs, m) for m in METRICS}, "provenance": provenance(command)}
    (out / "trials.json").write_text(json.dumps(doc, indent=1) + "\n")
    for m, r in doc["ratios"].items():
        est = "-" if r["estimate"] is None else f"{r['estimate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
        print(f"{m}: reference / vLLM {est}: {r['verdict']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
