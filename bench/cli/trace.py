"""`tierbench trace`: read, characterize, fit, synthesize and convert traces."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.cli.common import BadInput, add_command, tokenizer_dir
from engines.reference.serve_args import positive_float, positive_int
from traces.load import FORMATS


STATS_DESCRIPTION = (
    'Print calls per session, token and think-time distributions, prefix reuse and arrival rate.')

SYNTH_DESCRIPTION = (
    'Draw agent sessions from a bundled profile (agentic-coding, swe-agent, demo) or a profile JSON '
    'file.')

CONVERT_DESCRIPTION = (
    'Mooncake output (one request a line: timestamp ms, input_length, output_length, hash_ids) replays '
    'in AIPerf (--custom-dataset-type mooncake_trace --fixed-schedule --isl-block-size B) and vLLM '
    '(--dataset-name timed_trace --timed-trace-chunk-hash-size B): every row has ceil(input_length / B) '
    'hash ids, re-derived after --token-scale and --max-context so that shared prefixes stay shared. '
    'The file is read back and checked before it appears; OUT.note.json says the block size, the '
    'scaling and how arrivals were made.')


def register(sub) -> None:
    trace = add_command(sub, "trace", "read, characterize, fit, synthesize and convert traces")
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    def add_input(sp):
        sp.add_argument("path", metavar="PATH", help="trace file, directory, gzipped bundle, or profile:NAME")
        sp.add_argument("--format", choices=FORMATS,
                        help="override format auto-detection")
        sp.add_argument("--tokenizer", metavar="MODEL_DIR",
                        help="tokenizer for text traces (default: the tiny model's, built on first use)")
        sp.add_argument("--sessions", type=positive_int, default=None, help="sessions to draw for profile:NAME (default 32)")
        sp.add_argument("--seed", type=int, default=0, help="seed for profile:NAME (default 0)")

    sp = add_command(tsub, "stats", "characterize a trace (keys: docs/metrics.md)", STATS_DESCRIPTION)
    add_input(sp)
    sp.add_argument("--json", action="store_true", help="print JSON with the keys of docs/metrics.md")
    sp.add_argument("--plot", metavar="OUT.html", help="write CDFs and prefix reuse by call index as one HTML file")
    sp.set_defaults(func=cmd_trace_stats)

    sp = add_command(tsub, "fit", "estimate a workload profile from a trace")
    add_input(sp)
    sp.add_argument("-o", "--output", required=True, metavar="PROFILE.json")
    sp.add_argument("--name", help="profile name (default: the output file's stem)")
    sp.set_defaults(func=cmd_trace_fit)

    sp = add_command(tsub, "synth", "draw a synthetic trace from a profile", SYNTH_DESCRIPTION)
    sp.add_argument("--profile", required=True, metavar="NAME_OR_FILE")
    sp.add_argument("--sessions", type=positive_int, required=True, metavar="N")
    sp.add_argument("--seed", type=int, default=0, metavar="S")
    sp.add_argument("--rate", type=positive_float, default=None, metavar="R",
                    help="session arrivals per second (Poisson; default: the profile's)")
    sp.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="native trace (JSONL)")
    sp.set_defaults(func=cmd_trace_synth)

    sp = add_command(tsub, "convert", "write a trace as native JSONL or Mooncake JSONL", CONVERT_DESCRIPTION)
    add_input(sp)
    sp.add_argument("--to", required=True, choices=["native", "mooncake"])
    sp.add_argument("-o", "--output", required=True, metavar="OUT")
    sp.add_argument("--block-size", type=positive_int, default=512, help="Mooncake hash block size in tokens (default 512)")
    sp.add_argument("--token-scale", type=positive_float, default=1.0, metavar="F", help="scale token counts by F")
    sp.add_argument("--max-context", type=positive_int, default=None, metavar="N", help="cap prompt + output at N tokens")
    sp.set_defaults(func=cmd_trace_convert)


def _load(args, progress: bool = True):
    from traces.load import load_trace
    spec = str(args.path)
    needs_tok = not spec.startswith("profile:")
    tok = None
    if needs_tok:
        from traces.load import detect
        fmt = args.format or (detect(Path(spec))[0])
        if fmt == "swe":
            tok = tokenizer_dir(getattr(args, "tokenizer", None))
    return load_trace(spec, args.format, tokenizer_dir=tok, progress=progress and sys.stderr.isatty(),
                      sessions=getattr(args, "sessions", None), seed=getattr(args, "seed", 0) or 0)


# ---- commands ---------------------------------------------------------------------------

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
    """Read and scale the whole trace first, write beside the output, check, then move it in
    place: a conversion that fails anywhere leaves no file (and an older one untouched)."""
    from traces.materialize import scale_trace
    out = Path(args.output)
    if not out.parent.is_dir():
        raise BadInput(f"{out.parent}: no such directory (flag '--output')")
    trace = _load(args)
    if args.token_scale != 1.0 or args.max_context:
        trace = scale_trace(trace, args.token_scale, args.max_context)
    if args.to == "native":
        import os

        from traces.native import write_native
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            write_native(trace, tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote {out}: {len(trace.sessions)} sessions, {trace.num_calls} calls (native)")
        return 0
    from traces.mooncake import note_path_of, write_mooncake
    notes = write_mooncake(trace, out, block_size=args.block_size)
    check = notes["check"]
    print(f"wrote {out}: {notes['requests']} requests (mooncake, {notes['block_size']}-token blocks, "
          f"ceil(input_length / {notes['block_size']}) hash ids per row); prefix reuse {check['reuse_written']:.3f} "
          f"of prompt tokens (source {check['reuse_source_scaled']:.3f}); note {note_path_of(out)}")
    print(f"note: replay with aiperf profile {notes['replay']['aiperf'].replace('FILE', str(out))}", file=sys.stderr)
    if check["reuse_written"] < check["reuse_source_scaled"] - 0.01:
        scale = float(trace.meta.get("token_scale", 1.0))
        print(f"note: whole {args.block_size}-token blocks keep {check['reuse_written']:.3f} of the scaled "
              f"source's {check['reuse_source_scaled']:.3f} prefix reuse; smaller blocks keep more, and blocks of "
              f"the source's block size times the token scale keep all of it where that is a whole number of "
              f"tokens (here {trace.block_size} x {scale:g} = {(trace.block_size or 0) * scale:g})", file=sys.stderr)
    if "arrivals" in notes:
        print(f"note: arrivals: {notes['arrivals']}", file=sys.stderr)
    return 0
