"""README.md's figures, generated from the files under results/: every block between
`<!-- figures:NAME -->` and `<!-- /figures:NAME -->` is rendered here from one result file, and
says which file and which command reproduces it. No figure in those blocks is typed by hand.

    python -m tools.readme_figures           # rewrite the blocks in README.md
    python -m tools.readme_figures --check   # exit 1 naming the first stale block
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from statistics import median


from analysis.ab import log_t_interval
from tools import gpu_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "python -m tools.readme_figures"
CONFIDENCE = 0.95
DAGGER = "†"  # the mark analysis/stats.py gives an interval with fewer than ten calls in its tail


def _load(root: Path, rel: str) -> dict | None:
    path = root / rel
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _source(rel: str, reproduce: str) -> str:
    return f"_Rendered from [{rel}]({rel}) by `{COMMAND}`; the file comes from `{reproduce}`._"


# ---- the reference engine offline -------------------------------------------------------------

def ratio_words(lo: float, hi: float, above: str, below: str) -> str:
    """`above` where the whole interval is above 1, `below` where it is below, else no difference."""
    if lo > 1:
        return above
    if hi < 1:
        return below
    return "no difference measured"


def render_offline(root: Path) -> str:
    rel = "results/reference-cpu/offline.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    w, eng, hf, ph = d["workload"], d["engine"], d["hf_transformers"], d["phases"]
    # paired repeats: a Student-t interval on the log ratios, so a repeat where both sides were
    # slowed by the machine cancels out (the A/B comparison's own interval)
    iv = log_t_interval([h / e for h, e in zip(hf["runs_s"], eng["runs_s"], strict=True)], CONFIDENCE)
    est, lo, hi = iv.estimate, iv.lo, iv.hi
    words = ratio_words(lo, hi, "the reference engine is faster", "the reference engine is slower")
    return "\n".join([
        f"{w['num_prompts']} prompts x {w['prompt_len']} tokens in / {w['output_len']} out, {w['dtype']}, "
        f"{w['threads']} thread, {w['repeats']} repeats of each side: the reference engine's median run gives "
        f"{eng['output_tokens_per_s']:,.0f} output tok/s against HF's {hf['output_tokens_per_s']:,.0f} "
        f"(ratio of medians {d['speedup_vs_hf']:.2f}x). Over the {len(eng['runs_s'])} paired repeats "
        f"(HF's time / the engine's, repeat i against repeat i; geometric mean with a {CONFIDENCE:.0%} Student-t "
        f"interval on the log ratios) the speedup is **{est:.2f}x [{lo:.2f}, {hi:.2f}]: {words}**. "
        f"Greedy outputs identical: {d['identical_greedy_outputs']}.",
        "",
        f"Phases (median repeat): prefill {ph['engine_prefill_s']:.2f} s (engine) vs {ph['hf_prefill_s']:.2f} s (HF), "
        f"{ph['hf_prefill_share']:.0%} of HF's time; a decode step {ph['engine_decode_ms_per_step']:.1f} ms vs "
        f"{ph['hf_decode_ms_per_step']:.1f} ms; with free decode the ratio could reach at most "
        f"{ph['speedup_bound_with_free_decode']:.1f}x. Commit `{d['provenance']['git_commit'][:7]}`, "
        f"{d['provenance']['date'][:10]}.",
        "",
        _source(rel, "python -m tools.offline_benchmark"),
    ])


# ---- fidelity ----------------------------------------------------------------------------------

QUANT = ("calls_per_session", "prompt_tokens", "output_tokens", "think_time_s")


def _passes(row: dict, bar: dict) -> bool:
    return all(row.get(k) is None or row[k] <= bar["ks_max"] for k in QUANT) and (
        row.get("reuse_diff") is None or row["reuse_diff"] <= bar["reuse_diff_max"])


def _ks_cells(row: dict) -> str:
    noise = row.get("halves_ks") or {}
    cells = []
    for k in QUANT:
        v = row.get(k)
        shown = "-" if v is None else f"{v:.3f}"
        cells.append(f"{shown} ({noise[k]:.3f})" if k in noise else shown)
    return " | ".join(cells)


def render_fidelity(root: Path) -> str:
    rel = "results/fidelity/fidelity.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    bar = d["bar"]
    out = [f"Bar: every KS statistic at most {bar['ks_max']:g} and the prefix-reuse difference at most "
           f"{bar['reuse_diff_max']:g}. In parentheses, the noise floor: the same KS between the two real parts "
           "of that split (`halves_ks`), what any fit is up against.", ""]
    for name, s in d["sources"].items():
        rows = ([("full fit", f"seed {r['seed']}", r) for r in s["full_fit"]]
                + [("half / half", f"split {r['split_seed']}", r) for r in s["split_half"]]
                + [("80% / 20%", f"split {r['split_seed']}", r) for r in s["holdout_20pct"]])
        out += [f"**{name}** ({s['sessions']} sessions, {s['calls']:,} calls):", "",
                "| fit / test | run | calls per session | prompt tokens | output tokens | think time | reuse diff | bar |",
                "|---|---|---:|---:|---:|---:|---:|---|"]
        for kind, run, r in rows:
            out.append(f"| {kind} | {run} | {_ks_cells(r)} | {r['reuse_diff']:.4f} | "
                       f"{'passes' if _passes(r, bar) else '**fails**'} |")
        held = s["holdout_20pct"]
        noise = [r["halves_ks"][k] for r in held + s["split_half"] for k in QUANT if r["halves_ks"].get(k) is not None]
        noise_fails = sum(any((r["halves_ks"].get(k) or 0) > bar["ks_max"] for k in QUANT) for r in held)
        out += ["", f"Held out (80% / 20%): {sum(_passes(r, bar) for r in held)} of {len(held)} splits pass "
                f"(pass rate {s['holdout_20pct_pass_rate']:.0%} in the file). Noise floor over all splits: KS "
                f"{min(noise):.3f}-{max(noise):.3f}, median {median(noise):.3f}, so the bar is "
                f"{bar['ks_max'] / median(noise):.1f}x the median noise floor; in {noise_fails} of {len(held)} "
                "held-out splits the two real parts alone differ by more than the bar.", ""]
    out.append(_source(rel, "python -m tools.fidelity"))
    return "\n".join(out)


# ---- tier study --------------------------------------------------------------------------------

def _ci(iv: dict, unit: str = "") -> str:
    mark = DAGGER if "unreliable" in iv.get("method", "") else ""
    return f"{iv['estimate']:.1f} [{iv['lo']:.1f}, {iv['hi']:.1f}]{mark}{unit}"


def render_tier_study(root: Path) -> str:
    rel, run_rel = "results/tier-study/claims.json", "results/tier-study/run.json"
    d, run = _load(root, rel), _load(root, run_rel) or {}
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    central = d["central_tier"]
    out = ["| scenario | calls central | network | inference | tool | makespan p50 [95% CI] s | "
           "makespan p99 [95% CI] s | cost |", "|---|---:|---:|---:|---:|---|---|---:|"]
    marked = False
    for name, s in d["scenarios"].items():
        cost = (run.get("summary", {}).get(name) or {}).get("cost_usd")
        marked |= any("unreliable" in s[k].get("method", "") for k in ("makespan_p50_s", "makespan_p99_s"))
        out.append(f"| {name} | {s['tier_share'].get(central, 0.0):.0%} | {s['network_per_session_s']:.2f} | "
                   f"{s['inference_per_session_s']:.2f} | {s['tool_per_session_s']:.2f} | {_ci(s['makespan_p50_s'])} | "
                   f"{_ci(s['makespan_p99_s'])} | {'-' if cost is None else f'${cost:.3f}'} |")
    sessions = sorted({s["sessions"] for s in d["scenarios"].values()})
    if marked:
        out += ["", f"{DAGGER} unreliable: with {'/'.join(map(str, sessions))} sessions per scenario the interval has "
                "fewer than ten sessions in its tail (the file's `method` says so); read the makespans as single "
                "measurements, not as a ranking."]
    out += ["", "| claim | verdict | why (from the measurement) |", "|---|---|---|"]
    for c in d["claims"]:
        out.append(f"| {c['claim']} | **{c['verdict']}** | {c.get('reason', '').replace('|', '/')} |")
    out += ["", _source(rel, "tierbench run examples/tier-study.toml --out results/tier-study") +
            f" Cost from [{run_rel}]({run_rel})."]
    return "\n".join(out)


# ---- A/B comparisons ---------------------------------------------------------------------------

AB_METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "itl_p99", "e2el_p50", "e2el_p99",
              "output_throughput")


def ab_row(metric: str, c: dict) -> str:
    """One metric of an ab.json comparison, turned around to reference/vLLM (A/B): the file's
    ratio is B/A, so A/B is 1/estimate with the interval [1/hi, 1/lo]."""
    r = c["ratio"]
    est, lo, hi = 1 / r["estimate"], 1 / r["hi"], 1 / r["lo"]
    # a ratio above 1 means the reference's value is larger: better for throughput, worse for latency
    words = ratio_words(lo, hi, *(("reference wins", "reference loses") if c["higher_is_better"]
                                  else ("reference loses", "reference wins")))
    unit = "tok/s" if metric == "output_throughput" else "ms"
    digits = 2 if f"{lo:.2f}" != f"{hi:.2f}" else 4  # a narrow interval keeps the digits that decide it
    return (f"| {metric} | {c['a']:.4g} {unit} | {c['b']:.4g} {unit} | {est:.{digits}f} [{lo:.{digits}f}, "
            f"{hi:.{digits}f}] | {words} |")


def render_ab(root: Path, name: str) -> str:
    rel = f"results/ab-{name}/ab.json"
    d = _load(root, rel)
    if d is None:
        return f"**{name}**: not yet measured ({rel} is absent)."
    prov, comp = d["provenance"], d["comparison"]
    va, vb = d["variants"]["A"]["label"], d["variants"]["B"]["label"]
    conf = next((c["ratio"].get("confidence") for c in comp.values()), d.get("confidence", CONFIDENCE))
    method = next((c["ratio"].get("method") for c in comp.values()), "")
    out = []
    if d.get("status") != "completed":
        out += [f"**{name}: incomplete** (status `{d.get('status')}`): the table holds the rounds that finished.", ""]
    out += [f"**{name}**: {va} (A) against {vb} (B), {d['pairs']} pairs of alternating rounds, commit "
            f"`{prov['git_commit'][:7]}`, {prov['date'][:10]}. Values are medians over each variant's rounds; the "
            f"ratio is {va}/{vb} with its {conf:.0%} interval ({method}).", "",
            f"| metric | {va} (A) | {vb} (B) | ratio {va}/{vb} [{conf:.0%}] | |", "|---|---:|---:|---|---|"]
    out += [ab_row(m, comp[m]) for m in AB_METRICS if m in comp]
    out += ["", _source(rel, prov["command"])]
    return "\n".join(out)


def render_ab_trials(root: Path) -> str:
    """The A/B gate's false alarms and detections (tools/ab_trials.py)."""
    rel = "results/ab-trials/trials.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    s, cal = d["summary"], d["calibration"]
    ident, slow = s["identical"], s["slowed"]
    slowed = [t for t in d["trials"] if t["kind"] == "slowed"]
    tpot_ratio = median(t["metrics"]["tpot_p50"]["ratio"] for t in slowed)
    thr_ratio = median(t["metrics"]["output_throughput"]["ratio"] for t in slowed)
    walls = [t["total_wall_s"] for t in d["trials"]]
    out = [f"Measured with `{d['provenance']['environment'].get('command', 'python -m tools.ab_trials')}` at commit "
           f"`{d['provenance']['git_commit'][:7]}` ({d['provenance']['date'][:10]}), {d['pairs']} round pairs per A/B, "
           f"max regression {d['max_regression_pct']:g}% at {d['confidence']:.0%} on {', '.join(d['gated'])}:", "",
           f"- identical code (A = `ref:HEAD` in a worktree, B = the checkout): the gate passed in "
           f"**{ident['gate_passed']}/{ident['trials']}** trials (bar: at least 19/20);",
           f"- B slowed by `--step-delay-ms {cal['step_delay_ms']:.3f}` (15% of the TPOT p50 of "
           f"{cal['tpot_p50_ms']:.3f} ms; measured TPOT ratio {tpot_ratio:.2f}, output throughput ratio "
           f"{thr_ratio:.2f}, medians over trials: a sleep this short overshoots, so the step grew by more than "
           f"the nominal 15%): the gate failed on TPOT p50 in "
           f"**{slow['failed_on']['tpot_p50']}/{slow['trials']}** and on output throughput in "
           f"**{slow['failed_on']['output_throughput']}/{slow['trials']}** trials (bar: at least 19/20 each);"]
    if s.get("code"):
        c = s["code"]
        out.append(f"- B a commit whose engine sleeps as long in every step by default (the change CI must catch): "
                   f"the gate failed in **{c['gate_failed']}/{c['trials']}** trials;")
    small = _load(root, "results/ab-trials/trials-smaller.json")
    if small is not None:
        ss = small["summary"]["slowed"]
        st = [t for t in small["trials"] if t["kind"] == "slowed"]
        out.append(f"- a smaller delay, `--step-delay-ms {small['calibration']['step_delay_ms']:.3f}` (measured TPOT ratio "
                   f"{median(t['metrics']['tpot_p50']['ratio'] for t in st):.2f}, output throughput ratio "
                   f"{median(t['metrics']['output_throughput']['ratio'] for t in st):.2f}), near the 10% allowance: "
                   f"failed on TPOT p50 in **{ss['failed_on']['tpot_p50']}/{ss['trials']}**, on output throughput in "
                   f"**{ss['failed_on']['output_throughput']}/{ss['trials']}** trials; identical code passed in "
                   f"{small['summary']['identical']['gate_passed']}/{small['summary']['identical']['trials']} "
                   f"([results/ab-trials/trials-smaller.json](results/ab-trials/trials-smaller.json), "
                   f"`{small['provenance']['environment'].get('command')}`);")
    out += [f"- one A/B gate (both servers started, warm-up, {2 * d['pairs']} rounds, the gate) took "
            f"**{median(walls):.0f} s** (median; max {max(walls):.0f} s; goal under 180 s).", "",
            _source(rel, d["provenance"]["environment"].get("command", "python -m tools.ab_trials"))]
    return "\n".join(out)


