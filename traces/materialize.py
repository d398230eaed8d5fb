"""Materialization: exact token ids for every call, so an engine's prefix cache sees exactly the
trace's reuse.

Hash-block traces: each block id maps deterministically to that block's token ids (same id,
same ids, in every call and session of its hash scope), and the prompt's tail past its last full
block gets tokens unique to the call. Text traces: the messages rendered by the model's chat
template and tokenized.

Token counts can be scaled (`token_scale`) or capped (`max_context`) so that traces of 100k-token
prompts fit a small model; `scale_trace` records what it did in `trace.meta`, so results say it.
Scaling keeps the prefix structure: a block at position j contributes
floor((j+1)*b*F) - floor(j*b*F) tokens (b = block size, F = scale), a function of the position
alone, and chained ids fix the position, so shared prefixes stay shared. Text messages are
shortened to a fraction F of their characters.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from traces.model import Trace


@dataclass
class TokenSpace:
    """The token ids materialized prompts may use: [low, high) of the model's vocabulary, which
    keeps special tokens (BOS, EOS, chat markers) out of synthetic prompts."""
    low: int
    high: int
    seed: int = 0


def scale_trace(trace: Trace, token_scale: float = 1.0, max_context: int | None = None) -> Trace:
    """A copy of the trace with prompt and output counts scaled by `token_scale` (each at least 1)
    and capped so prompt + output <= max_context (the prompt keeps its prefix)."""
    if token_scale <= 0:
        raise ValueError("token_scale must be > 0")
    if max_context is not None and max_context < 2:
        raise ValueError("max_context must be >= 2")
    out = copy.copy(trace)
    out.meta = dict(trace.meta)
    prior = float(trace.meta.get("token_scale", 1.0))
    capped = 0
    sessions = []
    for s in trace.sessions:
        s2 = copy.copy(s)
        s2.calls = []
        for c in s.calls:
            c2 = copy.copy(c)
            c2.prompt_tokens = max(1, round(c.prompt_tokens * token_scale))
            c2.output_tokens = max(1, round(c.output_tokens * token_scale))
            if max_context is not None:
                c2.output_tokens = min(c2.output_tokens, max_context - 1)
                if c2.prompt_tokens + c2.output_tokens > max_context:
                    c2.prompt_tokens = max_context - c2.output_tokens
                    capped += 1
            if c.messages is not None and token_scale != 1.0:
                c2.messages = [_shorten(m, token_scale) for m in c.messages]
            s2.calls.append(c2)
        sessions.append(s2)
    out.sessions = sessions
    out.meta["token_scale"] = prior * token_scale
    if max_context is not None:
        out.meta["max_context"] = max_context
        out.meta["capped_calls"] = capped
    return out


def block_ends(n: int, block_size: int, scale: float = 1.0) -> np.ndarray:
    """Where each of a call's first n hash blocks ends in its scaled prompt: block j covers tokens
    [ends[j-1], ends[j]) with ends[j] = floor((j+1)*b*F) (ends[-1] = 0). A function of the position
    alone, so equal leading blocks cover equal leading tokens in every call. Blocks of zero tokens
    (b*F < 1) hold nothing. The one definition of scaled blocks: materialization and the Mooncake
    writer both use it."""
    return np.floor(np.arange(1, n + 1, dtype=np.float64) * (block_size * scale)).astype(np.int64)


def _shorten(msg: dict, f: float) -> dict:
    content = msg.get("content")
    if not isinstance(content, str) or f >= 1.0:
        return msg
    return {**msg, "content": content[: math.ceil(len(content) * f)]}


class Materializer:
    """Token ids for the calls of one trace. Hash-block traces need a TokenSpace; text traces a
    tokenizer with `encode_chat(messages, add_generation_prompt=True)` (traces.text_tokens)."""

    def __init__(self, trace: Trace, space: TokenSpace | None = None, tokenizer=None):
        self.trace = trace
        self.space = space
        self.tokenizer = tokenizer
        self.scale = float(trace.meta.get("token_scale", 1.0))
        self.max_context = trace.meta.get("max_context")
        self.roots = trace.root_of() if trace.hash_scope == "session" else None
        self._blocks: dict[tuple[str, int], np.ndarray] = {}

    def prompt_ids(self, session_index: int, call_index: int) -> list[int]:
        s = self.trace.sessions[session_index]
        c = s.calls[call_index]
        if any(x.messages for x in s.calls[: call_index + 1]):
            if self.tokenizer is None:
                raise ValueError("text trace: materialization needs a tokenizer")
            msgs = [m for x in s.calls[: call_index + 1] for m in (x.messages or [])]
            ids = list(self.tokenizer.encode_chat(msgs, add_generation_prompt=True))
            # Text prompts are rendered from the (shortened) messages, so their length is the
            # rendering's, not the scaled count; a context cap still holds.
            return ids[: self.max_context - c.output_tokens] if self.max_context is not None else ids
        if self.space is None:
            raise ValueError("hash-block trace: materialization needs a TokenSpace")
        scope = self.roots[s.id] if self.roots is not None else ""
        parts = []
        n = 0
        if c.hash_ids is not None and self.trace.block_size:
            ends = block_ends(len(c.hash_ids), self.trace.block_size, self.scale)
            for h, start, end in zip(c.hash_ids.tolist(), [0, *ends[:-1].tolist()], ends.tolist()):
                if end > start:
                    parts.append(self._block(scope, h, end - start))
                    n = end
                if n >= c.prompt_tokens:
                    break
        if n < c.prompt_tokens:  # the tail past the last full block is this call's own
            parts.append(self._tokens(f"tail|{s.id}|{c.index}".encode(), c.prompt_tokens - n))
        ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
        return ids[: c.prompt_tokens].tolist()

    def _block(self, scope: str, h: int, k: int) -> np.ndarray:
        key = (scope, h)
        got = self._blocks.get(key)
        if got is None or len(got) != k:
            got = self._blocks[key] = self._tokens(f"block|{scope}|{h}".encode(), k)
        return got

    def _tokens(self, key: bytes, k: int) -> np.ndarray:
        digest = hashlib.blake2b(key + self.space.seed.to_bytes(8, "little"), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return rng.integers(self.space.low, self.space.high, size=k, dtype=np.int64)
