"""Routing policies of the tier gateway: every agent call arrives at one URL and a policy picks the
tier that serves it; the gateway records the decision (tier and reason) with the call.

The seed article ("Agent Cloud Architecture", Cloudflare and OpenAI, April 2026) places small
models at the edge (device under 1 ms, metro 10-50 ms, regional 50-150 ms) and frontier models in
the central cloud (200-500 ms), with an AI gateway routing each call by complexity, latency budget
and cost. The policies here are that idea in small, comparable pieces:

    fixed     every call to one tier (the baseline)
    keyword   the article's heuristic: simple / moderate / complex from keywords in the latest
              user or tool text and from the context length
    context   a context-length threshold: long prompts to the large tier
    oracle    the trace's own complexity label (an upper bound for any classifier)
    budget    the cheapest tier whose expected latency fits a latency budget

One interface (`RoutingPolicy`): a `name` and `choose(call: CallInfo) -> Decision`. A Decision
also unpacks as a (tier, reason) pair. Policies are built with the tiers they route among
(`TierInfo`: name, typical RTT, model size, prices, optional speed estimates).

Run-spec tables (`make_policy(spec, tiers)`; `tiers` are TierInfo, bench/tiers.py Tier objects or
dicts, see `tier_info`):

    {"policy": "fixed", "tier": "central"}
    {"policy": "keyword", "small": "edge", "medium": "regional", "large": "central",
     "long_context_tokens": 8000, "very_long_context_tokens": 32000}
    {"policy": "context", "small": "edge", "large": "central", "max_tokens": 8000}
    {"policy": "oracle", "simple": "edge", "moderate": "edge", "complex": "central", "default": "central"}
    {"policy": "budget", "latency_budget_ms": 300, "cost_budget": 0.01, "expected_output_tokens": 256,
     "tiers": ["edge", "central"]}

Optional keys: keyword `medium` (none: moderate calls go to `small`), `long_context_tokens`,
`very_long_context_tokens`, and `simple_keywords` / `moderate_keywords` / `complex_keywords`
(lists of regular expressions replacing that class's defaults); keyword and context `small` and
`large` (default: the nearest tier of that size); oracle `simple` / `complex` (default: the nearest
small / large tier), `moderate` (default: the simple tier) and `default` (for calls without a
label; default: the complex tier); budget `cost_budget` (USD per call), `expected_output_tokens`
(256) and `tiers` (default: all). Every error is a one-line ValueError naming the key
(`routing.max_tokens: ...`); a key the policy does not read is an error too, so typos do not pass
silently.

Adding a policy: a class with a `name`, a `choose` method, and a classmethod `from_spec(spec)`
that reads its keys from a `SpecReader` (which resolves tier names and checks types), registered
in POLICIES under the name the run spec uses:

    from bench.routing import POLICIES, Decision

    class FirstCallCentral:
        '''The first call of a session (the plan) to the large tier, the rest to the small one.'''
        name = "first-call"

        def __init__(self, small, large):
            self.small, self.large = small, large

        def choose(self, call):
            if call.call_index == 0:
                return Decision(self.large.name, "first call of the session")
            return Decision(self.small.name, "follow-up call")

        @classmethod
        def from_spec(cls, spec):
            return cls(spec.tier("small"), spec.tier("large"))

    POLICIES["first-call"] = FirstCallCentral   # then {"policy": "first-call", "small": ..., "large": ...}
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

COMPLEXITIES = ("simple", "moderate", "complex")  # as traces/model.py labels calls
SIZES = ("small", "large")
CHARS_PER_TOKEN = 4  # the usual rough estimate for English text and code


# -- what policies see --------------------------------------------------------------------------

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
            if not _is_number(v) or v < 0:
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


# -- the keyword classifier ---------------------------------------------------------------------

# The article's heuristic in spirit, not its letter (it names the classes, not the words): calls
# asking for reasoning go central, lookups and mechanical edits stay at the edge. Patterns are
# regular expressions matched on word boundaries in the lower-cased text (so write them in lower
# case); the most complex class with a match wins.
COMPLEX_KEYWORDS: tuple[str, ...] = (
    r"architect\w*", r"design\w*", r"refactor\w*", r"prove[ns]?", r"proofs?", r"why",
    r"debug\w*\b[^.?!\n]{0,80}\b(?:race|deadlock|concurren\w*|leak\w*|intermittent\w*|flak\w*)",
    r"race conditions?", r"deadlock\w*", r"root cause", r"trade-?offs?", r"optimi[sz]\w*", r"migrat\w*",
    r"investigat\w*", r"analy[sz]\w*", r"reason about", r"plan(?:ning)?",
)
MODERATE_KEYWORDS: tuple[str, ...] = (
    r"implement\w*", r"fix\w*", r"write", r"add", r"update\w*", r"modify\w*", r"change\w*",
    r"explain\w*", r"summari[sz]\w*", r"convert\w*", r"compare\w*",
)
SIMPLE_KEYWORDS: tuple[str, ...] = (
    r"list\w*", r"read", r"cat", r"ls", r"grep", r"format\w*", r"rename\w*", r"what is", r"what's",
    r"show", r"print", r"open", r"find", r"count", r"typo\w*", r"lint\w*", r"sort", r"run",
)
LONG_CONTEXT_TOKENS = 8000  # a context this long escalates one class
VERY_LONG_CONTEXT_TOKENS = 32000  # ... and this long makes the call complex
SCAN_CHARS = 4000  # only the text's end is scanned: the newest instruction is there, and it stays cheap


def _pattern(words: dict[str, tuple[str, ...]]) -> re.Pattern:
    """One regex with a named group per class, matched on lower-cased text (re.IGNORECASE makes
    the scan several times slower, and it runs on every call)."""
    alts = [f"(?P<{cls}>" + "|".join(w) + ")" for cls, w in words.items() if w]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")\b") if alts else re.compile(r"(?!)")


_DEFAULT_PATTERN = _pattern({"complex": COMPLEX_KEYWORDS, "moderate": MODERATE_KEYWORDS, "simple": SIMPLE_KEYWORDS})


def classify_keywords(text: str, prompt_tokens: int | None = None, *,
                      long_context_tokens: int = LONG_CONTEXT_TOKENS,
                      very_long_context_tokens: int = VERY_LONG_CONTEXT_TOKENS,
                      complex_keywords: tuple[str, ...] | None = None,
                      moderate_keywords: tuple[str, ...] | None = None,
                      simple_keywords: tuple[str, ...] | None = None) -> str:
    """'simple' | 'moderate' | 'complex' for a call's text and context length (prompt_tokens;
    None: estimated from the text). A pure function, so it can be scored against trace labels."""
    return _classify(text, prompt_tokens, long_context_tokens, very_long_context_tokens,
                     _patterns(complex_keywords, moderate_keywords, simple_keywords))[0]


def _patterns(cx, mod, simple) -> re.Pattern:
    if cx is None and mod is None and simple is None:
        return _DEFAULT_PATTERN
    return _cached_pattern(*(None if w is None else tuple(w) for w in (cx, mod, simple)))


@functools.lru_cache(maxsize=32)
def _cached_pattern(cx, mod, simple) -> re.Pattern:
    return _pattern({"complex": tuple(COMPLEX_KEYWORDS if cx is None else cx),
                     "moderate": tuple(MODERATE_KEYWORDS if mod is None else mod),
                     "simple": tuple(SIMPLE_KEYWORDS if simple is None else simple)})


_RANK = {c: i for i, c in enumerate(COMPLEXITIES)}


def _classify(text: str, prompt_tokens: int | None, long_tokens: int, very_long_tokens: int,
              pattern: re.Pattern) -> tuple[str, str]:
    """(class, why) — the why goes into the decision's reason."""
    tail = (text or "")[-SCAN_CHARS:].lower()
    label, why = "moderate", "no keywords"
    best = None
    for m in pattern.finditer(tail):
        cls = m.lastgroup  # the class group (the outermost); a user pattern's own groups need the slow way
        if cls in _RANK:
            rank = _RANK[cls]
        else:
            groups = m.groupdict()
            rank = max(i for i, c in enumerate(COMPLEXITIES) if groups.get(c) is not None)
        if best is None or rank > best[0]:
            best = (rank, m.group(0))
            if rank == 2:
                break
    if best is not None:
        # the reason travels in a response header: printable ASCII only, and short
        word = re.sub(r"[^ -~]+", " ", best[1])[:40]
        label, why = COMPLEXITIES[best[0]], f"matched {word!r}"
    estimated = prompt_tokens is None
    tokens = estimate_tokens(text or "") if estimated else int(prompt_tokens)
    approx = "~" if estimated else ""
    if tokens >= very_long_tokens and label != "complex":
        label, why = "complex", f"{why}; context {approx}{tokens} tokens >= {very_long_tokens}"
    elif tokens >= long_tokens and label != "complex":
        label = COMPLEXITIES[COMPLEXITIES.index(label) + 1]
        why = f"{why}; context {approx}{tokens} tokens >= {long_tokens} escalates"
    return label, why