# ---- runs: soak, calibration, gateway overhead, prepare, GPU ----------------------------------

def render_soak(root: Path) -> str:
    rel = "results/soak-cpu/soak.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    return (f"{d['completed']:,} calls at {d['rate_per_s']:g} calls/s for {d['minutes']:g} minutes, "
            f"{d['errors']} errors; the server's resident memory grew **{d['memory_growth_after_warmup']:.2%}** after "
            f"warm-up (bar: under {d['memory_bar']:.0%}, {'met' if d['pass_memory'] else '**not met**'}), and the free "
            f"KV block count went {d['free_blocks_start']:,.0f} -> {d['free_blocks_end']:,.0f} "
            f"({'returned to its start' if d['pass_free_blocks'] else '**did not return**'}).\n\n"
            + _source(rel, d["command"]))


def render_calibrate(root: Path) -> str:
    files = {"runs": "results/calibrate/runs.json", "workers": "results/calibrate/runs-256-workers2.json",
             "user": "results/calibrate/runs-userspace-stamps.json"}
    data = {k: _load(root, v) for k, v in files.items()}
    out = ["| calibration | runs | TTFT p99 added, median of runs (worst) | ITL p99 added, median (worst) | bars | |",
           "|---|---:|---|---|---|---|"]
    labels = {"runs": "kernel receive stamps", "workers": "kernel receive stamps",
              "user": "user-space stamps (`TIERBENCH_KERNEL_STAMPS=0`)"}
    for k, d in data.items():
        if d is None:
            out.append(f"| {labels[k]} | - | not yet measured | | | |")
            continue
        b = d["bars_ms"]
        bars = ", ".join(f"{n.replace('_p99', '')} {v:g} ms" for n, v in b.items() if v is not None)
        workers = f", {d['workers']} locust workers" if d.get("workers") else ""
        out.append(f"| {labels[k]}, {d['sessions']} sessions{workers} | {len(d['ttft']['p99_ms_per_run'])} | "
                   f"{d['ttft']['median_p99_ms']:.2f} ms ({d['ttft']['worst_p99_ms']:.2f}) | "
                   f"{d['itl']['median_p99_ms']:.2f} ms ({d['itl']['worst_p99_ms']:.2f}) | {bars} | "
                   f"{'met' if d['pass'] else '**not met**'} |")
    out.append("")
    out += [_source(v, data[k]["command"].strip()) for k, v in files.items() if data[k] is not None]
    return "\n".join(out)


