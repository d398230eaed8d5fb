"""tierbench's native trace format: JSONL, one call per line, sessions in order.

An optional first line is a header: {"tierbench_trace": 1, "block_size": 64, "hash_scope":
"global"|"session", "meta": {...}}. Every other line is one call:

    {"session": "s1", "index": 0, "prompt_tokens": 1200, "output_tokens": 80,
     "arrival_s": 0.0, "think_s": null, "hash_ids": [1, 2, ...], "messages": null,
     "stop": "tool_call", "model": null, "complexity": "simple",
     "parent": null, "parent_call": null}

Required: session, index, prompt_tokens, output_tokens. The calls of a session appear in index
order (0, 1, 2, ...), arrivals never go backwards within a session. `messages` holds the chat
messages appended since the previous call (text traces); `parent`/`parent_call` mark subagents.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from traces.errors import TraceError, require_int, require_number
from traces.fileio import get, iter_json_lines
from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL, Call, Session, Trace

VERSION = 1


def read_native(paths: list[Path], source: str) -> Trace:
    sessions: dict[str, Session] = {}
    header: dict = {}
    for path in paths:
        for line, rec in iter_json_lines(path):
            if isinstance(rec, dict) and "tierbench_trace" in rec:
                header = rec
                continue
            sid = str(get(rec, "session", path, line))
            s = sessions.get(sid)
            if s is None:
                parent = rec.get("parent")
                s = sessions[sid] = Session(sid, parent_id=str(parent) if parent is not None else None,
                                            parent_call=rec.get("parent_call"))
            s.calls.append(_call(rec, sid, s, path, line))
            if s.start_s is None and s.calls[0].arrival_s is not None:
                s.start_s = s.calls[0].arrival_s
    if not sessions:
        raise TraceError(paths[0], "no calls (only a header)", 1)
    bs = header.get("block_size")
    return Trace(list(sessions.values()), source=source, format="native",
                 block_size=int(bs) if bs else None, hash_scope=header.get("hash_scope", "global"),
                 meta=dict(header.get("meta") or {}))


def _call(rec: dict, sid: str, s: Session, path: Path, line: int) -> Call:
    index = require_int(get(rec, "index", path, line), path, line, "index")
    if index != len(s.calls):
        raise TraceError(path, f"session '{sid}' expects call index {len(s.calls)} here, got {index}", line, "index")
    arrival = rec.get("arrival_s")
    if arrival is not None:
        arrival = require_number(arrival, path, line, "arrival_s")
        prev = s.calls[-1].arrival_s if s.calls else None
        if prev is not None and arrival < prev:
            raise TraceError(path, f"timestamp goes backwards ({arrival:g} < {prev:g})", line, "arrival_s")
    think = rec.get("think_s")
    if think is not None:
        think = require_number(think, path, line, "think_s")
    hashes = rec.get("hash_ids")
    ids = None
    if hashes is not None:
        try:
            ids = np.asarray(hashes, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise TraceError(path, "expected a list of integers", line, "hash_ids") from None
    stop = rec.get("stop")
    if stop not in (None, STOP_TOOL, STOP_END):
        raise TraceError(path, f"expected '{STOP_TOOL}', '{STOP_END}' or null, got {stop!r}", line, "stop")
    cx = rec.get("complexity")
    if cx not in (None, *COMPLEXITIES):
        raise TraceError(path, f"expected one of {COMPLEXITIES} or null, got {cx!r}", line, "complexity")
    msgs = rec.get("messages")
    if msgs is not None and not (isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs)):
        raise TraceError(path, "expected a list of {role, content} objects", line, "messages")
    return Call(
        session_id=sid, index=index,
        prompt_tokens=require_int(get(rec, "prompt_tokens", path, line), path, line, "prompt_tokens"),
        output_tokens=require_int(get(rec, "output_tokens", path, line), path, line, "output_tokens"),
        arrival_s=arrival, think_s=think, hash_ids=ids, messages=msgs, stop=stop,
        model=rec.get("model"), complexity=cx,
    )


def write_native(trace: Trace, out: Path) -> None:
    with open(out, "wb") as f:
        f.write(orjson.dumps({"tierbench_trace": VERSION, "block_size": trace.block_size,
                              "hash_scope": trace.hash_scope, "meta": trace.meta,
                              "source": trace.source, "format": trace.format}))
        f.write(b"\n")
        for s in trace.sessions:
            for c in s.calls:
                rec = {"session": s.id, "index": c.index, "prompt_tokens": c.prompt_tokens,
                       "output_tokens": c.output_tokens, "arrival_s": c.arrival_s, "think_s": c.think_s,
                       "hash_ids": c.hash_ids.tolist() if c.hash_ids is not None else None,
                       "messages": c.messages, "stop": c.stop, "model": c.model, "complexity": c.complexity}
                if s.parent_id is not None:
                    rec["parent"] = s.parent_id
                    rec["parent_call"] = s.parent_call
                f.write(orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY))
                f.write(b"\n")
