"""The regression gate: does a candidate run regress against a baseline by more than allowed?

For each metric and each pair of groups (analysis.compare.pair_groups):

- latency percentiles and means (ttft_p99, e2el_p50, tpot_mean, ...) with per-call rows on both
  sides: the ratio candidate/baseline with a bootstrap interval over sessions (paired where the
  same calls ran on both). A lower-is-better metric FAILS when the one-sided lower confidence
  bound of the ratio exceeds 1 + max_regression: the candidate is worse than allowed at that
  confidence. An identical rerun therefore passes (its ratio sits near 1), and a slowdown fails
  once the data pins it above the allowance.
- higher-is-better metrics (output_throughput, request_throughput, goodput, ...): the mirror rule
  on the upper bound against 1 - max_regression. One run gives one throughput and no interval,
  so these compare point values (or summary-only JSON inputs for any metric).
- deterministic counters (the engine's prompt tokens computed, prefix-cache hit tokens,
  preemptions, engine steps; the client's completed calls and token totals): exact equality.
  For a fixed request set with a fixed schedule they do not vary between runs, so any change is a
  behaviour change.
Advisory metrics are computed and reported the same way but never fail the gate (timings on
shared CI machines are too noisy to gate hard).

The verdicts go to a Markdown summary and a JUnit XML file (one testcase per group and metric).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from analysis.compare import HIGHER_IS_BETTER, CompareRow, compare_metric, pair_groups, split_metric
from analysis.rundata import Run
from analysis.stats import Interval

# counters gated exactly: engine counters (run.json summary.<group>.engine_counters) and the
# client's own deterministic totals (summary.<group>)
EXACT = {"steps", "prompt_tokens_computed", "prefix_hit_tokens", "prefix_queried_tokens", "prefix_hit_blocks",
         "prefix_miss_blocks", "preemptions", "recomputed_tokens", "evictions", "generation_tokens",
         "completed", "failed", "total_input_tokens", "total_output_tokens"}
POINT = {"request_throughput", "output_throughput", "total_token_throughput", "goodput", "error_rate",
         "prefix_cache_hit_ratio", "prefix_hit_vs_ideal", "makespan_p50_s", "makespan_p99_s", "makespan_mean_s",
         "duration_s", "schedule_lag_p99", "ttft_intended_p99", "e2el_intended_p99"}


class GateInputError(ValueError):
    """Bad gate input (unknown metric, a metric missing from a run): exit status 2."""


@dataclass
class Verdict:
    metric: str
    baseline_group: str
    candidate_group: str
    kind: str               # statistical | point | exact
    row: CompareRow
    limit: float | None     # allowed ratio (1 + m or 1 - m); None for exact
    bound: float | None     # the one-sided confidence bound compared with the limit
    ok: bool                # the verdict as computed
    advisory: bool          # reported, never fails the gate
    reason: str

    @property
    def passed(self) -> bool:
        return self.ok or self.advisory

    @property
    def name(self) -> str:
        g = self.baseline_group if self.baseline_group == self.candidate_group else \
            f"{self.baseline_group}->{self.candidate_group}"
        return f"{g}.{self.metric}"


def check_metric_name(name: str) -> None:
    if split_metric(name) or name in EXACT or name in POINT or name in HIGHER_IS_BETTER:
        return
    known = sorted(EXACT | POINT) + ["<ttft|tpot|itl|e2el>_<pNN|median|mean>"]
    raise GateInputError(f"unknown metric {name!r}; known: {', '.join(known)}")


def _value_source(run: Run, group: str, metric: str) -> str:
    where = "engine_counters." if metric in EXACT and metric not in run.summary.get(group, {}) else ""
    return f"{run.path / 'run.json' if run.path.is_dir() else run.path}: field 'summary.{group}.{where}{metric}'"


def decide(row: CompareRow, metric: str, max_regression: float, confidence: float) -> tuple[str, float | None, float | None, bool, str]:
    """(kind, limit, bound, passed, reason) for one compared metric."""
    if metric in EXACT:
        ok = row.baseline == row.candidate
        return "exact", None, None, ok, ("equal" if ok else f"changed: {_f(row.baseline)} -> {_f(row.candidate)}")
    higher = metric in HIGHER_IS_BETTER
    limit = 1 - max_regression if higher else 1 + max_regression
    r = row.ratio
    if r.estimate is None:
        return "point", limit, None, False, "no value to compare (empty or zero baseline)"
    if r.lo is None or r.hi is None:  # a point comparison
        ok = r.estimate >= limit if higher else r.estimate <= limit
        return "point", limit, r.estimate, ok, (f"ratio {r.estimate:.3f} {'>=' if higher else '<='} {limit:.3f}" if ok
                                                else f"ratio {r.estimate:.3f} beyond the allowed {limit:.3f} (no interval: one run)")
    # r was computed at two-sided confidence 2c - 1, so each end is a one-sided bound at c
    if higher:
        ok = not r.hi < limit
        return "statistical", limit, r.hi, ok, (f"upper {confidence:.0%} bound {r.hi:.3f} >= {limit:.3f}" if ok else
                                                f"throughput down: upper {confidence:.0%} bound of the ratio {r.hi:.3f} < {limit:.3f}")
    ok = not r.lo > limit
    return "statistical", limit, r.lo, ok, (f"lower {confidence:.0%} bound {r.lo:.3f} <= {limit:.3f}" if ok else
                                            f"slower: lower {confidence:.0%} bound of the ratio {r.lo:.3f} > {limit:.3f}")


def run_gate(baseline: Run, candidate: Run, metrics: list[str], max_regression_pct: float, *,
             confidence: float = 0.95, advisory: list[str] = (), groups: tuple[str, str] | None = None,
             n_boot: int = 2000, seed: int = 0) -> list[Verdict]:
    """Every metric (and advisory metric) for every group pair; raises GateInputError on bad input."""
    if not 0.5 < confidence < 1:
        raise GateInputError(f"--confidence {confidence}: expected a value between 0.5 and 1")
    if not 0 <= max_regression_pct < 100:
        raise GateInputError(f"--max-regression {max_regression_pct}: expected a percentage in [0, 100)")
    for m in [*metrics, *advisory]:
        check_metric_name(m)
    pairs = [groups] if groups else pair_groups(baseline, candidate)
    if not pairs:
        raise GateInputError(f"{candidate.path}: no group in common with {baseline.path} "
                             f"(baseline has {baseline.groups()}, candidate {candidate.groups()}); name them with --groups")
    for run, g in ((baseline, pairs[0][0]), (candidate, pairs[0][1])):
        if g not in run.groups():
            raise GateInputError(f"{run.path}: no group {g!r} (it has {run.groups()})")
    m = max_regression_pct / 100.0
    two_sided = 2 * confidence - 1
    out = []
    for ga, gb in pairs:
        for metric, adv in [(x, False) for x in metrics] + [(x, True) for x in advisory]:
            row = compare_metric(baseline, ga, candidate, gb, metric, confidence=two_sided, n_boot=n_boot, seed=seed)
            for run, g, v in ((baseline, ga, row.baseline), (candidate, gb, row.candidate)):
                if v is None and (metric in EXACT or metric in POINT):
                    raise GateInputError(f"{_value_source(run, g, metric)}: missing")
            kind, limit, bound, ok, reason = decide(row, metric, m, confidence)
            out.append(Verdict(metric, ga, gb, kind, row, limit, bound, ok, adv, reason))
    return out


def run_ab_gate(ab: dict, metrics: list[str], max_regression_pct: float, *, confidence: float = 0.95,
                advisory: list[str] = ()) -> list[Verdict]:
    """The gate on an interleaved A/B result (analysis/ab.py; A = baseline, B = candidate): timings
    from the per-pair ratios with a t-interval over pairs, counters summed over rounds and exact."""
    from analysis.ab import complete_pairs, counter_totals, log_t_interval
    if not 0.5 < confidence < 1:
        raise GateInputError(f"--confidence {confidence}: expected a value between 0.5 and 1")
    if not 0 <= max_regression_pct < 100:
        raise GateInputError(f"--max-regression {max_regression_pct}: expected a percentage in [0, 100)")
    if not complete_pairs(ab.get("rounds", [])):
        raise GateInputError(f"{ab.get('path', 'ab.json')}: no complete round pair to gate on")
    totals = counter_totals(ab["rounds"])
    comparison = ab.get("comparison", {})
    m = max_regression_pct / 100.0
    out = []
    for metric, adv in [(x, False) for x in metrics] + [(x, True) for x in advisory]:
        if metric in EXACT:
            a, b = totals["A"].get(metric), totals["B"].get(metric)
            if a is None or b is None:
                raise GateInputError(f"{ab.get('path', 'ab.json')}: counter {metric!r} missing from the rounds "
                                     f"(known: {', '.join(sorted(set(totals['A']) & set(totals['B'])))})")
            ratio = Interval(b / a if a else None, None, None, confidence)
        elif metric in comparison:
            row = comparison[metric]
            a, b = row["a"], row["b"]
            ratio = log_t_interval(row["pair_ratios"], 2 * confidence - 1)  # each end one-sided at c
        else:
            raise GateInputError(f"unknown A/B metric {metric!r}; known: {', '.join([*comparison, *sorted(EXACT)])}")
        row = CompareRow("A", "B", metric, a, b, ratio, paired=True, n_pairs=ratio.n)
        kind, limit, bound, ok, reason = decide(row, metric, m, confidence)
        if kind == "point" and metric not in EXACT:
            ok, reason = False, "fewer than two complete round pairs: no interval to decide on"
        out.append(Verdict(metric, "A", "B", kind, row, limit, bound, ok, adv, reason))
    return out


def gate_failed(verdicts: list[Verdict]) -> bool:
    return any(not v.passed for v in verdicts)


def describe_runs(baseline: Run, candidate: Run) -> str:
    return (f"Baseline `{baseline.path}` ({baseline.info.get('git_commit') or 'unknown commit'}), "
            f"candidate `{candidate.path}` ({candidate.info.get('git_commit') or 'unknown commit'})")


def markdown(verdicts: list[Verdict], what: str, max_regression_pct: float, confidence: float) -> str:
    """The verdicts as a Markdown table; `what` names baseline and candidate (describe_runs)."""
    failed = [v for v in verdicts if not v.passed]
    head = "FAILED" if failed else "passed"
    lines = [f"## tierbench gate: {head}", "",
             f"{what}; max regression {max_regression_pct:g}% at {confidence:.0%} confidence.", "",
             "| check | kind | baseline | candidate | ratio | bound | limit | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for v in verdicts:
        verdict = ("advisory: " if v.advisory else "") + ("pass" if v.ok else "would fail" if v.advisory else "**FAIL**")
        lines.append(f"| `{v.name}` | {v.kind} | {_f(v.row.baseline)} | {_f(v.row.candidate)} | "
                     f"{_f(v.row.ratio.estimate, 3)} | {_f(v.bound, 3)} | {_f(v.limit, 3)} | {verdict}: {v.reason} |")
    return "\n".join(lines) + "\n"


def junit(verdicts: list[Verdict]) -> str:
    fails = sum(not v.passed for v in verdicts)
    cases = []
    for v in verdicts:
        body = ""
        if not v.passed:
            body = f"<failure message={quoteattr(v.reason)} type=\"regression\">{escape(v.reason)}</failure>"
        elif v.advisory:
            body = f"<system-out>{escape('advisory: ' + v.reason)}</system-out>"
        cases.append(f"  <testcase classname=\"tierbench.gate\" name={quoteattr(v.name)}>{body}</testcase>")
    return (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"tierbench gate\" tests=\"{len(verdicts)}\" "
            f"failures=\"{fails}\" errors=\"0\">\n" + "\n".join(cases) + "\n</testsuite>\n")


def write_outputs(verdicts: list[Verdict], what: str, max_regression_pct: float, confidence: float,
                  md_path: Path | None, junit_path: Path | None) -> str:
    md = markdown(verdicts, what, max_regression_pct, confidence)
    if md_path:
        Path(md_path).write_text(md, encoding="utf-8")
    if junit_path:
        Path(junit_path).write_text(junit(verdicts), encoding="utf-8")
    return md


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if digits == 3 or not float(v).is_integer():
        return f"{v:.{digits}f}"
    return str(int(v))  # counters: every digit (no 1e+06)
