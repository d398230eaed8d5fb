"""The load points of a sweep: request rates (open loop) or concurrent sessions (closed loop).

An axis is written as
  "1,2,4,8"            a list, increasing
  "geom:0.5:8:5"       a geometric series: 5 values from 0.5 to 8
  "auto" / "auto:N"    open loop: a synchronous point (one session at a time, closed loop) and a
                       maximum-throughput point (every call sent at once) are measured first, then N rates
                       evenly spaced strictly between their throughputs (default 6), as guidellm's
                       sweep does; closed loop: 1, 2, 4, ... doubling up to N sessions (default 64)
                       or until the engine saturates.
"""
from __future__ import annotations

from dataclasses import dataclass

AUTO_RATES, AUTO_MAX_SESSIONS = 6, 64


class AxisError(ValueError):
    pass


@dataclass
class Axis:
    kind: str  # "list" | "auto"
    values: list[float]  # the list (kind list)
    auto_n: int = 0  # auto: rates between the bounds (open) or the largest session count (closed)

    @property
    def is_auto(self) -> bool:
        return self.kind == "auto"


def parse_axis(text, closed: bool) -> Axis:
    """An axis from a flag or a [sweep] value (a string, or a TOML array of numbers)."""
    what = "session counts" if closed else "request rates"
    if isinstance(text, (list, tuple)):
        values = list(text)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise AxisError(f"expected an array of numbers, got {text!r}")
        return _checked(Axis("list", [float(v) for v in values]), closed, what)
    if not isinstance(text, str):
        raise AxisError(f"expected a list like \"1,2,4\", \"geom:LO:HI:N\" or \"auto\", got {text!r}")
    s = text.strip()
    if s == "auto" or s.startswith("auto:"):
        n = s.partition(":")[2]
        try:
            k = int(n) if n else (AUTO_MAX_SESSIONS if closed else AUTO_RATES)
        except ValueError:
            raise AxisError(f"{text!r}: expected auto or auto:N with N a whole number") from None
        if k < 1:
            raise AxisError(f"{text!r}: N must be at least 1")
        return Axis("auto", [], k)
    if s.startswith("geom:"):
        parts = s.split(":")[1:]
        try:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise AxisError(f"{text!r}: expected geom:LO:HI:N, e.g. geom:0.5:8:5") from None
        if not 0 < lo < hi or n < 2:
            raise AxisError(f"{text!r}: a geometric series needs 0 < LO < HI and N >= 2")
        values = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        if closed:
            values = sorted({round(v) for v in values})
        return _checked(Axis("list", [float(v) for v in values]), closed, what)
    try:
        values = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise AxisError(f"{text!r}: expected numbers separated by commas, e.g. 1,2,4") from None
    return _checked(Axis("list", values), closed, what)


def _checked(axis: Axis, closed: bool, what: str) -> Axis:
    v = axis.values
    if not v:
        raise AxisError(f"no {what} given")
    if any(x <= 0 for x in v):
        raise AxisError(f"{what} must be > 0, got {_fmt(v)}")
    if closed and any(not x.is_integer() for x in v):
        raise AxisError(f"session counts must be whole numbers, got {_fmt(v)}")
    if any(b <= a for a, b in zip(v, v[1:])):
        raise AxisError(f"{what} must increase, got {_fmt(v)}")
    return axis


def auto_sessions(limit: int) -> list[int]:
    """1, 2, 4, ... up to limit (limit itself last if it is not a power of two)."""
    out, n = [], 1
    while n < limit:
        out.append(n)
        n *= 2
    return out + [limit]


def auto_rates(sync_rate: float, max_rate: float, n: int) -> list[float]:
    """n rates evenly spaced strictly between the synchronous and the maximum throughput."""
    if max_rate <= sync_rate:
        return []
    step = (max_rate - sync_rate) / (n + 1)
    return [sync_rate + step * (i + 1) for i in range(n)]


def _fmt(values: list[float]) -> str:
    return ",".join(f"{x:g}" for x in values)
