"""The example command lines users copy: every `tierbench ...` line in `tierbench --help` and each
command's and subcommand's `--help`, and in README.md and docs/*.md (fenced code blocks that start
with `tierbench `, and inline code spans that do). None is executed; each file path it names
must exist in the repository, and none may point outside it except ../shared/traces (where the
real traces live).

A file path argument is a token ending in .toml, .json or .jsonl (optionally .gz), or starting
with examples/ or results/, or any path that leaves the repository (../, /, ~). Placeholders
(SPEC.toml, RUN_DIR, results/<name>/) are skipped, and so are the values of output options
(-o, --output, --out, --markdown, --junit, --plot), which a command creates. The help is read by
running `tierbench CMD --help` (the installed entry point, else `python -m bench`), falling back
to the parser in-process.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_TRACES = ROOT.parent / "shared" / "traces"
PATH_SUFFIXES = (".toml", ".json", ".jsonl", ".json.gz", ".jsonl.gz")
IN_REPO_PREFIXES = ("examples/", "results/")
OUTPUT_OPTIONS = {"-o", "--output", "--out", "--markdown", "--junit", "--plot"}
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?(\.[A-Za-z0-9.]+)?$")
_DOC_REF = re.compile(r"\bdocs/[\w./-]*\w\.md\b")


# --------------------------------------------------------------------------- reading the help

def _tierbench() -> list[str]:
    exe = Path(sys.executable).with_name("tierbench")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tierbench")
    return [found] if found else [sys.executable, "-m", "bench"]


def _help_in_process(path: tuple[str, ...]) -> str:
    import argparse

    from bench.cli import build_parser  # the fallback: where the parser lives today

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser.format_help()


@lru_cache(maxsize=None)
def help_text(path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    try:
        r = subprocess.run([*_tierbench(), *path, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env=env)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout
    except (OSError, subprocess.TimeoutExpired):
        pass
    return _help_in_process(path)


def subcommands(text: str) -> list[str]:
    """The commands an argparse help lists under its subcommand metavar (COMMAND, SUBCOMMAND, or
    {a,b,c}): the lines indented by four spaces that follow it."""
    names: list[str] = []
    listing = False
    for line in text.splitlines():
        if re.fullmatch(r"  ([A-Z][A-Z_]*|\{[\w,-]+\})", line):
            listing = True
            continue
        if listing:
            m = re.match(r"^    ([a-z][\w-]*)(\s|$)", line)
            if m:
                names.append(m.group(1))
            elif not line.startswith("     "):  # a wrapped help line is indented deeper
                listing = False
    return names


@lru_cache(maxsize=None)
def all_help() -> dict[tuple[str, ...], str]:
    """(command path) -> help text, for tierbench and every command and subcommand."""
    out: dict[tuple[str, ...], str] = {}
    todo: list[tuple[str, ...]] = [()]
    while todo:
        path = todo.pop(0)
        text = help_text(path)
        out[path] = text
        todo.extend((*path, name) for name in subcommands(text) if len(path) < 3)
    return out


def commands_in_help() -> list[tuple[str, str]]:
    """(where, command line) for every line of any help that starts with `tierbench `."""
    found = []
    for path, text in all_help().items():
        where = " ".join(["tierbench", *path, "--help"])
        for line in text.splitlines():
            s = line.strip().removeprefix("$ ")
            if s.startswith("tierbench "):
                found.append((where, s))
    return found


# --------------------------------------------------------------------------- reading the docs

def commands_in_markdown(path: Path) -> list[tuple[str, str]]:
    """(file:line, command) for every line of a fenced code block that starts with `tierbench `,
    and every inline code span that does."""
    rel = path.relative_to(ROOT).as_posix()
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            j = i + 1
            block = []
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                block.append((j + 1, lines[j]))
                j += 1
            first = next((text.strip() for _, text in block if text.strip()), "")
            if first.startswith("tierbench "):
                found.extend((f"{rel}:{n}", text.strip()) for n, text in block if text.strip().startswith("tierbench "))
            i = j + 1
            continue
        for span in re.findall(r"`([^`]+)`", lines[i]):
            if span.startswith("tierbench "):
                found.append((f"{rel}:{i + 1}", span))
        i += 1
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --------------------------------------------------------------------------- checking a command

def _tokens(command: str) -> list[str]:
    command = command.split(" #", 1)[0]  # a trailing comment
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def path_arguments(command: str) -> list[tuple[str, bool]]:
    """(path, is_output) for every file path argument of `command` (see the module doc)."""
    out = []
    toks = _tokens(command)
    for k, tok in enumerate(toks):
        prev = toks[k - 1] if k else ""
        opt, eq, value = tok.partition("=")
        if eq and opt.startswith("-"):
            prev, tok = opt, value
        elif tok.startswith("-"):
            continue
        is_output = prev in OUTPUT_OPTIONS
        for alt in tok.split("|"):
            p = alt.strip("[](),;'\"").removesuffix("...")
            if not p or "://" in p or p.startswith("profile:"):
                continue
            if any(c in p for c in "<>{}*") or any(_PLACEHOLDER.match(part) for part in p.split("/") if part):
                continue  # a placeholder: SPEC.toml, RUN_DIR, results/NAME, results/<name>/
            if (p.endswith(PATH_SUFFIXES) or p.startswith(IN_REPO_PREFIXES)
                    or p.startswith(("../", "/", "~"))):
                out.append((p, is_output))
    return out


def problems(command: str) -> list[str]:
    bad = []
    for p, is_output in path_arguments(command):
        full = Path(os.path.normpath(ROOT / os.path.expanduser(p)))
        if full != ROOT and ROOT not in full.parents:
            if not (full == SHARED_TRACES or SHARED_TRACES in full.parents):
                bad.append(f"{p}: outside the repository (only ../shared/traces is allowed)")
            continue  # the shared traces need not be present
        if not is_output and not full.exists():
            bad.append(f"{p}: does not exist in the repository")
    return bad


def _report(found: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: `{cmd}`\n      {msg}" for where, cmd in found for msg in problems(cmd)]


# --------------------------------------------------------------------------- tests

def test_help_lists_the_commands():
    helps = all_help()
    top = subcommands(helps[()])
    assert "run" in top and "trace" in top, f"`tierbench --help` lists no commands we know: {top}"
    assert len(helps) > len(top), "no subcommand's --help was read"


def test_help_examples_name_existing_files():
    found = commands_in_help()
    assert found, "no example command (a line starting with `tierbench `) in any --help"
    bad = _report(found)
    assert not bad, "example commands in --help name missing or outside files:\n  " + "\n  ".join(bad)


def test_markdown_examples_name_existing_files():
    found = [c for f in markdown_files() for c in commands_in_markdown(f)]
    assert found, "no `tierbench ...` command in README.md or docs/"
    bad = _report(found)
    assert not bad, "example commands in README.md / docs/ name missing or outside files:\n  " + "\n  ".join(bad)


def test_help_cites_existing_docs():
    """A help text that points to a page of docs/ points to one that exists."""
    bad = sorted({f"tierbench {' '.join(path)} --help: {ref}".replace("  ", " ")
                  for path, text in all_help().items() for ref in _DOC_REF.findall(text)
                  if not (ROOT / ref).exists()})
    assert not bad, "--help cites docs that do not exist:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("command, expected", [
    ("tierbench run examples/agentic-cpu.toml --out results/new-run", []),
    ("tierbench run examples/missing.toml", ["examples/missing.toml: does not exist in the repository"]),
    ("tierbench run --trace ../shared/traces/azure-llm-2023 --engine reference", []),
    ("tierbench trace stats ../elsewhere/t.jsonl", ["../elsewhere/t.jsonl: outside the repository (only "
                                                    "../shared/traces is allowed)"]),
    ("tierbench trace fit PATH -o PROFILE.json", []),
    ("tierbench run [SPEC.toml] [--trace PATH|profile:NAME] [--out DIR]", []),
    ("tierbench gate --baseline=results/ci-baseline --candidate results/none", [
        "results/none: does not exist in the repository"]),
    ("tierbench report results/<name>/ -o /tmp/r.html", ["/tmp/r.html: outside the repository (only "
                                                          "../shared/traces is allowed)"]),
])
def test_checker(command, expected):
    assert problems(command) == expected


def test_subcommand_listing_parser():
    text = ("usage: tierbench [-h] COMMAND ...\n\npositional arguments:\n  COMMAND\n    trace     read\n"
            "    calibrate\n              measure the client\n    run       replay\n\noptions:\n"
            "  -h, --help  show this help message and exit\n")
    assert subcommands(text) == ["trace", "calibrate", "run"]
