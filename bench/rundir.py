"""The run directory's run.json, kept current on disk: written at start, after each engine and
repetition, and at the end (docs/run-directory.md has the schema)."""
from __future__ import annotations

import json
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
        self.info = {"name": spec.name, "status": "running", "spec": spec.to_dict(), "git_commit": git_commit(),
                     "environment": environment(), "start": now(), "end": None, "engines": {}, "summary": {}}
        self.save()

    def save(self) -> None:
        with self._lock:  # engines side by side save from their own threads
            tmp = self.path / "run.json.tmp"
            tmp.write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")
            tmp.replace(self.path / "run.json")