# -- policies -----------------------------------------------------------------------------------

class FixedTier:
    """Every call to one tier: the baseline each routed run is compared with."""
    name = "fixed"

    def __init__(self, tier: TierInfo):
        self.tier = tier

    def choose(self, call: CallInfo) -> Decision:
        return Decision(self.tier.name, "fixed")

    @classmethod
    def from_spec(cls, spec: "SpecReader") -> "FixedTier":
        return cls(spec.tier("tier"))


class KeywordHeuristic:
    """The article's heuristic: simple calls to the small edge tier, moderate ones to the medium
    (regional) tier (the small one when there is none), complex ones to the large central tier."""
    name = "keyword"

    def __init__(self, small_tier: TierInfo, medium_tier: TierInfo | None, large_tier: TierInfo, *,
                 long_context_tokens: int = LONG_CONTEXT_TOKENS,
                 very_long_context_tokens: int = VERY_LONG_CONTEXT_TOKENS,
                 complex_keywords: tuple[str, ...] | None = None,
                 moderate_keywords: tuple[str, ...] | None = None,
                 simple_keywords: tuple[str, ...] | None = None):
        if very_long_context_tokens < long_context_tokens:
            raise ValueError(f"very_long_context_tokens: must be >= long_context_tokens ({long_context_tokens}), "
                             f"got {very_long_context_tokens}")
        self.tiers = {"simple": small_tier, "moderate": medium_tier or small_tier, "complex": large_tier}
        self.long_context_tokens = long_context_tokens
        self.very_long_context_tokens = very_long_context_tokens
        self.pattern = _patterns(complex_keywords, moderate_keywords, simple_keywords)

    def choose(self, call: CallInfo) -> Decision:
        label, why = _classify(call.prompt_text, call.prompt_tokens, self.long_context_tokens,
                               self.very_long_context_tokens, self.pattern)
        return Decision(self.tiers[label].name, f"keyword: {label} ({why})")

    @classmethod
    def from_spec(cls, spec: "SpecReader") -> "KeywordHeuristic":
        words = {}
        for cls_name in ("complex", "moderate", "simple"):
            key = f"{cls_name}_keywords"
            words[key] = spec.string_list(key, None)
            if words[key] is not None:
                try:
                    _pattern({cls_name: tuple(words[key])})
                except re.error as e:
                    raise ValueError(f"routing.{key}: not a valid regular expression list: {e}") from None
                words[key] = tuple(words[key])
        return cls(spec.tier("small", spec.nearest("small")), spec.tier("medium", None),
                   spec.tier("large", spec.nearest("large")),
                   long_context_tokens=spec.integer("long_context_tokens", LONG_CONTEXT_TOKENS, minimum=1),
                   very_long_context_tokens=spec.integer("very_long_context_tokens", VERY_LONG_CONTEXT_TOKENS,
                                                         minimum=1), **words)


