"""Reader for mini-swe-agent trajectories, in the forms upstream publishes them.

Accepts a single `<instance>.traj.json`, a directory tree of them, or a JSONL bundle (one whole
trajectory per line, optionally gzipped: `trajectories_raw.jsonl.gz`). Each trajectory becomes one
Session (id = instance_id) with one Call per assistant message. The text is real, so prompt lengths,
output lengths and block hashes come from tokenizing it with the given ChatTokenizer.

Think time is estimated, not measured: a trajectory records each response's 'created' time (1 s
resolution; OpenRouter stamps the generation's start) and its completion tokens, so the gap between
two calls holds both the earlier call's generation time and the tool's run time. See _estimate_think.
"""
from __future__ import annotations

import gzip
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
from jinja2.exceptions import TemplateError
from tqdm import tqdm

from traces.errors import TraceError
from traces.model import STOP_END, STOP_TOOL, Call, Session, Trace
from traces.text_tokens import ChatTokenizer, ConversationTokens, chained_block_hashes

ROLES = ("system", "user", "assistant", "tool")
BATCH = 32  # trajectories tokenized together: parallel encoding without holding the whole file's tokens

# Some versions store `extra` as str(response) rather than a dict; these pull the two numbers out of
# either a dict repr ('created': 1763510516) or an object repr (created=1763510516). The top-level
# 'created' precedes the message text and usage follows it, hence first and last match.
_CREATED_RE = re.compile(r"""['"]?\bcreated['"]?\s*[:=]\s*(\d+(?:\.\d+)?)""")
_COMPLETION_RE = re.compile(r"""['"]?\bcompletion_tokens['"]?\s*[:=]\s*(\d+)""")


@dataclass
class _Traj:
    id: str
    model: str | None
    messages: list[dict]  # role and content only
    created: list[float | None]  # per assistant message
    completion: list[int | None]  # per assistant message


def read_swe(path: str | Path, tokenizer: ChatTokenizer, *, block_size: int = 16, progress: bool = False) -> Trace:
    """Read mini-swe-agent trajectories into a Trace (see the module docstring)."""
    path = Path(path)
    sessions: list[Session] = []
    timings: list[tuple[list[float | None], list[int | None]]] = []

    def finish(batch: list[_Traj], tokenized) -> None:
        try:
            convs = tokenized.result()
        except (ValueError, TemplateError) as e:  # a chat template that can't render these, or not additively
            raise TraceError(path, f"cannot tokenize with the chat template of {tokenizer.path}: {e}") from None
        for traj, conv in zip(batch, convs):
            sessions.append(_session(traj, conv, block_size))
            timings.append((traj.created, traj.completion))

    # Tokenization releases the GIL: a worker thread tokenizes one batch while this thread parses the
    # next and hashes the previous one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = None
        for batch in _batches(_trajectories(path, progress)):
            tokenized = pool.submit(tokenizer.conversations, [t.messages for t in batch])
            if in_flight:
                finish(*in_flight)
            in_flight = (batch, tokenized)
        if in_flight:
            finish(*in_flight)

    spt, clipped, unknown = _estimate_think(sessions, timings)
    meta = {
        "agent": "mini-swe-agent",
        "think_time_estimated": True,
        "think_time_method": (
            "gap between consecutive responses' 'created' (1 s resolution) minus the previous call's "
            "completion_tokens x seconds_per_token; seconds_per_token is the 5th percentile of "
            "gap / completion_tokens over the file; clipped at 0; call 0 has none"
        ),
        "seconds_per_token": spt,
        "think_clipped_fraction": clipped,
        "calls_without_timing": unknown,
        "tokenizer": str(tokenizer.path),
        "tokenizer_vocab_size": tokenizer.vocab_size,
    }
    return Trace(sessions, source=str(path), format="swe", block_size=block_size, hash_scope="global", meta=meta)


def _trajectories(path: Path, progress: bool) -> Iterator[_Traj]:
    seen: set[str] = set()
    for src, line, obj in tqdm(_records(path), desc="swe", unit="traj", disable=not progress):
        traj = _parse(obj, src, line)
        if traj.id in seen:
            raise TraceError(src, f"duplicate instance_id {traj.id!r}", line, "instance_id")
        seen.add(traj.id)
        yield traj


def _batches(trajs: Iterator[_Traj]) -> Iterator[list[_Traj]]:
    batch = []
    for t in trajs:
        batch.append(t)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _records(path: Path) -> Iterator[tuple[Path, int | None, object]]:
    """(file, 1-based line in a JSONL bundle or None, parsed JSON) for each trajectory."""
    if path.is_dir():
        files = sorted(path.rglob("*.traj.json"))
        if not files:
            raise TraceError(path, "no *.traj.json files under this directory")
        for f in files:
            yield f, None, _load_json(f)
    elif not path.exists():
        raise TraceError(path, "no such file or directory")
    elif path.name.removesuffix(".gz").endswith(".jsonl"):
        yield from _jsonl(path)
    else:
        yield path, None, _load_json(path)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _load_json(path: Path) -> object:
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise TraceError(path, f"cannot read (truncated or corrupt?): {e}") from None
    if not data.strip():
        raise TraceError(path, "empty file")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise TraceError(path, f"not valid JSON: {e}") from None


