"""The Mooncake writer's round trip: `python -m tools.mooncake_roundtrip`.

For every trace in the shared folder that tierbench reads, and for the agentic-coding and
swe-agent profiles: trace -> Mooncake JSONL (traces.mooncake.write_mooncake) -> tierbench's reader
(traces.load.load_trace, format detected from the file), unscaled and scaled. Per conversion it
counts the rows whose hash ids break the convention (ceil(input_length / block size) per row),
and compares the prefix reuse an infinite cache finds in the file with the source's (`trace
stats`' prefix_reuse_ratio). Writes results/mooncake-roundtrip/roundtrip.json with provenance.

Conversions per trace (B = the written block size, b = the source's):
- `unscaled`: B = b (512 where the source has no blocks): the file must keep the source's reuse;
- `unscaled-512`: B = 512, Mooncake's own size (coarser blocks keep less: reported, not a bar);
- `scaled`: token scale F with b*F a whole number, B = b*F (each source block becomes exactly one
  written block, so reuse stays in proportion);
- `scaled-0.02`: the configuration of issue 18 (F = 0.02, --max-context 2048, B = 64): b*F is not
  a whole number of tokens, so whole B-token blocks keep less reuse than the scaled source has;
  reported beside `reuse_whole_blocks`, the most whole blocks can keep (not a bar).
The bar: 0 inconsistent rows everywhere, and |reuse - source reuse| <= 1 point for `unscaled`
and `scaled`.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import orjson

from engines.provenance import provenance
from traces.errors import TraceError
from traces.load import load_trace
from traces.materialize import scale_trace
from traces.model import Trace
from traces.mooncake import MOONCAKE_BLOCK, write_mooncake
from traces.stats import trace_stats

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
TRACES = ("weka-kv-cache-tester", "mooncake", "mini-swe-agent-gemini3-swebench", "tracelab-examples",
          "azure-llm-2023", "swe-agent-demos", "bfcl-multi-turn")
PROFILES = ("agentic-coding", "swe-agent")
BAR_POINTS = 1.0
BAR_CONFIGS = ("unscaled", "scaled")


def configs(trace: Trace) -> list[tuple[str, float, int | None, int]]:
    """(name, token scale, max context, written block size) for one source trace."""
    b = trace.block_size
    out = [("unscaled", 1.0, None, b or MOONCAKE_BLOCK)]
    if b != MOONCAKE_BLOCK:
        out.append(("unscaled-512", 1.0, None, MOONCAKE_BLOCK))
    if b:
        f = 8 / b if b > 8 else 0.5  # b*F = 8 tokens (4 for 8-token blocks): a whole number
        out.append(("scaled", f, None, round(b * f)))
    else:
        out.append(("scaled", 0.02, None, 16))
    out.append(("scaled-0.02", 0.02, 2048, 64))
    return out


def roundtrip(trace: Trace, name: str, scale: float, max_context: int | None, block: int, tmp: Path) -> dict:
    t0 = time.perf_counter()
    src = scale_trace(trace, scale, max_context) if scale != 1.0 or max_context else trace
    out = tmp / "trace.jsonl"
    notes = write_mooncake(src, out, block)
    back = load_trace(out)  # as a user reads it: format detected, tierbench's own reader
    inconsistent = sum(1 for c in back.calls() if len(c.hash_ids) != math.ceil(c.prompt_tokens / block))
    reuse = trace_stats(back)["prefix_reuse_ratio"] if back.num_calls else None
    check = notes["check"]
    return {"config": name, "token_scale": scale, "max_context": max_context, "block_size": block,
            "format_read_back": back.format, "rows": back.num_calls, "inconsistent_rows": inconsistent,
            "reuse": reuse, "reuse_source_scaled": check["reuse_source_scaled"],
            "reuse_whole_blocks": check["reuse_whole_blocks"], "capped_calls": src.meta.get("capped_calls"),
            "arrivals": notes.get("arrivals"), "seconds": round(time.perf_counter() - t0, 1)}


def measure(label: str, trace: Trace) -> dict:
    source = trace_stats(trace)["prefix_reuse_ratio"] or 0.0
    res = {"trace": label, "format": trace.format, "calls": trace.num_calls, "block_size": trace.block_size,
           "hash_scope": trace.hash_scope, "source_reuse": source, "conversions": []}
    with tempfile.TemporaryDirectory() as d:
        for name, scale, mc, block in configs(trace):
            r = roundtrip(trace, name, scale, mc, block, Path(d))
            r["diff_points"] = round(abs(r["reuse"] - source) * 100, 3)
            r["bar"] = name in BAR_CONFIGS
            r["passes"] = r["inconsistent_rows"] == 0 and (not r["bar"] or r["diff_points"] <= BAR_POINTS)
            res["conversions"].append(r)
            print(f"{label:34s} {name:13s} B={block:<4d} rows {r['rows']:6d} inconsistent {r['inconsistent_rows']} "
                  f"reuse {r['reuse']:.4f} source {source:.4f} ({r['diff_points']:.2f} pts) "
                  f"{'PASS' if r['passes'] else 'FAIL'}{'' if r['bar'] else ' (not a bar)'}  {r['seconds']} s",
                  flush=True)
    return res


def load_source(name: str, sessions: int, seed: int) -> Trace | str:
    """The trace, or why it is not one tierbench reads."""
    if name in PROFILES:
        return load_trace(f"profile:{name}", sessions=sessions, seed=seed)
    path = SHARED / name
    if not path.exists():
        return f"{path} not present"
    tok = None
    if name.startswith("mini-swe"):
        from engines.tiny_model import ensure_tiny_model  # text trace: the tiny model's tokenizer
        tok = ensure_tiny_model()
    try:
        return load_trace(path, tokenizer_dir=tok)
    except TraceError as e:
        return str(e)


def run(out: Path, sessions: int, seed: int, only: list[str] | None = None) -> dict:
    results, skipped = [], {}
    for name in only or [*TRACES, *PROFILES]:
        src = load_source(name, sessions, seed)
        if isinstance(src, str):
            skipped[name] = src
            print(f"{name:34s} skipped: {src}", flush=True)
            continue
        label = f"profile:{name}" if name in PROFILES else name
        results.append(measure(label, src))
    bars = [c for r in results for c in r["conversions"] if c["bar"]]
    report = {"what": "trace -> Mooncake JSONL -> tierbench reader: inconsistent rows and prefix reuse vs the source",
              "bar": {"inconsistent_rows": 0, "reuse_points_max": BAR_POINTS, "configs": list(BAR_CONFIGS)},
              "profile_sessions": sessions, "seed": seed, "results": results, "skipped": skipped,
              "all_pass": all(c["passes"] for r in results for c in r["conversions"]),
              "max_bar_diff_points": max((c["diff_points"] for c in bars), default=None),
              "provenance": provenance()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {out}: {'all pass' if report['all_pass'] else 'FAILURES'}; largest bar difference "
          f"{report['max_bar_diff_points']} points")
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/mooncake-roundtrip/roundtrip.json"))
    ap.add_argument("--sessions", type=int, default=64, help="sessions drawn from each profile (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", metavar="NAME", help="one shared trace folder or profile (repeatable)")
    args = ap.parse_args()
    return 0 if run(args.out, args.sessions, args.seed, args.only)["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
