"""A CallInfo from an OpenAI request: what the gateway hands a policy."""
from __future__ import annotations

from typing import Any, Mapping

from bench.tiers.routing.interface import CallInfo, estimate_tokens


def call_info_from_request(body: Mapping[str, Any], headers: Mapping[str, Any]) -> CallInfo:
    """CallInfo from an OpenAI request body and its headers.

    /v1/completions: a token-id prompt gives exact prompt_tokens and no text; a string prompt (or
    a list of strings) is the text, its tokens estimated. /v1/chat/completions: the text is the
    latest user or tool message (what the agent is being asked now; earlier turns would make
    every late call look like all of its history), prompt_tokens an estimate over every message.
    Headers: x-tierbench-session (else x-session-id), x-tierbench-call-index,
    x-tierbench-complexity."""
    h = {_s(k).lower(): _s(v) for k, v in (headers or {}).items()}
    tokens: int | None = None
    text = ""
    prompt = body.get("prompt") if isinstance(body, Mapping) else None
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if isinstance(messages, list):
        texts = [(m.get("role"), _message_text(m)) for m in messages if isinstance(m, Mapping)]
        latest = next((t for role, t in reversed(texts) if role in ("user", "tool", "function") and t), None)
        text = latest if latest is not None else next((t for _, t in reversed(texts) if t), "")
        tokens = sum(estimate_tokens(t) for _, t in texts)
    elif isinstance(prompt, str):
        text, tokens = prompt, estimate_tokens(prompt)
    elif isinstance(prompt, list) and prompt:
        if all(_is_token(x) for x in prompt):
            tokens = len(prompt)
        elif all(isinstance(x, list) and all(_is_token(y) for y in x) for x in prompt):
            tokens = sum(len(x) for x in prompt)  # a batch of token-id prompts
        elif all(isinstance(x, str) for x in prompt):
            text = "\n".join(prompt)
            tokens = estimate_tokens(text)
    idx = h.get("x-tierbench-call-index")
    try:
        call_index = int(idx) if idx not in (None, "") else None
    except ValueError:
        call_index = None
    cx = (h.get("x-tierbench-complexity") or "").strip().lower() or None
    return CallInfo(prompt_tokens=tokens, prompt_text=text, complexity=cx,
                    session=h.get("x-tierbench-session") or h.get("x-session-id") or None,
                    call_index=call_index, headers=h)


def _message_text(m: Mapping[str, Any]) -> str:
    """A chat message's text: string content, the text parts of list content, and tool-call
    arguments (they are prompt tokens too)."""
    c = m.get("content")
    parts: list[str] = []
    if isinstance(c, str):
        parts.append(c)
    elif isinstance(c, list):
        parts.extend(p["text"] for p in c if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    for call in m.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
            parts.append(fn["arguments"])
    return "\n".join(p for p in parts if p)


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _s(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)
