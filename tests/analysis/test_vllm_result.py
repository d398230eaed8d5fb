"""analysis.vllm_result: a tierbench run as `vllm bench serve --save-result --save-detailed` JSON.

The unit tests check the definitions on a hand-made requests table with known answers, and against
vLLM's own calculate_metrics on the same requests. The live test runs vLLM's client and
`tierbench run` against one reference server and compares the exported file with the file vLLM's
client wrote: the same keys (taken from vLLM's file, never from a copy in this test), the same
types, and per-request lists as long as the point's requests.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import load_requests, summarize
from analysis.peers import peer_kind
from analysis.rundata import load_run
from analysis.vllm_result import Output, benchmark_result, outputs_from_rows, points, to_vllm_result
from tests.analysis.test_metrics import T0, row

REPO = Path(__file__).resolve().parents[2]


def write_run(path: Path, rows: list[dict], *, load: dict | None = None, slos: dict | None = None,
              engines: dict | None = None, tiers: list | None = None, name: str = "hand") -> Path:
    """A run directory as `tierbench run` leaves it: run.json and requests.parquet."""
    path.mkdir(parents=True, exist_ok=True)
    info = {"name": name, "start": "2026-01-02T03:04:05+00:00",
            "spec": {"model": "tiny", "load": load or {"mode": "closed", "users": 4}, "slos": slos or {}},
            "engines": engines or {"ref": {"kind": "reference", "model": "tiny"}},
            "workload": {"model_dir": "/models/tiny"}}
    if tiers:
        info["tiers"] = tiers
    (path / "run.json").write_text(json.dumps(info))
    pd.DataFrame(rows).to_parquet(path / "requests.parquet", index=False)
    return path


def hand_rows() -> list[dict]:
    return [
        # ttft 0.25, itl [0.125, 0.25], latency 0.625, 3 tokens -> tpot (0.625 - 0.25) / 2 = 0.1875
        row(0.0, [0.25, 0.375, 0.625], session="a"),
        # 1 token: ttft 0.5 = latency, no itl, no tpot
        row(0.125, [0.625], session="b"),
        # ttft 0.125, itl [0.125], latency 0.25, 4 tokens in 2 chunks -> tpot 0.125 / 3; sent 1/16 s late
        row(0.25, [0.375, 0.5], out=4, session="c", intended=0.1875),
        # failed: counted, never measured
        row(0.5, [], session="d", status="error", error="HTTP 500: boom", error_reason="http:500"),
        # warm-up: left out, as vLLM's warm-up requests are
        row(-1.0, [-0.5], session="w", warmup=True),
    ]


def test_definitions_on_known_numbers(tmp_path):
    r = to_vllm_result(write_run(tmp_path / "run", hand_rows()))
    ttft, tpot = np.array([0.25, 0.5, 0.125]), np.array([0.1875, 0.125 / 3])
    itl = np.array([0.125, 0.25, 0.125])
    assert (r["completed"], r["failed"], r["num_prompts"]) == (3, 1, 4)
    assert r["duration"] == 0.625  # first send (0) to last token (0.625)
    # per request, send order, seconds; a failure keeps vLLM's defaults and its error
    assert r["ttfts"] == [0.25, 0.5, 0.125, 0.0]
    assert r["latencies"] == [0.625, 0.5, 0.25, 0.0]
    assert r["itls"] == [[0.125, 0.25], [], [0.125], []]
    assert r["input_lens"] == [100, 100, 100, 100] and r["output_lens"] == [3, 1, 4, 0]
    assert r["start_times"] == [T0, T0 + 0.125, T0 + 0.25, T0 + 0.5]
    assert r["queue_times"] == [0.0, 0.0, 0.0625, 0.0]
    assert r["errors"] == ["", "", "", "HTTP 500: boom"] and r["generated_texts"] == [""] * 4
    # totals over completed requests; throughputs per second of the duration
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (300, 8)
    assert r["request_throughput"] == pytest.approx(3 / 0.625)
    assert r["output_throughput"] == pytest.approx(8 / 0.625)
    assert r["total_token_throughput"] == pytest.approx(308 / 0.625)
    # vLLM's default percentiles: TTFT, TPOT, ITL at p99 (no E2EL figures), in ms
    assert r["mean_ttft_ms"] == pytest.approx(ttft.mean() * 1000)
    assert r["median_ttft_ms"] == pytest.approx(250.0)
    assert r["std_ttft_ms"] == pytest.approx(ttft.std() * 1000)
    assert r["p99_ttft_ms"] == pytest.approx(495.0)  # linear: 250 + 0.98 * 250
    assert r["mean_tpot_ms"] == pytest.approx(tpot.mean() * 1000)  # the 1-token output has no TPOT
    assert r["p99_tpot_ms"] == pytest.approx((0.125 / 3 + 0.99 * (0.1875 - 0.125 / 3)) * 1000)
    assert r["mean_itl_ms"] == pytest.approx(itl.mean() * 1000) and r["median_itl_ms"] == pytest.approx(125.0)
    assert not any(k.endswith("_e2el_ms") or k.startswith("p50_") for k in r)
    # every chunk in the first second; three requests active in it
    assert (r["max_output_tokens_per_s"], r["max_concurrent_requests"]) == (6.0, 3)
    # closed loop of 4 users: vLLM's --max-concurrency 4 at rate inf; no SLOs, no goodput
    assert (r["request_rate"], r["burstiness"], r["max_concurrency"], r["request_goodput"]) == ("inf", 1.0, 4, None)
    assert (r["backend"], r["endpoint_type"], r["model_id"], r["tokenizer_id"]) == ("openai", "openai", "tiny", "/models/tiny")
    assert r["date"] == "20260102-030405" and r["label"] == "hand/ref"
    json.dumps(r, allow_nan=False)


def test_throughputs_and_latencies_agree_with_tierbench_summary(tmp_path):
    """The same figures as the run's own summary, and the file reads back (analysis.peers) to it."""
    run = write_run(tmp_path / "run", hand_rows())
    r = to_vllm_result(run, percentile_metrics=("ttft", "tpot", "itl", "e2el"), percentiles=(50, 90, 99))
    s = summarize(pd.read_parquet(run / "requests.parquet"))
    for ours, theirs in [("request_throughput", "request_throughput"), ("output_throughput", "output_throughput"),
                         ("ttft_mean", "mean_ttft_ms"), ("tpot_p90", "p90_tpot_ms"), ("itl_std", "std_itl_ms"),
                         ("e2el_p50", "median_e2el_ms"), ("e2el_p99", "p99_e2el_ms")]:
        assert r[theirs] == pytest.approx(s[ours], rel=1e-12), ours
    out = tmp_path / "vllm.json"
    out.write_text(json.dumps(r))
    assert peer_kind(out) == "vllm"
    (back,) = load_run(out).summary.values()
    assert (back["completed"], back["failed"]) == (3, 1)
    for k in ("ttft_p50", "tpot_mean", "itl_p99", "e2el_p90", "request_throughput"):
        assert back[k] == pytest.approx(s[k], rel=1e-9), k


