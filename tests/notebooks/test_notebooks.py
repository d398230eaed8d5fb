"""notebooks/*.ipynb executed headless with papermill on the committed runs (results/cpu-agentic,
results/cpu-azure), their key numbers (each notebook's OUTPUT_DIR/<name>.json) checked against
analysis/ and traces/ computed here directly; and the stored notebooks checked to be clean."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from pytest import approx

from analysis.compare import DEFAULT_METRICS, compare_metric, itl_gaps, per_call
from analysis.metrics import summarize_run
from analysis.rundata import load_run
from analysis.stats import percentile_cis
from tests.conftest import shared
from traces.load import load_trace
from traces.stats import trace_stats

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
RUN = REPO / "results" / "cpu-agentic"
AZURE = REPO / "results" / "cpu-azure"
KERNEL = "tierbench-tests"
N_BOOT = 300  # fewer resamples than the notebooks' default: the test recomputes at the same n_boot and seed
QS = (90, 99, 99.9)
PARAMS = {
    "characterize": {"trace", "fmt", "sessions", "seed", "output_dir"},
    "throughput": {"run_dir", "output_dir"},
    "tail_latency": {"run_dir", "confidence", "n_boot", "seed", "output_dir"},
    "regression": {"baseline_dir", "candidate_dir", "baseline_group", "candidate_group", "metrics", "confidence",
                   "n_boot", "seed", "output_dir"},
}


@pytest.fixture(scope="session")
def kernel(tmp_path_factory):
    """A kernel spec that runs this very interpreter, in a private JUPYTER_PATH entry: nothing to
    install by hand in a fresh .venv, and the notebooks see the packages the tests see."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tierbench tests", "language": "python"}), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", os.pathsep.join(p for p in (str(root), os.environ.get("JUPYTER_PATH", "")) if p))
    from jupyter_client.kernelspec import KernelSpecManager
    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable
    yield KERNEL
    mp.undo()


def execute(kernel: str, tmp_path: Path, name: str, cwd: Path = NOTEBOOKS, **params) -> tuple[dict, nbformat.NotebookNode]:
    """Run notebooks/<name>.ipynb (cwd: notebooks/, as Jupyter starts it, unless given); returns the
    key numbers it wrote and the executed notebook, after checking that no cell failed."""
    out_dir = tmp_path / "out"
    nb = papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.out.ipynb"),
                                    parameters={**params, "output_dir": str(out_dir)}, kernel_name=kernel,
                                    cwd=str(cwd), progress_bar=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    return json.loads((out_dir / f"{name}.json").read_text(encoding="utf-8")), nb


def stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def check_interval(got: dict, iv, scale: float = 1000.0) -> None:
    for key in ("estimate", "lo", "hi"):
        want = getattr(iv, key)
        assert got[key] == (None if want is None else approx(want * scale, rel=1e-12)), key
    assert (got["n"], got["clusters"], got["method"]) == (iv.n, iv.clusters, iv.method)


# ----------------------------------------------------------------------------- stored notebooks

@pytest.mark.parametrize("name", sorted(PARAMS))
def test_stored_without_outputs_and_with_parameters(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path}: clear the outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{path}: one code cell tagged 'parameters'"
    assert set(papermill.inspect_notebook(str(path))) == PARAMS[name]
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4  # each figure and table explained


# ----------------------------------------------------------------------------- characterize

def test_characterize_profile(kernel, tmp_path):
    got, _ = execute(kernel, tmp_path, "characterize", cwd=REPO, trace="profile:demo", sessions=16, seed=3)
    want = trace_stats(load_trace("profile:demo", sessions=16, seed=3))
    assert want["sessions"] == 16
    assert got == json.loads(json.dumps(want))


def test_characterize_file(kernel, tmp_path):
    src = shared("tracelab-examples") / "round_trace.derived.jsonl"
    got, _ = execute(kernel, tmp_path, "characterize", trace=str(src))
    assert got == json.loads(json.dumps(trace_stats(load_trace(src))))


# ----------------------------------------------------------------------------- throughput

def test_throughput(kernel, tmp_path):
    got, _ = execute(kernel, tmp_path, "throughput", run_dir="results/cpu-agentic")
    want = summarize_run(RUN)
    assert got["run"] == "cpu-agentic" and got["groups"] == list(want) == ["reference", "vllm"]
    for g in want:
        for k, v in got["throughput"][g].items():
            assert v == approx(want[g][k], rel=1e-9), (g, k)
        for k, v in got["latency_ms"][g].items():
            assert v == approx(want[g][k], rel=1e-9), (g, k)
        assert got["completed"][g] == want[g]["completed"] == 975
        for part, v in got["breakdown_mean_s"][g].items():
            assert v == approx(want[g]["sessions"][f"{part}_mean_s"], rel=1e-9, abs=1e-12), (g, part)
    assert set(got["throughput"]["reference"]) == {"request_throughput", "output_throughput", "total_token_throughput"}
    assert got["throughput"]["reference"] != got["throughput"]["vllm"]


