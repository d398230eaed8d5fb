"""What routing policies see and say: the call (CallInfo), the tiers (TierInfo), the choice
(Decision), and the interface a policy implements (RoutingPolicy)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

COMPLEXITIES = ("simple", "moderate", "complex")  # as traces/model.py labels calls
SIZES = ("small", "large")
CHARS_PER_TOKEN = 4  # the usual rough estimate for English text and code
LARGE_RTT_MS = 150  # past the regional edge: a central-cloud tier, where the article puts large models


@dataclass
class CallInfo:
    """One call as the gateway sees it before routing."""
    prompt_tokens: int | None = None  # exact for a token-id prompt, else estimated, or None
    prompt_text: str = ""  # the text to classify (chat: the latest user/tool message)
    complexity: str | None = None  # the trace's label (x-tierbench-complexity), where known
    session: str | None = None
    call_index: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case keys

    def tokens(self) -> tuple[int, bool]:
        """(prompt tokens, whether estimated from the text)."""
        if self.prompt_tokens is not None:
            return int(self.prompt_tokens), False
        return estimate_tokens(self.prompt_text), True


@dataclass(frozen=True)
class TierInfo:
    """What a policy knows about a tier."""
    name: str
    rtt_p50_ms: float  # the tier's typical network round trip
    size: str = "small"  # the model class there: 'small' | 'large'
    price_per_m_prompt: float = 0.0  # USD per million prompt tokens
    price_per_m_output: float = 0.0  # USD per million output tokens
    est_prefill_ms_per_1k_tokens: float | None = None  # inference speed estimates, where known
    est_decode_ms_per_token: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tier name: expected a non-empty string, got {self.name!r}")
        if self.size not in SIZES:
            raise ValueError(f"tier {self.name!r}: size must be one of {', '.join(SIZES)}, got {self.size!r}")
        for key in ("rtt_p50_ms", "price_per_m_prompt", "price_per_m_output", "est_prefill_ms_per_1k_tokens",
                    "est_decode_ms_per_token"):
            v = getattr(self, key)
            if v is None and key.startswith("est_"):
                continue
            if not is_number(v) or v < 0:
                raise ValueError(f"tier {self.name!r}: {key} must be a number >= 0, got {v!r}")

    def expected_latency_ms(self, prompt_tokens: int, output_tokens: int) -> float:
        """RTT plus the prefill and decode estimates (each counted only where known)."""
        ms = self.rtt_p50_ms
        if self.est_prefill_ms_per_1k_tokens is not None:
            ms += self.est_prefill_ms_per_1k_tokens * prompt_tokens / 1000.0
        if self.est_decode_ms_per_token is not None:
            ms += self.est_decode_ms_per_token * output_tokens
        return ms

    def expected_cost(self, prompt_tokens: int, output_tokens: int) -> float:
        """USD for the call at this tier's prices (no prefix-cache discount: unknown before the call)."""
        return (prompt_tokens * self.price_per_m_prompt + output_tokens * self.price_per_m_output) / 1e6


@dataclass(frozen=True)
class Decision:
    """A policy's choice and why, recorded with the call. Unpacks as (tier, reason)."""
    tier: str
    reason: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.tier, self.reason))


@runtime_checkable
class RoutingPolicy(Protocol):
    name: str

    def choose(self, call: CallInfo) -> Decision: ...


def estimate_tokens(text: str) -> int:
    """~4 characters per token: enough to compare a context to a threshold without a tokenizer."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def size_for(rtt_ms: Any) -> str:
    """A tier's model class when its table names none: 'large' at central-cloud distance."""
    return "large" if is_number(rtt_ms) and rtt_ms >= LARGE_RTT_MS else "small"


def tier_info(t: Any, prices: Any = None) -> TierInfo:
    """A TierInfo from a TierInfo, a bench/tiers/network.py Tier (its network profile's median RTT, its
    prices, and `size` / `est_prefill_ms_per_1k_tokens` / `est_decode_ms_per_token` from the keys
    its table kept in `extra`), or a dict of TierInfo fields (`rtt_ms` also accepted).

    Without a size, a tier at central-cloud distance (median RTT >= 150 ms, past the regional
    edge) is 'large' and nearer ones 'small': the article's placement of models. A tier with no
    prices (both 0) takes them from `prices` (a PriceTable) where it has the tier."""
    if isinstance(t, TierInfo):
        info = t
    elif isinstance(t, Mapping):
        info = _from_mapping(dict(t))
    else:
        extra = getattr(t, "extra", None) or {}
        net = getattr(t, "network", None)
        rtt = net.median_rtt_ms if net is not None else getattr(t, "rtt_p50_ms", None)
        if rtt is None:
            raise ValueError(f"tier {getattr(t, 'name', t)!r}: no network profile to take the RTT from")
        info = TierInfo(name=t.name, rtt_p50_ms=float(rtt), size=extra.get("size") or size_for(rtt),
                        price_per_m_prompt=float(getattr(t, "price_per_m_prompt", 0.0) or 0.0),
                        price_per_m_output=float(getattr(t, "price_per_m_output", 0.0) or 0.0),
                        est_prefill_ms_per_1k_tokens=extra.get("est_prefill_ms_per_1k_tokens"),
                        est_decode_ms_per_token=extra.get("est_decode_ms_per_token"))
    if prices is not None and not (info.price_per_m_prompt or info.price_per_m_output) and info.name in prices:
        p = prices.price(info.name)
        info = TierInfo(info.name, info.rtt_p50_ms, info.size, p.prompt, p.output,
                        info.est_prefill_ms_per_1k_tokens, info.est_decode_ms_per_token)
    return info


def _from_mapping(d: dict) -> TierInfo:
    if "rtt_p50_ms" not in d and "rtt_ms" in d:
        d["rtt_p50_ms"] = d.pop("rtt_ms")
    known = set(TierInfo.__dataclass_fields__)
    unknown = [k for k in d if k not in known]
    if unknown:
        raise ValueError(f"tier {d.get('name')!r}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    if "rtt_p50_ms" not in d:
        raise ValueError(f"tier {d.get('name')!r}: rtt_p50_ms: missing")
    d.setdefault("size", size_for(d["rtt_p50_ms"]))
    return TierInfo(**d)
