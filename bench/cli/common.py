"""What every command module shares: the exit-status epilog, the bad-input exception, argument
types, and loading a run for the analysis commands."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = "Exit status: 0 ok, 1 failed gate or check, 2 bad input."


def add_command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with the shared epilog. A description with line breaks (examples) keeps them;
    one without is wrapped to the terminal."""
    raw = description is not None and "\n" in description
    return sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)


class BadInput(Exception):
    """A usage error found after parsing (a bad value combination); exits 2."""


def confidence(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0.5 and 1, got {text!r}") from None
    if not 0.5 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0.5 and 1, got {text!r}")
    return v


def percent(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= v < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100), got {text!r}")
    return v




def whole_number(minimum: int, why: str = ""):
    """An argparse type: an integer >= minimum (`why` is added to the error)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}{why}, got {text!r}")
        return v
    return parse


def load_run_or_fail(path: str):
    from analysis.rundata import load_run
    try:
        return load_run(path)
    except ValueError as e:
        raise BadInput(str(e)) from None


def parse_groups(arg: str | None) -> tuple[str, str] | None:
    if not arg:
        return None
    a, sep, b = arg.partition(":")
    if not a:
        raise BadInput(f"--groups {arg!r}: expected BASELINE_GROUP[:CANDIDATE_GROUP], e.g. reference:vllm")
    return a, (b if sep and b else a)




def tokenizer_dir(arg: str | None) -> Path:
    """The tokenizer for text traces: the given model directory, or the tiny model (built once)."""
    if arg:
        return Path(arg)
    from engines.tiny_model import ensure_tiny_model
    return ensure_tiny_model()
