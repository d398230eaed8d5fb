"""The keyword classifier behind the `keyword` policy: 'simple' | 'moderate' | 'complex' from
keywords in a call's latest text and from its context length.

The article's heuristic in spirit, not its letter (it names the classes, not the words): calls
asking for reasoning go central, lookups and mechanical edits stay at the edge. Patterns are
regular expressions matched on word boundaries in the lower-cased text (so write them in lower
case); the most complex class with a match wins.
"""
from __future__ import annotations

import functools
import re

from bench.tiers.routing.interface import COMPLEXITIES, estimate_tokens

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

_RANK = {c: i for i, c in enumerate(COMPLEXITIES)}


def compile_keywords(words: dict[str, tuple[str, ...]]) -> re.Pattern:
    """One regex with a named group per class, matched on lower-cased text (re.IGNORECASE makes
    the scan several times slower, and it runs on every call). re.error on a bad pattern."""
    alts = [f"(?P<{cls}>" + "|".join(w) + ")" for cls, w in words.items() if w]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")\b") if alts else re.compile(r"(?!)")


_DEFAULT_PATTERN = compile_keywords({"complex": COMPLEX_KEYWORDS, "moderate": MODERATE_KEYWORDS,
                                     "simple": SIMPLE_KEYWORDS})


def keyword_pattern(complex_keywords=None, moderate_keywords=None, simple_keywords=None) -> re.Pattern:
    """The pattern for these keyword lists (None: that class's defaults), compiled once."""
    if complex_keywords is None and moderate_keywords is None and simple_keywords is None:
        return _DEFAULT_PATTERN
    return _cached_pattern(*(None if w is None else tuple(w) for w in (complex_keywords, moderate_keywords,
                                                                       simple_keywords)))


@functools.lru_cache(maxsize=32)
def _cached_pattern(cx, mod, simple) -> re.Pattern:
    return compile_keywords({"complex": tuple(COMPLEX_KEYWORDS if cx is None else cx),
                             "moderate": tuple(MODERATE_KEYWORDS if mod is None else mod),
                             "simple": tuple(SIMPLE_KEYWORDS if simple is None else simple)})


def classify_keywords(text: str, prompt_tokens: int | None = None, *,
                      long_context_tokens: int = LONG_CONTEXT_TOKENS,
                      very_long_context_tokens: int = VERY_LONG_CONTEXT_TOKENS,
                      complex_keywords: tuple[str, ...] | None = None,
                      moderate_keywords: tuple[str, ...] | None = None,
                      simple_keywords: tuple[str, ...] | None = None) -> str:
    """'simple' | 'moderate' | 'complex' for a call's text and context length (prompt_tokens;
    None: estimated from the text). A pure function, so it can be scored against trace labels."""
    pattern = keyword_pattern(complex_keywords, moderate_keywords, simple_keywords)
    return classify(text, prompt_tokens, long_context_tokens, very_long_context_tokens, pattern)[0]


def classify(text: str, prompt_tokens: int | None, long_tokens: int, very_long_tokens: int,
             pattern: re.Pattern) -> tuple[str, str]:
    """(class, why) — the why goes into the decision's reason."""
    label, why = "moderate", "no keywords"
    best = _strongest_match(text, pattern)
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


def _strongest_match(text: str, pattern: re.Pattern) -> tuple[int, str] | None:
    """(rank, matched text) of the most complex class matched in the text's end, or None."""
    tail = (text or "")[-SCAN_CHARS:].lower()
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
            if rank == len(COMPLEXITIES) - 1:
                break
    return best
