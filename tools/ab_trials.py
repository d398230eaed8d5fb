"""The A/B gate's error rates, measured: repeated `tierbench ab` + `tierbench gate --ab` trials on
the CI's own benchmark (examples/ci-smoke.toml, the reference engine on the tiny model), exactly
as .ci/run gates a commit.

- identical: A = this commit's reference engine from a git worktree (`ref:HEAD`), B = this
  checkout at the same commit. The gate must pass (a failure is a false alarm).
- slowed: the same, B started with --step-delay-ms set to 15% of the TPOT p50 measured first
  (a calibration A/B of identical code, not counted). The gate must fail on TPOT p50 and on
  output throughput.
- code (--code-trials): B is a commit made here, in a temporary worktree, whose engine sleeps that
  long in every step by default (engines/reference/config.py): a slowdown in the code itself,
  through the same `ref:` path that CI uses for its baseline.
Identical and slowed trials alternate (I S, S I, I S, ...) so that drift in the machine's speed
hits both alike. Gate: max regression 10%, 95% confidence, on tpot_p50, e2el_p50 and
output_throughput, servers and client pinned to their own CPUs (as .ci/run). Every trial's verdicts, bounds and wall times go to one JSON file
with provenance; run it at a clean commit on a quiet machine.

    .venv/bin/python -m tools.ab_trials --trials 20 --out results/ab-trials/trials.json
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

from analysis.ab import load_ab
from analysis.gate import run_ab_gate
from engines.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "ci-smoke.toml"
GATED = ("tpot_p50", "e2el_p50", "output_throughput")
MAX_REGRESSION = 10.0


def tierbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True)


def pinning() -> list[str]:
    """As .ci/run: the servers on the last CPU, the client on the others (none with one CPU)."""
    n = os.cpu_count() or 1
    return ["--server-cpus", str(n - 1), "--client-cpus", f"0-{n - 2}"] if n >= 2 else []


def one_trial(kind: str, a: str, b: str, b_args: list[str], pairs: int, work: Path) -> dict:
    """One A/B and its gate, each in a fresh process, as CI runs them."""
    out = work / "ab"
    load = os.getloadavg()
    t0 = time.monotonic()
    r = tierbench("ab", str(SPEC), "--a", a, "--b", b, *b_args, "--pairs", str(pairs), *pinning(), "--out", str(out),
                  "--quiet")
    ab_s = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{kind} trial: tierbench ab exited {r.returncode}: {r.stderr[-2000:]}")
    t1 = time.monotonic()
    g = tierbench("gate", "--ab", str(out), *[x for m in GATED for x in ("--metric", m)],
                  "--max-regression", str(MAX_REGRESSION), "--markdown", "", "--junit", "")
    gate_s = time.monotonic() - t1
    ab = load_ab(out)
    verdicts = run_ab_gate(ab, list(GATED), MAX_REGRESSION)  # the same decision, for its numbers
    if (g.returncode == 1) != any(not v.passed for v in verdicts):
        raise SystemExit(f"{kind} trial: the gate's exit status {g.returncode} disagrees with its verdicts")
    return {"kind": kind, "gate_exit": g.returncode, "passed": g.returncode == 0,
            "ab_wall_s": round(ab_s, 1), "gate_wall_s": round(gate_s, 1), "total_wall_s": round(ab_s + gate_s, 1),
            "load_average_before": load, "pairs": ab["pairs"],
            "metrics": {v.metric: {"ratio": v.row.ratio.estimate, "bound": v.bound, "limit": v.limit, "passed": v.ok}
                        for v in verdicts},
            "tpot_p50_ms": {"a": ab["comparison"]["tpot_p50"]["a"], "b": ab["comparison"]["tpot_p50"]["b"]}}


def slowed_commit(delay_ms: float, work: Path) -> str:
    """A commit (on no branch) whose reference engine sleeps delay_ms in every step by default."""
    wt = work / "slowed-src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), "HEAD"], check=True,
                   capture_output=True)
    try:
        cfg = wt / "engines" / "reference" / "config.py"
        text = cfg.read_text()
        old = "    step_delay_ms: float = 0.0"
        if old not in text:
            raise SystemExit(f"{cfg}: no `{old.strip()}` line to change")
        cfg.write_text(text.replace(old, f"    step_delay_ms: float = {delay_ms:.4f}"))
        subprocess.run(["git", "-C", str(wt), "-c", "user.name=ab-trials", "-c", "user.email=ab-trials@localhost",
                        "commit", "-q", "-am", f"slower engine: {delay_ms:.4f} ms per step (tools/ab_trials.py)"],
                       check=True, capture_output=True)
        return subprocess.run(["git", "-C", str(wt), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(wt)], capture_output=True)


def summarize(trials: list[dict], kind: str) -> dict:
    t = [x for x in trials if x["kind"] == kind]
    if not t:
        return {}
    walls = [x["total_wall_s"] for x in t]
    return {"trials": len(t), "gate_passed": sum(x["passed"] for x in t), "gate_failed": sum(not x["passed"] for x in t),
            "failed_on": {m: sum(not x["metrics"][m]["passed"] for x in t) for m in GATED},
            "wall_s_median": statistics.median(walls), "wall_s_max": max(walls)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ab_trials", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="identical and slowed trials each (default 20)")
    ap.add_argument("--code-trials", type=int, default=3, help="trials against a slowed commit (default 3)")
    ap.add_argument("--pairs", type=int, default=20, help="round pairs per A/B (default 20, as .ci/run)")
    ap.add_argument("--slowdown", type=float, default=0.15, help="step delay as a share of TPOT p50 (default 0.15)")
    ap.add_argument("--out", default=str(REPO / "results" / "ab-trials" / "trials.json"))
    a = ap.parse_args(argv)
    if a.trials < 1 or a.pairs < 2:
        ap.error("--trials must be >= 1 and --pairs >= 2")
    command = "python -m tools.ab_trials " + " ".join(argv if argv is not None else sys.argv[1:])
    trials: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tierbench-ab-trials-") as d:
        work = Path(d)
        cal = one_trial("calibration", "ref:HEAD", "spec", [], a.pairs, work)
        tpot = statistics.median([cal["tpot_p50_ms"]["a"], cal["tpot_p50_ms"]["b"]])
        delay = a.slowdown * tpot
        slow_args = [f"--b-arg=--step-delay-ms={delay:.4f}"]
        print(f"calibration: TPOT p50 {tpot:.3f} ms -> step delay {delay:.4f} ms", file=sys.stderr)
        for i in range(a.trials):
            kinds = ("identical", "slowed") if i % 2 == 0 else ("slowed", "identical")
            for kind in kinds:
                t = one_trial(kind, "ref:HEAD", "spec", slow_args if kind == "slowed" else [], a.pairs, work)
                t["index"] = i
                trials.append(t)
                print(f"{i:2d} {kind:9s} gate {'passed' if t['passed'] else 'FAILED'} "
                      + " ".join(f"{m} {v['ratio']:.3f}/{v['bound']:.3f}" for m, v in t["metrics"].items())
                      + f"  {t['total_wall_s']:.0f} s", file=sys.stderr)
        if a.code_trials:
            commit = slowed_commit(delay, work)
            for i in range(a.code_trials):
                t = one_trial("code", "ref:HEAD", f"ref:{commit}", [], a.pairs, work)
                t.update({"index": i, "slowed_commit": commit})
                trials.append(t)
                print(f"{i:2d} code      gate {'passed' if t['passed'] else 'FAILED'}", file=sys.stderr)
    result = {"what": "false alarms and detections of the A/B gate (tools/ab_trials.py)", "spec": "examples/ci-smoke.toml",
              "pairs": a.pairs, "max_regression_pct": MAX_REGRESSION, "confidence": 0.95, "gated": list(GATED),
              "calibration": {"tpot_p50_ms": tpot, "slowdown": a.slowdown, "step_delay_ms": delay, "trial": cal},
              "summary": {k: summarize(trials, k) for k in ("identical", "slowed", "code")},
              "trials": trials, "provenance": provenance(command)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
