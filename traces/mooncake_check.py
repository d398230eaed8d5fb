"""A written Mooncake file checked against the trace it came from, by reading it back with
tierbench's own reader: every row has the convention's number of hash ids (traces.mooncake), the
trace's token counts and send time, and no row claims more prefix reuse than the source gives it.

Reuse is compared per row, in the file's order, with an infinite prefix cache (traces.stats):
the source's cached blocks of a call, resized by the trace's token scale (materialize.block_ends),
are the most the written row can have cached; whole written blocks inside that extent are what it
should have (a written block that only partly lies in it is new). The figures returned say how
much reuse the written blocks keep beside the source's.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from traces.errors import TraceError
from traces.model import Call, Trace
from traces.stats import prefix_reuse


def check_written(back: Trace, path: Path, trace: Trace, sched: list, block_size: int) -> dict:
    """`back`: the file at `path` as traces.mooncake.read_mooncake reads it. TraceError naming the
    row (its line) and field on the first inconsistency; else figures: rows, the reuse written,
    the source's scaled to the written lengths, and what whole blocks of `block_size` can keep."""
    rows = list(back.calls())
    if len(rows) != len(sched):
        raise TraceError(path, f"{len(rows)} rows read back, {len(sched)} written")
    for i, (row, (t, _, _, c)) in enumerate(zip(rows, sched)):
        line = i + 1
        if len(row.hash_ids) != math.ceil(row.prompt_tokens / block_size):
            raise TraceError(path, f"{len(row.hash_ids)} hash ids for input_length {row.prompt_tokens} in "
                                   f"{block_size}-token blocks", line, "hash_ids")
        if row.prompt_tokens != c.prompt_tokens:
            raise TraceError(path, f"{row.prompt_tokens}, the trace has {c.prompt_tokens}", line, "input_length")
        if row.output_tokens != c.output_tokens:
            raise TraceError(path, f"{row.output_tokens}, the trace has {c.output_tokens}", line, "output_length")
        if abs(row.arrival_s - round(t * 1000) / 1000) > 1e-6:
            raise TraceError(path, f"{row.arrival_s * 1000:g} ms, scheduled at {t * 1000:g}", line, "timestamp")
    got = prefix_reuse(back)[0]  # one session per row, in file order
    most = source_cached(trace, sched)
    over = np.flatnonzero(got > most)
    if over.size:
        i = int(over[0])
        raise TraceError(path, f"{got[i]} tokens cached by an infinite prefix cache, more than the source's "
                               f"{most[i]}", i + 1, "hash_ids")
    whole = most // block_size * block_size
    prompt = max(1, sum(r.prompt_tokens for r in rows))
    return {"rows": len(rows), "inconsistent_rows": 0, "block_size": block_size,
            "reuse_written": float(got.sum() / prompt),
            "reuse_source_scaled": float(most.sum() / prompt),
            "reuse_whole_blocks": float(whole.sum() / prompt),
            "rows_below_whole_blocks": int((got < whole).sum())}


def source_cached(trace: Trace, sched: list) -> np.ndarray:
    """Per scheduled call (sched order): the prompt tokens an infinite prefix cache serves it in the
    source, taking calls in the schedule's order, in the trace's scaled tokens: its leading cached
    source blocks resized by the token scale, at most its prompt."""
    # traces.stats counts in tokens of whole blocks; a view with 1-token blocks and prompts of one
    # token per block counts the cached blocks themselves, at the schedule's send times.
    when = {pos: t for t, pos, _, _ in sched}
    view = copy.copy(trace)
    view.block_size = 1
    view.sessions = []
    pos = 0
    for s in trace.sessions:
        s2 = copy.copy(s)
        s2.calls = []
        for c in s.calls:
            ids = c.hash_ids if c.hash_ids is not None else np.empty(0, np.int64)
            s2.calls.append(Call(c.session_id, c.index, len(ids), c.output_tokens, arrival_s=when[pos], hash_ids=ids))
            pos += 1
        view.sessions.append(s2)
    blocks = prefix_reuse(view)[0] if trace.block_size else np.zeros(pos, np.int64)
    scaled = trace.block_size * float(trace.meta.get("token_scale", 1.0)) if trace.block_size else 0.0
    out = np.empty(len(sched), np.int64)
    for i, (_, p, _, c) in enumerate(sched):
        # the end of block m-1 (materialize.block_ends), computed alike
        out[i] = min(math.floor(blocks[p] * scaled), c.prompt_tokens)
    return out
