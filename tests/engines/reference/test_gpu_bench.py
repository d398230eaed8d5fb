"""The GPU benchmark's CPU dry run, end to end in a subprocess, with the modules the GPU machine
lacks (fastapi, uvicorn, locust, plotly, orjson) made unimportable: every stage runs with tiny
shapes and the JSON has the headline keys, the table and provenance. So the script that meets
the GPU has already run here, on the same imports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.reference.gpu_bench import HEADLINE, STAGES, parse_args

ROOT = Path(__file__).resolve().parents[3]
ABSENT_ON_GPU_MACHINE = ("fastapi", "uvicorn", "locust", "plotly", "orjson")
BLOCKER = f'''"""Makes the packages the GPU machine lacks unimportable (tests/engines/reference/test_gpu_bench.py)."""
import sys

BLOCKED = {ABSENT_ON_GPU_MACHINE!r}


class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None


sys.meta_path.insert(0, _Absent())
'''


def _env(tmp_path: Path) -> dict:
    block = tmp_path / "gpu-machine-site"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}


def _run(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engines.reference.gpu_bench", "--device", "cpu", "--tiny", *args],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def test_the_blocker_blocks(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import orjson"], env=_env(tmp_path), capture_output=True, text=True)
    assert r.returncode != 0 and "not installed on the GPU machine" in r.stderr


def test_cpu_dry_run_end_to_end(tmp_path):
    out = tmp_path / "engine.json"
    r = _run(tmp_path, "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rec = json.loads(out.read_text())
    for key in HEADLINE:
        assert isinstance(rec[key], float) and rec[key] > 0, key
    assert 0 < rec["agentic_prefix_hit_vs_ideal"] <= 1.0 + 1e-9
    for name in ["setup", *STAGES]:
        stage = rec["stages"][name]
        assert "error" not in stage and "skipped" not in stage, (name, stage)
        assert stage["elapsed_s"] >= 0
    c = rec["stages"]["correctness"]
    assert c["kernels_ok"] and len(c["kernels"]) == 14
    assert c["graph_vs_eager"]["batch_8"]["identical"] == 8
    assert c["prepare"]["host_peak_growth_bytes_vs_8"] < 512
    assert rec["stages"]["setup"]["decode_path"] == "padded-eager"
    cells = rec["stages"]["decode"]["cells"]
    assert {(c["batch"], c["graphs"]) for c in cells} == {(b, g) for b in (1, 8, 32, 128) for g in (True, False)}
    assert all(isinstance(c["ms_per_step"], float) for c in cells)
    assert [row["batch"] for row in rec["stages"]["hf"]["rows"]] == [64, 16, 1]
    prov = rec["provenance"]
    assert prov["device"] == "cpu" and prov["gpu_name"] is None
    for key in ("commit", "date", "torch", "triton", "command"):
        assert isinstance(prov[key], str) and prov[key], key
    assert prov["command"].startswith("python -m engines.reference.gpu_bench --device cpu --tiny")
    assert {"stage", "measure", "value", "unit", "target"} <= set(rec["table"][0])
    assert [row["measure"] for row in rec["table"] if row["stage"] == "headline"] == list(HEADLINE)
    assert "headline" in r.stdout and "decode_ms_bs1_ctx1024" in r.stdout  # the printed table


def test_time_caps_record_skips(tmp_path):
    """Caps too short for any work: the stages say so instead of overrunning, the headline is
    null, and the run still writes its JSON."""
    out = tmp_path / "engine.json"
    r = _run(tmp_path, "--stages", "decode,offline", "--time-scale", "1e-6", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert all(c.get("skipped") == "time" for c in rec["stages"]["decode"]["cells"])
    assert rec["stages"]["offline"]["skipped"] == "time"
    assert rec["decode_ms_bs1_ctx1024"] is None and rec["offline_req_per_s_1024_128"] is None
    assert "agent" not in rec["stages"]


def test_bad_flags_exit_2():
    for argv in (["--device", "cpu"], ["--stages", "decode,warp"], ["--time-scale", "0"]):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2
