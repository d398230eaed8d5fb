"""Offline throughput: the reference engine against HF transformers' generate() on the same prompts
in the same process, same dtype and thread count.

    python -m tools.offline_benchmark [--model DIR] [--out results/reference-cpu/offline.json]

Default workload: the tiny checkpoint (engines/tiny_model.py), 64 prompts of 256 random tokens,
64 greedy output tokens each with ignore_eos. HF runs them as one batch (left-padded; with equal
lengths there is no padding). Each repeat uses fresh prompts for both sides, so the engine's
prefix cache cannot help it, and the two sides alternate so that a noisy machine hurts both
alike. Throughput is output tokens / wall time of the whole call (prefill included); the medians
over repeats are compared. Each repeat also times prefill alone (one output token) on both sides,
which splits the time into prefill and per-step decode and bounds the possible speedup: HF's
total over the engine's prefill is what the engine would reach if its decode steps were free.
A script, not a test: timings depend on the machine (and on its neighbours: use --repeats). The
result carries engines.provenance's block (commit, versions, hardware, load, command).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.provenance import provenance
from engines.reference import EngineConfig, LLMEngine, SamplingParams


def _prompts(seed: int, n: int, length: int, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(5, min(vocab, 3000), (n, length)).tolist()


def _hf_generate(model, prompts: list[list[int]], max_new: int, pad_id: int) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=None, pad_token_id=pad_id)
    return out[:, width:].tolist()


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint dir (default: the tiny model, built if missing)")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (default 1: on a small shared VM a second OpenMP "
                         "thread's spin-waiting makes small ops far slower)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="engine token budget per step (default: the engine's, config.CPU_TOKEN_BUDGET on the "
                         "CPU: the batch's prompts in chunks whose activations stay in the CPU's caches; in one "
                         "interleaved comparison of 5 repeats before the oneDNN projections, the whole batch in "
                         "one 16,384-token step took 0.40 s, 1,024-token steps 0.37 s)")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--skip-hf", action="store_true", help="engine only")
    ap.add_argument("--no-phases", dest="phases", action="store_false",
                    help="skip the prefill-only runs (one output token) that split the time into phases")
    ap.add_argument("--out", default="results/reference-cpu/offline.json", help="JSON result ('' to skip)")
    args = ap.parse_args(argv)
    # taken before the run, so that its load average is the machine's rather than our own
    prov = provenance(command=" ".join(["python -m tools.offline_benchmark"] + ([shlex.join(argv)] if argv else [])))

    torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        from engines.tiny_model import ensure_tiny_model
        model_dir = str(ensure_tiny_model())
    n, plen, olen = args.num_prompts, args.prompt_len, args.output_len
    per_seq_blocks = -(-(plen + olen) // args.block_size)
    config = EngineConfig(model=model_dir, dtype=args.dtype, block_size=args.block_size,
                          num_blocks=n * per_seq_blocks + 16, max_num_seqs=max(n, 1),
                          max_num_batched_tokens=args.max_num_batched_tokens,
                          max_model_len=plen + olen + args.block_size)
    engine = LLMEngine(config)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(max_tokens=olen, temperature=0.0, ignore_eos=True)
    hf = None
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=config.torch_dtype).eval()
        pad_id = 0
        _hf_generate(hf, _prompts(999, 4, 16, vocab), 4, pad_id)  # warm-up
    engine.generate(_prompts(998, 4, 16, vocab), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))

    runs = {"engine_s": [], "hf_s": [], "engine_prefill_s": [], "hf_prefill_s": [], "engine_ttft_median_s": [],
            "matching_requests": []}
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    for r in range(args.repeats):
        prompts = _prompts(r, n, plen, vocab)
        t = time.perf_counter()
        outs = engine.generate(prompts, params)
        runs["engine_s"].append(time.perf_counter() - t)
        assert all(len(o.output_token_ids) == olen for o in outs)
        runs["engine_ttft_median_s"].append(statistics.median(o.ttft for o in outs))
        if hf is not None:
            t = time.perf_counter()
            ref = _hf_generate(hf, prompts, olen, pad_id)
            runs["hf_s"].append(time.perf_counter() - t)
            runs["matching_requests"].append(sum(o.output_token_ids == x for o, x in zip(outs, ref)))
        if args.phases:  # prefill alone (one output token), on other fresh prompts
            prompts = _prompts(1000 + r, n, plen, vocab)
            t = time.perf_counter()
            engine.generate(prompts, one)
            runs["engine_prefill_s"].append(time.perf_counter() - t)
            if hf is not None:
                t = time.perf_counter()
                _hf_generate(hf, prompts, 1, pad_id)
                runs["hf_prefill_s"].append(time.perf_counter() - t)
        print(f"repeat {r}: engine {runs['engine_s'][-1]:.3f}s"
              + (f", hf {runs['hf_s'][-1]:.3f}s, identical outputs {runs['matching_requests'][-1]}/{n}" if hf else ""),
              flush=True)

    tokens = n * olen
    eng_s = statistics.median(runs["engine_s"])
    result = {
        "workload": {"model": model_dir, "num_prompts": n, "prompt_len": plen, "output_len": olen,
                     "dtype": args.dtype, "greedy": True, "ignore_eos": True, "threads": args.threads,
                     "repeats": args.repeats},
        "engine_config": {k: v for k, v in vars(config).items()},
        "engine": {"median_s": eng_s, "output_tokens_per_s": tokens / eng_s, "runs_s": runs["engine_s"],
                   "ttft_median_s": runs["engine_ttft_median_s"], "prefill_only_runs_s": runs["engine_prefill_s"],
                   "stats": engine.stats()},
        "provenance": prov,
    }
    if hf is not None:
        hf_s = statistics.median(runs["hf_s"])
        result["hf_transformers"] = {"median_s": hf_s, "output_tokens_per_s": tokens / hf_s, "runs_s": runs["hf_s"],
                                     "prefill_only_runs_s": runs["hf_prefill_s"], "batched": True,
                                     "padding_side": "left"}
        result["speedup_vs_hf"] = hf_s / eng_s
        if args.phases:
            eng_pre, hf_pre = statistics.median(runs["engine_prefill_s"]), statistics.median(runs["hf_prefill_s"])
            result["phases"] = {
                "engine_prefill_s": eng_pre, "hf_prefill_s": hf_pre,
                "engine_decode_ms_per_step": (eng_s - eng_pre) / max(olen - 1, 1) * 1e3,
                "hf_decode_ms_per_step": (hf_s - hf_pre) / max(olen - 1, 1) * 1e3,
                "hf_prefill_share": hf_pre / hf_s,
                # what the engine would reach if its decode steps cost nothing
                "speedup_bound_with_free_decode": hf_s / eng_pre,
            }
        result["identical_greedy_outputs"] = f"{min(runs['matching_requests'])}/{n} (worst repeat)"
        print(f"engine {tokens / eng_s:,.0f} tok/s, hf {tokens / hf_s:,.0f} tok/s: {hf_s / eng_s:.2f}x")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