def test_goodput_where_the_spec_has_slos(tmp_path):
    # TTFT <= 300 ms and TPOT <= 100 ms: only c (a's TPOT 187.5 ms, b's TTFT 500 ms)
    r = to_vllm_result(write_run(tmp_path / "a", hand_rows(), slos={"ttft_ms": 300, "tpot_ms": 100}))
    assert r["request_goodput"] == pytest.approx(1 / 0.625)
    # E2EL <= 600 ms and TPOT <= 50 ms: b (one token counts as TPOT 0) and c
    r = to_vllm_result(write_run(tmp_path / "b", hand_rows(), slos={"e2el_ms": 600, "tpot_ms": 50}))
    assert r["request_goodput"] == pytest.approx(2 / 0.625)


def test_load_maps_to_rate_burstiness_and_concurrency(tmp_path):
    gamma = {"mode": "open", "arrivals": "gamma", "rate": 2.0, "gamma_cv": 2.0}
    r = to_vllm_result(write_run(tmp_path / "g", hand_rows(), load=gamma))
    assert (r["request_rate"], r["burstiness"], r["max_concurrency"]) == (2.0, 0.25, None)
    r = to_vllm_result(write_run(tmp_path / "p", hand_rows(), load={"mode": "open", "arrivals": "poisson", "rate": 3.0}))
    assert (r["request_rate"], r["burstiness"]) == (3.0, 1.0)
    r = to_vllm_result(write_run(tmp_path / "t", hand_rows(), load={"mode": "open", "arrivals": "trace"}))
    assert (r["request_rate"], r["max_concurrency"]) == ("inf", None)
    r = to_vllm_result(write_run(tmp_path / "v", hand_rows(), engines={"ref": {"kind": "vllm", "model": "m"}}))
    assert (r["backend"], r["model_id"]) == ("vllm", "m")


