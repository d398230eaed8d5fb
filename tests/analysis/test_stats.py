"""analysis.stats: exact bootstrap replicates, interval coverage on data with known quantiles,
comparisons, t-intervals and the early-stopping rule."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from analysis.stats import (EarlyStopRule, _boot_percentiles, _cluster_codes, _weights, paired_ratio, percentile_ci,
                            percentile_cis, t_interval, unpaired_ratio)

SIGMA_SESSION, SIGMA_CALL = 0.5, 0.5  # log-scale spread between sessions and between calls of one


def clustered_sample(rng, sessions: int, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal latencies with a per-session effect (calls of one session are correlated); the
    marginal is lognormal(0, hypot(SIGMA_SESSION, SIGMA_CALL)), so every quantile is known."""
    u = rng.normal(0, SIGMA_SESSION, sessions)[:, None]
    e = rng.normal(0, SIGMA_CALL, (sessions, calls))
    return np.exp(u + e).ravel(), np.repeat(np.arange(sessions), calls)


def true_quantile(q: float) -> float:
    return float(np.exp(sps.norm.ppf(q / 100) * np.hypot(SIGMA_SESSION, SIGMA_CALL)))


def test_bootstrap_replicates_are_exact_percentiles_of_the_resampled_calls():
    rng = np.random.default_rng(1)
    v = rng.normal(size=60)
    c = rng.integers(0, 12, 60)
    codes, k = _cluster_codes(c)
    w = _weights(rng, k, 8)
    reps = _boot_percentiles(v, codes, k, np.array([50.0, 90.0, 99.0]), w)
    for b in range(8):
        sample = np.concatenate([np.repeat(v[codes == j], w[b, j]) for j in range(k)])
        assert reps[b] == pytest.approx(np.percentile(sample, [50, 90, 99]))


@pytest.mark.slow
def test_nominal_95_percent_intervals_cover_the_truth_93_to_97_percent():
    """1,000 trials of 200 sessions x 5 calls: the 95% intervals of p50, p90 and p99 each cover
    the true quantile in 93-97% of trials (the issue's bar)."""
    trials = 1000
    hits = {50.0: 0, 90.0: 0, 99.0: 0}
    for i in range(trials):
        v, c = clustered_sample(np.random.default_rng(10_000 + i), 200, 5)
        cis = percentile_cis(v, c, tuple(hits), n_boot=1000, seed=i)
        for q in hits:
            hits[q] += cis[q].contains(true_quantile(q))
    coverage = {q: h / trials for q, h in hits.items()}
    assert all(0.93 <= cov <= 0.97 for cov in coverage.values()), coverage


def test_ignoring_sessions_gives_intervals_that_are_too_narrow():
    """The reason for resampling sessions: treating correlated calls as independent under-covers."""
    trials, hits_naive, hits_clustered = 300, 0, 0
    truth = true_quantile(50)
    for i in range(trials):
        v, c = clustered_sample(np.random.default_rng(i), 30, 20)
        hits_naive += percentile_ci(v, None, 50, n_boot=500, seed=i).contains(truth)
        hits_clustered += percentile_ci(v, c, 50, n_boot=500, seed=i).contains(truth)
    assert hits_naive / trials < 0.85 < hits_clustered / trials


def test_interval_edge_cases():
    assert percentile_ci([], None, 50).estimate is None
    one = percentile_ci([1.0, 2.0, 3.0], ["s"] * 3, 50)  # one session: no interval
    assert one.estimate == 2.0 and one.lo is None
    small = percentile_ci(np.arange(50.0), np.arange(50), 99)
    assert "unreliable" in small.method  # half a call in the tail
    with pytest.raises(ValueError):
        percentile_ci([1.0, 2.0], [1], 50)


def test_paired_ratio_sees_a_uniform_slowdown_through_session_noise():
    rng = np.random.default_rng(3)
    base, sess = clustered_sample(rng, 60, 10)
    cand = base * 1.2 * np.exp(rng.normal(0, 0.02, base.size))  # the same calls, 20% slower
    c = paired_ratio(base, cand, sess, 50, seed=1)
    assert c.paired and c.n_pairs == base.size
    assert c.ratio.estimate == pytest.approx(1.2, rel=0.02)
    assert 1.15 < c.ratio.lo < 1.2 < c.ratio.hi < 1.25  # tight: session effects cancel
    # the same data unpaired: the interval is far wider
    u = unpaired_ratio(base, sess, cand, sess, 50, seed=1)
    assert (u.ratio.hi - u.ratio.lo) > 3 * (c.ratio.hi - c.ratio.lo)
    assert u.mann_whitney_p is not None and 0 <= u.mann_whitney_p <= 1
    m = paired_ratio(base, cand, sess, None, seed=1)  # the mean
    assert m.statistic == "mean" and m.ratio.estimate == pytest.approx(cand.mean() / base.mean())


def test_t_interval_matches_the_textbook():
    v = [10.0, 12.0, 11.0, 13.0]
    iv = t_interval(v, 0.95)
    half = sps.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert iv.estimate == pytest.approx(11.5) and iv.lo == pytest.approx(11.5 - half) and iv.hi == pytest.approx(11.5 + half)
    assert t_interval([5.0]).lo is None and t_interval([]).estimate is None


def test_early_stop_rule():
    r = EarlyStopRule.parse("ttft_p99<=500")
    assert (r.metric, r.percentile, r.bound_ms) == ("ttft", 99.0, 500.0)
    for bad in ("ttft_p99", "foo_p99<=5", "ttft_p100<=5", "ttft_p99>=5"):
        with pytest.raises(ValueError):
            EarlyStopRule.parse(bad)
    assert r.looks[:2] == (64, 128) and 100 not in r.looks and len(r.looks) == 12
    assert r.decide(np.full(63, 1.0)) is None  # too few
    # no call over the bound: p99 <= bound is decided once 0.99**n < alpha (0.05 / 12 looks)
    assert r.decide(np.full(512, 1.0)) is None and r.decide(np.full(1024, 1.0)) == "met"
    assert EarlyStopRule.parse("e2el_p50<=500").decide(np.full(64, 1.0)) == "met"
    rng = np.random.default_rng(0)
    over = rng.random(2048) < 0.05  # 5% over the bound: p99 is clearly above it
    assert r.decide(np.where(over, 900.0, 100.0)) == "missed"
    close = rng.random(256) < 0.01  # right at the target: undecided
    assert r.decide(np.where(close, 900.0, 100.0)) is None


def test_early_stop_error_rate_is_held_under_repeated_looks():
    """A process exactly at the target (1% over the bound) is declared 'met' at a look in no more
    than 1 - confidence of the runs."""
    r = EarlyStopRule("ttft", 99, 100.0, confidence=0.95)
    rng = np.random.default_rng(7)
    wrong = 0
    for _ in range(400):
        v = np.where(rng.random(64 * 2 ** 6) < 0.01, 200.0, 50.0)
        for n in r.looks[:7]:
            if r.decide(v[:n]) == "met":
                wrong += 1
                break
    assert wrong / 400 <= 0.05
