"""Azure LLM inference traces (AzurePublicDataset, 2023/2024): CSV with TIMESTAMP, ContextTokens,
GeneratedTokens. Single requests with bursty arrivals: each row is a one-call session."""
from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

from traces.errors import TraceError, require_int
from traces.fileio import open_binary
from traces.model import Call, Session, Trace

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_azure(paths: list[Path], source: str) -> Trace:
    sessions: list[Session] = []
    t_first = None
    for path in paths:
        rows = _rows(path)
        last = None
        for line, row in rows:
            ts = _parse_time(row["TIMESTAMP"], path, line)
            if last is not None and ts < last:
                raise TraceError(path, "timestamp goes backwards", line, "TIMESTAMP")
            last = ts
            if t_first is None:
                t_first = ts
            prompt = require_int(_int(row["ContextTokens"]), path, line, "ContextTokens")
            output = require_int(_int(row["GeneratedTokens"]), path, line, "GeneratedTokens")
            arrival = (ts - t_first).total_seconds()
            sid = f"r{len(sessions)}"
            sessions.append(Session(sid, [Call(sid, 0, prompt, output, arrival_s=arrival)], start_s=arrival))
    if not sessions:
        raise TraceError(paths[0], "no rows", 2)
    return Trace(sessions, source=source, format="azure")


def _rows(path: Path):
    try:
        with open_binary(path) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="").read()
    except (EOFError, OSError) as e:
        raise TraceError(path, f"truncated or corrupt gzip data ({e})") from None
    except UnicodeDecodeError as e:
        raise TraceError(path, f"not UTF-8 text ({e})") from None
    if not text.strip():
        raise TraceError(path, "empty file", 1)
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    for col in COLUMNS:
        if col not in header:
            raise TraceError(path, f"missing column (header has {header})", 1, col)
    reader.fieldnames = header
    for i, row in enumerate(reader, 2):
        for col in COLUMNS:
            if row.get(col) in (None, ""):
                raise TraceError(path, "missing value", i, col)
        yield i, row


def _int(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _parse_time(v: str, path: Path, line: int) -> datetime:
    s = v.strip()
    if "." in s:  # the 2023 files carry 100 ns digits, more than datetime's microseconds
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        raise TraceError(path, f"not a timestamp: {v!r}", line, "TIMESTAMP") from None