def render_gateway(root: Path) -> str:
    rel = "results/gateway/overhead.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    relay, inside = d["floor_relay_added_ms"], d["inside_gateway_ms"]
    return (f"{d['streams']} concurrent streaming sessions against the instant server, direct vs through the "
            f"gateway, {d['rounds']} alternating rounds: TTFT **+{d['ttft_added_p99_median_of_rounds_ms']:.2f} ms p99**, "
            f"ITL **+{d['itl_added_p99_median_of_rounds_ms']:.2f} ms p99** (median of the rounds' p99s; bar: under "
            f"{d['bar_p99_ms']:g} ms, {'met' if d['pass'] else '**not met**'}). A bare TCP relay in the same rounds adds "
            f"{relay['ttft_p99_median_of_rounds']:.2f} ms (TTFT p99) and {relay['itl_p99_median_of_rounds']:.2f} ms "
            f"(ITL p99){_hop(d)}. Inside the gateway a request takes "
            f"{inside['request_read_to_upstream_sent']['p50']:.3f} ms from read to upstream send and a chunk "
            f"{inside['piece_arrival_to_write']['p50']:.3f} ms (p50).\n\n" + _source(rel, d["command"]))


def _hop(d: dict) -> str:
    relay, gw = d["floor_relay_added_ms"]["ttft_p99_median_of_rounds"], d["ttft_added_p99_median_of_rounds_ms"]
    return ": most of what the gateway adds is the extra loopback hop" if relay >= gw / 2 else ""


