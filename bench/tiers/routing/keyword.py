"""`keyword`: the article's heuristic, a call's class from keywords in its text and its context
length (bench/tiers/routing/classifier.py), each class to its tier."""
from __future__ import annotations

import re

from bench.tiers.routing.interface import CallInfo, Decision, TierInfo
from bench.tiers.routing.classifier import (LONG_CONTEXT_TOKENS, VERY_LONG_CONTEXT_TOKENS, classify,
                                            compile_keywords, keyword_pattern)
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import register


@register("keyword")
class KeywordHeuristic:
    """The article's heuristic: simple calls to the small edge tier, moderate ones to the medium
    (regional) tier (the small one when there is none), complex ones to the large central tier."""
    name = "keyword"
    keys = {
        "small": ("tier name", "the nearest small tier", "where simple calls go"),
        "medium": ("tier name", "the small tier", "where moderate calls go"),
        "large": ("tier name", "the nearest large tier", "where complex calls go"),
        "long_context_tokens": ("integer", str(LONG_CONTEXT_TOKENS), "a context this long escalates one class"),
        "very_long_context_tokens": ("integer", str(VERY_LONG_CONTEXT_TOKENS),
                                     "a context this long makes the call complex"),
        "simple_keywords": ("list of regexes", "built in", "replace the simple class's keywords"),
        "moderate_keywords": ("list of regexes", "built in", "replace the moderate class's keywords"),
        "complex_keywords": ("list of regexes", "built in", "replace the complex class's keywords"),
    }

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
        self.pattern = keyword_pattern(complex_keywords, moderate_keywords, simple_keywords)

    def choose(self, call: CallInfo) -> Decision:
        label, why = classify(call.prompt_text, call.prompt_tokens, self.long_context_tokens,
                              self.very_long_context_tokens, self.pattern)
        return Decision(self.tiers[label].name, f"keyword: {label} ({why})")

    @classmethod
    def from_spec(cls, spec: SpecReader) -> "KeywordHeuristic":
        words = {}
        for label in ("complex", "moderate", "simple"):
            key = f"{label}_keywords"
            words[key] = spec.string_list(key, None)
            if words[key] is not None:
                try:
                    compile_keywords({label: tuple(words[key])})
                except re.error as e:
                    raise ValueError(f"routing.{key}: not a valid regular expression list: {e}") from None
                words[key] = tuple(words[key])
        return cls(spec.tier("small", spec.nearest("small")), spec.tier("medium", None),
                   spec.tier("large", spec.nearest("large")),
                   long_context_tokens=spec.integer("long_context_tokens", LONG_CONTEXT_TOKENS, minimum=1),
                   very_long_context_tokens=spec.integer("very_long_context_tokens", VERY_LONG_CONTEXT_TOKENS,
                                                         minimum=1), **words)
