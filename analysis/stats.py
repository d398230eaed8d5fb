"""Statistics for run results: percentile confidence intervals, paired and unpaired comparisons,
between-run intervals and the sequential early-stopping rule.

Calls within a session are correlated (one prompt grows from the last, one user waits on each),
so every bootstrap here resamples whole sessions (clusters), never single calls. Percentiles are
numpy's linear interpolation, as in analysis.metrics and `vllm bench serve`; a bootstrap
replicate's percentile is exactly np.percentile of the resampled calls (computed from cluster
weights, without materializing the resampled arrays).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_BOOT = 2000
_CHUNK_CELLS = 4_000_000  # bootstrap weights are built in chunks of about this many cells


@dataclass
class Interval:
    """A point estimate with a two-sided interval at `confidence`."""
    estimate: float | None
    lo: float | None
    hi: float | None
    confidence: float
    n: int = 0          # observations
    clusters: int = 0   # independent units resampled (sessions; runs for a t-interval)
    method: str = ""

    def contains(self, x: float) -> bool:
        return self.lo is not None and self.hi is not None and self.lo <= x <= self.hi

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "confidence": self.confidence,
                "n": self.n, "clusters": self.clusters, "method": self.method}


def _clean(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=float)
    c = np.asarray(clusters if clusters is not None else np.arange(len(v)))
    if len(c) != len(v):
        raise ValueError(f"values and clusters differ in length ({len(v)} vs {len(c)})")
    keep = ~np.isnan(v)
    return v[keep], c[keep]


def _cluster_codes(clusters: np.ndarray) -> tuple[np.ndarray, int]:
    _, codes = np.unique(clusters.astype(str), return_inverse=True)
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _weights(rng: np.random.Generator, n_clusters: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_clusters) counts: how often each cluster is drawn when n_clusters are drawn with
    replacement (a multinomial), i.e. one cluster-bootstrap resample per row."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def _weighted_percentiles(sorted_vals: np.ndarray, w: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """np.percentile(method='linear') of each row's sample, where row b holds sorted_vals[i]
    repeated w[b, i] times. Returns (n_rows, len(qs)); NaN for an empty row."""
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1]
    out = np.full((w.shape[0], len(qs)), np.nan)
    ok = total > 0
    for j, q in enumerate(qs):
        h = (total - 1) * (q / 100.0)
        lo = np.floor(h)
        frac = h - lo
        hi = np.minimum(lo + 1, total - 1)
        # the element of (0-based) rank r is the first index whose cumulative count exceeds r
        i_lo = (cum <= lo[:, None]).sum(axis=1)
        i_hi = (cum <= hi[:, None]).sum(axis=1)
        i_lo = np.minimum(i_lo, len(sorted_vals) - 1)
        i_hi = np.minimum(i_hi, len(sorted_vals) - 1)
        val = sorted_vals[i_lo] + frac * (sorted_vals[i_hi] - sorted_vals[i_lo])
        out[:, j] = np.where(ok, val, np.nan)
    return out


def _boot_percentiles(values: np.ndarray, codes: np.ndarray, n_clusters: int, qs: np.ndarray,
                      wclust: np.ndarray) -> np.ndarray:
    """Replicate percentiles (n_boot, len(qs)) of `values` for the cluster weights `wclust`."""
    order = np.argsort(values, kind="stable")
    sv = values[order]
    sc = codes[order]
    out = np.empty((wclust.shape[0], len(qs)))
    rows = max(1, _CHUNK_CELLS // max(1, len(sv)))
    for s in range(0, wclust.shape[0], rows):
        out[s:s + rows] = _weighted_percentiles(sv, wclust[s:s + rows][:, sc], qs)
    return out


def _interval(est: float, reps: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    reps = reps[~np.isnan(reps)]
    if not reps.size:
        return None, None
    a = (1 - confidence) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def percentile_ci(values, clusters=None, q: float = 50, *, confidence: float = 0.95, n_boot: int = DEFAULT_BOOT,
                  seed: int = 0) -> Interval:
    """The q-th percentile of `values` with a confidence interval, resampling whole clusters
    (sessions); clusters=None treats every value as its own cluster; NaNs are dropped.

    The interval is Woodruff's: the standard error of the empirical CDF at the estimate, F(x_q),
    comes from the session bootstrap, and the interval is the percentiles at q -+ z * se. A plain
    percentile bootstrap of a tail percentile under-covers (p99 of 1,000 calls in 100 sessions:
    88% for a nominal 95%); this covers 93-97% for p50, p90 and p99 once the tail holds about ten
    calls (tests/analysis/test_stats.py). With fewer, the interval is reported but flagged."""
    return percentile_cis(values, clusters, (q,), confidence=confidence, n_boot=n_boot, seed=seed)[float(q)]


def percentile_cis(values, clusters=None, qs=(50, 90, 99), *, confidence: float = 0.95, n_boot: int = DEFAULT_BOOT,
                   seed: int = 0) -> dict[float, Interval]:
    """percentile_ci for several percentiles, from one set of session resamples."""
    v, c = _clean(values, clusters)
    out: dict[float, Interval] = {}
    method = "Woodruff, session-bootstrap SE"
    if not v.size:
        return {float(q): Interval(None, None, None, confidence, 0, 0, method) for q in qs}
    codes, k = _cluster_codes(c)
    size = np.bincount(codes, minlength=k).astype(float)
    w = _weights(np.random.default_rng(seed), k, n_boot).astype(float) if k >= 2 else None
    z = float(sps.norm.ppf((1 + confidence) / 2))
    for q in qs:
        q = float(q)
        est = float(np.percentile(v, q))
        if w is None:
            out[q] = Interval(est, None, None, confidence, int(v.size), k, method)
            continue
        below = np.bincount(codes, weights=(v <= est).astype(float), minlength=k)
        reps = (w @ below) / (w @ size)  # every replicate draws k sessions, so w @ size > 0
        se = float(np.std(reps, ddof=1)) * 100.0
        lo = float(np.percentile(v, min(100.0, max(0.0, q - z * se))))
        hi = float(np.percentile(v, min(100.0, max(0.0, q + z * se))))
        tail = min(q, 100 - q) / 100.0 * v.size
        out[q] = Interval(est, lo, hi, confidence, int(v.size), k,
                          method if tail >= 10 else method + "; fewer than 10 calls in the tail: unreliable")
    return out


# --------------------------------------------------------------------------- comparisons

@dataclass
class Comparison:
    """candidate / baseline of one statistic (a percentile, or a mean when q is None)."""
    statistic: str            # 'p50', 'p99', 'mean'
    baseline: float | None
    candidate: float | None
    ratio: Interval           # candidate / baseline, with its bootstrap interval
    paired: bool
    n_pairs: int = 0
    mann_whitney_p: float | None = None   # unpaired only: two-sided Mann-Whitney U over calls

    def to_dict(self) -> dict:
        return {"statistic": self.statistic, "baseline": self.baseline, "candidate": self.candidate,
                "ratio": self.ratio.to_dict(), "paired": self.paired, "n_pairs": self.n_pairs,
                "mann_whitney_p": self.mann_whitney_p}


def _stat_name(q: float | None) -> str:
    return "mean" if q is None else f"p{q:g}"


def _boot_stat(values: np.ndarray, codes: np.ndarray, k: int, q: float | None, w: np.ndarray) -> np.ndarray:
    if q is None:  # weighted mean: sum(w_i v_i) / sum(w_i), per replicate
        wc = w[:, codes]
        tot = wc.sum(axis=1)
        return np.where(tot > 0, (wc @ values) / np.where(tot > 0, tot, 1), np.nan)
    return _boot_percentiles(values, codes, k, np.array([q], dtype=float), w)[:, 0]


def _point(values: np.ndarray, q: float | None) -> float:
    return float(np.mean(values)) if q is None else float(np.percentile(values, q))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den not in (0, 0.0) and not math.isnan(den) else None


def paired_ratio(baseline, candidate, clusters, q: float | None = 50, *, confidence: float = 0.95,
                 n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Comparison:
    """The same calls measured twice (baseline[i] and candidate[i] are one call; clusters[i] its
    session): the ratio candidate/baseline of their percentile q (mean when q is None), with an
    interval from resampling sessions jointly, so session-to-session variation cancels."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(candidate, dtype=float)
    c = np.asarray(clusters)
    if not (len(a) == len(b) == len(c)):
        raise ValueError("paired_ratio: baseline, candidate and clusters must have one entry per call")
    keep = ~np.isnan(a) & ~np.isnan(b)
    a, b, c = a[keep], b[keep], c[keep]
    name = _stat_name(q)
    if not a.size:
        return Comparison(name, None, None, Interval(None, None, None, confidence, 0, 0, "paired cluster bootstrap"),
                          True, 0)
    codes, k = _cluster_codes(c)
    pa, pb = _point(a, q), _point(b, q)
    est = _ratio(pb, pa)
    lo = hi = None
    if k >= 2:
        w = _weights(np.random.default_rng(seed), k, n_boot)
        ra, rb = _boot_stat(a, codes, k, q, w), _boot_stat(b, codes, k, q, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = np.where(ra != 0, rb / ra, np.nan)
        lo, hi = _interval(0.0, reps, confidence)
    return Comparison(name, pa, pb, Interval(est, lo, hi, confidence, int(a.size), k, "paired cluster bootstrap"),
                      True, int(a.size))


def unpaired_ratio(baseline, baseline_clusters, candidate, candidate_clusters, q: float | None = 50, *,
                   confidence: float = 0.95, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Comparison:
    """Two independent samples: the ratio candidate/baseline of percentile q (mean when None), each
    side's sessions resampled on their own; with a two-sided Mann-Whitney U p-value over calls
    (which, unlike the interval, ignores the correlation within sessions)."""
    a, ca = _clean(baseline, baseline_clusters)
    b, cb = _clean(candidate, candidate_clusters)
    name = _stat_name(q)
    if not a.size or not b.size:
        return Comparison(name, _point(a, q) if a.size else None, _point(b, q) if b.size else None,
                          Interval(None, None, None, confidence, 0, 0, "cluster bootstrap"), False)
    pa, pb = _point(a, q), _point(b, q)
    codes_a, ka = _cluster_codes(ca)
    codes_b, kb = _cluster_codes(cb)
    lo = hi = None
    if ka >= 2 and kb >= 2:
        rng = np.random.default_rng(seed)
        ra = _boot_stat(a, codes_a, ka, q, _weights(rng, ka, n_boot))
        rb = _boot_stat(b, codes_b, kb, q, _weights(rng, kb, n_boot))
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = np.where(ra != 0, rb / ra, np.nan)
        lo, hi = _interval(0.0, reps, confidence)
    mw = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue) if a.size and b.size else None
    return Comparison(name, pa, pb, Interval(_ratio(pb, pa), lo, hi, confidence, int(a.size + b.size), ka + kb,
                                             "cluster bootstrap"), False, 0, mw)


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of per-run values (one per repetition) with a Student-t interval from the between-run
    variance, as AIPerf reports repeated runs. Needs two runs or more for an interval."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not v.size:
        return Interval(None, None, None, confidence, 0, 0, "t")
    m = float(v.mean())
    if v.size < 2:
        return Interval(m, None, None, confidence, 1, 1, "t")
    half = float(sps.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(m, m - half, m + half, confidence, int(v.size), int(v.size), "t")


# --------------------------------------------------------------------------- early stopping

@dataclass
class EarlyStopRule:
    """Stop a run once a percentile target is decided at `confidence`, in the spirit of MLPerf
    LoadGen's early stopping: with n calls measured and k of them over the bound, the target
    'pQ <= bound' is met when P(X <= k) < alpha for X ~ Binomial(n, 1 - Q/100) (fewer calls over
    the bound than the target allows could produce by chance), and missed when P(X >= k) < alpha.

    Looks are taken at min_samples, 2*min_samples, 4*min_samples, ... and alpha is (1 -
    confidence) split evenly over max_looks (Bonferroni), so repeated looks keep the error rate.
    Calls count as independent draws here (the binomial view MLPerf takes), which sessions'
    correlated calls make optimistic; min_samples should span many sessions."""
    metric: str          # ttft | tpot | itl | e2el
    percentile: float    # e.g. 99
    bound_ms: float
    confidence: float = 0.95
    min_samples: int = 64
    max_looks: int = 12

    @classmethod
    def parse(cls, text: str, confidence: float = 0.95) -> "EarlyStopRule":
        """'ttft_p99<=500' (milliseconds)."""
        import re
        m = re.fullmatch(r"\s*(ttft|tpot|itl|e2el)_p(\d+(?:\.\d+)?)\s*<=\s*(\d+(?:\.\d+)?)\s*(?:ms)?\s*", text)
        if not m:
            raise ValueError(f"early stop {text!r}: expected METRIC_pQ<=MS, e.g. ttft_p99<=500 "
                             "(METRIC one of ttft, tpot, itl, e2el)")
        q = float(m.group(2))
        if not 0 < q < 100:
            raise ValueError(f"early stop {text!r}: percentile must be between 0 and 100")
        return cls(m.group(1), q, float(m.group(3)), confidence)

    @property
    def alpha(self) -> float:
        return (1 - self.confidence) / self.max_looks

    @property
    def looks(self) -> tuple[int, ...]:
        """The numbers of measured calls at which the rule is looked at, in order."""
        return tuple(self.min_samples * 2 ** k for k in range(self.max_looks))

    def decide(self, values_ms) -> str | None:
        """'met', 'missed' or None (undecided) from the metric's values so far (ms)."""
        v = np.asarray(values_ms, dtype=float)
        v = v[~np.isnan(v)]
        n = int(v.size)
        if n < self.min_samples:
            return None
        k = int((v > self.bound_ms).sum())
        p_over = 1 - self.percentile / 100.0
        if sps.binom.cdf(k, n, p_over) < self.alpha:
            return "met"
        if sps.binom.sf(k - 1, n, p_over) < self.alpha:
            return "missed"
        return None
