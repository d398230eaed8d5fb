"""Text in and out of the server: the checkpoint's tokenizer and chat template (ServerTokenizer),
building a request's prompt ids (prompt_token_ids), and vLLM-style incremental detokenization
(IncrementalDetokenizer).

Completions prompts are encoded with special tokens (BOS); chat prompts are rendered with the
model's chat template (which carries BOS itself) and encoded without. Output is detokenized
incrementally as vLLM does: decode a short window of ids, emit the new suffix once it no longer
ends in U+FFFD (a partial UTF-8 character).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from engines.reference.api_protocol import APIError, bad_request, chat_messages, completion_prompt

DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the first output tokens (as vLLM)
INLINE_TOKENIZE_CHARS = 16384  # longer texts are tokenized off the event loop


class ServerTokenizer:
    """A checkpoint's tokenizer.json plus its chat template, with the slice of the HF tokenizer
    interface the server uses (encode, decode, apply_chat_template), so a transformers tokenizer
    can be passed to build_app instead. The template is rendered like transformers does: a
    sandboxed jinja2 environment with trim_blocks, lstrip_blocks, loop controls, `tojson`,
    `raise_exception` and `strftime_now`."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        d = Path(model_dir)
        if not (d / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{d / 'tokenizer.json'} not found (pass a checkpoint directory "
                                    "or --tokenizer DIR)")
        self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.bos_token = _token_str(cfg.get("bos_token"))
        self.eos_token = _token_str(cfg.get("eos_token"))
        self.chat_template = self._find_template(d, cfg)
        self._compiled = None

    @staticmethod
    def _find_template(d: Path, cfg: dict) -> str | None:
        if (d / "chat_template.jinja").is_file():
            return (d / "chat_template.jinja").read_text(encoding="utf-8")
        t = cfg.get("chat_template")
        if t is None and (d / "chat_template.json").is_file():
            t = json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        if isinstance(t, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
            t = named.get("default") or next(iter(named.values()), None)
        return t

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, tokenize: bool = False,
                            **kwargs: Any) -> str | list[int]:
        if not self.chat_template:
            raise ValueError("this model has no chat template; use /v1/completions")
        if self._compiled is None:
            self._compiled = _jinja_env().from_string(self.chat_template)
        text = self._compiled.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def warm_up_tokenizer(tokenizer: Any) -> float:
    """Compile the chat template and run the tokenizer once, as the server's warm-up: otherwise
    the first chat request pays for the template's compilation. Returns the seconds it took."""
    t0 = time.monotonic()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "warm-up"}], tokenize=False)
        tokenizer.encode(text, add_special_tokens=False)
    tokenizer.decode(tokenizer.encode("warm-up"))
    return time.monotonic() - t0


def _token_str(t: Any) -> str | None:
    return t.get("content") if isinstance(t, dict) else t


def _jinja_env():
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def tokenizer_vocab_size(tokenizer: Any) -> int | None:
    """Ids the tokenizer knows, added tokens included (len() of an HF tokenizer)."""
    try:
        return len(tokenizer)
    except TypeError:
        v = getattr(tokenizer, "vocab_size", None)
        return v if isinstance(v, int) else None


async def prompt_token_ids(tokenizer: Any, req: Any, chat: bool) -> list[int]:
    """The prompt of a parsed request as token ids: chat messages through the chat template,
    completion text encoded with BOS, token-id prompts as given. Long texts are tokenized in a
    worker thread so that one big prompt does not stall every other stream on the event loop."""
    tok = tokenizer
    if chat:
        messages = chat_messages(req)
        kwargs = dict(req.chat_template_kwargs or {})
        if req.continue_final_message:
            kwargs["continue_final_message"] = True

        def render() -> list[int]:
            text = tok.apply_chat_template(messages, tools=req.tools, tokenize=False,
                                           add_generation_prompt=req.add_generation_prompt is not False, **kwargs)
            return list(tok.encode(text, add_special_tokens=False))
        size = sum(len(m["content"]) for m in messages)
    else:
        prompt = completion_prompt(req)
        if isinstance(prompt, list):
            return prompt

        def render() -> list[int]:
            return list(tok.encode(prompt, add_special_tokens=True))
        size = len(prompt)
    try:
        return render() if size < INLINE_TOKENIZE_CHARS else await asyncio.to_thread(render)
    except APIError:
        raise
    except Exception as e:  # template errors (raise_exception, bad message shapes)
        raise bad_request(f"could not build the prompt: {type(e).__name__}: {e}",
                          "messages" if chat else "prompt") from None


class IncrementalDetokenizer:
    """vLLM's incremental detokenization: decode ids[prefix:] and ids[prefix:read], emit the
    difference when the text no longer ends in U+FFFD (an incomplete UTF-8 sequence). Seeded with
    the last few prompt tokens so that tokenizers that drop a leading space decode the first
    output token in context."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-DETOKENIZE_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, new_ids: list[int], final: bool = False) -> str:
        self.ids.extend(new_ids)
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=self.skip)
        text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=self.skip)
        if len(text) > len(prefix_text) and (final or not text.endswith("\ufffd")):
            delta = text[len(prefix_text):]
            self.ids = self.ids[self.read:]  # the new window starts where the old one was read to
            self.prefix, self.read = 0, len(self.ids)
            return delta
        return ""
