"""The run directory's run.json, kept current on disk: written at start, after each engine and
repetition, and at the end (docs/run-directory.md has the schema).

Every file of the directory is written so that a run killed at any moment (SIGKILL included)
leaves it readable: run.json and the tables are written beside and renamed into place, records
are appended a whole line at a time. run.json says `running` with the run's `pid` and `host`
until the end, so a reader that finds it so and the process gone knows the run was cut.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

from engines.provenance import environment, git_commit, now


class RunDir:
    """run.json kept current on disk: written at start, after each engine, and at the end."""

    def __init__(self, out: Path, spec):
        self.path = out
        out.mkdir(parents=True, exist_ok=True)
        # a rerun into the same directory starts clean: no record or result of the last run survives
        stale = [*out.glob("requests*.jsonl"), *out.glob("gateway-*"), *(out / n for n in (
            "requests.parquet", "sessions.parquet", "report.html", "claims.json", "run.json"))]
        for old in stale:
            if old.is_file():
                old.unlink()
        self._lock = threading.Lock()
        self.info = {"name": spec.name, "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                     "spec": spec.to_dict(), "git_commit": git_commit(), "environment": environment(),
                     "start": now(), "end": None, "engines": {}, "summary": {}}
        self.save()

    def save(self) -> None:
        with self._lock:  # engines side by side save from their own threads
            tmp = self.path / "run.json.tmp"
            tmp.write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")
            tmp.replace(self.path / "run.json")


def write_parquet(df, path: Path) -> None:
    """df to path, written beside it and renamed into place: a kill mid-write leaves no torn file."""
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