class ContextThreshold:
    """Prompts over max_tokens to the large tier: long contexts are where small models fail first."""
    name = "context"

    def __init__(self, small_tier: TierInfo, large_tier: TierInfo, max_tokens: int):
        self.small, self.large, self.max_tokens = small_tier, large_tier, max_tokens

    def choose(self, call: CallInfo) -> Decision:
        tokens, estimated = call.tokens()
        n = f"{'~' if estimated else ''}{tokens}"
        if tokens > self.max_tokens:
            return Decision(self.large.name, f"context: {n} tokens > {self.max_tokens}")
        return Decision(self.small.name, f"context: {n} tokens <= {self.max_tokens}")

    @classmethod
    def from_spec(cls, spec: "SpecReader") -> "ContextThreshold":
        return cls(spec.tier("small", spec.nearest("small")), spec.tier("large", spec.nearest("large")),
                   spec.integer("max_tokens", minimum=1))


class Oracle:
    """The trace's own complexity label: what a perfect classifier would do, the bound the
    keyword heuristic is measured against."""
    name = "oracle"

    def __init__(self, mapping: Mapping[str, TierInfo], default: TierInfo):
        unknown = [k for k in mapping if k not in COMPLEXITIES]
        if unknown:
            raise ValueError(f"oracle: unknown label {unknown[0]!r} (labels: {', '.join(COMPLEXITIES)})")
        self.mapping, self.default = dict(mapping), default

    def choose(self, call: CallInfo) -> Decision:
        label = (call.complexity or "").strip().lower()
        if label in self.mapping:
            return Decision(self.mapping[label].name, f"oracle: trace label {label!r}")
        why = f"unmapped label {call.complexity!r}" if label else "no complexity label"
        return Decision(self.default.name, f"oracle: {why}, default")

    @classmethod
    def from_spec(cls, spec: "SpecReader") -> "Oracle":
        simple = spec.tier("simple", spec.nearest("small"))
        cx = spec.tier("complex", spec.nearest("large"))
        mapping = {"simple": simple, "moderate": spec.tier("moderate", simple), "complex": cx}
        return cls(mapping, spec.tier("default", cx))


