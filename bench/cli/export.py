"""`tierbench export`: a finished run's points in another tool's result format."""
from __future__ import annotations

from pathlib import Path

from bench.cli.common import BadInput, add_command

EXPORT_DESCRIPTION = """\
Write each point of a run (an engine, or engine@tier) as the JSON that
`vllm bench serve --save-result --save-detailed` writes: the same keys, types and units (latency
figures in ms, the per-request ttfts, itls and latencies in seconds), so that dashboards built for
vLLM's benchmark results read tierbench's. Percentiles as vLLM's defaults (TTFT, TPOT and ITL at
p99) unless --percentile-metrics / --metric-percentiles say otherwise, with vLLM's syntax.
goodput is filled where the run's spec has [slos]; generated_texts are "" (tierbench keeps no text).
docs/run-directory.md ("Export to vLLM's result format") maps every key.

Without --engine and --tier, every point is written, each to RUN_DIR/vllm-result-ENGINE[-TIER].json
(RUN_DIR/vllm-result.json where the run has one point); with them, that point only, to
RUN_DIR/vllm-result[-ENGINE][-TIER].json or --out.

Examples:
  tierbench export RUN_DIR --format vllm
  tierbench export results/cpu-agentic --format vllm --engine vllm --out cpu-agentic-vllm.json
  tierbench export results/tier-study --format vllm --engine hybrid-oracle --tier edge --out edge.json \
      --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99
"""

FORMATS = ("vllm",)


def register(sub) -> None:
    sp = add_command(sub, "export", "write a run's points in vLLM's benchmark result format", EXPORT_DESCRIPTION)
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.json and requests.parquet)")
    sp.add_argument("--format", choices=FORMATS, required=True, help="vllm: `vllm bench serve --save-result` JSON")
    sp.add_argument("--engine", metavar="NAME", help="the engine (a scenario in a run through tiers)")
    sp.add_argument("--tier", metavar="T", help="the tier: rep<i> of a repetition, or a tier a scenario routed to")
    sp.add_argument("--out", metavar="FILE", help="the file to write (one point only; default: in RUN_DIR)")
    sp.add_argument("--percentile-metrics", metavar="LIST", default="ttft,tpot,itl",
                    help="as vLLM's: comma-separated among ttft, tpot, itl, e2el, client_queue_time, "
                         "e2el_including_client_queue (default ttft,tpot,itl)")
    sp.add_argument("--metric-percentiles", metavar="LIST", default="99",
                    help='as vLLM\'s: comma-separated percentiles, e.g. "50,90,99" (default 99)')
    sp.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from analysis.vllm_result import PERCENTILE_METRICS, to_vllm_result, write_vllm_result
    metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in PERCENTILE_METRICS]
    if bad or not metrics:
        raise BadInput(f"--percentile-metrics {args.percentile_metrics!r}: expected some of {', '.join(PERCENTILE_METRICS)}")
    percentiles = _percentiles(args.metric_percentiles)
    run_dir = Path(args.run_dir)
    try:
        chosen = _chosen(run_dir, args.engine, args.tier)
        if len(chosen) == 1:  # the name says what was asked for
            names = [_file_name(args.engine, args.tier)]
        else:  # every point of the run (or of the engine): each file says which
            names = [_file_name(e, t) for e, t in chosen]
        if args.out and len(chosen) > 1:
            raise BadInput(f"--out: {run_dir} has {len(chosen)} points; pick one with --engine/--tier, or leave --out out")
        results = [to_vllm_result(run_dir, e, t, percentile_metrics=metrics, percentiles=percentiles)
                   for e, t in chosen]
    except ValueError as e:
        raise BadInput(str(e)) from None
    for result, name in zip(results, names):
        path = write_vllm_result(result, Path(args.out) if args.out else run_dir / name)
        print(f"wrote {path} ({result['label']}: {result['completed']} completed, {result['failed']} failed)")
    return 0


def _chosen(run_dir: Path, engine: str | None, tier: str | None) -> list[tuple[str | None, str | None]]:
    """The points to write: the one asked for, every point of the engine asked for (its
    repetitions), or every point of the run."""
    from analysis.vllm_result import points
    if tier is not None:
        return [(engine, tier)]
    every = points(run_dir)
    if engine is not None:
        return [p for p in every if p[0] == engine] or [(engine, None)]  # none: the export names the engines
    return every or [(None, None)]  # none: the export says there are no requests


def _file_name(engine: str | None, tier: str | None) -> str:
    return "vllm-result" + "".join(f"-{p}" for p in (engine, tier) if p) + ".json"


def _percentiles(text: str) -> list[float]:
    try:
        ps = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        ps = []
    if not ps or not all(0 <= p <= 100 for p in ps):
        raise BadInput(f"--metric-percentiles {text!r}: expected comma-separated numbers in [0, 100], e.g. 50,90,99")
    return ps
