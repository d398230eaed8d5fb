"""SweepConfig: the [sweep] table of a run spec (SweepTable: its keys, documented in docs/spec.md),
with `tierbench sweep`'s flags over it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from bench.sweep.axis import Axis, AxisError, parse_axis


@dataclass
class SweepTable:
    """The [sweep] table: `tierbench sweep`'s load points and SLOs (`tierbench run` ignores it).
    One axis per sweep, and it picks the loop: `rates` open loop, `sessions` closed loop; with
    both, the spec's load.mode picks; with neither, load.mode picks and the axis is `auto`. Flags
    override each key."""
    rates: str | list[float] | None = None  # open loop, calls/s: "1,2,4", [1, 2, 4], "geom:LO:HI:N", or "auto[:N]" (a synchronous and a maximum-throughput point, then N rates between; default 6)
    sessions: str | list[int] | None = None  # closed loop, concurrent sessions: a list as for rates, or "auto[:MAX]" (1, 2, 4, ... up to MAX, default 64)
    slos: list[str] = field(default_factory=list)  # e.g. ["ttft_p99<=2000", "tpot_p99<=100"] (ms) or "makespan_p90<=60" (s): with SLOs the sweep finds the capacity
    confidence: float = 0.95  # of each SLO decision and of the saturation tests
    resolution: float = 0.1  # bisect rates until hi/lo - 1 <= this (sessions: until hi - lo <= 1)
    max_search_points: int = 8  # bisection points at most, per engine
    stop_at_saturation: bool = True  # end the sweep at the first saturated point


KEYS = tuple(f.name for f in fields(SweepTable))


class SweepConfigError(ValueError):
    def __init__(self, fieldname: str, message: str):
        super().__init__(message)
        self.fieldname = fieldname


@dataclass
class SweepConfig:
    axis: Axis = field(default_factory=lambda: Axis("auto", [], 0))
    closed: bool = True
    slos: list[str] = field(default_factory=list)
    confidence: float = 0.95
    resolution: float = 0.1
    max_search_points: int = 8
    stop_at_saturation: bool = True

    @classmethod
    def build(cls, table: dict, flags: dict, closed: bool) -> "SweepConfig":
        """From the [sweep] table, then non-None flags over it; SweepConfigError names the field.
        closed: the spec's load.mode is closed (the module doc says which axis is swept)."""
        for k in table:
            if k not in KEYS:
                raise SweepConfigError(f"sweep.{k}", f"unknown key (known: {', '.join(KEYS)})")
        if flags.get("rates") is not None and flags.get("sessions") is not None:
            raise SweepConfigError("sweep.rates", "give --rates (open loop) or --sessions (closed loop), not both")
        if flags.get("rates") is not None or flags.get("sessions") is not None:
            closed = flags.get("sessions") is not None  # the flag's axis picks the loop
        elif (table.get("rates") is None) != (table.get("sessions") is None):
            closed = table.get("sessions") is not None  # the table's one axis picks it
        merged = {**table, **{k: v for k, v in flags.items() if v is not None}}
        cfg = cls(closed=closed)
        key = "sessions" if closed else "rates"
        try:
            from bench.sweep.axis import AUTO_MAX_SESSIONS, AUTO_RATES
            cfg.axis = parse_axis(merged[key], closed) if merged.get(key) is not None else \
                Axis("auto", [], AUTO_MAX_SESSIONS if closed else AUTO_RATES)
        except AxisError as e:
            raise SweepConfigError(f"sweep.{key}", str(e)) from None
        cfg.confidence = _number(merged, "confidence", cfg.confidence, lambda v: 0.5 < v < 1, "between 0.5 and 1")
        cfg.resolution = _number(merged, "resolution", cfg.resolution, lambda v: 0 < v < 1, "between 0 and 1")
        cfg.max_search_points = int(_number(merged, "max_search_points", cfg.max_search_points,
                                            lambda v: v >= 0 and float(v).is_integer(), "a whole number >= 0"))
        stop = merged.get("stop_at_saturation", cfg.stop_at_saturation)
        if not isinstance(stop, bool):
            raise SweepConfigError("sweep.stop_at_saturation", f"expected true or false, got {stop!r}")
        cfg.stop_at_saturation = stop
        slos = merged.get("slos", [])
        if isinstance(slos, str) or not isinstance(slos, list) or not all(isinstance(s, str) for s in slos):
            raise SweepConfigError("sweep.slos", f"expected an array of rules like \"ttft_p99<=2000\", got {slos!r}")
        from analysis.sweep import parse_slo
        for s in slos:
            try:
                parse_slo(s, cfg.confidence)
            except ValueError as e:
                raise SweepConfigError("sweep.slos", str(e)) from None
        cfg.slos = list(slos)
        return cfg

    def rules(self) -> list:
        from analysis.sweep import parse_slo
        return [parse_slo(s, self.confidence) for s in self.slos]

    def to_dict(self) -> dict:
        return {"axis": {"kind": self.axis.kind, "values": self.axis.values, "auto_n": self.axis.auto_n},
                "closed": self.closed, "slos": self.slos, "confidence": self.confidence,
                "resolution": self.resolution, "max_search_points": self.max_search_points,
                "stop_at_saturation": self.stop_at_saturation}


def _number(d: dict, key: str, default: float, ok, what: str) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
        raise SweepConfigError(f"sweep.{key}", f"expected a number {what}, got {v!r}")
    return float(v)