class Budget:
    """Among the tiers whose expected latency (RTT + prefill + decode estimates; RTT alone where
    a tier has no estimates) fits the latency budget, the cheapest by expected cost; when none
    fits, the fastest (within the cost budget if any tier is). The latency budget is the hard
    constraint: the cheapest tier within it is taken even when it is over the cost budget, and the
    reason says so."""
    name = "budget"

    def __init__(self, tiers: list[TierInfo], latency_budget_ms: float, cost_budget_per_call: float | None = None,
                 expected_output_tokens: int = 256):
        if not tiers:
            raise ValueError("budget: no tiers to choose among")
        self.tiers = list(tiers)
        self.latency_budget_ms = latency_budget_ms
        self.cost_budget = cost_budget_per_call
        self.expected_output_tokens = expected_output_tokens

    def choose(self, call: CallInfo) -> Decision:
        tokens, _ = call.tokens()
        out = self.expected_output_tokens
        est = [(t, t.expected_latency_ms(tokens, out), t.expected_cost(tokens, out)) for t in self.tiers]
        budget = f"{self.latency_budget_ms:g} ms"
        fits = [e for e in est if e[1] <= self.latency_budget_ms]
        if fits:
            t, ms, usd = min(fits, key=lambda e: (e[2], e[1]))
            over = self.cost_budget is not None and usd > self.cost_budget
            note = f"; over the cost budget ${self.cost_budget:g}" if over else ""
            return Decision(t.name, f"budget: cheapest within {budget} (est {ms:.0f} ms, ${usd:.6f}){note}")
        affordable = [e for e in est if self.cost_budget is None or e[2] <= self.cost_budget]
        if affordable and self.cost_budget is not None:
            t, ms, usd = min(affordable, key=lambda e: (e[1], e[2]))
            return Decision(t.name, f"budget: no tier within {budget}; fastest within the cost budget "
                                    f"${self.cost_budget:g} (est {ms:.0f} ms, ${usd:.6f})")
        t, ms, usd = min(est, key=lambda e: (e[1], e[2]))
        nor = f" nor within the cost budget ${self.cost_budget:g}" if self.cost_budget is not None else ""
        return Decision(t.name, f"budget: no tier within {budget}{nor}; fastest (est {ms:.0f} ms, ${usd:.6f})")

    @classmethod
    def from_spec(cls, spec: "SpecReader") -> "Budget":
        return cls(spec.tier_list("tiers", list(spec.tiers.values())),
                   spec.number("latency_budget_ms", minimum=0.0),
                   spec.number("cost_budget", None, minimum=0.0),
                   spec.integer("expected_output_tokens", 256, minimum=0))


