"""TraceLab round traces (uw-syfi/TraceLab; Claude Code and Codex sessions): JSONL, one LLM round
per line with session_id, round_index, input_tokens_total, prefix_tokens (the provider's cache
read), output_tokens, timing_events[] and tools[] (emitted_at, result_at, wall latency).

There are no block hashes; the prompt's prefix structure comes from prefix_tokens: round k keeps
that many tokens of round k-1's prompt (in 16-token blocks) and appends fresh ones. Think time
before round k is the wait from round k-1's last event to round k's start, where round k starts
once its first input event is there and the previous round's tools have all returned.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from traces.errors import TraceError, require_int
from traces.fileio import get, iter_json_lines
from traces.model import STOP_END, STOP_TOOL, Call, Session, Trace

BLOCK = 16


def read_tracelab(paths: list[Path], source: str) -> Trace:
    rounds: dict[str, list[tuple[int, dict, Path, int]]] = {}
    for path in paths:
        for line, rec in iter_json_lines(path):
            sid = str(get(rec, "session_id", path, line))
            idx = require_int(get(rec, "round_index", path, line), path, line, "round_index")
            rounds.setdefault(sid, []).append((idx, rec, path, line))
    sessions = []
    t_first = None
    next_id = 1
    for sid, rows in rounds.items():
        rows.sort(key=lambda r: r[0])
        s = Session(sid)
        prev_ids = np.empty(0, np.int64)
        prev_end = prev_tools_done = None
        for idx, rec, path, line in rows:
            prompt = require_int(get(rec, "input_tokens_total", path, line), path, line, "input_tokens_total")
            output = require_int(get(rec, "output_tokens", path, line), path, line, "output_tokens")
            kept = require_int(rec.get("prefix_tokens") or 0, path, line, "prefix_tokens")
            events = get(rec, "timing_events", path, line)
            if not isinstance(events, list) or not events:
                raise TraceError(path, "expected a non-empty list", line, "timing_events")
            times = [_time(get(e, "timestamp", path, line, f"timing_events[{i}]."), path, line, f"timing_events[{i}].timestamp")
                     for i, e in enumerate(events)]
            start, end = min(times), max(times)
            if prev_tools_done is not None:
                start = max(start, prev_tools_done)
            if t_first is None or start < t_first:
                t_first = start
            tools = rec.get("tools") or []
            done = [_time(t["result_at"], path, line, "tools.result_at") for t in tools if t.get("result_at")]
            keep_blocks = min(kept // BLOCK, len(prev_ids))
            fresh = max(0, prompt // BLOCK - keep_blocks)
            ids = np.concatenate([prev_ids[:keep_blocks], np.arange(next_id, next_id + fresh, dtype=np.int64)])
            next_id += fresh
            think = (start - prev_end).total_seconds() if prev_end is not None else None
            s.calls.append(Call(sid, len(s.calls), prompt, output, arrival_s=start.timestamp(),
                                think_s=max(0.0, think) if think is not None else None, hash_ids=ids,
                                stop=STOP_TOOL if tools else STOP_END, model=rec.get("model")))
            prev_ids, prev_end = ids, end
            prev_tools_done = max(done) if done else None
        sessions.append(s)
    if not sessions:
        raise TraceError(paths[0], "no rounds", 1)
    t0 = t_first.timestamp()
    for s in sessions:
        for c in s.calls:
            c.arrival_s -= t0
        s.start_s = s.calls[0].arrival_s
    return Trace(sessions, source=source, format="tracelab", block_size=BLOCK, hash_scope="global",
                 meta={"prefix": "from provider-reported cache reads (prefix_tokens), in 16-token blocks"})


def _time(v: object, path: Path, line: int, field: str) -> datetime:
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        raise TraceError(path, f"not a timestamp: {v!r}", line, field) from None
