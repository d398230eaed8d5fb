"""`tierbench compare`, `tierbench gate` and `tierbench report`: the analysis of finished runs."""
from __future__ import annotations

import json
from pathlib import Path

from bench.cli.common import BadInput, add_command, confidence, load_run_or_fail, parse_groups, percent


COMPARE_DESCRIPTION = (
    'Each latency percentile of RUN_B (candidate) against RUN_A (baseline), as a ratio with a '
    'bootstrap interval over sessions: paired per call where the same calls ran on both, unpaired '
    '(with a Mann-Whitney U test) otherwise. Groups (engine or engine@tier) present in both runs '
    'are compared, or the single group of each.')

GATE_DESCRIPTION = """\
Latency metrics fail when the candidate/baseline ratio's one-sided lower confidence bound
exceeds 1 + max-regression; throughputs (higher is better) mirror that; deterministic counters
(steps, prompt_tokens_computed, prefix_hit_tokens, preemptions, completed, ...) must be equal.
With --ab (a `tierbench ab` result) the ratios are paired by round and their interval is a
t-interval over round pairs, which carries the machine's drift between rounds; counters are
summed over each variant's rounds and must be equal.
Writes a Markdown summary (also printed) and a JUnit XML file for CI.

Example:
  tierbench gate --baseline results/cpu-agentic --candidate results/cpu-agentic \\
      --groups reference:vllm --metric ttft_p99 --metric output_throughput --max-regression 10
A `tierbench ab` result: tierbench gate --ab DIR --metric tpot_p50 --metric output_throughput --metric steps
"""

REPORT_DESCRIPTION = (
    'Summary with confidence intervals, comparison (first run = baseline), throughput-latency '
    'points, latency CDFs per engine and tier, session makespan breakdown, prefix hit by turn, a '
    'timeline, and provenance. Plotly is inlined: the file opens without a network.')


# what compare, gate and report read (analysis/rundata.py, analysis/peers.py)
RUN_KINDS = ("a run directory, a summary JSON, a `vllm bench serve --save-detailed` JSON, or an AIPerf "
             "export (its artifact directory or profile_export.jsonl)")


def register(sub) -> None:
    sp = add_command(sub, "compare", "compare two runs: candidate / baseline with confidence intervals", COMPARE_DESCRIPTION)
    sp.add_argument("run_a", metavar="RUN_A", help="baseline: " + RUN_KINDS)
    sp.add_argument("run_b", metavar="RUN_B", help="candidate: " + RUN_KINDS)
    sp.add_argument("--metric", action="append", metavar="NAME",
                    help="e.g. ttft_p99, e2el_p50, tpot_mean, output_throughput (repeatable; default: a standard set)")
    sp.add_argument("--groups", metavar="A[:B]", help="compare group A of RUN_A with group B of RUN_B "
                                                     "(e.g. reference:vllm with the same run twice)")
    sp.add_argument("--confidence", type=confidence, default=0.95, help="interval confidence (default 0.95)")
    sp.add_argument("--json", action="store_true", help="print the rows as JSON")
    sp.set_defaults(func=cmd_compare)

    sp = add_command(sub, "gate", "fail (exit 1) when a candidate run regresses against a baseline", GATE_DESCRIPTION)
    sp.add_argument("--baseline", metavar="RUN_OR_JSON", help=RUN_KINDS)
    sp.add_argument("--candidate", metavar="RUN_OR_JSON", help=RUN_KINDS)
    sp.add_argument("--ab", metavar="AB_DIR", help="an interleaved A/B result of `tierbench ab` instead "
                                                   "(A = baseline, B = candidate; ratios paired by round)")
    sp.add_argument("--metric", action="append", metavar="NAME", help="gated metric (repeatable)")
    sp.add_argument("--advisory", action="append", metavar="NAME", help="reported, never fails (repeatable)")
    sp.add_argument("--max-regression", type=percent, default=10.0, metavar="PCT",
                    help="allowed regression in percent (default 10; counters are always exact)")
    sp.add_argument("--confidence", type=confidence, default=0.95, help="decision confidence (default 0.95)")
    sp.add_argument("--groups", metavar="A[:B]", help="gate group B of the candidate against group A of the baseline")
    sp.add_argument("--markdown", default="gate-summary.md", metavar="PATH", help="Markdown summary (default gate-summary.md)")
    sp.add_argument("--junit", default="gate-junit.xml", metavar="PATH", help="JUnit XML (default gate-junit.xml)")
    sp.set_defaults(func=cmd_gate)

    sp = add_command(sub, "report", "write one self-contained HTML report of one or more runs", REPORT_DESCRIPTION)
    sp.add_argument("runs", nargs="+", metavar="RUN_DIR", help=RUN_KINDS)
    sp.add_argument("-o", "--output", metavar="report.html", help="default: RUN_DIR/report.html of the first run")
    sp.add_argument("--title")
    sp.add_argument("--confidence", type=confidence, default=0.95)
    sp.set_defaults(func=cmd_report)


