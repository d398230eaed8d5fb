"""SpecReader: a routing table read key by key, the way each policy's `from_spec` reads it."""
from __future__ import annotations

from typing import Any, Mapping

from bench.tiers.routing.interface import TierInfo, is_number

REQUIRED = object()  # the default of a key that must be given


class SpecReader:
    """A policy's spec table, read key by key with one-line errors naming the key. Each key read
    is remembered; `finish` rejects the keys nobody read."""

    def __init__(self, spec: Mapping[str, Any], tiers: Mapping[str, TierInfo]):
        self.raw = dict(spec)
        self.tiers = dict(tiers)
        self.policy = str(self.raw.get("policy"))
        self.read = {"policy"}

    def _get(self, key: str, default: Any) -> tuple[Any, bool]:
        """(value, whether it was given); the default when absent; an error when required."""
        self.read.add(key)
        v = self.raw.get(key)
        if v is None:
            if default is REQUIRED:
                raise ValueError(f"routing.{key}: missing (policy {self.policy!r} needs it)")
            return default, False
        return v, True

    def tier(self, key: str, default: Any = REQUIRED) -> Any:
        """The TierInfo a key names (default when absent; required without one)."""
        v, given = self._get(key, default)
        return self._resolve(key, v) if given else v

    # The readers below repeat get-then-check on purpose: one small method per type keeps each
    # error message specific to what the key must be (a shared helper would need a closure per check).
    def tier_list(self, key: str, default: Any = REQUIRED) -> Any:
        v, given = self._get(key, default)
        if not given:
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"routing.{key}: expected a non-empty list of tier names, got {v!r}")
        return [self._resolve(key, x) for x in v]

    def string_list(self, key: str, default: Any = REQUIRED) -> Any:
        v, given = self._get(key, default)
        if not given:
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ValueError(f"routing.{key}: expected a list of non-empty strings, got {v!r}")
        return list(v)

    def number(self, key: str, default: Any = REQUIRED, *, minimum: float | None = None) -> Any:
        v, given = self._get(key, default)
        if not given:
            return v
        if not is_number(v):
            raise ValueError(f"routing.{key}: expected a number, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"routing.{key}: must be >= {minimum:g}, got {v!r}")
        return float(v)

    def integer(self, key: str, default: Any = REQUIRED, *, minimum: int | None = None) -> Any:
        v, given = self._get(key, default)
        if not given:
            return v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"routing.{key}: expected an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"routing.{key}: must be >= {minimum}, got {v!r}")
        return v

    def string(self, key: str, default: Any = REQUIRED) -> Any:
        v, given = self._get(key, default)
        if given and not isinstance(v, str):
            raise ValueError(f"routing.{key}: expected a string, got {v!r}")
        return v

    def nearest(self, size: str) -> TierInfo:
        """The default tier for a role: the lowest-RTT tier of that size, else the nearest (small)
        or farthest (large) tier of any size."""
        of_size = [t for t in self.tiers.values() if t.size == size]
        if of_size:
            return min(of_size, key=lambda t: t.rtt_p50_ms)
        pick = min if size == "small" else max
        return pick(self.tiers.values(), key=lambda t: t.rtt_p50_ms)

    def finish(self) -> None:
        extra = [k for k in self.raw if k not in self.read]
        if extra:
            known = ", ".join(sorted(self.read - {"policy"})) or "none"
            raise ValueError(f"routing.{extra[0]}: unknown key for policy {self.policy!r} (known: {known})")

    def _resolve(self, key: str, v: Any) -> TierInfo:
        if not isinstance(v, str):
            raise ValueError(f"routing.{key}: expected a tier name (string), got {v!r}")
        if v not in self.tiers:
            raise ValueError(f"routing.{key}: unknown tier {v!r} (tiers: {', '.join(self.tiers)})")
        return self.tiers[v]
