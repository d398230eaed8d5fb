"""A sweep point against vLLM's own benchmark client at the same request rate on the same server.

    .venv/bin/python -m tools.sweep_vllm_check                  # 3 pairs -> results/sweep-vs-vllm-bench/check.json

One reference server (tiny model, one thread) is started and kept up. One timed trace
(bench/measure/vllm_agreement.write_timed_trace: N requests of fixed input and output lengths at
Poisson times of a given rate) is replayed, in alternating order, by `tierbench sweep` as a
one-point sweep at the trace's own mean rate (the spec's engine is the server's URL; arrivals
"trace", so the sweep keeps the trace's times) and by `vllm bench serve --dataset-name
timed_trace`. Per pair the ratio of output throughput (tierbench's point / vLLM's); the bar: within
3%. Both tools read the same times; the remaining differences are their definitions of the
duration (vLLM: from before the first send to after the last response; tierbench: first send to
last token) and the machine's drift between runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "sweep-vs-vllm-bench"
PROG = "python -m tools.sweep_vllm_check"
N, IN, OUTPUT, RATE, SEED = 160, 64, 32, 4.0, 0
BAR = 0.03

SPEC = """\
name = "sweep-vllm-check"
model = "{model}"

[trace]
path = "{trace}"
format = "mooncake"

[load]
mode = "open"
arrivals = "trace"

[[engines]]
url = "{url}"
served_model = "{served}"
"""


def trace_rate(offsets) -> float:
    """The mean rate the sweep computes for trace arrivals (bench/sweep/runner.py)."""
    return (len(offsets) - 1) / (offsets[-1] - offsets[0])


def main(argv: list[str] | None = None) -> int:
    from analysis.ab import log_t_interval
    from bench.measure.vllm_agreement import vllm_args, write_timed_trace
    from engines.launch import EngineSpec, Server, vllm_python
    from engines.provenance import provenance
    from engines.tiny_model import ensure_tiny_model

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ensure_tiny_model()
    trace = out / "trace.jsonl"
    offsets = write_timed_trace(trace, N, IN, OUTPUT, RATE, seed=SEED)
    rate = float(trace_rate(offsets))
    server = Server(EngineSpec("reference", name="reference", model=str(model),
                               args=["--num-threads", "1", "--dtype", "float32"]), out)
    server.start()
    spec = out / "spec.toml"
    spec.write_text(SPEC.format(model=model, trace=trace, url=server.base_url, served=server.model_name))
    pairs = []
    try:
        # one unrecorded vLLM-client run first: its import and the server's first calls warm up
        subprocess.run([vllm_python(), "-m", "bench.measure.vllm_bench",
                        *vllm_args(server.base_url, server.model_name, model, trace, 16, out, "warmup.json")],
                       cwd=REPO, capture_output=True, text=True, check=True)
        for k in range(a.pairs):
            order = ("tierbench", "vllm") if k % 2 == 0 else ("vllm", "tierbench")
            got = {}
            for tool in order:
                server.reset_prefix_cache()
                if tool == "vllm":
                    name = f"vllm-{k}.json"
                    subprocess.run([vllm_python(), "-m", "bench.measure.vllm_bench",
                                    *vllm_args(server.base_url, server.model_name, model, trace, N, out, name)],
                                   cwd=REPO, capture_output=True, text=True, check=True)
                    r = json.loads((out / name).read_text())
                    got["vllm"] = {"output_throughput": r["output_throughput"], "completed": r["completed"],
                                   "duration_s": r["duration"]}
                else:
                    d = out / f"sweep-{k}"
                    r = subprocess.run([sys.executable, "-m", "bench", "sweep", str(spec), "--rates", repr(float(rate)),
                                        "--out", str(d), "--quiet"], cwd=REPO, capture_output=True, text=True)
                    if r.returncode != 0:
                        raise SystemExit(f"{PROG}: tierbench sweep failed:\n{r.stderr[-2000:]}")
                    p = next(iter(json.loads((d / "sweep.json").read_text())["engines"].values()))["points"][0]
                    got["tierbench"] = {"output_throughput": p["output_throughput"], "completed": p["completed"],
                                        "duration_s": p["duration_s"], "point": p["dir"]}
            ratio = got["tierbench"]["output_throughput"] / got["vllm"]["output_throughput"]
            pairs.append({"order": list(order), **got, "ratio": ratio})
            print(f"pair {k}: tierbench {got['tierbench']['output_throughput']:.2f} tok/s, vLLM "
                  f"{got['vllm']['output_throughput']:.2f} tok/s, ratio {ratio:.4f}", file=sys.stderr)
    finally:
        server.stop()
    iv = log_t_interval([p["ratio"] for p in pairs], 0.95)
    worst = max(abs(p["ratio"] - 1) for p in pairs)
    doc = {"what": "output throughput of a tierbench sweep point against vllm bench serve, same trace, same server",
           "command": command, "trace": {"requests": N, "input_len": IN, "output_len": OUTPUT, "rate": rate, "seed": SEED},
           "pairs": pairs, "ratio": iv.to_dict(), "worst_deviation": worst, "bar": BAR, "met": worst <= BAR,
           "provenance": provenance(command)}
    (out / "check.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"ratio {iv.estimate:.4f} [{iv.lo:.4f}, {iv.hi:.4f}]; worst pair {worst:.2%} (bar {BAR:.0%}): "
          f"{'met' if doc['met'] else 'not met'}", file=sys.stderr)
    return 0 if doc["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
