"""A gateway's config: its tiers, the routing table of its policy, and the seed of its draws.

    {"tiers": [{"name": "edge", "url": "http://127.0.0.1:8001", "profile": "metro"},
               {"name": "cloud", "url": "http://127.0.0.1:8002", "rtt_ms": 250, "model": "big"}],
     "routing": {"policy": "fixed", "tier": "edge"},     # given to bench.tiers.routing.make_policy
     "seed": 0}

Keys of a tier as bench/tiers/network.py `Tier.from_dict` documents them; no routing table means
every call to the first tier.
"""
from __future__ import annotations

from bench.tiers.network import Tier
from bench.tiers.routing import RoutingPolicy, make_policy


def load_config(cfg: dict) -> tuple[list[Tier], dict, int]:
    """(tiers, routing spec, seed) of a gateway config; ValueError on a bad one."""
    if not isinstance(cfg, dict):
        raise ValueError("the gateway config must be a JSON object")
    raw = cfg.get("tiers")
    if not isinstance(raw, list) or not raw:
        raise ValueError("the gateway config needs a non-empty list 'tiers'")
    tiers = [t if isinstance(t, Tier) else Tier.from_dict(t) for t in raw]
    names = [t.name for t in tiers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate tier names: {', '.join(sorted(dup))}")
    routing = cfg.get("routing") or {}
    if not isinstance(routing, dict):
        raise ValueError("'routing' must be an object (the routing policy spec)")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' must be an integer, got {seed!r}")
    return tiers, routing, seed


def gateway_config(tiers: list[Tier], routing: dict | None = None, seed: int = 0) -> dict:
    """A config (JSON-ready) for these tiers."""
    return {"tiers": [t.to_dict() for t in tiers], "routing": routing or {}, "seed": seed}


def build_policy(spec: dict | None, tiers: list[Tier]) -> RoutingPolicy:
    """The routing policy of a config (ValueError on a bad table); none: every call to the first tier."""
    if not spec and tiers:
        spec = {"policy": "fixed", "tier": tiers[0].name}
    return make_policy(spec or {}, tiers)
