"""The `serve` command's options, shared by `tierbench serve` and `python -m engines.reference.server`.
Kept apart from server.py so that building the CLI parser does not import torch."""
from __future__ import annotations

import argparse
import os
import re

from engines.reference.retention import POLICIES as RETENTION_POLICIES

# Request bodies over this get 413. A 200k-token prompt sent as token ids ("123456, " each) is about
# 1.6 MB of JSON, as text about 0.8 MB: 4 MiB holds the longest contexts with room to spare and
# turns away a runaway 10 MB body before it is read into memory.
MAX_BODY_BYTES = 4 << 20

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(v: str) -> int:
    """Bytes from '2GiB', '512M', '1.5g', '1073741824' (k/m/g/t are binary multiples)."""
    m = _SIZE.match(str(v))
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 2GiB or 512MiB, got {v!r}")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    n = int(float(m.group(1)) * mult)
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {v!r}")
    return n


def _number(v: str, kind, minimum, strict: bool):
    try:
        x = kind(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {v!r}") from None
    if x < minimum or (strict and x == minimum):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {v}")
    return x


def positive_int(v: str) -> int:
    return _number(v, int, 1, strict=False)


def positive_float(v: str) -> float:
    return _number(v, float, 0, strict=True)


def nonneg_float(v: str) -> float:
    return _number(v, float, 0, strict=False)


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `serve` options. Engine knobs left unset keep EngineConfig's defaults."""
    parser.add_argument("--model", required=True,
                        help="checkpoint directory (HF Llama format with tokenizer.json), or a named shape "
                             "with --load-format dummy and --tokenizer")
    parser.add_argument("--served-model-name", default=None,
                        help="the model name clients use (default: --model as given)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("TIERBENCH_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $TIERBENCH_API_KEY, else none)")
    parser.add_argument("--max-body-size", type=parse_size, default=MAX_BODY_BYTES, metavar="SIZE",
                        help="request bodies over this get 413 (default 4MiB)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    e = parser.add_argument_group("engine")
    e.add_argument("--max-model-len", type=positive_int, default=None,
                   help="context length (default: min(max_position_embeddings, 32768))")
    e.add_argument("--block-size", type=positive_int, default=None, help="tokens per KV block (power of two)")
    kv = e.add_mutually_exclusive_group()
    kv.add_argument("--kv-cache-memory", type=parse_size, default=None, metavar="SIZE",
                    help="KV-cache size, e.g. 2GiB (default: on CUDA --gpu-memory-utilization, else 1GiB)")
    kv.add_argument("--num-blocks", type=positive_int, default=None, help="KV-cache size in blocks")
    e.add_argument("--gpu-memory-utilization", type=float, default=None)
    e.add_argument("--max-num-seqs", type=positive_int, default=None, help="running sequences at most")
    e.add_argument("--max-num-batched-tokens", type=positive_int, default=None, help="token budget per step")
    e.add_argument("--max-waiting", type=positive_int, default=None,
                   help="waiting requests at most; beyond, requests get 503 with Retry-After")
    e.add_argument("--prefill-order", choices=["shortest", "fcfs"], default=None,
                   help="order of prefill work: fcfs (default) or shortest (fewest prompt tokens left first, "
                        "except requests waiting longer than --max-prefill-wait-ms, which go first: a lower "
                        "mean TTFT in mixed bursts, a longer tail for their long prompts)")
    e.add_argument("--max-prefill-wait-ms", type=nonneg_float, default=None,
                   help="with --prefill-order shortest: past this wait a request's prefill goes first (default 100)")
    e.add_argument("--no-prefix-caching", action="store_true", help="disable the prefix cache")
    e.add_argument("--kv-retention", choices=RETENTION_POLICIES, default=None,
                   help="which free cached KV blocks are evicted first: agent-aware (default: the session "
                        "idle longest), lru (oldest release), next-call (the session predicted to call again last)")
    e.add_argument("--step-delay-ms", type=nonneg_float, default=None,
                   help="sleep added to every engine step (to test regression gates)")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    e.add_argument("--load-format", choices=["auto", "safetensors", "dummy"], default=None)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--device", default=None, help="cpu or cuda[:n] (default cpu)")
    e.add_argument("--attention-backend", choices=["auto", "torch", "cpp", "triton"], default=None)
    e.add_argument("--enforce-eager", action="store_true", default=None,
                   help="no CUDA graphs for decode steps (default: graphs on CUDA with the triton backend)")
    e.add_argument("--num-threads", type=positive_int, default=None, help="torch CPU threads")
    e.add_argument("--no-warmup", action="store_true",
                   help="serve without first running a few made-up steps (the first users then pay for them)")
    return parser


# CLI option -> EngineConfig field
_ENGINE_ARGS = {
    "block_size": "block_size", "kv_cache_memory": "kv_cache_memory_bytes", "num_blocks": "num_blocks",
    "gpu_memory_utilization": "gpu_memory_utilization", "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens", "max_waiting": "max_waiting",
    "step_delay_ms": "step_delay_ms", "dtype": "dtype", "load_format": "load_format", "seed": "seed",
    "device": "device", "attention_backend": "attention_backend", "num_threads": "num_threads",
    "enforce_eager": "enforce_eager", "kv_retention": "kv_retention", "prefill_order": "prefill_order",
    "max_prefill_wait_ms": "max_prefill_wait_ms",
}


def engine_overrides_from_args(args: argparse.Namespace) -> dict:
    out = {field: getattr(args, opt) for opt, field in _ENGINE_ARGS.items() if getattr(args, opt, None) is not None}
    if getattr(args, "no_prefix_caching", False):
        out["enable_prefix_caching"] = False
    if getattr(args, "no_warmup", False):
        out["warmup"] = False
    return out
