"""`fixed`: every call to one tier, the baseline each routed run is compared with."""
from __future__ import annotations

from bench.tiers.routing.interface import CallInfo, Decision, TierInfo
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import register


@register("fixed")
class FixedTier:
    """Every call to one tier: the baseline each routed run is compared with."""
    name = "fixed"
    # the keys of its routing table (docs/spec.md): key -> (type, default, meaning)
    keys = {"tier": ("tier name", "required", "the tier every call goes to")}

    def __init__(self, tier: TierInfo):
        self.tier = tier

    def choose(self, call: CallInfo) -> Decision:
        return Decision(self.tier.name, "fixed")

    @classmethod
    def from_spec(cls, spec: SpecReader) -> "FixedTier":
        return cls(spec.tier("tier"))
