"""Exact token ids for chat text: a model dir's tokenizer.json and chat template, without transformers.

Text traces (real messages) become token counts and chained block hashes here. The whole
conversation is tokenized once and each call's prompt length is read off at its character boundary,
because tokenizing every prefix separately is quadratic in the session length.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class ConversationTokens:
    """A conversation tokenized once. Counts are exact: prompt_lens[k] == len(encode_chat(messages[:j]))."""

    ids: np.ndarray  # int32 token ids of render(messages) (no generation prompt)
    message_ends: list[int]  # tokens of render(messages[:i + 1]), for each message i
    assistant_index: list[int]  # the message index j of each assistant message
    prompt_lens: list[int]  # tokens of render(messages[:j], add_generation_prompt=True), per assistant message


def _token_text(value: object) -> str | None:
    """tokenizer_config stores special tokens either as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """A model dir's tokenizer (tokenizer.json) and chat template (tokenizer_config.json)."""

    def __init__(self, model_dir: str | Path):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self.path = Path(model_dir)
        self._tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        cfg_path = self.path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if template is None and (self.path / "chat_template.jinja").is_file():
            template = (self.path / "chat_template.jinja").read_text(encoding="utf-8")
        if not isinstance(template, str):
            raise ValueError(f"{self.path}: no chat template in tokenizer_config.json or chat_template.jinja")
        self.chat_template = template

        # The same Jinja settings transformers uses, so renders match apply_chat_template.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self._template = env.from_string(template)

        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.special_ids = {
            a.content: i for i, a in sorted(self._tok.get_added_tokens_decoder().items()) if a.special
        }
        self.bos_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        # Every id that ends a generation: the chat eos and generation_config's list (Llama 3 has several).
        eos = {self._tok.token_to_id(self.eos_token)} if self.eos_token else set()
        gen_path = self.path / "generation_config.json"
        if gen_path.is_file():
            gen_eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
            eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = sorted(i for i in eos if isinstance(i, int))

        self._head, self._gen = self._template_pieces()

    def _template_pieces(self) -> tuple[str | None, str | None]:
        """What the template renders before any message, and the generation prompt (see _boundaries);
        None when the template is not of that shape."""
        try:
            head, with_gen = self.render([]), self.render([], add_generation_prompt=True)
        except Exception:  # e.g. a template that reads messages[0]
            return None, None
        return (head, with_gen[len(head):]) if with_gen.startswith(head) else (None, None)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, no BOS (special-token strings in the text still map to their ids)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The chat template applied to messages, as transformers' apply_chat_template(tokenize=False)."""
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered prompt (the template supplies BOS, so none is added)."""
        return self.encode(self.render(messages, add_generation_prompt))

    def conversation_prefix_ids(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation, and for each assistant message j the token count of
        the prompt before it, render(messages[:j], add_generation_prompt=True)."""
        conv = self.conversations([messages])[0]
        return conv.ids.tolist(), conv.prompt_lens

    def conversations(self, batch: Sequence[Sequence[dict]]) -> list[ConversationTokens]:
        """Tokenize whole conversations (in parallel across the batch) and read off every message and
        prompt boundary."""
        rendered = [self._boundaries(msgs) for msgs in batch]
        encodings = self._tok.encode_batch([r[0] for r in rendered], add_special_tokens=False)
        out = []
        for (text, ends, prompts, asst), enc in zip(rendered, encodings):
            ids = np.asarray(enc.ids, dtype=np.int32)
            message_ends = [_tokens_before(enc, text, p) for p in ends]
            prompt_lens = [_tokens_before(enc, text, p) for p in prompts]
            out.append(ConversationTokens(ids, message_ends, asst, prompt_lens))
        return out

    def _boundaries(self, messages: Sequence[dict]) -> tuple[str, list[int], list[int], list[int]]:
        """render(messages), the character end of each message, the character end of each assistant
        message's prompt (with generation prompt), and the assistant message indices."""
        messages = list(messages)
        asst = [j for j, m in enumerate(messages) if m.get("role") == "assistant"]
        text = self.render(messages)
        # Fast path, linear: the template renders a fixed head, then each message on its own, and an
        # assistant message starts with the generation prompt. Checked on this conversation; a template
        # that is not like that (e.g. one that treats the first or last message specially) falls back
        # to rendering each prefix, which is exact but quadratic.
        if self._head is not None and text.startswith(self._head):
            pieces = [self.render([m])[len(self._head):] for m in messages]
            ends = np.cumsum([len(self._head)] + [len(p) for p in pieces])[1:].tolist()
            prompts = [(ends[j - 1] if j else len(self._head)) + len(self._gen) for j in asst]
            if (
                self._head + "".join(pieces) == text
                and all(pieces[j].startswith(self._gen) for j in asst)
                and (not asst or self.render(messages[: asst[-1]], True) == text[: prompts[-1]])
            ):
                return text, ends, prompts, asst
        ends, prompts = [], []
        for i in range(len(messages)):
            ends.append(self._prefix_end(text, self.render(messages[: i + 1])))
        for j in asst:
            prompts.append(self._prefix_end(text, self.render(messages[:j], True)))
        return text, ends, prompts, asst

    @staticmethod
    def _prefix_end(text: str, prefix: str) -> int:
        if not text.startswith(prefix):
            raise ValueError("chat template does not render a conversation's prefixes as prefixes of it")
        return len(prefix)


def _tokens_before(enc, text: str, pos: int) -> int:
    """Number of tokens that end at or before character pos of text, which must be a token boundary."""
    if pos >= len(text):
        return len(enc.ids)
    idx = enc.char_to_token(pos)  # the token holding character pos
    if idx is None or enc.token_to_chars(idx)[0] != pos:
        # A token straddles the boundary: the prefix would tokenize differently on its own.
        raise ValueError(f"chat template boundary at character {pos} is not a token boundary")
    return idx


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def chained_block_hashes(token_ids: Sequence[int] | np.ndarray, block_size: int) -> np.ndarray:
    """int64 hash of each full block, chained: block i's hash covers block i's tokens and hash i-1,
    so equal hashes mean equal prefixes. blake2b over little-endian int32 tokens: the same in every
    process and platform (Python's hash() is salted per process)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    arr = np.asarray(token_ids)
    n = len(arr) // block_size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    arr = arr[: n * block_size]
    if arr.dtype.kind not in "iu" or (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must be integers in int32 range")
    buf = memoryview(arr.astype("<i4", copy=False).tobytes())
    step = 4 * block_size
    out = bytearray(8 * n)
    prev = bytes(8)
    blake = hashlib.blake2b
    # The chain is inherently sequential; one C-level hash per block keeps ~1M blocks near a second.
    for i in range(n):
        prev = blake(prev + buf[i * step : (i + 1) * step], digest_size=8).digest()
        out[8 * i : 8 * i + 8] = prev
    return np.frombuffer(bytes(out), dtype="<i8").astype(np.int64)
