"""`oracle`: the trace's own complexity label, an upper bound for any classifier."""
from __future__ import annotations

from typing import Mapping

from bench.tiers.routing.interface import COMPLEXITIES, CallInfo, Decision, TierInfo
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import register


@register("oracle")
class Oracle:
    """The trace's own complexity label: what a perfect classifier would do, the bound the
    keyword heuristic is measured against."""
    name = "oracle"
    # key: (type, default, meaning): the policy's own documentation of its keys, rendered into
    # docs/spec.md; every policy has one of the same shape (data, not repeated logic)
    keys = {
        "simple": ("tier name", "the nearest small tier", "where calls labelled simple go"),
        "moderate": ("tier name", "the simple tier", "where calls labelled moderate go"),
        "complex": ("tier name", "the nearest large tier", "where calls labelled complex go"),
        "default": ("tier name", "the complex tier", "where calls without a (known) label go"),
    }

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
    def from_spec(cls, spec: SpecReader) -> "Oracle":
        simple = spec.tier("simple", spec.nearest("small"))
        cx = spec.tier("complex", spec.nearest("large"))
        mapping = {"simple": simple, "moderate": spec.tier("moderate", simple), "complex": cx}
        return cls(mapping, spec.tier("default", cx))