def render_prepare(root: Path) -> str:
    rel = "results/reference-cpu/prepare.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    load = d["provenance"]["environment"].get("load_average") or [math.nan]
    grows = d["host_peak_growth_bytes_vs_8_sequences"]
    return (f"A decode step's `prepare()` at {d['sequences']} sequences takes {d['decode_prepare_us']:.0f} us on this "
            f"CPU (the general prefill-capable path: {d['general_path_us']:.0f} us; median of {d['repeats']} repeats, "
            f"load average {load[0]:.1f} at the start) and its host peak grows by {grows} bytes against 8 sequences.\n\n"
            + _source(rel, "python -m tools.prepare_benchmark"))


def _kernel_group(name: str) -> str:
    """Which part of a decode step a profiled kernel belongs to (by the names gpu_bench reports)."""
    if name.startswith(("nvjet", "aten::mm")) or "splitKreduce" in name or "gemm" in name.lower():
        return "weight GEMMs"
    if name.startswith(("_decode_split", "_decode_merge")):
        return "split-KV attention"
    if name.startswith(("_add_rms_norm", "_rotary", "_store_kv", "_silu_and_mul")):
        return "RMSNorm, rotary, KV store, SiLU-and-multiply"
    return "other"


def render_gpu_profile(d: dict) -> str:
    """The profile stage (torch.profiler over graphed decode steps) as where the step's time goes."""
    p = d["stages"].get("profile") or {}
    on = p.get("graphs_on")
    if not on:
        return "The profile stage did not run."
    groups: dict[str, float] = {}
    for k in on["top_kernels"]:
        # a host-side launch call, or a torch op whose device time repeats its kernels' (aten::mm)
        if k["name"].startswith(("cuLaunch", "aten::")):
            continue
        g = _kernel_group(k["name"])
        groups[g] = groups.get(g, 0.0) + k["device_us_per_step"] / 1e3
    named = "; ".join(f"{g} {v:.2f} ms" for g, v in groups.items() if g != "other")
    off = [c["ms_per_step"] for c in d["stages"]["decode"]["cells"] if c.get("graphs") is False and "ms_per_step" in c]
    hf64 = next((r for r in d["stages"].get("hf", {}).get("rows", []) if r.get("batch") == 64 and "engine_s" in r), None)
    text = (f"Profile stage (torch.profiler over {p['steps']} graphed steps at batch {p['batch']}, context "
            f"{p['context']:,}): the GPU is busy {on['device_ms_per_step']:.2f} ms of a {on['wall_ms_per_step']:.2f} ms "
            f"step, in {on['kernels_per_step']:.0f} kernels; of the listed kernels {named}. Graphs off, a decode step "
            f"takes {min(off):.1f}-{max(off):.1f} ms across the table's cells" if off else "")
    if hf64:
        text += f"; at batch 64 the engine took {hf64['engine_s']:.1f} s and HF {hf64['hf_s']:.1f} s"
    return text + "."