POLICIES: dict[str, type] = {
    "fixed": FixedTier, "keyword": KeywordHeuristic, "context": ContextThreshold, "oracle": Oracle,
    "budget": Budget,
}


# -- building a policy from a run spec ------------------------------------------------------------

_REQUIRED = object()


class SpecReader:
    """A policy's spec table, read key by key with one-line errors naming the key. Each key read
    is remembered; `finish` rejects the keys nobody read."""

    def __init__(self, spec: Mapping[str, Any], tiers: Mapping[str, TierInfo]):
        self.raw = dict(spec)
        self.tiers = dict(tiers)
        self.policy = str(self.raw.get("policy"))
        self.read = {"policy"}

    def _get(self, key: str, default: Any) -> Any:
        self.read.add(key)
        v = self.raw.get(key)
        if v is None:
            if default is _REQUIRED:
                raise ValueError(f"routing.{key}: missing (policy {self.policy!r} needs it)")
            return default
        return v

    def tier(self, key: str, default: Any = _REQUIRED) -> Any:
        """The TierInfo a key names (default when absent; required without one)."""
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        return self._resolve(key, v)

    def _resolve(self, key: str, v: Any) -> TierInfo:
        if not isinstance(v, str):
            raise ValueError(f"routing.{key}: expected a tier name (string), got {v!r}")
        if v not in self.tiers:
            raise ValueError(f"routing.{key}: unknown tier {v!r} (tiers: {', '.join(self.tiers)})")
        return self.tiers[v]

    def tier_list(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"routing.{key}: expected a non-empty list of tier names, got {v!r}")
        return [self._resolve(key, x) for x in v]

    def string_list(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ValueError(f"routing.{key}: expected a list of non-empty strings, got {v!r}")
        return list(v)

    def number(self, key: str, default: Any = _REQUIRED, *, minimum: float | None = None) -> Any:
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        if not _is_number(v):
            raise ValueError(f"routing.{key}: expected a number, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"routing.{key}: must be >= {minimum:g}, got {v!r}")
        return float(v)

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None) -> Any:
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"routing.{key}: expected an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"routing.{key}: must be >= {minimum}, got {v!r}")
        return v

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, str):
            raise ValueError(f"routing.{key}: expected a string, got {v!r}")
        return v

    def nearest(self, size: str) -> TierInfo:
        """The default tier for a role: the lowest-RTT tier of that size, else the nearest (small)
        or farthest (large) tier of any size."""
        of_size = [t for t in self.tiers.values() if t.size == size]
        if of_size:
            return min(of_size, key=lambda t: t.rtt_p50_ms)
        pick = min if size == "small" else max
        return pick(self.tiers.values(), key=lambda t: t.rtt_p50_ms)

    def finish(self) -> None:
        extra = [k for k in self.raw if k not in self.read]
        if extra:
            known = ", ".join(sorted(self.read - {"policy"})) or "none"
            raise ValueError(f"routing.{extra[0]}: unknown key for policy {self.policy!r} (known: {known})")


