"""Mooncake JSONL traces (FAST'25 release): one request per line with timestamp (ms), input_length,
output_length and hash_ids (512-token prefix blocks, global ids). No session ids: each request
becomes a one-call session arriving at its timestamp. Also the writer, so that AIPerf, vLLM and
SGLang can replay tierbench traces.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson

from traces.errors import TraceError, require_int, require_number
from traces.fileio import get, iter_json_lines
from traces.model import Call, Session, Trace

MOONCAKE_BLOCK = 512


def read_mooncake(paths: list[Path], source: str, block_size: int = MOONCAKE_BLOCK) -> Trace:
    sessions: list[Session] = []
    for path in paths:
        last = None
        for line, rec in iter_json_lines(path):
            ts = require_number(get(rec, "timestamp", path, line), path, line, "timestamp")
            if last is not None and ts < last:
                raise TraceError(path, f"timestamp goes backwards ({ts:g} < {last:g})", line, "timestamp")
            last = ts
            prompt = require_int(get(rec, "input_length", path, line), path, line, "input_length")
            output = require_int(get(rec, "output_length", path, line), path, line, "output_length")
            hashes = rec.get("hash_ids", [])
            try:
                ids = np.asarray(hashes, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise TraceError(path, "expected a list of integers", line, "hash_ids") from None
            sid = f"r{len(sessions)}"
            sessions.append(Session(sid, [Call(sid, 0, prompt, output, arrival_s=ts / 1000.0, hash_ids=ids)],
                                    start_s=ts / 1000.0))
    return Trace(sessions, source=source, format="mooncake", block_size=block_size, hash_scope="global")


def write_mooncake(trace: Trace, out: Path, block_size: int = MOONCAKE_BLOCK) -> dict:
    """Write one line per call, sorted by arrival, hash ids re-blocked to `block_size` tokens and
    renumbered from 0 in first-seen order (global scope, as Mooncake consumers expect).
    Returns notes about what had to be assumed."""
    notes: dict = {"block_size": block_size}
    rows = []
    missing_arrival = 0
    roots = trace.root_of()
    for s in trace.sessions:
        clock = s.start_s or 0.0
        for c in s.calls:
            if c.arrival_s is not None:
                clock = c.arrival_s
            else:  # closed-loop trace: think times only; service time is unknown and not added
                missing_arrival += 1
                clock += c.think_s or 0.0
            rows.append((clock, roots[s.id], c))
    if missing_arrival:
        notes["arrivals"] = ("derived from session starts plus think times; model service time is not "
                             f"included ({missing_arrival} calls)")
    rows.sort(key=lambda r: r[0])
    renumber: dict[bytes, int] = {}
    with open(out, "wb") as f:
        for ts, root, c in rows:
            ids = _reblock(trace, root, c, block_size, renumber)
            f.write(orjson.dumps({"timestamp": int(round(ts * 1000)), "input_length": c.prompt_tokens,
                                  "output_length": c.output_tokens, "hash_ids": ids}))
            f.write(b"\n")
    notes["requests"] = len(rows)
    return notes


def _reblock(trace: Trace, root: str, c: Call, block_size: int, renumber: dict[bytes, int]) -> list[int]:
    """Chain-hash groups of source blocks into `block_size`-token blocks, then renumber."""
    if c.hash_ids is None or not len(c.hash_ids) or not trace.block_size:
        return []
    if block_size % trace.block_size:
        raise TraceError(trace.source, f"cannot re-block {trace.block_size}-token blocks into {block_size}",
                         None, "block_size")
    k = block_size // trace.block_size
    n = len(c.hash_ids) // k  # full target blocks only
    scope = root.encode() if trace.hash_scope == "session" else b""
    prev = hashlib.blake2b(scope, digest_size=8).digest()
    out = []
    for j in range(n):
        prev = hashlib.blake2b(prev + c.hash_ids[j * k:(j + 1) * k].tobytes(), digest_size=8).digest()
        out.append(renumber.setdefault(prev, len(renumber)))
    return out