def render_gpu(root: Path) -> str:
    rel = "results/h100/engine.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    c = d["stages"]["correctness"]
    err = {dt: max(k["error"] for k in c["kernels"] if k["dtype"] == dt) for dt in ("float32", "bfloat16")}
    gve = "; ".join(f"{v['identical']}/{v['sequences']} at batch {v['sequences']} padded to {v['padded_to']}"
                    for v in c["graph_vs_eager"].values())
    p = c["prepare"]
    return "\n".join([
        f"Kernel checks: {'all pass' if c['kernels_ok'] else '**some fail**'} (worst error against float64: float32 "
        f"{err['float32']:.1g}, bf16 {err['bfloat16']:.1g}); graph vs eager greedy outputs identical: {gve}; "
        f"`prepare()` at {p['sequences']} sequences made {p['syncs']} syncs and {p['device_allocations']} device "
        "allocations.", "", gpu_table.render(d), "", render_gpu_profile(d), "",
        _source(rel, "PYTHONPATH=. python3 -m engines.reference.gpu_bench")])


# ---- KV retention under agent load ---------------------------------------------------------------

def _cell(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_retention(root: Path) -> str:
    """tools/retention_study.py: policy x N, the knees, and the rankings where intervals separate."""
    rel = "results/retention-cpu/study.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    return render_retention_study(d, rel)


def render_retention_study(d: dict, rel: str) -> str:
    """The retention study's tables and findings from its study.json (also its report.md)."""
    st, sc = d["setting"], d["scale"]
    mib = st["num_blocks"] * st["block_size"] * st["kv_bytes_per_token"] / 2**20
    out = [f"KV budget {st['num_blocks']:,} blocks of {st['block_size']} tokens ({mib:.1f} MiB); trace scaled by {sc['token_scale']:g} (tokens) and "
           f"{sc['think_scale']:g} (think times, clipped at {sc['think_clip_s']:g} s first), {sc['calls']} calls a "
           f"session, {d['repetitions']} repetitions pooled. Intervals {d['confidence']:.0%}, resampling sessions.", "",
           "| engine / policy | N | makespan p50 [CI] s | makespan p90 [CI] s | TTFT p99 [CI] ms | hit vs ideal | "
           "evicted tok/call | lost tok/call | preempted tok/call | computed tok/call (ideal) |", "|---|---:|---|---|---|---:|---:|---:|---:|---:|"]
    marked = False
    for lab, pts in d["points"].items():
        for n, p in pts.items():
            marked |= any("unreliable" in p[k].get("method", "") for k in ("makespan_p50_s", "makespan_p90_s", "ttft_p99_ms"))
            cells = [_ci(p["makespan_p50_s"]) if p["makespan_p50_s"]["lo"] is not None else "-",
                     _ci(p["makespan_p90_s"]) if p["makespan_p90_s"]["lo"] is not None else "-",
                     _ci(p["ttft_p99_ms"]) if p["ttft_p99_ms"]["lo"] is not None else "-"]
            out.append(f"| {lab} | {n} | {' | '.join(cells)} | {_cell(p['prefix_hit_vs_ideal'], '.2f')} | "
                       f"{_cell(p['evicted_tokens_per_call'], ',.0f')} | {_cell(p.get('lost_tokens_per_call'), ',.0f')} | "
                       f"{_cell(p['recomputed_tokens_per_call'], ',.0f')} | "
                       f"{_cell(p['computed_prompt_tokens_per_call'], ',.0f')} "
                       f"({_cell(p['ideal_computed_prompt_tokens_per_call'], ',.0f')}) |")
    out += ["", "Evicted: cached tokens dropped to make room; lost: prompt tokens a later call missed and "
            "recomputed because an eviction had dropped them (the eviction's cost; evicted minus lost is what "
            "nobody asked for again); preempted: tokens recomputed after a preemption; computed: prompt "
            "tokens run through the model, against the trace's ideal prefix reuse."]
    shares = []
    for lab, pts in d["points"].items():
        cells = [f"{n}: {p['lost_tokens_per_call'] / p['evicted_tokens_per_call']:.0%}" for n, p in pts.items()
                 if p.get("lost_tokens_per_call") is not None and p.get("evicted_tokens_per_call")]
        if cells:
            shares.append(f"{lab} ({', '.join(cells)})")
    if shares:
        out += ["", "Where the evictions land: the share of evicted tokens that a later call needed again "
                "(lost / evicted), by N: " + "; ".join(shares) + "."]
    if marked:
        out += ["", f"{DAGGER} unreliable: fewer than ten sessions (calls, for TTFT) in the interval's tail."]
    knees = "; ".join(f"{lab}: " + (f"N = {k['knee']}" if k["knee"] is not None else "not reached")
                      + (f" (estimate alone: N = {k['knee_estimate']})" if k["knee_estimate"] not in (None, k["knee"]) else "")
                      for lab, k in d["knees"].items())
    out += ["", f"Knee (smallest N whose makespan p90 interval lies above twice its p90 at the smallest N): {knees}.",
            "", "Ranking by makespan p90 (only where intervals separate): "
            + "; ".join(f"N = {n}: {r['text']}" for n, r in d["rankings"].items()) + ".",
            "", _source(rel, d["command"]) + f" Commit `{d['provenance']['git_commit'][:7]}`, {d['provenance']['date'][:10]}."]
    return "\n".join(out)


# ---- load sweeps and SLO capacity --------------------------------------------------------------

def _iv_cell(iv: dict | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "-"
    if iv.get("lo") is None:
        return f"{iv['estimate']:.1f}"
    return _ci(iv)


def render_sweep(root: Path, rel: str) -> str:
    """tierbench sweep: per engine the capacity, the saturation point and every point."""
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    cfg = d["config"]
    closed = cfg["closed"]
    unit = "sessions" if closed else "calls/s"
    load = (lambda x: f"{int(x)}") if closed else (lambda x: f"{x:.3g}")
    slos = ", ".join(f"`{x}`" for x in cfg["slos"]) or "none"
    walls = ", ".join(f"{n} {(e.get('wall_s') or 0) / 60:.1f}" for n, e in d["engines"].items())
    out = [f"SLOs {slos}, each decided at {cfg['confidence']:.0%} confidence; the sweep took "
           f"{(d.get('wall_s') or 0) / 60:.1f} minutes ({walls}).", "",
           f"| engine | SLO capacity ({unit}) | fails at | saturated at | points |", "|---|---:|---:|---:|---:|"]
    for name, e in d["engines"].items():
        c = e.get("capacity") or {}
        cap = "-" if not c else load(c["lo"]) if not c.get("problem") else \
            f"at least {load(c['lo'])} ({c['problem']})" if c.get("lo") is not None else c["problem"]
        out.append(f"| {name} | {cap} | {load(c['hi']) if c.get('hi') is not None else '-'} | "
                   f"{load(e['saturated_at']) if e.get('saturated_at') is not None else 'not reached'} | {len(e['points'])} |")
    out += ["", f"| engine | point | load ({unit}) | req/s | output tok/s | TTFT p99 [CI] ms | TPOT p99 [CI] ms | SLOs | saturated |",
            "|---|---|---:|---:|---:|---|---|---|---|"]
    for name, e in d["engines"].items():
        for p in sorted(e["points"], key=lambda p: (p["label"] not in ("sync", "max"), p["load"])):
            sat = (p.get("saturation") or {}).get("saturated")
            out.append(f"| {name} | {p['label']} | {load(p['load'])} | {p.get('request_throughput') or 0:.2f} | "
                       f"{p.get('output_throughput') or 0:.1f} | {_iv_cell(p.get('ttft_p99_ms'))} | "
                       f"{_iv_cell(p.get('tpot_p99_ms'))} | {p.get('verdict') or '-'} | "
                       f"{'yes' if sat else 'no' if sat is not None else '-'} |")
    if any(DAGGER in ln for ln in out):
        out += ["", f"{DAGGER} unreliable: fewer than ten calls in the interval's tail."]
    out += ["", _source(rel, d["command"]) + f" Commit `{d['provenance']['git_commit'][:7]}`, "
            f"{d['provenance']['date'][:10]}."]
    return "\n".join(out)


def _cap(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_capacity(root: Path) -> str:
    """tools/capacity_trials.py: the capacity twice, then with three step delays (each run found)."""
    rels = [r for r in ("results/sweep-capacity-3/trials.json", "results/sweep-capacity/trials.json",
                        "results/sweep-capacity-2/trials.json") if (root / r).exists()]
    if not rels:
        return "Not yet measured (results/sweep-capacity/trials.json is absent)."
    out = []
    for rel in rels:
        d = _load(root, rel)
        rows = d["plain"] + d["slowed"]
        out += [f"SLOs {', '.join(f'`{x}`' for x in d['slos'])}, rates `{d['rates']}` bisected to hi/lo - 1 <= "
                f"{d['resolution']:g}; commit `{d['provenance']['git_commit'][:7]}`:", "",
                "| sweep | step delay | SLO capacity (calls/s) | fails at | wall |", "|---|---:|---:|---:|---:|"]
        out += [f"| {r['label']} | {r['delay_ms']:g} ms | {_cap(r['capacity'])} | {_cap(r['fails_at'])} | "
                f"{r['wall_s'] / 60:.1f} min |" for r in rows]
        b = d["bars"]
        out += ["", f"Repeat agrees within its interval: **{'yes' if b['repeat_agrees'] else 'no'}**; capacities "
                f"strictly decreasing from the plain engine through the three delays: "
                f"**{'yes' if b['delays_strictly_decreasing'] else 'no'}**"
                + ("" if "brackets_separated" not in d else f"; every bracket wholly below the previous setting's: "
                   f"**{'yes' if d['brackets_separated'] else 'no'}**") + ".", "", _source(rel, d["command"]), ""]
    return "\n".join(out).rstrip()


def render_scrape_cost(root: Path) -> str:
    """What scraping /metrics costs the engine: `tierbench ab --b-scrape S` (A unscraped)."""
    out = []
    for rel in ("results/ab-scrape-cost/ab.json", "results/ab-scrape-cost-10hz/ab.json"):
        d = _load(root, rel)
        if d is None:
            continue
        hz = 1 / d["scrape_s"]["B"]
        c = d["comparison"]["tpot_p50"]
        r = c["ratio"]
        out.append(f"- scraped at {hz:g} Hz: TPOT p50 ratio (scraped / not) **{r['estimate']:.4f}** "
                   f"[{r['lo']:.4f}, {r['hi']:.4f}] over {d['pairs']} round pairs, "
                   f"{sum(x.get('scrapes', 0) for x in d['rounds'] if x['variant'] == 'B')} scrapes "
                   f"(commit `{d['provenance']['git_commit'][:7]}`; `{d['provenance']['command']}`)")
    return "\n".join(out) if out else "Not yet measured (results/ab-scrape-cost/ab.json is absent)."


def render_vllm_check(root: Path) -> str:
    rel = "results/sweep-vs-vllm-bench/check.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    r, t = d["ratio"], d["trace"]
    pairs = ", ".join(f"{p['ratio']:.4f}" for p in d["pairs"])
    return (f"{t['requests']} requests ({t['input_len']} in, {t['output_len']} out) at {t['rate']:.2f} calls/s, "
            f"{len(d['pairs'])} alternating pairs: output throughput of the sweep point over vLLM's "
            f"**{r['estimate']:.4f}** [{r['lo']:.4f}, {r['hi']:.4f}] (pairs: {pairs}); worst pair "
            f"{d['worst_deviation']:.2%} against the bar of {d['bar']:.0%}: **{'met' if d['met'] else 'not met'}**. "
            + _source(rel, d["command"]) + f" Commit `{d['provenance']['git_commit'][:7]}`.")


def render_demo_trials(root: Path) -> str:
    """tools/demo_trials.py: `tierbench demo` repeated, reference / vLLM per run."""
    rel = "results/demo-trials/trials.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    med = lambda e, m: statistics.median(r["values"][e][m] for r in d["runs"])  # noqa: E731
    out = [f"{len(d['runs'])} runs of `tierbench demo`, each with fresh servers; values are medians over the runs, "
           "the ratio reference / vLLM is the geometric mean over runs with a 95% Student-t interval:", "",
           "| metric | reference | vLLM | ratio [95%] | |", "|---|---:|---:|---|---|"]
    for m in d["metrics"]:
        r = d["ratios"][m]
        ratio = "-" if r["estimate"] is None else f"{r['estimate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
        out.append(f"| {m} | {med('reference', m):.2f} ms | {med('vllm', m):.2f} ms | {ratio} | {r['verdict']} |")
    out += ["", _source(rel, d["command"]) + f" Commit `{d['provenance']['git_commit'][:7]}`."]
    return "\n".join(out)


def render_token_budget(root: Path) -> str:
    """tools/token_budget.py: decode stall and burst TTFT against the CPU's step token budget."""
    rel = "results/reference-cpu/token-budget.json"
    d = _load(root, rel)
    if d is None:
        return f"Not yet measured ({rel} is absent)."
    out = [f"A burst of {len(d['burst_prompt_tokens'])} prompts ({sum(d['burst_prompt_tokens']):,} tokens) next to "
           f"{d['decodes']} running decodes, medians of {d['repeats']} bursts:", "",
           "| token budget | longest decode gap | burst: last first token | burst: mean first token |",
           "|---:|---:|---:|---:|"]
    out += [f"| {r['budget']} | {r['decode_gap_max_ms']:.1f} ms | {r['burst_last_ttft_ms']:.1f} ms | "
            f"{r['burst_mean_ttft_ms']:.1f} ms |" for r in d["rows"]]
    out += ["", f"The largest budget whose longest decode gap stays under {d['step_bound_ms']:g} ms: "
            f"**{d['chosen']}**, the CPU default. " + _source(rel, d["command"])
            + f" Commit `{d['provenance']['git_commit'][:7]}`."]
    return "\n".join(out)


BLOCKS = {
    "fidelity": render_fidelity,
    "offline": render_offline,
    "ab-cpu-agentic": lambda root: render_ab(root, "cpu-agentic"),
    "ab-cpu-azure": lambda root: render_ab(root, "cpu-azure"),
    "ab-trials": render_ab_trials,
    "soak": render_soak,
    "calibrate": render_calibrate,
    "gateway": render_gateway,
    "tier-study": render_tier_study,
    "prepare": render_prepare,
    "gpu": render_gpu,
    "retention": render_retention,
    "sweep-cpu": lambda root: render_sweep(root, "results/sweep-cpu/sweep.json"),
    "sweep-capacity": render_capacity,
    "scrape-cost": render_scrape_cost,
    "sweep-vllm-check": render_vllm_check,
    "demo-trials": render_demo_trials,
    "token-budget": render_token_budget,
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    start, end = markers(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README.md: block '{name}' needs exactly one {start} ... {end} pair")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def rendered(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """(README text with every block rendered from root's results, names of blocks that changed)."""
    stale = []
    for name, render in BLOCKS.items():
        new = replace_block(text, name, render(root))
        if new != text:
            stale.append(name)
        text = new
    return text, stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a block differs from its result file")
    args = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    try:
        new, stale = rendered(text)
    except ValueError as e:
        print(f"{COMMAND}: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{COMMAND}: error: a result file lacks the field {e}", file=sys.stderr)
        return 2
    if args.check:
        if stale:
            print(f"README.md: block '{stale[0]}' is stale ({len(stale)} stale in all); run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if stale:
        README.write_text(new, encoding="utf-8")
        print(f"rewrote {', '.join(stale)} in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