def make_policy(spec: Mapping[str, Any], tiers: list[Any], prices: Any = None) -> RoutingPolicy:
    """The policy a run spec's routing table describes, over `tiers` (TierInfo, bench/tiers.py
    Tier objects, or dicts; see `tier_info`). `prices` (a bench.pricing.PriceTable) fills in the
    prices of tiers that carry none. ValueError, one line naming the key, on a bad table."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"routing: expected a table with a 'policy' key, got {spec!r}")
    infos = [tier_info(t, prices) for t in tiers]
    if not infos:
        raise ValueError("routing: no tiers to route among")
    by_name: dict[str, TierInfo] = {}
    for t in infos:
        if t.name in by_name:
            raise ValueError(f"routing: duplicate tier name {t.name!r}")
        by_name[t.name] = t
    kind = spec.get("policy")
    if kind is None:
        raise ValueError(f"routing.policy: missing (one of {', '.join(POLICIES)})")
    if not isinstance(kind, str) or kind not in POLICIES:
        raise ValueError(f"routing.policy: unknown policy {kind!r} (known: {', '.join(POLICIES)})")
    cls = POLICIES[kind]
    if not callable(getattr(cls, "from_spec", None)):
        raise ValueError(f"routing.policy: POLICIES[{kind!r}] has no from_spec(spec) classmethod")
    reader = SpecReader(spec, by_name)
    try:
        policy = cls.from_spec(reader)
    except ValueError as e:  # a constructor's own check: name the key where it says one
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if msg.startswith("routing"):
            raise
        key = msg.split(":", 1)[0]
        raise ValueError(f"routing.{msg}" if key in spec else f"routing: {msg}") from None
    reader.finish()
    return policy


def tier_info(t: Any, prices: Any = None) -> TierInfo:
    """A TierInfo from a TierInfo, a bench/tiers.py Tier (its network profile's median RTT, its
    prices, and `size` / `est_prefill_ms_per_1k_tokens` / `est_decode_ms_per_token` from the keys
    its table kept in `extra`), or a dict of TierInfo fields (`rtt_ms` also accepted).

    Without a size, a tier at central-cloud distance (median RTT >= 150 ms, past the regional
    edge) is 'large' and nearer ones 'small': the article's placement of models. A tier with no
    prices (both 0) takes them from `prices` (a PriceTable) where it has the tier."""
    if isinstance(t, TierInfo):
        info = t
    elif isinstance(t, Mapping):
        d = dict(t)
        if "rtt_p50_ms" not in d and "rtt_ms" in d:
            d["rtt_p50_ms"] = d.pop("rtt_ms")
        known = set(TierInfo.__dataclass_fields__)
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"tier {d.get('name')!r}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        if "rtt_p50_ms" not in d:
            raise ValueError(f"tier {d.get('name')!r}: rtt_p50_ms: missing")
        d.setdefault("size", _size_for(d["rtt_p50_ms"]))
        info = TierInfo(**d)
    else:
        extra = getattr(t, "extra", None) or {}
        net = getattr(t, "network", None)
        rtt = net.median_rtt_ms if net is not None else getattr(t, "rtt_p50_ms", None)
        if rtt is None:
            raise ValueError(f"tier {getattr(t, 'name', t)!r}: no network profile to take the RTT from")
        info = TierInfo(name=t.name, rtt_p50_ms=float(rtt), size=extra.get("size") or _size_for(rtt),
                        price_per_m_prompt=float(getattr(t, "price_per_m_prompt", 0.0) or 0.0),
                        price_per_m_output=float(getattr(t, "price_per_m_output", 0.0) or 0.0),
                        est_prefill_ms_per_1k_tokens=extra.get("est_prefill_ms_per_1k_tokens"),
                        est_decode_ms_per_token=extra.get("est_decode_ms_per_token"))
    if prices is not None and not (info.price_per_m_prompt or info.price_per_m_output) and info.name in prices:
        p = prices.price(info.name)
        info = TierInfo(info.name, info.rtt_p50_ms, info.size, p.prompt, p.output,
                        info.est_prefill_ms_per_1k_tokens, info.est_decode_ms_per_token)
    return info


def _size_for(rtt_ms: Any) -> str:
    return "large" if _is_number(rtt_ms) and rtt_ms >= 150 else "small"


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


# -- from an OpenAI request -------------------------------------------------------------------------

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
