"""Per-request records appended to JSONL as they complete, so an interrupted run keeps every
finished request. Each process writes its own file per engine (requests.<pid>.<engine>.jsonl); the run merges them
into requests.parquet at the end.

Times: each process records perf_counter (monotonic, exact within the process) and converts to
wall-clock epoch seconds with one offset taken at start, so records of several processes (locust
workers) line up while differences within one request stay exact.
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import orjson

from analysis.records import read_records
from bench.load.client import Record

_OFFSET = time.time() - time.perf_counter()


def to_wall(t: float | None) -> float | None:
    return None if t is None else t + _OFFSET


def record_row(rec: Record, engine: str, tier: str = "") -> dict:
    """The requests-table row of docs/run-directory.md (times as epoch seconds). Through a tier gateway the
    tier is the one its policy picked, network_s the round trip it injected."""
    gaps = [b - a for a, b in zip(rec.chunk_times, rec.chunk_times[1:])]
    if rec.routed_tier is not None:
        tier = f"{rec.routed_tier}-{tier}" if tier else rec.routed_tier
    return {
        "request_id": rec.request_id, "engine": engine, "tier": tier, "session": rec.session,
        "call_index": rec.call_index, "intended_start": to_wall(rec.intended), "sent": to_wall(rec.sent),
        "first_token": to_wall(rec.first_token), "last_token": to_wall(rec.last_token), "itl": gaps,
        "chunks": len(rec.chunk_times), "prompt_tokens": rec.prompt_tokens, "output_tokens": rec.output_tokens,
        "cached_tokens": rec.cached_tokens, "expected_prompt_tokens": rec.expected_prompt_tokens,
        "expected_output_tokens": rec.expected_output_tokens, "status": rec.status, "http_status": rec.http_status,
        "error": rec.error, "error_reason": rec.error_reason, "retries": rec.retries,
        "finish_reason": rec.finish_reason, "warmup": rec.warmup,
        "network_s": rec.network_s, "route_reason": rec.route_reason,
    }


def records_path(run_dir: Path, pid: int, engine: str) -> Path:
    """Where process `pid` appends its records of `engine`: one file per process and engine, so
    engines run side by side in one process never share a file."""
    return Path(run_dir) / f"requests.{pid}.{re.sub(r'[^A-Za-z0-9_.-]', '_', engine)}.jsonl"


def read_new_rows(path: Path, offsets: dict[Path, int]) -> bytes:
    """The whole rows appended to `path` since offsets[path] (advanced past them); a row still
    being written stays for the next call. b"" for a file not created yet."""
    try:
        with open(path, "rb") as f:
            f.seek(offsets.get(path, 0))
            data = f.read()
    except FileNotFoundError:
        return b""
    end = data.rfind(b"\n") + 1
    offsets[path] = offsets.get(path, 0) + end
    return data[:end]


def record_unsent(run_dir: Path, plans, engine: str, tier: str, reason: str, message: str, *,
                  warmup_s: float = 0.0, duration_s: float | None = None, sessions: set[str] | None = None) -> int:
    """After the server or a load process died: a failed row (sent = null, error_reason `reason`,
    error `message`) for every planned call with no record of `engine` (and `tier`, when given),
    so the table says which calls never ran instead of leaving them out. With a duration limit,
    only sessions the schedule would have started (start_s < duration_s); with `sessions`, only
    those. Returns how many rows it wrote."""
    seen: set[tuple[str, int]] = set()
    for row in read_records(run_dir):
        if row.get("engine") == engine and (not tier or row.get("tier") == tier):
            seen.add((row.get("session"), row.get("call_index")))
    rows = []
    for plan in plans:
        if (duration_s is not None and plan.start_s >= duration_s) or (sessions is not None and plan.id not in sessions):
            continue
        for call in plan.calls:
            if (plan.id, call.index) in seen:
                continue
            rec = Record(request_id=f"{plan.id}#{call.index}", session=plan.id, call_index=call.index,
                         expected_prompt_tokens=len(call.prompt_ids), expected_output_tokens=call.max_tokens,
                         status="error", error=message, error_reason=reason, warmup=plan.start_s < warmup_s)
            row = record_row(rec, engine, tier)
            row["sent"] = None  # never sent: no time to give
            rows.append(orjson.dumps(row) + b"\n")
    if rows:
        # a file of its own: a fragment cut off mid-line by the crash must not swallow these rows
        path = Path(run_dir) / f"requests.unsent.{re.sub(r'[^A-Za-z0-9_.-]', '_', engine)}.jsonl"
        with open(path, "ab") as f:
            f.write(b"".join(rows))
    return len(rows)


class Recorder:
    """Appends rows to records_path(dir, pid, engine), flushed per row. Thread-safe."""

    def __init__(self, run_dir: Path, engine: str, tier: str = ""):
        self.path = records_path(run_dir, os.getpid(), engine)
        self.engine, self.tier = engine, tier
        self._f = open(self.path, "ab")
        self._lock = threading.Lock()
        self.ok = self.errors = self.output_tokens = 0

    def write(self, rec: Record) -> None:
        row = orjson.dumps(record_row(rec, self.engine, self.tier)) + b"\n"
        with self._lock:
            self._f.write(row)
            self._f.flush()
            if rec.status == "ok":
                self.ok += 1
                self.output_tokens += rec.output_tokens or len(rec.chunk_times)
            else:
                self.errors += 1

    def close(self) -> None:
        with self._lock:
            self._f.close()
