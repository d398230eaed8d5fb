"""The reference engine on a GPU, in one short run: correctness, decode step latency, offline
throughput, Hugging Face transformers generate() on the same shapes, and an agent replay.

    PYTHONPATH=. python3 -m engines.reference.gpu_bench            # H100: ~3 minutes, under 5
    PYTHONPATH=. python3 -m engines.reference.gpu_bench --device cpu --tiny   # the CPU dry run

Needs only torch, triton, transformers, numpy and safetensors (no fastapi, uvicorn, locust,
plotly or orjson; no network): the model is Llama-3.1-8B-shaped with random bf16 weights built
on the GPU. Stages (bench_stages.py) run in order, each under its own time cap; what a stage
cannot start before its cap is recorded as {"skipped": "time"}, an error as {"error": ...},
and the run goes on. Prints a table and writes JSON (default results/h100/engine.json) with the
headline keys decode_ms_bs1_ctx1024, offline_req_per_s_1024_128, hf_speedup_bs64 and
agentic_prefix_hit_vs_ideal (null when their stage did not finish), the table, every stage's
figures, and provenance (commit, GPU, driver, torch and triton versions, date, command; the
commit comes from $TIERBENCH_COMMIT when it is set, else from git).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

HEADLINE = {  # key: (unit, target on an H100 80GB HBM3, better)
    "decode_ms_bs1_ctx1024": ("ms", 6.0, "lower"),
    "offline_req_per_s_1024_128": ("req/s", 25.0, "higher"),
    "hf_speedup_bs64": ("x", 10.0, "higher"),
    "agentic_prefix_hit_vs_ideal": ("ratio", 0.95, "higher"),
}
STAGES = ("correctness", "decode", "profile", "offline", "agent", "hf")  # HF last: its memory is the tightest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m engines.reference.gpu_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: the dry run of every stage")
    ap.add_argument("--out", default=None,
                    help="JSON result (default results/h100/engine.json; with --tiny results/reference-cpu/"
                         "gpu_bench_dry_run.json; '' to skip)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply every stage's time cap")
    ap.add_argument("--budget-s", type=float, default=290.0,
                    help="the whole run's time: a stage's cap is cut to what is left of it (default 290)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"--stages: unknown stage {bad[0]!r} (stages: {', '.join(STAGES)})")
    if args.device.startswith("cpu") and not args.tiny:
        ap.error("--device cpu: an 8B model on the CPU would take hours; add --tiny")
    if args.time_scale <= 0:
        ap.error("--time-scale must be > 0")
    args.stages = stages
    if args.out is None:
        args.out = "results/reference-cpu/gpu_bench_dry_run.json" if args.tiny else "results/h100/engine.json"
    return args


def _nvidia_smi(field: str) -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(device, command: str) -> dict:
    """Provenance: engines.provenance's block plus the GPU's name, driver and memory."""
    import torch

    from engines.provenance import provenance

    prov = provenance(command)
    versions = prov["environment"]["versions"]
    # a copy of the tree on another machine may carry a stale .git: the commit named by the caller wins
    prov["git_commit"] = os.environ.get("TIERBENCH_COMMIT") or prov["git_commit"]
    prov.update({"commit": prov["git_commit"], "command": command,
                 "torch": torch.__version__, "triton": versions.get("triton"),
                 "transformers": versions.get("transformers"), "cuda": torch.version.cuda, "device": device.type,
                 "gpu_name": None, "driver": None})
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        prov.update({"gpu_name": props.name, "driver": _nvidia_smi("driver_version"),
                     "gpu_memory_bytes": props.total_memory, "sm_count": props.multi_processor_count})
    return prov


def build_engine(shapes, device, seed: int):
    from engines.reference.config import EngineConfig
    from engines.reference.engine import LLMEngine

    config = EngineConfig(model=shapes.model, load_format="dummy", dtype=shapes.dtype, device=str(device), seed=seed,
                          max_model_len=shapes.max_model_len, max_num_seqs=shapes.max_num_seqs,
                          max_num_batched_tokens=shapes.max_num_batched_tokens,
                          kv_cache_memory_bytes=shapes.kv_cache_bytes,
                          # the CPU has no graphs: run their padded path eagerly, as the tests do
                          enforce_eager=None if device.type == "cuda" else False)
    return LLMEngine(config)


def run_stage(record: dict, name: str, fn, cap_s: float | None) -> dict:
    print(f"== {name}" + (f" (cap {cap_s:.0f} s)" if cap_s else ""), flush=True)
    t = time.perf_counter()
    try:
        out = fn(time.monotonic() + (cap_s or float("inf")))
    except Exception as e:  # one stage's failure must not cost the others their figures
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        print(out["traceback"], file=sys.stderr, flush=True)
    out["elapsed_s"] = round(time.perf_counter() - t, 3)
    out["cap_s"] = cap_s
    record["stages"][name] = out
    print(f"   {name}: {out['elapsed_s']:.1f} s" + (f"  ERROR {out['error']}" if "error" in out else ""), flush=True)
    return out


def headline(stages: dict, shapes) -> dict:
    from engines.reference.bench_stages import decode_ms

    dec, off, hf, agent = (stages.get(k, {}) for k in ("decode", "offline", "hf", "agent"))
    bs64 = next((r for r in hf.get("rows", []) if r.get("batch") == 64), {})
    return {
        "decode_ms_bs1_ctx1024": decode_ms(dec.get("cells", []), 1, shapes.decode_contexts[0], True)
        or decode_ms(dec.get("cells", []), 1, shapes.decode_contexts[0], False),
        "offline_req_per_s_1024_128": off.get("req_per_s"),
        "hf_speedup_bs64": bs64.get("speedup"),
        "agentic_prefix_hit_vs_ideal": agent.get("prefix_hit_vs_ideal"),
    }


def table_rows(record: dict) -> list[dict]:
    """One row per figure: stage, measure, value, unit, target (the H100 targets on the headline)."""
    rows = []

    def add(stage, measure, value, unit="", target=None):
        rows.append({"stage": stage, "measure": measure, "value": value, "unit": unit, "target": target})

    st = record["stages"]
    setup = st.get("setup", {})
    add("setup", "engine build (weights, KV cache, graph capture)", setup.get("build_s"), "s")
    add("setup", "graph capture", setup.get("capture_s"), "s")
    c = st.get("correctness", {})
    for k in c.get("kernels", []):
        add("correctness", f"{k['kernel']} [{k['dtype']}] error", k["error"], "rel", f"<= {k['tolerance']:g}")
    for name, g in (c.get("graph_vs_eager") or {}).items():
        if isinstance(g, dict) and "identical" in g:
            add("correctness", f"graph vs eager greedy, {name} (padded to {g['padded_to']})",
                f"{g['identical']}/{g['sequences']}", "identical")
    p = c.get("prepare", {})
    for key, unit in (("prepare_us", "us"), ("host_peak_growth_bytes_vs_8", "B"), ("syncs", ""),
                      ("device_allocations", "")):
        if key in p:
            add("correctness", f"decode prepare() at {p.get('sequences')} seqs: {key}", p[key], unit)
    for cell in st.get("decode", {}).get("cells", []):
        label = f"decode step bs={cell['batch']} ctx={cell['context']}" + (
            "" if "graphs" not in cell else " graphs " + ("on" if cell["graphs"] else "off"))
        add("decode", label, cell.get("ms_per_step", cell.get("skipped")), "ms")
    prof = st.get("profile", {})
    for key in ("graphs_off", "graphs_on"):
        p = prof.get(key) or {}
        if "wall_ms_per_step" in p:
            add("profile", f"bs=1 ctx={prof['context']} {key}: wall / device time per step",
                f"{p['wall_ms_per_step']:.3f} / {p['device_ms_per_step']:.3f}", "ms")
            add("profile", f"bs=1 ctx={prof['context']} {key}: kernels per step", p["kernels_per_step"])
            for k in p["top_kernels"][:5]:
                add("profile", f"  {key} {k['name'][:60]}", round(k["device_us_per_step"], 1), "us/step")
    off = st.get("offline", {})
    add("offline", f"{off.get('requests')} requests {off.get('prompt_len')}/{off.get('output_len')}",
        off.get("req_per_s", off.get("skipped")), "req/s")
    add("offline", "output tokens/s", off.get("output_tok_per_s"), "tok/s")
    for r in st.get("hf", {}).get("rows", []):
        add("hf", f"batch {r['batch']}: engine / HF generate output tok/s",
            None if "speedup" not in r else f"{r['engine_output_tok_per_s']:.0f} / {r['hf_output_tok_per_s']:.0f}",
            "tok/s")
        add("hf", f"batch {r['batch']}: speedup over HF", r.get("speedup", r.get("skipped")), "x")
    ag = st.get("agent", {})
    add("agent", f"{ag.get('profile')}: prefix hit / ideal ({ag.get('calls_done')}/{ag.get('calls_planned')} calls)",
        f"{ag['prefix_hit']:.3f} / {ag['ideal_prefix_hit']:.3f}" if ag.get("prefix_hit") is not None else None)
    for key, (unit, target, better) in HEADLINE.items():
        add("headline", key, record.get(key), unit, f"{'<=' if better == 'lower' else '>='} {target:g} (H100)")
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    width = max(len(r["measure"]) for r in rows)
    print(f"\n{'stage':<12} {'measure':<{width}} {'value':>14} {'unit':<9} target")
    for r in rows:
        print(f"{r['stage']:<12} {r['measure']:<{width}} {fmt(r['value']):>14} {r['unit']:<9} {r['target'] or ''}")


def run_benchmark(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m engines.reference.gpu_bench" + (f" {shlex.join(argv)}" if argv else "")
    if args.device.startswith("cpu"):  # Triton kernels only run interpreted there; set before triton loads
        os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch

    from engines.reference import bench_stages as bs

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: --device cuda: no CUDA device here (the CPU dry run is --device cpu --tiny)", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: a second thread only adds synchronization
    shapes = bs.TINY if args.tiny else bs.H100
    record = {"shapes": dict(vars(shapes)), "stages": {}}
    t0 = time.perf_counter()
    record["provenance"] = environment(device, command)
    print(f"gpu_bench on {record['provenance']['gpu_name'] or 'cpu'}, torch {torch.__version__}, "
          f"triton {record['provenance']['triton']}, shapes {'tiny' if args.tiny else 'H100'}", flush=True)

    def setup(deadline):
        t = time.perf_counter()
        engine = build_engine(shapes, device, args.seed)
        graphs = engine.runner.graphs
        record["bench"] = bs.Bench(engine, shapes, np.random.default_rng(args.seed))
        return {"build_s": time.perf_counter() - t, "capture_s": graphs.capture_s if graphs else None,
                "capture_sizes": graphs.sizes if graphs else None, "decode_path": engine.runner.decode_path,
                "attention_backend": engine.runner.backend, "kv_blocks": engine.pool.num_blocks,
                "block_size": engine.config.block_size}

    run_stage(record, "setup", setup, None)
    bench = record.pop("bench", None)
    from engines.reference.step_profile import stage_profile

    fns = {"correctness": bs.stage_correctness, "decode": bs.stage_decode, "profile": stage_profile,
           "offline": bs.stage_offline, "hf": bs.stage_hf, "agent": bs.stage_agent}
    for name in args.stages:
        left = args.budget_s - (time.perf_counter() - t0)
        if bench is None or left <= 1:
            record["stages"][name] = {"skipped": "setup failed" if bench is None else "time", "cap_s": 0}
            continue
        cap = min(shapes.caps_s[name] * args.time_scale, left)
        run_stage(record, name, lambda deadline, f=fns[name]: f(bench, deadline), cap)
    record.update(headline(record["stages"], shapes))
    record["targets"] = {k: {"unit": u, "target": t, "better": b} for k, (u, t, b) in HEADLINE.items()}
    record["table"] = table_rows(record)
    record["total_s"] = time.perf_counter() - t0
    print_table(record["table"])
    print(f"\ntotal {record['total_s']:.1f} s", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(f"wrote {out}")
    failed = [n for n, s in record["stages"].items() if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_benchmark(sys.argv[1:]))
