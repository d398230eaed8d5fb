"""The two sides of an A/B run, each an engine to start (or a URL) from a short description:

- `spec` (the default): the run spec's engine for that side: its first engine for A, its second
  for B (or its only engine for both).
- `ref:GITREF`: this repository's reference engine as of GITREF (a commit, branch, tag, HEAD~1),
  checked out in a temporary git worktree and served from there with this environment's packages.
- `vllm` or `vllm:PYTHON`: vLLM started by that interpreter (default $TIERBENCH_VLLM_PYTHON or this
  one), for comparing two installs or versions.
- `http(s)://HOST:PORT`: a server already running.
- `A` (for B only): A's own server, the same process: the sides then differ only in what the
  client does around the rounds (`--b-scrape`), with no difference between two servers at all.

Extra server flags (`--a-arg`, `--b-arg`) are appended to the side's engine arguments.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engines.launch import EngineSpec

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE_ARGS = ["--num-threads", "1", "--dtype", "float32"]
DEFAULT_VLLM_ARGS = ["--dtype", "float32", "--max-model-len", "8192"]


class VariantError(Exception):
    """A variant that cannot be used (bad ref, no interpreter, failed to start): exit 2."""


@dataclass
class Variant:
    name: str                 # "A" or "B"
    source: str               # as given: spec | ref:GITREF | vllm[:PYTHON] | URL
    engine: EngineSpec        # what is started (engine.name is the side's name)
    label: str = ""           # for people: "reference@1a2b3c4", "vllm", the URL
    commit: str | None = None  # the resolved commit of a ref: variant
    worktree: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        e = self.engine
        return {"label": self.label, "source": self.source, "engine_kind": e.kind, "commit": self.commit,
                "args": list(e.args), "env": dict(e.env), "python": e.python, "url": e.url,
                "extra_args": list(self.extra_args)}


def resolve(name: str, source: str | None, spec_engines: list[EngineSpec], extra_args: list[str]) -> Variant:
    """The variant for side `name` ("A" or "B"); VariantError naming the side and the cause."""
    source = source or "spec"
    if source == "A":
        if name != "B" or extra_args:
            raise VariantError(f"variant {name}: 'A' (A's own server) is for --b only, without --b-arg")
        return Variant(name, source, EngineSpec("url", name=name, url="same-as-A"), "A's server")
    if source == "spec":
        if len(spec_engines) > 2:
            raise VariantError(f"variant {name}: the spec has {len(spec_engines)} engines; an A/B compares two "
                               f"(name them with --a and --b)")
        base = copy.deepcopy(spec_engines[0 if name == "A" or len(spec_engines) == 1 else 1])
        label = base.name if base.kind != "url" else base.url or "url"
    elif source.startswith(("ref:", "ref=")):
        return _from_ref(name, source, spec_engines, extra_args)
    elif source == "vllm" or source.startswith(("vllm:", "vllm=")):
        python = source[5:] or None
        if python and not (shutil.which(python) or Path(python).is_file()):
            raise VariantError(f"variant {name}: {source!r}: no interpreter at {python!r}")
        like = next((e for e in spec_engines if e.kind == "vllm"), None)
        base = EngineSpec("vllm", args=list(like.args) if like else list(DEFAULT_VLLM_ARGS),
                          env=dict(like.env) if like else {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "1"},
                          python=python)
        label = f"vllm ({python})" if python else "vllm"
    elif source.startswith(("http://", "https://")):
        base = EngineSpec("url", url=source.rstrip("/"))
        label = base.url
    else:
        raise VariantError(f"variant {name}: {source!r}: expected spec, ref:GITREF, vllm[:PYTHON], an http(s) URL or (for B) A")
    return _finish(name, source, base, label, extra_args)


def _finish(name: str, source: str, base: EngineSpec, label: str, extra_args: list[str], **kw) -> Variant:
    if extra_args and base.kind == "url":
        raise VariantError(f"variant {name}: server flags {' '.join(extra_args)!r} cannot be given to a running URL")
    base.name = name
    base.args = [*base.args, *extra_args]
    if extra_args:
        label = f"{label} {' '.join(extra_args)}"
    return Variant(name, source, base, label, extra_args=list(extra_args), **kw)


def _from_ref(name: str, source: str, spec_engines: list[EngineSpec], extra_args: list[str]) -> Variant:
    ref = source[4:]
    commit = rev_parse(ref)
    if commit is None:
        raise VariantError(f"variant {name}: git ref {ref!r} does not exist in {REPO}")
    like = next((e for e in spec_engines if e.kind == "reference"), None)
    base = EngineSpec("reference", args=list(like.args) if like else list(DEFAULT_REFERENCE_ARGS),
                      env=dict(like.env) if like else {})
    return _finish(name, source, base, f"reference@{commit[:9]}", extra_args, commit=commit)


def rev_parse(ref: str) -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def check_out(variant: Variant) -> None:
    """A ref: variant's commit in a temporary worktree, its server started from there."""
    if variant.commit is None:
        return
    path = Path(tempfile.mkdtemp(prefix=f"tierbench-ab-{variant.name}-"))
    r = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), variant.commit],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise VariantError(f"variant {variant.name}: git worktree add {variant.commit[:9]} failed: "
                           f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    variant.worktree = path
    variant.engine.cwd = str(path)


def remove_worktree(variant: Variant) -> None:
    if variant.worktree is None:
        return
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(variant.worktree)],
                   capture_output=True)
    shutil.rmtree(variant.worktree, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
    variant.worktree = None
