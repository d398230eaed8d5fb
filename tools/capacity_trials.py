"""Is the SLO capacity of `tierbench sweep` repeatable, and does it move with the engine's speed?

    .venv/bin/python -m tools.capacity_trials --out results/sweep-capacity-3   # -> OUT/trials.json

On the tiny model with the reference engine (one thread), SPEC below: an open-loop sweep over
request rates with SLOs on TTFT p90 and TPOT p90, bisected to a resolution of 10%. Run in this
order: the engine as it is, twice in a row; then slowed by `--step-delay-ms` D1 < D2 < D3 (a sleep
in every engine step). The workload: the swe-agent profile's calls with prompts scaled to ~700
tokens, Poisson arrivals, each point sending for 20 s. The bars: the two plain capacities agree within the reported interval
(their brackets [capacity, failing load] overlap), and the capacities with delays are in strictly decreasing order, each below the plain
one. The default delays, 2, 4 and 5 ms, are far enough apart for their capacities to differ by more
than the run-to-run spread: the first two trials (results/sweep-capacity with 1, 2, 4 ms,
results/sweep-capacity-2 with 2, 3, 4 ms) showed that a 1 ms change below 3 ms moves the capacity less
than the spread between two runs of one setting (2 ms: 49.4 and 41.5 calls/s). Not above 5 ms: with a
6 ms sleep in every step TPOT p90 is 8.7 ms at 4 calls/s, so the TPOT SLO fails at any load.
Every sweep directory is kept under OUT/ with its sweep.json, report and each point's run.json
(the points' request tables are dropped: sweep.json holds their figures).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "sweep-capacity"
PROG = "python -m tools.capacity_trials"
DELAYS_MS = (2.0, 4.0, 5.0)
RATES = "geom:4:128:6"
SLOS = ("ttft_p90<=200", "tpot_p90<=8")

SPEC = """\
name = "capacity-{label}"
model = "tiny"

[trace]
path = "profile:swe-agent"
sessions = 16
seed = 1
token_scale = 0.05
max_context = 4096

[load]
mode = "open"
arrivals = "poisson"
duration_s = 20

[[engines]]
kind = "reference"
args = [{args}]
"""


def sweep(out: Path, label: str, delay_ms: float) -> dict:
    args = ['"--num-threads"', '"1"', '"--dtype"', '"float32"']
    if delay_ms:
        args += ['"--step-delay-ms"', f'"{delay_ms:g}"']
    d = out / label
    d.mkdir(parents=True, exist_ok=True)
    (d / "spec.toml").write_text(SPEC.format(label=label, args=", ".join(args)))
    cmd = [sys.executable, "-m", "bench", "sweep", str(d / "spec.toml"), "--rates", RATES, "--resolution", "0.1",
           "--out", str(d), "--quiet"] + [x for s in SLOS for x in ("--slo", s)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    for f in [*(d / "points").glob("*/*"), d / "report.html"]:  # report.html: `tierbench report DIR` redraws it
        if f.name != "run.json" and f.is_file():
            f.unlink()
    doc = json.loads((d / "sweep.json").read_text())
    c = next(iter(doc["engines"].values()))["capacity"]
    print(f"{label}: exit {r.returncode}, {wall:.0f} s, capacity {c.get('lo')} (fails at {c.get('hi')})"
          + (f": {c['problem']}" if c.get("problem") else ""), file=sys.stderr, flush=True)
    return {"label": label, "delay_ms": delay_ms, "exit": r.returncode, "wall_s": round(wall, 1),
            "capacity": c.get("lo"), "fails_at": c.get("hi"), "problem": c.get("problem"), "dir": label}


def agree(a: dict, b: dict) -> bool:
    """The two brackets [capacity, failing load] overlap."""
    if None in (a["capacity"], a["fails_at"], b["capacity"], b["fails_at"]):
        return False
    return a["capacity"] <= b["fails_at"] and b["capacity"] <= a["fails_at"]


def main(argv: list[str] | None = None) -> int:
    from engines.provenance import provenance

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--delays", default=",".join(f"{d:g}" for d in DELAYS_MS),
                    help=f"the three step delays in ms, increasing (default {','.join(f'{d:g}' for d in DELAYS_MS)})")
    a = ap.parse_args(argv)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    out = Path(a.out)
    plain = [sweep(out, f"plain-{i}", 0.0) for i in (1, 2)]
    delays = [float(x) for x in a.delays.split(",")]
    slowed = [sweep(out, f"delay-{d:g}ms", d) for d in delays]
    caps = [plain[1]["capacity"]] + [s["capacity"] for s in slowed]
    decreasing = None not in caps and all(x > y for x, y in zip(caps, caps[1:]))
    # Stronger than the bar: each setting's whole bracket lies below the previous one's.
    brackets = [plain[1]] + slowed
    separated = decreasing and all(b["fails_at"] is not None and b["fails_at"] <= a["capacity"]
                                   for a, b in zip(brackets, brackets[1:]))
    doc = {"what": "SLO capacity of the reference engine: repeated, and with step delays", "command": command,
           "rates": RATES, "slos": list(SLOS), "resolution": 0.1, "plain": plain, "slowed": slowed,
           "bars": {"repeat_agrees": agree(*plain), "delays_strictly_decreasing": decreasing},
           "brackets_separated": separated,
           "provenance": provenance(command)}
    (out / "trials.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"repeat agrees: {doc['bars']['repeat_agrees']}; strictly decreasing with delay: {decreasing}",
          file=sys.stderr)
    return 0 if all(doc["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