# ----------------------------------------------------------------------------- tail latency

def check_tails(got: dict, run) -> None:
    want_summary = summarize_run(run.requests)
    for g in run.groups():
        df = run.group_rows(g)
        for m in ("ttft", "tpot", "e2el"):
            pc = per_call(df, m)
            cis = percentile_cis(pc["value"], pc["session"], QS, n_boot=N_BOOT, seed=0)
            for q, iv in cis.items():
                check_interval(got["tails"][g][m][f"p{q:g}"], iv)
            # the estimates are the summary's own percentiles
            assert got["tails"][g][m]["p99"]["estimate"] == approx(want_summary[g][f"{m}_p99"], rel=1e-9)
        v, s = itl_gaps(df)
        for q, iv in percentile_cis(v, s, QS, n_boot=N_BOOT, seed=0).items():
            check_interval(got["tails"][g]["itl"][f"p{q:g}"], iv)
        assert got["tails"][g]["itl"]["p90"]["estimate"] == approx(want_summary[g]["itl_p90"], rel=1e-9)
        for m in ("ttft", "e2el"):
            d = got["intended"][g][m]
            assert d["p99"]["estimate"] == approx(want_summary[g]["latency_from_intended"][m]["p99"], rel=1e-9)
            assert d["p90"]["lo"] <= d["p90"]["estimate"] <= d["p90"]["hi"]


def test_tail_latency(kernel, tmp_path):
    got, nb = execute(kernel, tmp_path, "tail_latency", run_dir="results/cpu-agentic", n_boot=N_BOOT)
    run = load_run(RUN)
    assert got["groups"] == run.groups() and got["n_boot"] == N_BOOT
    check_tails(got, run)
    assert got["tiers"] == []
    assert "has no tiers" in stdout(nb)


def test_tail_latency_per_tier(kernel, tmp_path):
    """A run with tiers: cpu-agentic's calls split into 'near' and 'far' sessions."""
    df = load_run(RUN).requests.copy()
    df["tier"] = ["near" if int(s[1:]) % 2 == 0 else "far" for s in df["session"]]
    run_dir = tmp_path / "tiered"
    run_dir.mkdir()
    df.to_parquet(run_dir / "requests.parquet")
    (run_dir / "run.json").write_text(json.dumps({"name": "tiered"}), encoding="utf-8")
    run = load_run(run_dir)
    tiers = ["reference@near", "reference@far", "vllm@near", "vllm@far"]
    assert sorted(run.groups()) == sorted(tiers)

    got, nb = execute(kernel, tmp_path, "tail_latency", run_dir=str(run_dir), n_boot=N_BOOT)
    assert sorted(got["tiers"]) == sorted(tiers)
    check_tails(got, run)
    assert "has no tiers" not in stdout(nb)


# ----------------------------------------------------------------------------- regression

def check_rows(got: dict, a, b) -> None:
    for r in got["rows"]:
        want = compare_metric(a, r["baseline_group"], b, r["candidate_group"], r["metric"], n_boot=N_BOOT, seed=0)
        w = want.to_dict()
        for k in ("baseline", "candidate"):
            assert r[k] == approx(w[k], rel=1e-12), (r["metric"], k)
        for k in ("estimate", "lo", "hi"):
            assert r["ratio"][k] == (None if w["ratio"][k] is None else approx(w["ratio"][k], rel=1e-12)), (r["metric"], k)
        assert (r["paired"], r["n_pairs"]) == (w["paired"], w["n_pairs"])


def test_regression_two_engines_of_one_run(kernel, tmp_path):
    got, _ = execute(kernel, tmp_path, "regression", n_boot=N_BOOT)  # defaults: cpu-agentic, reference -> vllm
    run = load_run(RUN)
    assert got["pairs"] == [["reference", "vllm"]]
    assert [r["metric"] for r in got["rows"]] == list(DEFAULT_METRICS)
    check_rows(got, run, run)
    verdict = {r["metric"]: r["verdict"] for r in got["rows"]}
    # on this CPU run vLLM's median TTFT is about 1.8x the reference server's, the interval far above 1
    assert verdict["ttft_p50"] == "worse"
    assert verdict["output_throughput"] == verdict["request_throughput"] == "point only"
    assert next(r for r in got["rows"] if r["metric"] == "ttft_p50")["paired"]


def test_regression_shared_groups_of_two_runs(kernel, tmp_path):
    got, nb = execute(kernel, tmp_path, "regression", cwd=REPO, baseline_dir="results/cpu-agentic",
                      candidate_dir=str(AZURE), baseline_group=None, candidate_group=None,
                      metrics=["ttft_p99", "e2el_p50", "output_throughput"], n_boot=N_BOOT)
    assert got["pairs"] == [["reference", "reference"], ["vllm", "vllm"]]
    assert len(got["rows"]) == 6
    check_rows(got, load_run(RUN), load_run(AZURE))
    latency = [r for r in got["rows"] if r["metric"] != "output_throughput"]
    assert all(not r["paired"] and r["mann_whitney_p"] is not None for r in latency)  # different workloads
