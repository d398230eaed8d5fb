"""`tierbench sweep` end to end with a real reference server on loopback (tiny model): the
sweep directory, resume, the report, a capacity that cannot be bracketed (exit 1 with the range
measured), and bad input (exit 2, one line). The bisection itself is checked on given verdicts
(test_search_bisects_to_the_resolution): timing-decided SLOs would make it flaky here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sweep.axis import Axis
from bench.sweep.config import SweepConfig
from bench.sweep.runner import EngineSweep

REPO = Path(__file__).resolve().parents[3]

SPEC = """\
name = "sweep-test"
model = "{model}"

[trace]
path = "profile:demo"
sessions = 16
seed = 3
max_context = 1024
think_scale = 0.0

[load]
mode = "closed"

[[engines]]
kind = "reference"
args = ["--num-threads", "1", "--dtype", "float32"]

[sweep]
sessions = [1, 2]
slos = ["ttft_p50<=100000"]
"""


def sweep_cli(args, env, timeout=400):
    return subprocess.run([sys.executable, "-m", "bench", "sweep", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "TIERBENCH_CACHE": str(tmp_path_factory.mktemp("cache"))}


def test_a_closed_loop_sweep_its_resume_and_report(tiny_model_dir, env, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(model=tiny_model_dir))
    out = tmp_path / "sw"
    r = sweep_cli([str(spec), "--out", str(out), "--quiet"], env)
    # every point passes an SLO nobody can miss: the capacity is not bracketed, exit 1 with the range
    assert r.returncode == 1, r.stderr[-2000:]
    assert "capacity not bracketed: the highest load measured still passes (measured 1 to 2 sessions)" in r.stderr
    doc = json.loads((out / "sweep.json").read_text())
    eng = doc["engines"]["reference"]
    assert [p["load"] for p in eng["points"]] == [1.0, 2.0]
    for p in eng["points"]:
        run = json.loads((out / p["dir"] / "run.json").read_text())
        assert run["status"] == "completed" and run["spec"]["load"]["users"] == int(p["load"])
        assert p["completed"] > 0 and p["request_throughput"] > 0
        assert p["verdict"] == "pass" and p["slos"][0]["decision"] == "met"
        vllm = json.loads((out / p["dir"] / "vllm-result.json").read_text())  # vLLM's format, same figures
        assert vllm["completed"] == p["completed"] and vllm["max_concurrency"] == int(p["load"])
        assert not (out / p["dir"] / "report.html").exists()  # one report for the sweep, not one per point
        assert p["ttft_p50_ms"]["lo"] <= p["ttft_p50_ms"]["estimate"] <= p["ttft_p50_ms"]["hi"]
    assert "saturation" in eng["points"][1] and "saturation" not in eng["points"][0]
    assert doc["provenance"]["git_commit"] and eng["capacity"]["problem"] == "the highest load measured still passes"
    html = (out / "report.html").read_text()
    assert "fig-sweep-curves" in html and "not bracketed" in html
    # the same command again: every point reused, nothing rerun
    r2 = sweep_cli([str(spec), "--out", str(out), "--quiet"], env)
    assert r2.returncode == 1
    doc2 = json.loads((out / "sweep.json").read_text())
    assert [p["reused"] for p in doc2["engines"]["reference"]["points"]] == [True, True]
    # a changed point spec is not reused
    r3 = sweep_cli([str(spec), "--out", str(out), "--sessions", "2,3", "--quiet"], env)
    pts = json.loads((out / "sweep.json").read_text())["engines"]["reference"]["points"]
    assert r3.returncode == 1 and [(p["load"], p["reused"]) for p in pts] == [(2.0, True), (3.0, False)]


@pytest.mark.parametrize("args, says", [
    (["--slo", "queue_p99<=5"], "--slo: SLO 'queue_p99<=5': expected METRIC_pQ<=BOUND"),
    (["--rates", "4,2,8"], "--rates: request rates must increase, got 4,2,8"),
    (["--sessions", "0,1"], "--sessions: session counts must be > 0"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, env, args, says):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(model="tiny"))
    r = sweep_cli([str(spec), *args], env, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_a_bad_sweep_table_names_file_line_and_field(tmp_path, env):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(model="tiny").replace('slos = ["ttft_p50<=100000"]', 'slos = ["ttft_p50<=fast"]'))
    r = sweep_cli([str(spec)], env, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"{spec}:20: field 'sweep.slos'" in r.stderr


def test_search_bisects_to_the_resolution(tmp_path):
    """The bisection on verdicts given by load (the capacity is 11.3 calls/s): it must stop with a
    bracket no wider than the resolution that contains it."""
    cfg = SweepConfig(axis=Axis("list", [1, 4, 16, 64]), closed=False, slos=["ttft_p99<=1"], resolution=0.05,
                      max_search_points=20)
    sw = EngineSweep.__new__(EngineSweep)
    sw.cfg, sw.closed, sw.points, sw.capacity = cfg, False, [], None

    def measure(load, label=None, closed=None):
        sw.points.append({"load": load, "label": f"rate-{load:g}", "verdict": "pass" if load <= 11.3 else "fail"})
    sw.measure = measure
    for x in cfg.axis.values:
        measure(x)
    sw.search(lambda: None)
    c = sw.capacity
    assert c["lo"] <= 11.3 < c["hi"] and c["hi"] / c["lo"] - 1 <= 0.05 and c["resolved"]
    assert c["search_points"] == len(sw.points) - 4 <= 6  # log2(log(16/4) / log(1.05)) ~ 4.8 halvings
    sw.closed, sw.points = True, []
    cfg.closed = True
    for x in (1, 2, 4, 8, 16, 32):
        sw.points.append({"load": x, "label": f"sessions-{x}", "verdict": "pass" if x <= 11 else "fail"})
    sw.search(lambda: None)
    assert (sw.capacity["lo"], sw.capacity["hi"]) == (11, 12)
    # a load left undecided inside the bracket: the gaps beside it are halved instead
    sw.closed, sw.points, cfg.closed = False, [], False

    def measure2(load, label=None, closed=None):
        v = "undecided" if 10 <= load <= 12.5 else "pass" if load < 10 else "fail"
        sw.points.append({"load": load, "label": f"rate-{load:g}", "verdict": v})
    sw.measure = measure2
    for x in (4, 16, 64):
        measure2(x)
    sw.search(lambda: None)
    c = sw.capacity
    assert 9 <= c["lo"] < 10 and 12.5 < c["hi"] <= 13.8 and c["undecided"] and not c["resolved"]


def test_point_specs_set_the_load_and_keep_trace_arrivals():
    """Open loop with the trace's arrivals: time_scale compresses the trace to the point's rate;
    Poisson takes load.rate; closed loop takes users; every point is one repetition, no early stop."""
    from types import SimpleNamespace

    from bench.spec import RunSpec
    from bench.sweep.runner import point_spec
    from engines.launch import EngineSpec

    spec = RunSpec()
    spec.load.mode, spec.load.arrivals, spec.trace.time_scale = "open", "trace", 0.5
    spec.load.early_stop, spec.load.repetitions = ["ttft_p99<=5"], 3
    server = SimpleNamespace(base_url="http://127.0.0.1:9", model_name="m")
    cfg = SweepConfig(closed=False)
    p = point_spec(spec, EngineSpec("reference", name="ref"), server, 4.0, False, cfg, "rate-4", trace_rate=8.0)
    assert p.load.arrivals == "trace" and p.trace.time_scale == 1.0 and p.load.rate == 0  # 8/s at 0.5 -> 4/s at 1.0
    assert p.engines[0].kind == "url" and p.engines[0].url == server.base_url and p.engines[0].name == "ref"
    assert p.load.repetitions == 1 and p.load.early_stop == []
    p = point_spec(spec, EngineSpec("reference", name="ref"), server, 4.0, False, cfg, "rate-4", trace_rate=None)
    assert p.load.arrivals == "poisson" and p.load.rate == 4.0 and p.trace.time_scale == 0.5
    p = point_spec(spec, EngineSpec("reference", name="ref"), server, 6, True, cfg, "sessions-6")
    assert p.load.mode == "closed" and p.load.users == 6
