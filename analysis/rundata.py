"""One run, read back: run.json, the requests table and the sessions table.

A run directory (results/<run>/) is what `tierbench run` writes. A bare JSON file is accepted where
only a summary exists (a run.json copied out of its directory, or `{"summary": {...}}`): such a
Run has summaries but no per-request rows, so it supports point comparisons only. A peer client's
per-request result is accepted too (analysis.peers: `vllm bench serve --save-detailed` JSON, an
AIPerf profile_export.jsonl or its artifact directory): its rows are mapped to tierbench's and
summarized under tierbench's definitions, so it compares with a tierbench run like another run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.metrics import normalize_requests, group_key, load_requests, summarize_run
from analysis.peers import load_peer, peer_kind, read_json_object
from analysis.sessions import measured_rows, sessions_table


@dataclass
class Run:
    path: Path
    info: dict                              # run.json
    requests: pd.DataFrame | None = None    # every row (warm-up included); None for a summary-only JSON
    sessions: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)  # group key ('engine' or 'engine@tier') -> summary

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.path.stem)

    @property
    def has_rows(self) -> bool:
        return self.requests is not None and len(self.requests) > 0

    @property
    def tiered(self) -> bool:
        """A run through latency tiers: its groups are scenarios, whose calls span tiers."""
        return bool(self.info.get("tiers"))

    def group_rows(self, key: str) -> pd.DataFrame:
        """The measured rows of one group ('engine' or 'engine@tier'; a scenario of a tiered run)."""
        if not self.has_rows:
            raise ValueError(f"{self.path}: no per-request rows (a summary-only file)")
        df = measured_rows(self.requests)
        if self.tiered and "@" not in key:
            return df[df["engine"].astype(str) == key]
        keys = [group_key(e, t) for e, t in zip(df["engine"], df["tier"])]
        return df[[k == key for k in keys]]

    def groups(self) -> list[str]:
        """Group keys in first-seen order: engine or engine@tier; for a run through tiers its
        scenarios (the same calls routed differently, so they compare call by call)."""
        if self.has_rows:
            df = measured_rows(self.requests)
            if self.tiered:
                return list(dict.fromkeys(df["engine"].astype(str)))
            return list(dict.fromkeys(group_key(e, t) for e, t in zip(df["engine"], df["tier"])))
        return [k for k in self.summary if not (self.tiered and "@" in k)]


def load_run(path: str | Path) -> Run:
    """A run directory, a summary JSON file or a peer's per-request result; ValueError naming the
    path on anything unreadable."""
    path = Path(path)
    kind = peer_kind(path) if path.exists() and not (path / "run.json").exists() else None
    if kind is not None:
        info, requests = load_peer(path, kind)
        requests = normalize_requests(requests)
        return Run(path, info, requests, sessions_table(requests), summarize_run(requests))
    if path.is_dir():
        info = read_json_object(path / "run.json") if (path / "run.json").exists() else {}
        requests = load_requests(path)
        sp = path / "sessions.parquet"
        try:
            sessions = pd.read_parquet(sp) if sp.exists() else sessions_table(requests)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ValueError(f"{sp}: cannot read parquet: {e}") from None
        summary = info.get("summary") or {}
        if not summary and len(requests):
            summary = summarize_run(requests)
        return Run(path, info, requests, sessions, summary)
    if path.is_file():
        info = read_json_object(path)
        summary = info.get("summary", info)
        if not isinstance(summary, dict) or not all(isinstance(v, dict) for v in summary.values()):
            raise ValueError(f"{path}: field 'summary': expected an object of per-engine summaries")
        return Run(path, info, None, None, summary)
    raise ValueError(f"{path}: no such run directory or JSON file")
