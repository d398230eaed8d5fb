"""`tierbench sweep`: an engine at a sequence of load points, its saturation and SLO capacity
(bench/sweep/)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from bench.cli.common import BadInput, add_command, confidence

SWEEP_DESCRIPTION = """\
For each engine of SPEC, its server is started once and the same materialized workload is played
at a sequence of load points, each a full run (OUT/points/ENGINE-LOAD/, every metric with its
interval) with the prefix cache reset first: request rates for an open-loop spec (load.mode =
"open"), concurrent agent sessions for a closed-loop one. A point where the engine saturates ends
the sweep (the test is in analysis/sweep.py and sweep.json). With SLOs, a bisection between the
highest passing and the lowest failing point finds the SLO capacity: the highest load at which
every SLO is shown to hold at the stated confidence, reported with the failing load above it.
Points already measured with the same spec are reused (rerun the same command to resume).

Load points (--rates for open loop, --sessions for closed loop; or the spec's [sweep] table):
  1,2,4,8        a list, increasing
  geom:0.5:8:5   5 values in a geometric series from 0.5 to 8
  auto[:N]       open loop: a synchronous point (one session at a time) and a maximum-throughput
                 point (every call sent at once) first, then N rates evenly between their
                 throughputs (default 6); closed loop: 1, 2, 4, ... up to N sessions (default
                 64), until saturation
SLOs (--slo, repeatable): METRIC_pQ<=MS with METRIC ttft, tpot, itl or e2el; makespan_pQ<=SECONDS.

Examples:
  tierbench sweep examples/sweep-cpu.toml
  tierbench sweep examples/ci-smoke.toml --sessions 1,2,4,8 --slo ttft_p90<=500 --out results/sweep-smoke
  tierbench sweep examples/azure-cpu.toml --rates geom:1:32:6 --slo ttft_p90<=2000 --slo tpot_p90<=100
"""


def register(sub) -> None:
    sp = add_command(sub, "sweep", "load sweep: latency against load, saturation and SLO capacity", SWEEP_DESCRIPTION)
    sp.add_argument("spec", metavar="SPEC.toml", help="the run spec (its [sweep] table, if any, sets the defaults)")
    sp.add_argument("--rates", metavar="AXIS", help="open loop: request rates (calls/s)")
    sp.add_argument("--sessions", metavar="AXIS", help="closed loop: concurrent sessions")
    sp.add_argument("--slo", action="append", metavar="RULE", help="an SLO (repeatable), e.g. ttft_p99<=2000")
    sp.add_argument("--confidence", type=confidence, help="of SLO decisions and saturation tests (default 0.95)")
    sp.add_argument("--resolution", type=float, metavar="R",
                    help="bisect rates until hi/lo - 1 <= R (default 0.1); sessions go to 1")
    sp.add_argument("--no-stop-at-saturation", dest="stop_at_saturation", action="store_const", const=False,
                    help="measure every point even past saturation")
    sp.add_argument("--out", metavar="DIR", help="the sweep directory (default results/sweep-NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_sweep)


def load_sweep_spec(path: str):
    """(RunSpec, the TOML text); SpecError on bad input."""
    from bench.spec import load_spec
    spec = load_spec(path, sweep=True)  # every table checked as for `tierbench run`; [sweep] below
    return spec, Path(path).read_text(encoding="utf-8")


FLAGS = {"rates": "--rates", "sessions": "--sessions", "slos": "--slo", "confidence": "--confidence",
         "resolution": "--resolution", "stop_at_saturation": "--no-stop-at-saturation"}


def cmd_sweep(args) -> int:
    from bench.spec import SpecError, _line_of
    from bench.sweep.config import SweepConfig, SweepConfigError
    from bench.sweep.runner import run_sweep

    spec, text = load_sweep_spec(args.spec)
    if spec.tiers:
        raise BadInput(f"{args.spec}: a sweep drives engines directly; this spec has [[tiers]]")
    flags = {"rates": args.rates, "sessions": args.sessions, "slos": args.slo, "confidence": args.confidence,
             "resolution": args.resolution, "stop_at_saturation": args.stop_at_saturation}
    try:
        cfg = SweepConfig.build(spec.sweep, flags, closed=spec.load.mode == "closed")
    except SweepConfigError as e:
        key = e.fieldname.split(".", 1)[1]
        if flags.get(key) is not None:  # the flag's value is the bad one
            raise BadInput(f"{FLAGS[key]}: {e}") from None
        raise SpecError(args.spec, str(e), _line_of(text, e.fieldname), e.fieldname) from None
    out = Path(args.out or f"results/sweep-{spec.name}")
    command = shlex.join(["tierbench", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] else "tierbench sweep"
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    code = run_sweep(spec, cfg, out, command, progress=sys.stderr.isatty() and not args.quiet, log=log)
    print(f"wrote {out}/sweep.json")
    return code