def test_percentile_selection_as_vllm(tmp_path):
    closed = write_run(tmp_path / "c", hand_rows())
    r = to_vllm_result(closed, percentile_metrics=("e2el", "client_queue_time", "e2el_including_client_queue"),
                       percentiles=(50, 99.9))
    assert r["median_e2el_ms"] == pytest.approx(500.0) and r["p50_e2el_ms"] == pytest.approx(500.0)
    assert "p99.9_e2el_ms" in r and "mean_ttft_ms" not in r
    # the queue figures exist only under a concurrency cap, the queue-inclusive E2EL only at a finite rate too
    assert r["mean_client_queue_time_ms"] == pytest.approx(0.0625 / 3 * 1000)
    assert not any("including_client_queue" in k for k in r)
    r = to_vllm_result(write_run(tmp_path / "o", hand_rows(), load={"mode": "open", "arrivals": "poisson", "rate": 3.0}),
                       percentile_metrics=("client_queue_time",))
    assert not any("queue" in k for k in r if k.endswith("_ms"))


def test_matches_vllms_own_calculate_metrics(tmp_path):
    """The same requests through vLLM's calculate_metrics give the same figures."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    run = write_run(tmp_path / "run", hand_rows(), slos={"ttft_ms": 300, "tpot_ms": 100})
    r = to_vllm_result(run, percentile_metrics=("ttft", "tpot", "itl", "e2el"), percentiles=(50, 90, 99))
    df = load_requests(run)
    outs = outputs_from_rows(df[~df["warmup"]])
    theirs = [RequestFuncOutput(success=o.success, latency=o.latency, output_tokens=o.output_len, ttft=o.ttft,
                                itl=o.itl, prompt_len=o.prompt_len, error=o.error, start_time=o.start_time)
              for o in outs]
    m, lens = serve.calculate_metrics(input_requests=[], outputs=theirs, dur_s=r["duration"], tokenizer=None,
                                      selected_percentiles=[50, 90, 99], goodput_config_dict={"ttft": 300, "tpot": 100})
    assert lens == r["output_lens"]
    for k in ("completed", "failed", "request_throughput", "request_goodput", "output_throughput",
              "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests"):
        assert r[k] == pytest.approx(getattr(m, k), rel=1e-12), k
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (m.total_input, m.total_output)
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert r[f"{stat}_{name}_ms"] == pytest.approx(getattr(m, f"{stat}_{name}_ms"), rel=1e-12)
        for p, v in getattr(m, f"percentiles_{name}_ms"):
            assert r[f"p{int(p)}_{name}_ms"] == pytest.approx(v, rel=1e-12)


def test_no_completed_request_gives_vllms_zeros():
    outs = [Output(success=False, start_time=1.0, prompt_len=5, error="reset: boom")]
    r = benchmark_result(outs, 2.0)
    assert (r["completed"], r["failed"], r["mean_ttft_ms"], r["p99_itl_ms"]) == (0, 1, 0.0, 0.0)
    assert (r["max_output_tokens_per_s"], r["max_concurrent_requests"]) == (0.0, 0)


def test_points_and_selection(tmp_path):
    two = [row(0.0, [0.25], engine="a"), row(0.0, [0.5], engine="b", session="t")]
    run = write_run(tmp_path / "two", two, engines={"a": {"kind": "reference"}, "b": {"kind": "url"}})
    assert points(run) == [("a", ""), ("b", "")]
    assert to_vllm_result(run, "b")["ttfts"] == [0.5]
    with pytest.raises(ValueError, match=r"requests.parquet: field 'engine': the run has several \(a, b\)"):
        to_vllm_result(run)
    with pytest.raises(ValueError, match="field 'engine': no engine 'c'"):
        to_vllm_result(run, "c")
    reps = [row(0.0, [0.25], tier="rep0"), row(1.0, [1.5], tier="rep1", session="t")]
    run = write_run(tmp_path / "reps", reps)
    assert points(run) == [("ref", "rep0"), ("ref", "rep1")]
    assert to_vllm_result(run, tier="rep1")["ttfts"] == [0.5]
    assert to_vllm_result(run, tier="rep1")["label"] == "hand/ref@rep1"
    with pytest.raises(ValueError, match="field 'tier': engine 'ref' has several"):
        to_vllm_result(run, "ref")
    with pytest.raises(ValueError, match="field 'tier': engine 'ref' has no tier 'rep7'"):
        to_vllm_result(run, "ref", "rep7")


def test_a_scenario_of_a_tier_run_spans_its_tiers(tmp_path):
    rows = [row(0.0, [0.25], engine="hybrid", tier="edge"), row(0.5, [1.0], engine="hybrid", tier="central", session="t")]
    tiers = [{"name": "edge", "model": "small"}, {"name": "central", "model": "large"}]
    run = write_run(tmp_path / "tiers", rows, engines={"hybrid": {"kind": "scenario", "model": None}}, tiers=tiers)
    assert points(run) == [("hybrid", None)]  # all its tiers
    r = to_vllm_result(run)
    assert (r["completed"], r["model_id"], r["label"]) == (2, "small,large", "hand/hybrid")
    r = to_vllm_result(run, "hybrid", "central")
    assert (r["completed"], r["model_id"], r["label"]) == (1, "large", "hand/hybrid@central")


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere: not a run directory \(no run.json\)"):
        to_vllm_result(tmp_path / "nowhere")
    empty = write_run(tmp_path / "empty", [])
    (empty / "requests.parquet").unlink()  # a run cut before its first call finished
    with pytest.raises(ValueError, match="requests.parquet: no measured requests"):
        to_vllm_result(empty)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{")
    with pytest.raises(ValueError, match=r"run.json:1: invalid JSON"):
        to_vllm_result(tmp_path / "bad")


# --------------------------------------------------------------------------- against vLLM's own file

N, IN, OUT = 8, 32, 8


def kind(v) -> str:
    """A JSON value's type as a dashboard sees it."""
    if v is None or isinstance(v, (bool, str, list, dict)):
        return type(v).__name__
    return "int" if isinstance(v, int) else "float"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_export_has_the_keys_and_types_of_vllms_own_file(tiny_model_dir, tmp_path):
    from bench.measure.vllm_agreement import vllm_args, write_timed_trace
    from tests.bench.measure.test_vllm_bench_agreement import VllmRunner
    from tests.conftest import RefServer, serving
    trace = tmp_path / "trace.jsonl"
    write_timed_trace(trace, N, IN, OUT, rate=8.0)
    runner = VllmRunner(tmp_path / "vllm-runner.log")  # vLLM's client, imported while the server starts
    try:
        with serving(RefServer(tiny_model_dir, tmp_path / "ref.log")) as (server,):
            assert runner.wait(300) is not None, runner.tail()
            # vLLM's defaults (percentiles: TTFT, TPOT, ITL at p99) on a random dataset
            runner.run(["--backend", "openai", "--base-url", server.url, "--model", RefServer.NAME, "--tokenizer",
                        str(tiny_model_dir), "--dataset-name", "random", "--random-input-len", str(IN),
                        "--random-output-len", str(OUT), "--num-prompts", str(N), "--temperature", "0",
                        "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
                        "--result-filename", "vllm-default.json"])
            # every metric at p50/p90/p99 (the agreement test's flags) on the timed trace
            runner.run(vllm_args(server.url, RefServer.NAME, tiny_model_dir, trace, N, tmp_path, "vllm-all.json"))
            r = subprocess.run([sys.executable, "-m", "bench", "run", "--trace", str(trace), "--format", "mooncake",
                                "--engine", server.url, "--model", str(tiny_model_dir), "--mode", "open",
                                "--out", str(tmp_path / "tb"), "--quiet"], capture_output=True, text=True,
                               timeout=300, cwd=REPO)
            assert r.returncode == 0, r.stderr[-3000:]
    finally:
        runner.close()
    run = tmp_path / "tb"
    from bench.cli import main
    assert main(["export", str(run), "--format", "vllm"]) == 0  # the command, on a real run
    ours = {"default": json.loads((run / "vllm-result.json").read_text()),
            "all": to_vllm_result(run, percentile_metrics=("ttft", "tpot", "itl", "e2el"), percentiles=(50, 90, 99))}
    df = pd.read_parquet(run / "requests.parquet")
    ok = df[df["status"] == "ok"]
    for name, mine in ours.items():
        theirs = json.loads((tmp_path / f"vllm-{name}.json").read_text())
        assert set(mine) == set(theirs), (name, sorted(set(mine) ^ set(theirs)))
        for k, v in theirs.items():
            if v is not None:  # where vLLM writes None (label, max_concurrency, goodput) ours may say more
                assert kind(mine[k]) == kind(v), (name, k, mine[k], v)
            if isinstance(v, list) and v:
                assert {kind(x) for x in mine[k]} == {kind(x) for x in v}, (name, k)
                assert len(mine[k]) == mine["completed"] + mine["failed"] == N, (name, k)
        assert theirs["completed"] == mine["completed"] == N and mine["failed"] == 0
        for k in ("backend", "endpoint_type", "model_id", "request_rate", "burstiness", "max_concurrency", "num_prompts"):
            assert mine[k] == theirs[k], (name, k)
        assert mine["output_lens"] == theirs["output_lens"] == [OUT] * N and mine["input_lens"] == [IN] * N
        # our TTFTs, from requests.parquet directly: the mean in ms, positive and well under a second
        want = float(((ok["first_token"] - ok["sent"]) * 1000).mean())
        assert mine["mean_ttft_ms"] == pytest.approx(want, rel=1e-9) and 0 < want < 1000
        assert 0 < theirs["mean_ttft_ms"] < 1000
        assert math.isclose(sum(mine["ttfts"]) / N * 1000, want, rel_tol=1e-9)
