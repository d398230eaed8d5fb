"""The OpenAI-compatible HTTP API's request validation and response bodies.

Requests are checked here, before anything reaches the engine: a bad request gets a 4xx with an
OpenAI-style body {"error": {"message", "type", "param", "code"}} and never disturbs other requests.
Unknown fields are ignored (as vLLM does: agent clients send many), but known fields the engine
cannot honour (n > 1, best_of, logprobs, penalties, logit_bias, beam search, structured output)
are rejected rather than silently dropped.

Extensions beyond OpenAI's API, following vLLM's names where vLLM has one: top_k, min_tokens,
ignore_eos, stop_token_ids, include_stop_str_in_output, skip_special_tokens, return_token_ids,
stream_options.continuous_usage_stats, and `session_id` (also the X-Session-Id header): the agent
session a request belongs to, for session-aware KV-cache retention.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from engines.reference.sequence import SamplingParams


class APIError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(self, message: str, status: int = 400, type: str = "BadRequestError",
                 param: str | None = None, code: str | int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = status if code is None else code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(message, 400, "BadRequestError", param)


# -- requests ------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = False
    min_tokens: int | None = 0
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    return_token_ids: bool | None = False
    session_id: str | None = None
    user: str | None = None
    # accepted only at values that change nothing
    n: int | None = 1
    best_of: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = 1.0
    min_p: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    use_beam_search: bool | None = False
    response_format: dict | None = None
    prompt_logprobs: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None


class ChatCompletionRequest(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None  # accepted and passed to the chat template; no tool parsing
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    echo: bool | None = False


def parse_request(cls: type[_Common], body: Any) -> _Common:
    """Validate a decoded JSON body; any problem becomes a 400 naming the offending field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ())]
        # union types report their members in loc; the field is what a client needs
        param = loc[0] if loc else None
        msg = err.get("msg", "invalid value")
        raise bad_request(f"invalid value for '{'.'.join(loc) or 'body'}': {msg}", param) from None
    _reject_unsupported(req)
    return req


def _reject_unsupported(req: _Common) -> None:
    def unsupported(param: str, what: str) -> APIError:
        return bad_request(f"{what} is not supported by this server", param)

    if req.n is not None and req.n != 1:
        raise unsupported("n", "n != 1")
    if req.best_of is not None and req.best_of != 1:
        raise unsupported("best_of", "best_of != 1")
    if req.use_beam_search:
        raise unsupported("use_beam_search", "beam search")
    for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0),
                          ("repetition_penalty", 1.0), ("min_p", 0.0)):
        v = getattr(req, name)
        if v is not None and v != neutral:
            raise unsupported(name, f"{name} != {neutral:g}")
    if req.logit_bias:
        raise unsupported("logit_bias", "logit_bias")
    if req.prompt_logprobs is not None:
        raise unsupported("prompt_logprobs", "prompt_logprobs")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise unsupported("response_format", "structured output (response_format)")
    if req.echo:
        raise unsupported("echo", "echo")
    if isinstance(req, CompletionRequest):
        if req.logprobs is not None:
            raise unsupported("logprobs", "logprobs")
        if req.suffix:
            raise unsupported("suffix", "suffix")
    else:
        if req.logprobs:
            raise unsupported("logprobs", "logprobs")
        if req.top_logprobs:
            raise unsupported("top_logprobs", "top_logprobs")
        if req.continue_final_message and req.add_generation_prompt:
            raise bad_request("continue_final_message and add_generation_prompt cannot both be true",
                              "continue_final_message")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")
    for field in ("max_tokens", "max_completion_tokens"):
        v = getattr(req, field, None)
        if v is not None and v < 1:
            raise bad_request(f"{field} must be at least 1, got {v}", field)
    if req.temperature is not None and req.temperature < 0:
        raise bad_request(f"temperature must be >= 0, got {req.temperature}", "temperature")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if req.top_k is not None and req.top_k < -1:
        raise bad_request(f"top_k must be -1, 0 (off) or positive, got {req.top_k}", "top_k")
    if req.min_tokens is not None and req.min_tokens < 0:
        raise bad_request(f"min_tokens must be >= 0, got {req.min_tokens}", "min_tokens")
    if isinstance(req.stop, list) and len(req.stop) > 64:
        raise bad_request("at most 64 stop strings", "stop")
    if req.stop is not None and any(s == "" for s in ([req.stop] if isinstance(req.stop, str) else req.stop)):
        raise bad_request("stop strings must not be empty", "stop")


def requested_max_tokens(req: _Common) -> int | None:
    """max_completion_tokens wins over the deprecated max_tokens (chat); None: not given."""
    mct = getattr(req, "max_completion_tokens", None)
    return mct if mct is not None else req.max_tokens


def completion_prompt(req: CompletionRequest) -> str | list[int]:
    """The one prompt of a completion request: text or token ids. Batches are rejected."""
    p = req.prompt
    if isinstance(p, str):
        if not p:
            raise bad_request("prompt must not be empty", "prompt")
        return p
    if not p:
        raise bad_request("prompt must not be empty", "prompt")
    if isinstance(p[0], int):
        return list(p)
    if len(p) != 1:
        raise bad_request("batched prompts (a list of several prompts) are not supported", "prompt")
    return completion_prompt(CompletionRequest.model_construct(prompt=p[0]))


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages for the chat template: content parts joined into one string, None as ""."""
    if not req.messages:
        raise bad_request("messages must not be empty", "messages")
    out = []
    for i, m in enumerate(req.messages):
        if not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] has no role", "messages")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type") in ("text", "input_text") \
                        and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise bad_request(f"messages[{i}]: content part of type {kind!r} is not supported "
                                      "(text only)", "messages")
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string or a list of parts", "messages")
        out.append({**m, "content": content})
    return out


def stop_strings(req: _Common) -> list[str]:
    if req.stop is None:
        return []
    return [req.stop] if isinstance(req.stop, str) else list(req.stop)


def sampling_params(req: _Common, max_tokens: int) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            seed=req.seed,
            ignore_eos=bool(req.ignore_eos),
            min_tokens=req.min_tokens or 0,
            stop_token_ids=list(req.stop_token_ids or []),
        )
    except ValueError as e:
        raise bad_request(str(e)) from None


# -- responses -----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class ResponseMeta:
    """What every body of one response shares."""

    id: str
    model: str
    chat: bool
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    def chunk(self, text: str, finish_reason: str | None, stop_reason: int | str | None = None,
              first: bool = False, token_ids: list[int] | None = None) -> dict:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        choice["stop_reason"] = stop_reason
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, u: dict) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": u}

    def full(self, text: str, finish_reason: str | None, stop_reason: int | str | None, u: dict,
             token_ids: list[int] | None = None, prompt_token_ids: list[int] | None = None) -> dict:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        choice["stop_reason"] = stop_reason
        if token_ids is not None:
            choice["token_ids"] = token_ids
        body = {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": u}
        if prompt_token_ids is not None:
            body["prompt_token_ids"] = prompt_token_ids
        return body
