"""Routing policies of the tier gateway: every agent call arrives at one URL and a policy picks the
tier that serves it; the gateway records the decision (tier and reason) with the call.

The seed article ("Agent Cloud Architecture", Cloudflare and OpenAI, April 2026) places small
models at the edge (device under 1 ms, metro 10-50 ms, regional 50-150 ms) and frontier models in
the central cloud (200-500 ms), with an AI gateway routing each call by complexity, latency budget
and cost. The policies here are that idea in small, comparable pieces, one module each:

    fixed     every call to one tier (the baseline)
    keyword   the article's heuristic: simple / moderate / complex from keywords in the latest
              user or tool text and from the context length (classifier.py)
    context   a context-length threshold: long prompts to the large tier
    oracle    the trace's own complexity label (an upper bound for any classifier)
    budget    the cheapest tier whose expected latency fits a latency budget

One interface (`RoutingPolicy`, interface.py): a `name` and `choose(call: CallInfo) -> Decision`.
A Decision also unpacks as a (tier, reason) pair. Policies are built with the tiers they route
among (`TierInfo`: name, typical RTT, model size, prices, optional speed estimates).

Run-spec tables (`make_policy(spec, tiers)`, registry.py; `tiers` are TierInfo, bench/tiers/network.py
Tier objects or dicts, see `tier_info`):

    {"policy": "fixed", "tier": "central"}
    {"policy": "keyword", "small": "edge", "medium": "regional", "large": "central",
     "long_context_tokens": 8000, "very_long_context_tokens": 32000}
    {"policy": "context", "small": "edge", "large": "central", "max_tokens": 8000}
    {"policy": "oracle", "simple": "edge", "moderate": "edge", "complex": "central", "default": "central"}
    {"policy": "budget", "latency_budget_ms": 300, "cost_budget": 0.01, "expected_output_tokens": 256,
     "tiers": ["edge", "central"]}

Each policy's `keys` lists its table's keys with their defaults (docs/spec.md shows them). Every
error is a one-line ValueError naming the key (`routing.max_tokens: ...`); a key the policy does not
read is an error too, so typos do not pass silently.

Adding a policy: a class with a `name`, a `choose` method, and a classmethod `from_spec(spec)`
that reads its keys from a `SpecReader` (which resolves tier names and checks types), registered
in POLICIES under the name the run spec uses (`@register(name)` does that):

    from bench.tiers.routing import Decision, register

    @register("first-call")   # then {"policy": "first-call", "small": ..., "large": ...}
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
"""
from bench.tiers.routing.interface import (COMPLEXITIES, SIZES, CallInfo, Decision, RoutingPolicy, TierInfo,
                                           estimate_tokens, tier_info)
from bench.tiers.routing.classifier import (COMPLEX_KEYWORDS, LONG_CONTEXT_TOKENS, MODERATE_KEYWORDS,
                                            SIMPLE_KEYWORDS, VERY_LONG_CONTEXT_TOKENS, classify_keywords)
from bench.tiers.routing.reader import SpecReader
from bench.tiers.routing.registry import POLICIES, make_policy, register
from bench.tiers.routing.request import call_info_from_request

# the built-in policies, registered in this order (the order error messages list them in)
from bench.tiers.routing.fixed import FixedTier
from bench.tiers.routing.keyword import KeywordHeuristic
from bench.tiers.routing.context import ContextThreshold
from bench.tiers.routing.oracle import Oracle
from bench.tiers.routing.budget import Budget

__all__ = [
    # what policies see and say
    "CallInfo", "TierInfo", "Decision", "RoutingPolicy", "COMPLEXITIES", "SIZES", "estimate_tokens", "tier_info",
    "call_info_from_request",
    # the keyword classifier
    "classify_keywords", "COMPLEX_KEYWORDS", "MODERATE_KEYWORDS", "SIMPLE_KEYWORDS", "LONG_CONTEXT_TOKENS",
    "VERY_LONG_CONTEXT_TOKENS",
    # the policies and how a run spec names them
    "POLICIES", "register", "make_policy", "SpecReader",
    "FixedTier", "KeywordHeuristic", "ContextThreshold", "Oracle", "Budget",
]
