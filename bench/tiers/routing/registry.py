"""The policies a run spec can name, and `make_policy`, which builds one from its routing table."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from bench.tiers.routing.interface import RoutingPolicy, TierInfo, tier_info
from bench.tiers.routing.reader import SpecReader

POLICIES: dict[str, type] = {}  # {"policy": NAME} in a run spec -> the class; in registration order


def register(name: str) -> Callable[[type], type]:
    """Class decorator: the policy answers to {"policy": name} in a routing table. The class needs
    a `name`, a `choose(call) -> Decision` method and a classmethod `from_spec(reader)`."""
    def add(cls: type) -> type:
        POLICIES[name] = cls
        return cls
    return add


def make_policy(spec: Mapping[str, Any], tiers: list[Any], prices: Any = None) -> RoutingPolicy:
    """The policy a run spec's routing table describes, over `tiers` (TierInfo, bench/tiers/network.py
    Tier objects, or dicts; see `tier_info`). `prices` (a bench.tiers.pricing.PriceTable) fills in the
    prices of tiers that carry none. ValueError, one line naming the key, on a bad table."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"routing: expected a table with a 'policy' key, got {spec!r}")
    by_name = _tiers_by_name([tier_info(t, prices) for t in tiers])
    cls = _policy_class(spec.get("policy"))
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


def _tiers_by_name(infos: list[TierInfo]) -> dict[str, TierInfo]:
    if not infos:
        raise ValueError("routing: no tiers to route among")
    by_name: dict[str, TierInfo] = {}
    for t in infos:
        if t.name in by_name:
            raise ValueError(f"routing: duplicate tier name {t.name!r}")
        by_name[t.name] = t
    return by_name


def _policy_class(kind: Any) -> type:
    if kind is None:
        raise ValueError(f"routing.policy: missing (one of {', '.join(POLICIES)})")
    if not isinstance(kind, str) or kind not in POLICIES:
        raise ValueError(f"routing.policy: unknown policy {kind!r} (known: {', '.join(POLICIES)})")
    cls = POLICIES[kind]
    if not callable(getattr(cls, "from_spec", None)):
        raise ValueError(f"routing.policy: POLICIES[{kind!r}] has no from_spec(spec) classmethod")
    return cls
