"""A gateway's config: its tiers, the routing table of its policy, and the seed of its draws.

    {"tiers": [{"name": "edge", "url": "http://127.0.0.1:8001", "profile": "metro"},
               {"name": "cloud", "url": "http://127.0.0.1:8002", "rtt_ms": 250, "model": "big"}],
     "routing": {"policy": "fixed", "tier": "edge"},     # given to bench.tiers.routing.make_policy
     "seed": 0,
     "max_body_bytes": 4194304}                            # optional; larger request bodies get 413

Keys of a tier (faults included) as bench/tiers/network.py `Tier.from_dict` documents them; no
routing table means every call to the first tier.

The body limit: 4 MiB by default. A 200k-token prompt sent as token ids ("123456, " each) is about
1.6 MB of JSON, as text about 0.8 MB; 4 MiB holds the longest contexts of the traces with room to
spare and turns away a runaway client's 10 MB long before it costs memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.tiers.gateway.http1 import MAX_BODY
from bench.tiers.network import Tier
from bench.tiers.routing import RoutingPolicy, make_policy


@dataclass
class GatewayConfig:
    """A gateway config, read."""
    tiers: list[Tier]
    routing: dict
    seed: int = 0
    max_body_bytes: int = MAX_BODY


def load_config(cfg: dict) -> GatewayConfig:
    """A gateway config, checked; ValueError on a bad one."""
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
    limit = cfg.get("max_body_bytes", MAX_BODY)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"'max_body_bytes' must be a positive integer, got {limit!r}")
    return GatewayConfig(tiers, routing, seed, limit)


def gateway_config(tiers: list[Tier], routing: dict | None = None, seed: int = 0,
                   max_body_bytes: int = MAX_BODY) -> dict:
    """A config (JSON-ready) for these tiers."""
    out = {"tiers": [t.to_dict() for t in tiers], "routing": routing or {}, "seed": seed}
    if max_body_bytes != MAX_BODY:
        out["max_body_bytes"] = max_body_bytes
    return out


def build_policy(spec: dict | None, tiers: list[Tier]) -> RoutingPolicy:
    """The routing policy of a config (ValueError on a bad table); none: every call to the first tier."""
    if not spec and tiers:
        spec = {"policy": "fixed", "tier": tiers[0].name}
    return make_policy(spec or {}, tiers)
