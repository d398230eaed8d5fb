"""`tierbench`: the one command line entry point. Each command group lives in its own module
(trace.py, run.py, sweep.py, ab.py, serve.py, analyze.py, export.py) with a `register(subparsers)` function; this module only
builds the parser from them and maps exceptions to exit statuses.

Exit status: 0 success, 1 a failed gate or check, 2 bad input (one line naming file, line and
field), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from bench.cli import ab, analyze, export, run, serve, sweep, trace
from bench.cli.common import EPILOG, BadInput
from bench.spec import SpecError
from traces.errors import TraceError

GROUPS = (trace, run, sweep, ab, serve, analyze, export)  # in the order `tierbench --help` lists them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierbench", description="Benchmarking and workload characterization for agentic LLM inference.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TraceError, SpecError, BadInput) as e:
        print(f"tierbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tierbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
