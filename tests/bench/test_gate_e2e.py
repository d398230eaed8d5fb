"""The regression gate end to end: the CI's own benchmark (examples/ci-smoke.toml) on the real
reference engine, run once as is and once slowed by the engine's --step-delay-ms. The slowdown
fails the latency gate (exit 1); the engine's counters, which do not depend on timing, pass."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "examples" / "ci-smoke.toml"
COUNTERS = ["steps", "prompt_tokens_computed", "prefix_hit_tokens", "preemptions", "completed", "total_output_tokens"]


def tierbench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.mark.slow
def test_step_delay_fails_the_gate_and_counters_stay_exact(tmp_path, tiny_model_dir):
    base, slow = tmp_path / "base", tmp_path / "slow"
    model = ["--model", str(tiny_model_dir)]
    r = tierbench("run", str(SPEC), *model, "--out", str(base), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    tpot_ms = json.loads((base / "run.json").read_text())["summary"]["reference"]["tpot_p50"]
    # half the measured time per output token again: a slowdown the 10% allowance must catch
    delay = max(1.0, 0.5 * tpot_ms)
    r = tierbench("run", str(SPEC), *model, "--out", str(slow), "--quiet", f"--engine-arg=--step-delay-ms={delay:.2f}")
    assert r.returncode == 0, r.stderr[-2000:]

    md, xml = tmp_path / "gate.md", tmp_path / "gate.xml"
    # TPOT is where a per-step delay shows on every call; E2EL (prefill included, 31 calls) is
    # reported beside it: its interval is too wide here to gate on
    g = tierbench("gate", "--baseline", str(base), "--candidate", str(slow), "--metric", "tpot_p50",
                  "--advisory", "e2el_p50", "--max-regression", "10", "--markdown", str(md), "--junit", str(xml))
    assert g.returncode == 1, g.stdout + g.stderr
    assert "| `reference.tpot_p50` | statistical |" in md.read_text() and "**FAIL**" in md.read_text()
    root = ET.parse(xml).getroot()
    assert root.get("failures") == "1"
    assert [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None] == ["reference.tpot_p50"]

    args = [a for m in COUNTERS for a in ("--metric", m)]
    g = tierbench("gate", "--baseline", str(base), "--candidate", str(slow), *args, "--markdown", str(md),
                  "--junit", str(xml))
    assert g.returncode == 0, g.stdout + g.stderr
    counters = json.loads((base / "run.json").read_text())["summary"]["reference"]["engine_counters"]
    assert counters["steps"] > 0 and counters["prompt_tokens_computed"] > 0
