"""Quantile functions on probability knots: how a workload profile (traces/profile.py) stores a
distribution as a shape, never as samples.

Each distribution is a monotone quantile function on a fixed grid of probability knots,
interpolated in log space for heavy-tailed quantities (tokens, seconds) and linearly for
fractions: a few numbers per distribution, nothing about any one recorded session, editable by
hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces.profile_json import Reader

# Probability knots of every fitted quantile function: 27 knots, every 0.05 in the body and
# denser in both tails, so the interpolated CDF is within a few hundredths of the data's.
KNOTS = (0.0, 0.002, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
         0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.998, 1.0)


def round_sig(v: float, digits: int = 5) -> float:
    """Round to significant digits: a profile stores shapes, and 5 digits keep it small."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    return float(f"{v:.{digits}g}")


@dataclass
class Quantiles:
    """A distribution of a non-negative quantity as its quantile function: `q[i]` is the value at
    probability `p[i]`; between knots the function is linear in log1p(value) when `log`, else
    linear in the value. `integer`: draws are floored to integers (integer data are fitted as
    atoms spread evenly over [x, x + 1), so flooring a draw gives back the data's atoms, e.g. think
    times at 1 s resolution). `p` is the fixed grid KNOTS unless the JSON gives its own (the fit
    does for integer data with few distinct values: knots at the atoms' edges)."""
    p: list[float]
    q: list[float]
    log: bool = True
    integer: bool = False

    @classmethod
    def constant(cls, value: float, integer: bool = False) -> Quantiles:
        # Flooring a constant integer must give it back: store value + 0.5 for integer constants.
        v = float(value) + (0.5 if integer else 0.0)
        return cls([0.0, 1.0], [v, v], log=False, integer=integer)

    def quantile(self, u: np.ndarray | float) -> np.ndarray:
        """The value at probability u (array in, array out), before integer flooring."""
        p = np.asarray(self.p, float)
        q = np.asarray(self.q, float)
        if self.log:
            return np.expm1(np.interp(u, p, np.log1p(q)))
        return np.interp(u, p, q)

    def cdf(self, x: float) -> float:
        """P(X <= x) of the interpolated quantile function (its inverse)."""
        p = np.asarray(self.p, float)
        q = np.asarray(self.q, float)
        if self.log:
            return float(np.interp(np.log1p(max(x, 0.0)), np.log1p(q), p))
        return float(np.interp(x, q, p))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return self.at(rng.random(size))

    def at(self, u: np.ndarray | float) -> np.ndarray | float:
        """The draw for uniform(s) u: the quantile, floored for integer quantities."""
        x = self.quantile(u)
        if self.integer:
            x = np.floor(x + 1e-9)  # expm1(log1p(4.0)) is 3.9999999999999996
        return np.maximum(x, 0.0)

    def median(self) -> float:
        return float(self.at(0.5))

    def scaled(self, factor: float, integer: bool | None = None) -> Quantiles:
        """The distribution of factor x X (still a quantile function: scaling keeps it monotone)."""
        return Quantiles(list(self.p), [round_sig(v * factor) for v in self.q], self.log,
                         self.integer if integer is None else integer)

    def clipped(self, lo: float | None = None, hi: float | None = None) -> Quantiles:
        """The distribution of min(max(X, lo), hi) (clipping keeps it monotone)."""
        q = np.asarray(self.q, float)
        q = np.clip(q, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)
        return Quantiles(list(self.p), [float(v) for v in q], self.log, self.integer)

    def to_dict(self) -> dict:
        d = {"q": list(self.q), "log": self.log, "integer": self.integer}
        if tuple(self.p) != KNOTS:  # the default grid is left implicit: it keeps profiles small
            d = {"p": list(self.p), **d}
        return d

    @classmethod
    def from_dict(cls, r: Reader, key: str | None) -> Quantiles:
        d = r if key is None else r.obj(key)
        q = d.floats("q")
        p = d.floats("p") if "p" in d.data else list(KNOTS)
        if len(p) < 2 or len(p) != len(q):
            raise d.error("p", f"needs at least 2 knots, as many in 'q' as in 'p' (got {len(p)} and {len(q)})")
        if p[0] != 0.0 or p[-1] != 1.0 or any(b <= a for a, b in zip(p, p[1:])):
            raise d.error("p", "knots must rise strictly from 0 to 1")
        if any(v < 0 for v in q):
            raise d.error("q", "values must be >= 0")
        if any(b < a for a, b in zip(q, q[1:])):
            raise d.error("q", "values must not decrease (a quantile function is monotone)")
        return cls(p, q, d.bool("log", True), d.bool("integer", False))
