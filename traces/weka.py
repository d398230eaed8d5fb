"""WEKA kv-cache-tester traces (real Claude Code sessions).

Upstream publishes one JSON file per conversation (traces/trace_NNNN.json); the shared copy
bundles them one per line in traces.jsonl.gz. Both are accepted, and so is a directory of either.
Schema (upstream docs/TRACE_FORMAT.md): id, block_size, hash_id_scope, tool_tokens,
system_tokens, requests[]; a request has t (s since the conversation started), type, model,
in, out, hash_ids (chained 64-token block hashes), stop, api_time, think_time; a request of
type "subagent" nests its own requests[] whose t counts from the spawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from traces.errors import TraceError, require_int, require_number
from traces.fileio import get, iter_json_lines, read_json
from traces.model import STOP_END, STOP_TOOL, Call, Session, Trace

_STOPS = {"tool_use": STOP_TOOL, "end_turn": STOP_END}


def read_weka(paths: list[Path], source: str, progress: bool = False) -> Trace:
    """Read WEKA traces from files that each hold one conversation (.json) or one per line (.jsonl[.gz])."""
    sessions: list[Session] = []
    block_sizes: set[int] = set()
    scopes: set[str] = set()
    prefix_tokens: list[int] = []
    bar = tqdm(desc="reading WEKA sessions", unit=" sessions", disable=not progress, leave=False)
    for path in paths:
        if _is_single_json(path):
            records = [(None, read_json(path))]
        else:
            records = iter_json_lines(path)
        for line, rec in records:
            bs = require_int(get(rec, "block_size", path, line), path, line, "block_size", minimum=1)
            block_sizes.add(bs)
            scopes.add(str(rec.get("hash_id_scope", "local")))
            sid = str(get(rec, "id", path, line))
            shared = int(rec.get("tool_tokens") or 0) + int(rec.get("system_tokens") or 0)
            if shared:
                prefix_tokens.append(shared)
            _read_session(sid, get(rec, "requests", path, line), path, line, "requests", 0.0, None, None, sessions)
            bar.update(1)
    bar.close()
    if not sessions:
        raise TraceError(paths[0] if paths else source, "no sessions found", None, "requests")
    if len(block_sizes) > 1:
        raise TraceError(source, f"mixed block sizes {sorted(block_sizes)}", None, "block_size")
    meta = {"arrivals": "sessions' absolute start times are not recorded; every session starts at 0"}
    if prefix_tokens:
        meta["shared_prefix_tokens"] = int(np.median(prefix_tokens))  # system + tool definitions
    scope = "global" if scopes == {"global"} else "session"
    return Trace(sessions, source=source, format="weka", block_size=block_sizes.pop(), hash_scope=scope, meta=meta)


def _is_single_json(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".json") or name.endswith(".json.gz")


def _read_session(sid: str, requests: object, path: Path, line: int | None, where: str, t0: float,
                  parent_id: str | None, parent_call: int | None, out: list[Session]) -> None:
    """Append the session (and, after it, its subagent sessions) to `out`."""
    if not isinstance(requests, list):
        raise TraceError(path, "expected a list", line, where)
    session = Session(sid, parent_id=parent_id, parent_call=parent_call, start_s=t0)
    out.append(session)
    last_t = -1.0
    n_sub = 0
    for i, r in enumerate(requests):
        w = f"{where}[{i}]."
        t = require_number(get(r, "t", path, line, w), path, line, w + "t")
        if t < last_t:
            raise TraceError(path, f"timestamp goes backwards ({t:g} < {last_t:g})", line, w + "t")
        last_t = t
        if r.get("type") == "subagent":
            n_sub += 1
            agent = str(r.get("agent_id") or f"agent_{n_sub}")
            child = f"{sid}/{agent}#{n_sub}"
            _read_session(child, get(r, "requests", path, line, w), path, line, w + "requests",
                          t0 + t, sid, len(session.calls) - 1, out)
            continue
        prompt = require_int(get(r, "in", path, line, w), path, line, w + "in")
        output = require_int(get(r, "out", path, line, w), path, line, w + "out")
        hashes = r.get("hash_ids")
        if hashes is not None and not isinstance(hashes, list):
            raise TraceError(path, "expected a list of integers", line, w + "hash_ids")
        try:
            ids = np.asarray(hashes if hashes is not None else [], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise TraceError(path, "expected a list of integers", line, w + "hash_ids") from None
        think = r.get("think_time")
        think_s = None
        if session.calls and think is not None:
            think_s = require_number(think, path, line, w + "think_time")
        session.calls.append(Call(
            session_id=sid, index=len(session.calls), prompt_tokens=prompt, output_tokens=output,
            arrival_s=t0 + t, think_s=think_s, hash_ids=ids, stop=_STOPS.get(r.get("stop") or ""), model=r.get("model"),
        ))