def cmd_compare(args) -> int:
    from analysis.compare import DEFAULT_METRICS, compare_metric, compare_runs, format_compare
    a, b = load_run_or_fail(args.run_a), load_run_or_fail(args.run_b)
    metrics = args.metric or list(DEFAULT_METRICS)
    groups = parse_groups(args.groups)
    if groups:
        for run, g in ((a, groups[0]), (b, groups[1])):
            if g not in run.groups():
                raise BadInput(f"{run.path}: no group {g!r} (it has {run.groups()})")
        rows = [compare_metric(a, groups[0], b, groups[1], m, confidence=args.confidence) for m in metrics]
    else:
        rows = compare_runs(a, b, metrics, confidence=args.confidence)
        if not rows:
            raise BadInput(f"{args.run_b}: no group in common with {args.run_a} (groups {a.groups()} vs "
                           f"{b.groups()}); pick them with --groups A:B")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(f"baseline {a.path} ({a.name}), candidate {b.path} ({b.name}); ratio = candidate / baseline; "
              f"latencies in ms, throughputs per second")
        print(format_compare(rows, "baseline", "candidate"))
        _print_repetitions(a, b, metrics, args.confidence)
    return 0


def _print_repetitions(a, b, metrics, confidence: float) -> None:
    """Runs with repetitions (groups engine@repN): the between-run mean and t-interval of each
    metric per engine, beside the within-run intervals above."""
    from analysis.compare import repeated_runs
    lines = []
    for label, run in (("baseline", a), ("candidate", b)):
        for m in metrics:
            for engine, iv in repeated_runs(run, m, confidence).items():
                ci = f"[{iv.lo:.2f}, {iv.hi:.2f}]" if iv.lo is not None else "-"
                lines.append(f"  {label:9s} {engine:12s} {m:20s} mean {iv.estimate:10.2f}  t-interval {ci} over {iv.n} runs")
    if lines:
        print(f"\nbetween repetitions ({confidence:.0%} Student-t interval of the per-run values):")
        print("\n".join(lines))


def cmd_gate(args) -> int:
    from analysis.gate import GateInputError, describe_runs, gate_failed, run_ab_gate, run_gate, write_outputs
    if not args.metric:
        raise BadInput("gate: give at least one --metric (e.g. --metric ttft_p99 --metric output_throughput)")
    if (args.ab and (args.baseline or args.candidate)) or (not args.ab and not (args.baseline and args.candidate)):
        raise BadInput("gate: give --ab DIR, or both --baseline and --candidate")
    try:
        if args.ab:
            ab = _load_ab_or_fail(args.ab)
            verdicts = run_ab_gate(ab, args.metric, args.max_regression, confidence=args.confidence,
                                   advisory=args.advisory or [])
            v = ab["variants"]
            what = (f"A/B `{args.ab}` ({ab.get('pairs', 0)} round pairs, {ab.get('status')}): baseline A = "
                    f"{v['A']['label']}, candidate B = {v['B']['label']}")
        else:
            base, cand = load_run_or_fail(args.baseline), load_run_or_fail(args.candidate)
            verdicts = run_gate(base, cand, args.metric, args.max_regression, confidence=args.confidence,
                                advisory=args.advisory or [], groups=parse_groups(args.groups))
            what = describe_runs(base, cand)
    except GateInputError as e:
        raise BadInput(str(e)) from None
    md = write_outputs(verdicts, what, args.max_regression, args.confidence,
                       Path(args.markdown) if args.markdown else None, Path(args.junit) if args.junit else None)
    print(md, end="")
    return 1 if gate_failed(verdicts) else 0


def _load_ab_or_fail(path: str) -> dict:
    from analysis.ab import load_ab
    try:
        ab = load_ab(path)
    except ValueError as e:
        raise BadInput(str(e)) from None
    ab["path"] = str(path)
    return ab


def cmd_report(args) -> int:
    from analysis.report import write_report
    from analysis.report_sweep import is_sweep, load_sweep, write_sweep_report
    if len(args.runs) == 1 and is_sweep(args.runs[0]):  # a sweep directory: its own page
        try:
            load_sweep(args.runs[0])
        except ValueError as e:
            raise BadInput(str(e)) from None
        path = write_sweep_report(args.runs[0], args.output, args.title)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    for r in args.runs:
        load_run_or_fail(r)  # bad input: one line, exit 2
    out = Path(args.output) if args.output else Path(args.runs[0]) / "report.html"
    path = write_report(args.runs, out, title=args.title, confidence=args.confidence)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
