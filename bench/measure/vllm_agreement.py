"""tierbench's metric definitions against vLLM's own benchmark client (`vllm bench serve`).

Three pieces, used by tests/bench/test_vllm_bench_agreement.py:

- `write_timed_trace`: one request list both tools replay unchanged. It is a Mooncake-style JSONL
  file (timestamp in ms, input_length, output_length, hash_ids), which vLLM reads as its
  `timed_trace` dataset (token-id prompts sent at the file's timestamps, ignore_eos) and tierbench
  as `--format mooncake` (one-call sessions sent at the same timestamps in open loop).
- `summary_from_vllm`: tierbench's summary of vLLM's per-request output (--save-result
  --save-detailed), mapped to a requests table by analysis.peers.requests_from_vllm (which
  `tierbench compare` and `report` use too), for comparing the definitions figure by figure
  (`VLLM_KEYS`).
- `python -m bench.measure.vllm_agreement`: a batch runner that imports vLLM's client once (about 20 s
  on a small machine) and then runs one `vllm bench serve` per argument list it reads from stdin
  (one JSON list per line), through bench.measure.vllm_bench, answering `RESULT <json>` on stdout after
  each. Each run is exactly `python -m bench.measure.vllm_bench ARGS`; only the import is shared. At
  import it needs only analysis.peers, which loads pandas lazily, so it runs in the vLLM interpreter
  too ($TIERBENCH_VLLM_PYTHON, engines.launch.vllm_python).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

from analysis.peers import requests_from_vllm  # the mapping lives in analysis/; imported here for callers

# tierbench summary key -> vLLM result key (--percentile-metrics ttft,tpot,itl,e2el
# --metric-percentiles 50,90,99). Throughputs are per second, latencies in ms in both.
VLLM_KEYS: dict[str, str] = {
    "completed": "completed", "failed": "failed",
    "total_input_tokens": "total_input_tokens", "total_output_tokens": "total_output_tokens",
    "request_throughput": "request_throughput", "output_throughput": "output_throughput",
    "total_token_throughput": "total_token_throughput",
}
for _m in ("ttft", "tpot", "itl", "e2el"):
    VLLM_KEYS.update({f"{_m}_mean": f"mean_{_m}_ms", f"{_m}_std": f"std_{_m}_ms",
                      f"{_m}_p50": f"median_{_m}_ms", f"{_m}_p90": f"p90_{_m}_ms",
                      f"{_m}_p99": f"p99_{_m}_ms"})

MARK = "RESULT "


def write_timed_trace(path: Path, n: int, input_len: int, output_len: int, rate: float, seed: int = 0,
                      block: int = 512):
    """n requests of exactly input_len prompt and output_len output tokens, Poisson arrivals at
    `rate`/s with the first at 0, each with its own hash ids (no prefix shared between requests).
    Timestamps are whole milliseconds, so both tools read the same times. Returns the offsets (s)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n - 1)
    ms = np.round(np.concatenate([[0.0], np.cumsum(gaps)]) * 1000).astype(int)
    blocks = math.ceil(input_len / block)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(ms):
            f.write(json.dumps({"timestamp": int(t), "input_length": input_len, "output_length": output_len,
                                "hash_ids": list(range(i * blocks, (i + 1) * blocks))}) + "\n")
    return ms / 1000.0


def vllm_args(base_url: str, model: str, tokenizer: str | Path, trace: Path, n: int, out_dir: Path, name: str,
              block: int = 512) -> list[str]:
    """`vllm bench serve` arguments replaying `trace` (write_timed_trace) against base_url's
    /v1/completions, greedy like tierbench, every metric at p50/p90/p99, per-request output saved
    to out_dir/name."""
    return ["--backend", "openai", "--base-url", base_url, "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "timed_trace", "--dataset-path", str(trace), "--num-prompts", str(n),
            "--timed-trace-chunk-hash-size", str(block), "--timed-trace-sec-multiplier", "0.001",
            "--ignore-eos", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99", "--disable-tqdm", "--save-result", "--save-detailed",
            "--result-dir", str(out_dir), "--result-filename", name]


def summary_from_vllm(result: dict) -> dict:
    """tierbench's summary (analysis.metrics.summarize) of a vLLM run's requests, over vLLM's
    benchmark duration: vLLM's detailed output has no benchmark start time, and its duration runs
    from before the first send to after the last request returned, not first send to last token.
    With result["duration"] None, tierbench's own duration (first send to last token)."""
    from analysis.metrics import summarize
    return summarize(requests_from_vllm(result), duration_s=result["duration"])


def serve_batches() -> int:
    """The batch runner: `RESULT {"ready": true}` once vLLM's client is imported, then for each
    JSON argument list read from stdin one run and `RESULT {"ok": ..., "error": ...}`. Everything
    vLLM prints goes to stderr."""
    out = sys.stdout

    def answer(obj: dict) -> None:
        out.write(MARK + json.dumps(obj) + "\n")
        out.flush()

    with contextlib.redirect_stdout(sys.stderr):
        import importlib
        importlib.import_module("vllm.benchmarks.serve")  # the slow import, done once

        from bench.measure.vllm_bench import run_vllm_bench as vllm_bench
        answer({"ready": True})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                vllm_bench(json.loads(line))
                answer({"ok": True})
            except (Exception, SystemExit) as e:  # reported to the caller (argparse exits on bad arguments)
                answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
            sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve_batches())
