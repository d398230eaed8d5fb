"""`context`: a context-length threshold, long prompts to the large tier."""
from __future__ import annotations

from bench.tiers.routing.interface import CallInfo, Decision, TierInfo
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import register


@register("context")
class ContextThreshold:
    """Prompts over max_tokens to the large tier: long contexts are where small models fail first."""
    name = "context"
    keys = {
        "small": ("tier name", "the nearest small tier", "where prompts up to max_tokens go"),
        "large": ("tier name", "the nearest large tier", "where longer prompts go"),
        "max_tokens": ("integer", "required", "the longest prompt (tokens) the small tier gets"),
    }

    def __init__(self, small_tier: TierInfo, large_tier: TierInfo, max_tokens: int):
        self.small, self.large, self.max_tokens = small_tier, large_tier, max_tokens

    def choose(self, call: CallInfo) -> Decision:
        tokens, estimated = call.tokens()
        n = f"{'~' if estimated else ''}{tokens}"
        if tokens > self.max_tokens:
            return Decision(self.large.name, f"context: {n} tokens > {self.max_tokens}")
        return Decision(self.small.name, f"context: {n} tokens <= {self.max_tokens}")

    @classmethod
    def from_spec(cls, spec: SpecReader) -> "ContextThreshold":
        return cls(spec.tier("small", spec.nearest("small")), spec.tier("large", spec.nearest("large")),
                   spec.integer("max_tokens", minimum=1))