def _jsonl(path: Path) -> Iterator[tuple[Path, int, object]]:
    lineno, count = 0, 0
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    raise TraceError(path, f"not valid JSON: {e}", lineno) from None
                count += 1
                yield path, lineno, obj
    except (OSError, EOFError, zlib.error) as e:
        # The failing read is the one after the last complete line.
        raise TraceError(path, f"cannot read (truncated or corrupt?): {e}", lineno + 1) from None
    if count == 0:
        raise TraceError(path, "empty file: no trajectories")


def _parse(obj: object, path: Path, line: int | None) -> _Traj:
    if not isinstance(obj, dict):
        raise TraceError(path, "expected a JSON object (one trajectory)", line)
    msgs = obj.get("messages")
    if msgs is None:
        raise TraceError(path, "missing", line, "messages")
    if not isinstance(msgs, list) or not msgs:
        raise TraceError(path, "expected a non-empty list of messages", line, "messages")

    messages, created, completion = [], [], []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TraceError(path, "expected an object with role and content", line, where)
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise TraceError(path, "missing", line, where + ".role")
        if role not in ROLES:
            raise TraceError(path, f"expected one of {', '.join(ROLES)}, got {role!r}", line, where + ".role")
        if content is None:
            raise TraceError(path, "missing", line, where + ".content")
        if not isinstance(content, str):
            raise TraceError(path, f"expected a string, got {type(content).__name__}", line, where + ".content")
        messages.append({"role": role, "content": content})
        if role == "assistant":
            t, n = _timing(m.get("extra"))
            created.append(t)
            completion.append(n)
    if not created:
        raise TraceError(path, "no assistant message, so no LLM call", line, "messages")

    instance_id = obj.get("instance_id")
    if instance_id is None and line is None:  # a single file may rely on its name: <instance>.traj.json
        instance_id = path.name.removesuffix(".gz").removesuffix(".json").removesuffix(".traj")
    if not isinstance(instance_id, str) or not instance_id:
        raise TraceError(path, "missing" if instance_id is None else "expected a non-empty string", line, "instance_id")

    model = _get(obj, "info", "config", "model", "model_name")
    return _Traj(instance_id, model if isinstance(model, str) else None, messages, created, completion)


def _get(obj: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _timing(extra: object) -> tuple[float | None, int | None]:
    """(response 'created' unix seconds, completion tokens) from an assistant message's extra, where
    present. Optional metadata: anything missing or malformed just leaves the think time unknown."""
    if isinstance(extra, str):
        c = _CREATED_RE.search(extra)
        n = _COMPLETION_RE.findall(extra)
        return (float(c.group(1)) if c else None), (int(n[-1]) if n else None)
    created = _get(extra, "response", "created")
    tokens = _get(extra, "response", "usage", "completion_tokens")
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0  # noqa: E731
    return (float(created) if ok(created) else None), (int(tokens) if ok(tokens) else None)


def _session(traj: _Traj, conv: ConversationTokens, block_size: int) -> Session:
    # Hash the conversation once: a call's prompt is a prefix of it, so its hashes are a prefix too
    # (each call holds a view of the one array).
    hashes = chained_block_hashes(conv.ids[: conv.prompt_lens[-1]], block_size)
    calls = []
    last = len(conv.assistant_index) - 1
    prev = 0
    for k, (j, plen) in enumerate(zip(conv.assistant_index, conv.prompt_lens)):
        calls.append(
            Call(
                session_id=traj.id,
                index=k,
                prompt_tokens=plen,
                output_tokens=conv.message_ends[j] - plen,  # the reply's content and its end-of-turn token
                hash_ids=hashes[: plen // block_size],
                messages=traj.messages[prev:j],  # call 0: system + task; then previous reply + observation
                stop=STOP_END if k == last else STOP_TOOL,  # the last reply is the submit
                model=traj.model,
            )
        )
        prev = j
    return Session(id=traj.id, calls=calls)


def _estimate_think(sessions: list[Session], timings: list[tuple[list, list]]) -> tuple[float, float, int]:
    """Set each call's think_s to its estimated tool time; return (seconds per token, fraction of gaps
    clipped at 0, calls without timing).

    The gap between responses k-1 and k is (tool time) + (generation time of reply k-1's
    completion_tokens, reasoning included) + overheads. Generation speed is taken over the whole file
    at its fast end, the 5th percentile of gap / completion_tokens (as abench does): the calls whose
    gap was almost all generation. Subtracting completion_tokens x that leaves an estimate of the tool
    time, clipped at 0 (a gap shorter than the estimate also hides 1 s rounding of 'created')."""
    ratios = []
    for created, completion in timings:
        for k in range(1, len(created)):
            t0, t1, n = created[k - 1], created[k], completion[k - 1]
            if t0 is not None and t1 is not None and n:
                ratios.append((t1 - t0) / n)
    spt = max(0.0, float(np.percentile(ratios, 5))) if ratios else 0.0

    known = clipped = unknown = 0
    for session, (created, completion) in zip(sessions, timings):
        for k, call in enumerate(session.calls):
            if k == 0:
                continue  # nothing precedes the first call within its session
            t0, t1, n = created[k - 1], created[k], completion[k - 1]
            if t0 is None or t1 is None or n is None:
                unknown += 1
                continue
            think = (t1 - t0) - n * spt
            known += 1
            if think < 0:
                clipped += 1
            call.think_s = max(0.0, think)
    return spt, (clipped / known if known else 0.0), unknown
