"""Mooncake JSONL traces: the FAST'25 release's form, which vLLM (`--dataset-name timed_trace`) and
AIPerf (`--custom-dataset-type mooncake_trace`) replay. One request per line: timestamp (ms),
input_length, output_length, hash_ids (prefix blocks, global ids).

The hash-id convention (Mooncake's own traces, vLLM's timed_trace, AIPerf's "last block partial"
layout): a row of input_length n with block size B has exactly ceil(n / B) hash ids, block k
covering tokens [k*B, min((k+1)*B, n)); the last one may be partial, and a partial block has an
id of its own (AIPerf refuses one id at two sizes). Equal ids mean equal content.

Reading also takes AIPerf's multi-turn form: rows with a session_id are the calls of that session
in file order, a `delay` (ms) before a call being its think time; rows without one are one-call
sessions arriving at their timestamp. The block size is not in the file (512 in Mooncake's
traces): tierbench's writer says it in a companion note, OUT.note.json, which the reader reads.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import orjson

from traces.errors import TraceError, require_int, require_number
from traces.fileio import get, iter_json_lines
from traces.materialize import block_ends
from traces.model import Call, Session, Trace
from traces.mooncake_check import check_written
from traces.stats import common_prefix_len

MOONCAKE_BLOCK = 512
CONVENTION = ("ceil(input_length / block_size) hash ids per row; block k covers tokens "
              "[k*block_size, min((k+1)*block_size, input_length)), the last one possibly partial "
              "(Mooncake's traces, vLLM's timed_trace, AIPerf's mooncake_trace); ids numbered from 0 "
              "in first-seen order, equal ids = equal content")


def read_mooncake(paths: list[Path], source: str, block_size: int | None = None) -> Trace:
    """The rows of every file as sessions (see the module doc). The block size: `block_size`, else
    the one tierbench's companion note FILE.note.json gives, else Mooncake's 512."""
    if block_size is None:
        block_size = _noted_block_size(paths) or MOONCAKE_BLOCK
    sessions: list[Session] = []
    by_id: dict[str, Session] = {}
    last = None  # timestamps of one-call rows never go backwards
    for path in paths:
        for line, rec in iter_json_lines(path):
            if isinstance(rec, dict) and "input_length" not in rec and ("text_input" in rec or "messages" in rec):
                raise TraceError(path, "a text prompt row: tierbench reads Mooncake rows with token counts",
                                 line, "input_length")
            prompt = require_int(get(rec, "input_length", path, line), path, line, "input_length")
            output = require_int(get(rec, "output_length", path, line), path, line, "output_length")
            ids = _hash_ids(rec.get("hash_ids"), path, line)
            ts = rec.get("timestamp")
            ts = require_number(ts, path, line, "timestamp") / 1000.0 if ts is not None else None
            sid = rec.get("session_id")
            if sid is None:
                if ts is None:
                    get(rec, "timestamp", path, line)  # neither a session nor a time: name the missing key
                if last is not None and ts < last:
                    raise TraceError(path, f"timestamp goes backwards ({ts * 1000:g} < {last * 1000:g})", line,
                                     "timestamp")
                last = ts
                sid = f"r{len(sessions)}"
                sessions.append(Session(sid, [Call(sid, 0, prompt, output, arrival_s=ts, hash_ids=ids)], start_s=ts))
                continue
            sid = str(sid)
            s = by_id.get(sid)
            if s is None:
                s = by_id[sid] = Session(sid, start_s=ts)
                sessions.append(s)
            prev = s.calls[-1].arrival_s if s.calls else None
            if ts is not None and prev is not None and ts < prev:
                raise TraceError(path, f"timestamp goes backwards within session '{sid}' ({ts * 1000:g} < "
                                       f"{prev * 1000:g})", line, "timestamp")
            delay = rec.get("delay")
            think = require_number(delay, path, line, "delay") / 1000.0 if delay is not None and s.calls else None
            s.calls.append(Call(sid, len(s.calls), prompt, output, arrival_s=ts, think_s=think, hash_ids=ids))
    meta = {} if all(s.start_s is not None for s in sessions) else {
        "arrivals": "closed loop: AIPerf session rows without timestamps (delays are think times)"}
    return Trace(sessions, source=source, format="mooncake", block_size=block_size, hash_scope="global", meta=meta)


def _noted_block_size(paths: list[Path]) -> int | None:
    sizes = set()
    for path in paths:
        note = note_path_of(path)
        if note.is_file():
            try:
                sizes.add(int(orjson.loads(note.read_bytes())["block_size"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise TraceError(note, "expected a JSON object with an integer block_size", None, "block_size") from None
    if len(sizes) > 1:
        raise TraceError(paths[0], f"files of different block sizes {sorted(sizes)} (their .note.json)", None,
                         "block_size")
    return sizes.pop() if sizes else None


def _hash_ids(hashes: object, path: Path, line: int) -> np.ndarray:
    if hashes is None:
        return np.empty(0, np.int64)
    if not isinstance(hashes, list):
        raise TraceError(path, "expected a list of integers", line, "hash_ids")
    try:
        return np.asarray(hashes, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise TraceError(path, "expected a list of integers", line, "hash_ids") from None


# --------------------------------------------------------------------------- writing

def schedule(trace: Trace) -> tuple[list[tuple[float, int, Session, Call]], int]:
    """Every call with its send time (s) and its position in session order, sorted by time (ties
    keep session order), and how many times had to be derived. Recorded arrivals are kept; a
    closed-loop call is sent at its session's start plus the think times before it: the model's
    service time is unknown and not added, so such a schedule is denser than the recording. A
    subagent without a start begins at the parent call that spawned it."""
    out = []
    clocks: dict[tuple[str, int], float] = {}
    derived = 0
    pos = 0
    for s in trace.sessions:
        clock = s.start_s
        if clock is None:
            clock = clocks.get((s.parent_id, s.parent_call), 0.0) if s.parent_id is not None else 0.0
        for c in s.calls:
            if c.arrival_s is not None:
                clock = c.arrival_s
            else:
                derived += 1
                clock += (c.think_s or 0.0) if c.index > 0 else 0.0
            clocks[(s.id, c.index)] = clock
            out.append((clock, pos, s, c))
            pos += 1
    out.sort(key=lambda r: (r[0], r[1]))
    return out, derived


class _Blocks:
    """The hash ids of the written rows. Block k of a call is a chained digest of the source blocks
    under it (their ids, where they sit once the trace's token scale has resized them:
    materialize.block_ends), its length, and, where it reaches past the source's blocks, the call
    itself (an un-hashed tail is the call's own, as materialization makes it). Equal digests are
    equal content, so prefixes shared in the source stay shared, in proportion; digests are
    numbered from 0 in first-seen order."""

    def __init__(self, trace: Trace, block_size: int):
        self.size = block_size
        self.src = trace.block_size or 0
        self.scale = float(trace.meta.get("token_scale", 1.0))
        self.roots = trace.root_of() if trace.hash_scope == "session" else None
        self.number: dict[bytes, int] = {}
        # per session, its last call: (source ids, their ends, digests, numbers, prompt tokens)
        self.prev: dict[str, tuple[np.ndarray, np.ndarray, list[bytes], list[int], int]] = {}

    def ids(self, s: Session, c: Call) -> list[int]:
        B, n = self.size, c.prompt_tokens
        raw = c.hash_ids if c.hash_ids is not None and self.src else np.empty(0, np.int64)
        raw_ends = block_ends(len(raw), self.src, self.scale)
        starts = np.concatenate([[0], raw_ends[:-1]]).astype(np.int64)
        keep = (raw_ends > starts) & (starts < n)  # empty blocks hold nothing; blocks past the prompt are cut
        ids, starts, ends = raw[keep], starts[keep], np.minimum(raw_ends[keep], n)
        covered = int(ends[-1]) if len(ends) else 0
        digests: list[bytes] = []
        numbers: list[int] = []
        prev = self.prev.get(s.id)
        if prev is not None:  # whole blocks inside the prefix shared with the session's previous call
            p_raw, p_ends, p_dig, p_num, p_n = prev
            m = common_prefix_len(raw, p_raw)
            k = min(int(p_ends[m - 1]) if m else 0, n, p_n) // B
            digests, numbers = p_dig[:k], p_num[:k]
        scope = (self.roots[s.id] if self.roots is not None else "").encode()
        h = digests[-1] if digests else hashlib.blake2b(scope, digest_size=8).digest()
        tag = f"tail|{s.id}|{c.index}".encode()
        lo = np.arange(len(digests), -(-n // B), dtype=np.int64) * B
        hi = np.minimum(lo + B, n)
        first, stop = np.searchsorted(ends, lo, "right"), np.searchsorted(starts, hi, "left")
        for a, b, j0, j1 in zip(lo.tolist(), hi.tolist(), first.tolist(), stop.tolist()):
            h = hashlib.blake2b(h + ids[j0:j1].tobytes() + (b - a).to_bytes(4, "little")
                                + (tag if b > covered else b""), digest_size=8).digest()
            digests.append(h)
            numbers.append(self.number.setdefault(h, len(self.number)))
        self.prev[s.id] = (raw, raw_ends, digests, numbers, n)
        return numbers


def mooncake_rows(trace: Trace, block_size: int = MOONCAKE_BLOCK) -> tuple[list[dict], list, dict]:
    """(rows as written, the schedule they follow: (time, position, session, call) per row, notes)."""
    if block_size < 1:
        raise TraceError(trace.source, f"block size must be >= 1, got {block_size}", None, "block_size")
    sched, derived = schedule(trace)
    blocks = _Blocks(trace, block_size)
    rows = [{"timestamp": int(round(t * 1000)), "input_length": c.prompt_tokens, "output_length": c.output_tokens,
             "hash_ids": blocks.ids(s, c)} for t, _, s, c in sched]
    notes = {"block_size": block_size, "hash_ids": CONVENTION, "requests": len(rows),
             "source": trace.source, "source_format": trace.format,
             "source_block_size": trace.block_size, "source_hash_scope": trace.hash_scope}
    for key in ("token_scale", "max_context", "capped_calls"):
        if key in trace.meta:
            notes[key] = trace.meta[key]
    if derived:
        notes["arrivals"] = (f"{derived} of {len(rows)} calls had no recorded arrival (closed loop): their "
                             "timestamps are the session's start plus the think times before them, without "
                             "the model's service time, so the schedule is denser than the recording")
    elif trace.meta.get("arrivals"):
        notes["arrivals"] = str(trace.meta["arrivals"])
    notes["replay"] = {
        "aiperf": f"--input-file FILE --custom-dataset-type mooncake_trace --fixed-schedule --isl-block-size {block_size}",
        "vllm": f"--dataset-name timed_trace --dataset-path FILE --timed-trace-chunk-hash-size {block_size} "
                "--timed-trace-sec-multiplier 0.001",
    }
    return rows, sched, notes


def write_mooncake(trace: Trace, out: Path, block_size: int = MOONCAKE_BLOCK) -> dict:
    """Write the trace as Mooncake JSONL (see the module doc) and its companion note OUT.note.json,
    after reading the written file back and checking it against the trace (traces.mooncake_check:
    every row's lengths and hash-id count, and its prefix reuse against the source's). Nothing
    appears at `out` unless the check passes. Returns the notes, with the check's figures."""
    out = Path(out)
    rows, sched, notes = mooncake_rows(trace, block_size)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for r in rows:
                f.write(orjson.dumps(r))
                f.write(b"\n")
        back = read_mooncake([tmp], str(out), block_size)
        notes["check"] = check_written(back, out, trace, sched, block_size)
        note_path = note_path_of(out)
        note_path.write_bytes(orjson.dumps(notes, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return notes


def note_path_of(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".note.json")


def hash_ids_needed(input_length: int, block_size: int) -> int:
    """The convention's number of hash ids for a row (the module doc)."""
    return math.ceil(input_length / block_size)
