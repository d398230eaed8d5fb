"""Per-tier token prices, so a run reports what its calls would cost beside how long they took.

A `PriceTable` maps a tier name to a `Price`: US dollars per million prompt tokens, per million
output tokens, and optionally per million cached prompt tokens (a prefix-cache hit; providers bill
those cheaper). Cached tokens are part of the prompt tokens (as in OpenAI's usage block), so

    cost = (prompt - cached) * prompt + cached * cached_prompt + output * output   (per 1e6 tokens)

with cached_prompt defaulting to the prompt price.

The defaults (`DEFAULT_PRICES`) are illustrative, not quotes: free on the device, small-model
prices at the metro and regional edge, frontier-model prices in the central cloud, the article's
placement of models. Edit them in a run spec (TOML), tier by tier; a tier given only some keys
keeps the others from the default:

    [prices.central]
    prompt = 2.5
    output = 10.0
    cached_prompt = 1.25

    [prices.lab]                   # a tier of your own needs prompt and output
    prompt = 0.2
    output = 0.8

or the same as JSON: {"prices": {"central": {"prompt": 2.5, "output": 10.0}}}. `PriceTable.from_spec`
reads that table; every error is one line naming the field (`prices.central.output: ...`).

`cost_of_requests(df)` sums a run's requests table per tier. The table's tier column may carry a
suffix (`central-rep0`: the routed tier and the engine's tier joined by '-'), so a row is priced by
its exact tier name, else by the longest priced name it starts with followed by '-'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

PRICE_KEYS = ("prompt", "output", "cached_prompt")


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens of one tier."""
    prompt: float
    output: float
    cached_prompt: float | None = None  # None: cached prompt tokens cost the prompt price

    def __post_init__(self) -> None:
        for key in PRICE_KEYS:
            v = getattr(self, key)
            if v is None and key == "cached_prompt":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{key}: expected a number >= 0 (USD per million tokens), got {v!r}")

    def cost(self, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one call (cached_tokens are among prompt_tokens)."""
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        return ((prompt_tokens - cached_tokens) * self.prompt + cached_tokens * cached_price
                + output_tokens * self.output) / 1e6

    def to_dict(self) -> dict:
        out = {"prompt": self.prompt, "output": self.output}
        if self.cached_prompt is not None:
            out["cached_prompt"] = self.cached_prompt
        return out


# Illustrative prices for the built-in tiers (bench/tiers/network.py BUILTIN) plus "edge", the name the
# examples use for a small model near the user. Edit them per run ([prices.NAME]); they are not quotes.
DEFAULT_PRICES: dict[str, Price] = {
    "device": Price(0.0, 0.0),                   # the user's own hardware
    "metro": Price(0.10, 0.40, 0.05),            # a small model at the metro edge
    "edge": Price(0.10, 0.40, 0.05),
    "regional": Price(0.30, 1.20, 0.15),         # a mid-size model at the regional edge
    "central": Price(2.50, 10.00, 1.25),         # a frontier model in the central cloud
}


class PriceTable:
    """Tier name -> Price. `PriceTable()` holds the defaults; `PriceTable({}, defaults=False)` none."""

    def __init__(self, prices: Mapping[str, Price | tuple | Mapping] | None = None, *, defaults: bool = True):
        self.prices: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for tier, p in (prices or {}).items():
            self.set(tier, p)

    def set(self, tier: str, price: Price | tuple | Mapping) -> None:
        """Set one tier's price: a Price, a (prompt, output[, cached_prompt]) tuple, or a table
        of PRICE_KEYS (keys it lacks come from the tier's current price)."""
        if not isinstance(tier, str) or not tier:
            raise ValueError(f"prices: a tier name must be a non-empty string, got {tier!r}")
        if isinstance(price, Price):
            self.prices[tier] = price
        elif isinstance(price, tuple):
            if len(price) not in (2, 3):
                raise ValueError(f"prices.{tier}: expected (prompt, output[, cached_prompt]), got {price!r}")
            self.prices[tier] = _price(tier, dict(zip(PRICE_KEYS, price)))
        elif isinstance(price, Mapping):
            unknown = [k for k in price if k not in PRICE_KEYS]
            if unknown:
                raise ValueError(f"prices.{tier}.{unknown[0]}: unknown key (known: {', '.join(PRICE_KEYS)})")
            base = self.prices[tier].to_dict() if tier in self.prices else {}
            self.prices[tier] = _price(tier, {**base, **price})
        else:
            raise ValueError(f"prices.{tier}: expected a table of {', '.join(PRICE_KEYS)}, got {price!r}")

    @classmethod
    def from_spec(cls, table: Any, *, defaults: bool = True) -> "PriceTable":
        """The run spec's [prices] table ({tier: {prompt, output, cached_prompt}}) over the defaults."""
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            raise ValueError(f"prices: expected a table of tiers, got {table!r}")
        return cls(table, defaults=defaults)

    def add_tier_prices(self, tiers: Iterable[Any]) -> "PriceTable":
        """Overlay the prices tiers carry (bench/tiers/network.py Tier objects or their dicts:
        price_per_m_prompt, price_per_m_output). A tier with both at 0 keeps what the table has,
        since 0 is also what a tier without prices gets; a tier the table lacks stays unpriced
        rather than priced at a guessed 0. Returns self."""
        for t in tiers:
            get = t.get if isinstance(t, Mapping) else (lambda k, d=None, t=t: getattr(t, k, d))
            p, o = get("price_per_m_prompt", 0.0) or 0.0, get("price_per_m_output", 0.0) or 0.0
            if p or o:
                self.set(get("name"), Price(float(p), float(o)))
        return self

    def __contains__(self, tier: str) -> bool:
        return tier in self.prices

    def price(self, tier: str) -> Price:
        try:
            return self.prices[tier]
        except KeyError:
            raise ValueError(f"no price for tier {tier!r} (priced: {', '.join(sorted(self.prices)) or 'none'}); "
                             f"add [prices.{tier}] to the run spec") from None

    def cost(self, tier: str, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one call on `tier`. cached_tokens are among prompt_tokens."""
        for key, v in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens),
                       ("cached_tokens", cached_tokens)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0) or not math.isfinite(v):
                raise ValueError(f"{key}: expected a count >= 0, got {v!r}")
        if cached_tokens > prompt_tokens:
            raise ValueError(f"cached_tokens: {cached_tokens} exceeds prompt_tokens {prompt_tokens}")
        return self.price(tier).cost(prompt_tokens, output_tokens, cached_tokens)

    def match(self, tier: str) -> str | None:
        """The priced tier a requests-table tier value belongs to: itself, else the longest priced
        name followed by '-' that it starts with (`central-rep0` -> `central`), else None."""
        if tier in self.prices:
            return tier
        hits = [name for name in self.prices if tier.startswith(name + "-")]
        return max(hits, key=len) if hits else None

    def to_dict(self) -> dict:
        return {tier: p.to_dict() for tier, p in self.prices.items()}


def _price(tier: str, d: dict) -> Price:
    for key in ("prompt", "output"):
        if key not in d:
            raise ValueError(f"prices.{tier}.{key}: missing (USD per million {key} tokens)")
    for key in PRICE_KEYS:
        v = d.get(key)
        if key == "cached_prompt" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"prices.{tier}.{key}: expected a number >= 0 (USD per million tokens), got {v!r}")
    cached = d.get("cached_prompt")
    return Price(float(d["prompt"]), float(d["output"]), None if cached is None else float(cached))


def cost_of_requests(df, prices: PriceTable | None = None, *, statuses: tuple[str, ...] | None = ("ok",),
                     include_warmup: bool = False) -> dict:
    """Sum a requests table (columns tier, prompt_tokens, output_tokens, cached_tokens, status;
    optional warmup) per tier:

        {"tiers": {tier: {"requests", "prompt_tokens", "output_tokens", "cached_tokens", "cost_usd"}},
         "total_usd": float, "unpriced": {tier value: rows}}

    Only rows whose status is in `statuses` count (default: the successful ones, since a failed
    call's tokens are mostly unknown; None: every row), and warm-up rows only with include_warmup.
    Missing token counts count as 0; cached tokens are capped at the prompt tokens. Rows whose
    tier has no price are counted under "unpriced" and left out of the total rather than guessed."""
    prices = prices or PriceTable()
    missing = [c for c in ("tier", "prompt_tokens", "output_tokens") if c not in df.columns]
    if missing:
        raise ValueError(f"requests table: missing column {missing[0]!r}")
    rows = df
    if statuses is not None:
        if "status" not in df.columns:
            raise ValueError("requests table: missing column 'status'")
        rows = rows[rows["status"].isin(list(statuses))]
    if not include_warmup and "warmup" in rows.columns:
        warm = np.array([bool(x) and x == x for x in rows["warmup"].tolist()], dtype=bool)  # NaN == NaN is False
        rows = rows[~warm]
    tier_values = rows["tier"].astype(str).to_numpy()
    p = _counts(rows["prompt_tokens"])
    o = _counts(rows["output_tokens"])
    c = np.minimum(_counts(rows["cached_tokens"]), p) if "cached_tokens" in rows.columns else np.zeros_like(p)
    out: dict[str, dict] = {}
    unpriced: dict[str, int] = {}
    total = 0.0
    for value in sorted(set(tier_values)):
        sel = tier_values == value
        name = prices.match(value)
        if name is None:
            unpriced[value] = int(sel.sum())
            continue
        price = prices.price(name)
        sp, so, sc = int(p[sel].sum()), int(o[sel].sum()), int(c[sel].sum())
        usd = price.cost(sp, so, sc)
        acc = out.setdefault(name, {"requests": 0, "prompt_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
                                    "cost_usd": 0.0})
        acc["requests"] += int(sel.sum())
        acc["prompt_tokens"] += sp
        acc["output_tokens"] += so
        acc["cached_tokens"] += sc
        acc["cost_usd"] += usd
        total += usd
    return {"tiers": out, "total_usd": total, "unpriced": unpriced}


def _counts(col) -> np.ndarray:
    """Token counts from a table column: None / NaN / non-numbers / negatives -> 0."""
    import pandas as pd
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(v) & (v > 0), v, 0.0).astype(np.int64)
