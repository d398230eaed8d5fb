"""Per-request state and the records the engine hands out: sampling parameters, the sequence being
generated, a step's output for one request, and a finished request's output."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch


@dataclass
class SamplingParams:
    """Defaults follow vLLM's. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 are off."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # per-request generator: same seed, same tokens, whatever the batch
    ignore_eos: bool = False  # keep going past the model's EOS (stop_token_ids still stop)
    min_tokens: int = 0  # EOS and stop ids are masked until this many tokens are out
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < -1:
            raise ValueError("top_k must be -1, 0 (off) or positive")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must be in [0, max_tokens]")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity equality: sequences live in lists and are removed by identity
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    session_id: str | None
    arrival_time: float
    # token_ids is prompt + output: what the KV cache covers (except the last sampled token)
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in block_table
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of full blocks, computed lazily
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    num_cached_tokens: int = -1  # prompt tokens served by the prefix cache at first schedule (-1: not yet)
    max_computed_tokens: int = 0  # high-water mark of num_computed_tokens, to count recomputation
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | None = None  # the stop token id that ended it, when it was one
    num_preemptions: int = 0
    generator: torch.Generator | None = None  # for seeded sampling
    first_scheduled_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per output token
    num_emitted: int = 0  # output tokens already reported by step()

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class StepOutput:
    """What one step() produced for one request. Timestamps are time.monotonic() seconds."""

    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running
    cached_tokens: int  # prompt tokens served by the prefix cache
    num_prompt_tokens: int
    num_output_tokens: int  # output tokens so far, new ones included
    token_times: list[float]  # when each of new_token_ids was sampled
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    stop_reason: int | None = None  # the stop token id, when one ended it
    session_id: str | None = None


@dataclass
class Output:
    """A finished request, as generate() returns it. Timestamps are time.monotonic() seconds."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    finish_reason: str | None
    cached_tokens: int
    arrival_time: float
    first_scheduled_time: float | None
    token_times: list[float]
    num_preemptions: int = 0
    stop_reason: int | None = None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.arrival_time if self.token_times else None
