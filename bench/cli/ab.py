"""`tierbench ab`: an interleaved A/B run of two engine variants (bench/ab/)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from bench.cli.common import BadInput, add_command, confidence, whole_number

AB_DESCRIPTION = """\
Two variants of an engine play the same materialized workload in alternating rounds (A B, B A,
A B, ...), each round the whole workload of SPEC with the prefix cache reset first, so that slow
drift of the machine hits both alike. Each metric's ratio B/A is taken per round pair, with a
Student-t interval over the pairs (and the session bootstrap within each pair). Gate the result
with `tierbench gate --ab DIR`.

A variant (--a, --b) is one of:
  spec           the spec's engine: its first for A, its second for B (or its only one for both)
  ref:GITREF     this repository's reference engine at GITREF, served from a temporary worktree
  vllm[:PYTHON]  vLLM started by that interpreter (another install or version)
  URL            a server already running (http://HOST:PORT)
  A              (--b only) A's own server: with --b-scrape, what scraping /metrics costs, free of
                 any difference between two servers
--a-arg/--b-arg add server flags to one side (write them with '=': --b-arg=--step-delay-ms=0.4).

Examples:
  tierbench ab examples/ci-smoke.toml --a ref:HEAD~1 --b spec --server-cpus 1 --client-cpus 0
  tierbench ab examples/ci-smoke.toml --b-arg=--step-delay-ms=0.4 --pairs 8
  tierbench ab examples/agentic-cpu.toml --pairs 3        # reference (A) against vLLM (B)
  tierbench ab examples/ci-smoke.toml --b A --b-scrape 1 --pairs 20 --server-cpus 1 --client-cpus 0
"""


def register(sub) -> None:
    sp = add_command(sub, "ab", "interleaved A/B rounds of two engine variants on one workload", AB_DESCRIPTION)
    sp.add_argument("spec", metavar="SPEC.toml", help="the run spec: trace, load, engines")
    sp.add_argument("--a", metavar="VARIANT", default="spec", help="the baseline (default: spec)")
    sp.add_argument("--b", metavar="VARIANT", default="spec", help="the candidate (default: spec)")
    sp.add_argument("--a-arg", action="append", default=[], metavar="=ARG", help="server flag for A only (repeatable)")
    sp.add_argument("--b-arg", action="append", default=[], metavar="=ARG", help="server flag for B only (repeatable)")
    sp.add_argument("--pairs", type=whole_number(2, " (an interval needs two pairs)"), default=8, metavar="N", help="round pairs (default 8; at least 2)")
    sp.add_argument("--warmup-calls", type=whole_number(0), default=8, metavar="N",
                    help="unrecorded calls per variant before the first round (default 8)")
    sp.add_argument("--server-cpus", type=cpu_list, metavar="LIST",
                    help="pin both servers to these CPUs, e.g. 1 or 2-3 (default: not pinned)")
    sp.add_argument("--client-cpus", type=cpu_list, metavar="LIST",
                    help="pin this process (the client) to these CPUs, e.g. 0 (default: not pinned)")
    sp.add_argument("--a-scrape", type=float, default=0.0, metavar="S",
                    help="scrape A's /metrics every S s during its rounds, as `tierbench run` does (default 0: not)")
    sp.add_argument("--b-scrape", type=float, default=0.0, metavar="S",
                    help="the same for B: --b-scrape 1 with --b spec measures what 1 Hz scraping costs the engine")
    sp.add_argument("--confidence", type=confidence, default=0.95, help="interval confidence (default 0.95)")
    sp.add_argument("--out", metavar="DIR", help="the A/B directory (default results/ab-NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_ab)


def cpu_list(text: str) -> list[int]:
    """'0', '1,3' or '2-3' -> CPU numbers this machine has (an argparse type)."""
    import argparse
    import os
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0, 1,3 or 2-3, got {text!r}") from None
    missing = sorted(set(cpus) - os.sched_getaffinity(0))
    if not cpus or missing:
        raise argparse.ArgumentTypeError(f"{text!r}: CPU {missing[0] if missing else '?'} is not available here "
                                         f"(available: {sorted(os.sched_getaffinity(0))})")
    return sorted(set(cpus))


def cmd_ab(args) -> int:
    from analysis.ab import format_ab, load_ab
    from bench.ab.runner import ABConfig, run_ab
    from bench.ab.variants import VariantError, resolve
    from bench.run import engine_defaults, prepare_workload
    from bench.spec import load_spec

    spec = load_spec(args.spec)
    if spec.tiers:
        raise BadInput(f"{args.spec}: an A/B compares two engines directly; this spec has [[tiers]]")
    try:
        variants = (resolve("A", args.a, spec.engines, args.a_arg), resolve("B", args.b, spec.engines, args.b_arg))
    except VariantError as e:
        raise BadInput(str(e)) from None
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    plans, model_dir, workload = prepare_workload(spec)
    for v in variants:
        v.engine.cpus = args.server_cpus
    if args.client_cpus:  # before any thread starts: the client's threads inherit it
        import os
        os.sched_setaffinity(0, args.client_cpus)
    spec.engines = [v.engine for v in variants]
    engine_defaults(spec, model_dir)
    out = Path(args.out or f"results/ab-{spec.name}")
    if args.a_scrape < 0 or args.b_scrape < 0:
        raise BadInput(f"--{'a' if args.a_scrape < 0 else 'b'}-scrape: expected seconds >= 0")
    cfg = ABConfig(pairs=args.pairs, warmup_calls=args.warmup_calls, confidence=args.confidence,
                   scrape_s={"A": args.a_scrape, "B": args.b_scrape},
                   server_cpus=args.server_cpus, client_cpus=args.client_cpus,
                   command=shlex.join(["tierbench", *sys.argv[1:]]) if sys.argv[1:2] == ["ab"] else "tierbench ab")
    try:
        code = run_ab(spec, variants, plans, workload, out, cfg, progress=sys.stderr.isatty() and not args.quiet, log=log)
    except VariantError as e:
        raise BadInput(str(e)) from None
    ab = load_ab(out)
    print(f"A = {ab['variants']['A']['label']}, B = {ab['variants']['B']['label']}; ratio B/A; latencies in ms")
    if ab["comparison"]:
        print(format_ab(ab))
    print(f"\n{ab['status']}: {out}/ab.json ({ab['pairs']} complete round pairs)")
    return code
