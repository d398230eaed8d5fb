"""`budget`: the cheapest tier whose expected latency fits a latency budget."""
from __future__ import annotations

from bench.tiers.routing.interface import CallInfo, Decision, TierInfo
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import register


@register("budget")
class Budget:
    """Among the tiers whose expected latency (RTT + prefill + decode estimates; RTT alone where
    a tier has no estimates) fits the latency budget, the cheapest by expected cost; when none
    fits, the fastest (within the cost budget if any tier is). The latency budget is the hard
    constraint: the cheapest tier within it is taken even when it is over the cost budget, and the
    reason says so."""
    name = "budget"
    # key: (type, default, meaning): the policy's own documentation of its keys, rendered into
    # docs/spec.md; every policy has one of the same shape (data, not repeated logic)
    keys = {
        "latency_budget_ms": ("number", "required", "the expected latency a call may take"),
        "cost_budget": ("number", "none", "USD a call may cost"),
        "expected_output_tokens": ("integer", "256", "the output length costs and latencies are estimated for"),
        "tiers": ("list of tier names", "all", "the tiers to choose among"),
    }

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
    def from_spec(cls, spec: SpecReader) -> "Budget":
        return cls(spec.tier_list("tiers", list(spec.tiers.values())),
                   spec.number("latency_budget_ms", minimum=0.0),
                   spec.number("cost_budget", None, minimum=0.0),
                   spec.integer("expected_output_tokens", 256, minimum=0))
