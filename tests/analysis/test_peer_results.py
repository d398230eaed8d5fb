"""Results other clients wrote, read by `tierbench compare` and `tierbench report`
(analysis.peers through analysis.rundata.load_run).

The vLLM test runs vLLM's own client (`vllm bench serve`, through the agreement test's runner) and
`tierbench run` on the same timed trace against one reference server, twice each, interleaved,
after a warm-up; each pair is compared with one `tierbench compare` command. The medians must
agree within the two clients' measured difference (tests/bench/measure/test_vllm_bench_agreement.py measured it on this kind of machine:
vLLM's client adds about 1.3 ms to TTFT and E2EL, floored at CLIENT_OVERHEAD_FLOOR_MS = 2 ms, and
on a 2-core machine the server runs up to about 20 % slower while vLLM's client shares its CPU,
covered by CPU_SHARE_FLOOR = 30 %). AIPerf's export is read in tests/bench/measure/
test_aiperf_replay.py, where AIPerf writes it; here its mapping is checked on records shaped like
AIPerf's, with a failure and a warm-up record that the live run does not produce.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.peers import peer_kind, requests_from_aiperf
from analysis.rundata import load_run
from bench.cli import main
from bench.measure.vllm_agreement import vllm_args, write_timed_trace
from tests.bench.measure.test_vllm_bench_agreement import CLIENT_OVERHEAD_FLOOR_MS, NOISE_K, VllmRunner
from tests.conftest import RefServer, serving

REPO = Path(__file__).resolve().parents[2]
N, IN, OUT, RATE, RUNS = 16, 256, 32, 6.0, 2
# Each engine step also sleeps this long: the tiny model's own steps take about a millisecond of
# CPU, which the client under test competes for on a loaded 2-core machine (the agreement test saw
# latency medians up to 50 % apart between the clients for that reason alone); with the server's
# time mostly a fixed wait, what remains between the tools is their measured client difference.
STEP_DELAY_MS = 5
MEDIANS = ("ttft_p50", "tpot_p50", "e2el_p50")
# Here neither the server nor the clients are pinned: on 2 cores the server runs up to about 20 %
# slower while vLLM's client shares its CPU (module doc).
CPU_SHARE_FLOOR = 0.30


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_client_and_tierbench_run_in_one_compare(tiny_model_dir, tmp_path, capsys):
    trace = tmp_path / "trace.jsonl"
    write_timed_trace(trace, N, IN, OUT, RATE, seed=3)
    runner = VllmRunner(tmp_path / "vllm-runner.log")  # vLLM's client, imported once, while the server starts
    try:
        with serving(RefServer(tiny_model_dir, tmp_path / "ref.log", "--no-prefix-caching",
                               "--step-delay-ms", str(STEP_DELAY_MS))) as (server,):
            assert runner.wait(300) is not None, runner.tail()
            args = lambda name, n=N: vllm_args(server.url, RefServer.NAME, tiny_model_dir, trace, n, tmp_path, name)  # noqa: E731
            runner.run(args("warmup.json", 8))  # the server's first steps, measured by neither tool
            for i in range(RUNS):  # interleaved, so that drift in the machine's load hits both alike
                runner.run(args(f"vllm-{i}.json"))
                r = subprocess.run([sys.executable, "-m", "bench", "run", "--trace", str(trace), "--format", "mooncake",
                                    "--engine", server.url, "--model", str(tiny_model_dir), "--mode", "open",
                                    "--out", str(tmp_path / f"tb-{i}"), "--quiet"], capture_output=True, text=True,
                                   timeout=300, cwd=REPO)
                assert r.returncode == 0, r.stderr[-3000:]
    finally:
        runner.close()
    vllm_file = tmp_path / "vllm-0.json"
    assert peer_kind(vllm_file) == "vllm" and peer_kind(tmp_path / "tb-0") is None

    # vLLM's file read under tierbench's definitions gives vLLM's own medians.
    theirs = json.loads(vllm_file.read_text())
    (s,) = load_run(vllm_file).summary.values()
    assert s["completed"] == N and s["total_input_tokens"] == N * IN
    for m in ("ttft", "tpot", "e2el"):
        assert s[f"{m}_p50"] == pytest.approx(theirs[f"median_{m}_ms"], rel=1e-9)

    # One command per pair compares the vLLM client's run with tierbench's. The tolerance is the
    # clients' measured difference (module doc), or twice the spread between a tool's own runs
    # where the machine's load moved more than that.
    pairs = []
    for i in range(RUNS):
        assert main(["compare", str(tmp_path / f"vllm-{i}.json"), str(tmp_path / f"tb-{i}"), "--json"]) == 0
        pairs.append({x["metric"]: (x["baseline"], x["candidate"]) for x in json.loads(capsys.readouterr().out)})
    lines, bad = [], []
    for key in MEDIANS:
        v, t = (np.array([p[key][j] for p in pairs]) for j in (0, 1))
        vm, tm = float(np.median(v)), float(np.median(t))
        tol = max(CPU_SHARE_FLOOR * vm, NOISE_K * max(np.ptp(v), np.ptp(t)),
                  CLIENT_OVERHEAD_FLOOR_MS.get(key.split("_")[0], 0.0))
        lines.append(f"{key}: vllm {vm:.2f} ms {np.round(v, 2).tolist()}, tierbench {tm:.2f} ms {np.round(t, 2).tolist()}, "
                     f"ratio {tm / vm:.3f}, allowed +-{tol:.2f} ms ({tol / vm:.0%})")
        if abs(tm - vm) > tol:
            bad.append(key)
    print("\n" + "\n".join(lines))
    assert not bad, "\n".join(lines)
    assert main(["report", str(vllm_file), str(tmp_path / "tb-0"), "-o", str(tmp_path / "r.html")]) == 0


def _record(i: int, **over) -> dict:
    meta = {"session_num": i, "x_request_id": f"q{i}", "x_correlation_id": f"c{i // 2}", "conversation_id": f"c{i // 2}",
            "turn_index": i % 2, "credit_issued_ns": 1_000_000_000 * (10 + i), "request_start_ns": 1_000_000_000 * (10 + i)
            + 2_000_000, "request_end_ns": 0, "benchmark_phase": "profiling", "was_cancelled": False}
    metrics = {"time_to_first_token": {"value": 50.0, "unit": "ms"}, "request_latency": {"value": 150.0, "unit": "ms"},
               "inter_chunk_latency": {"value": [40.0, 60.0], "unit": "ms"},
               "input_sequence_length": {"value": 100, "unit": "tokens"},
               "usage_prompt_tokens": {"value": 101, "unit": "tokens"},
               "usage_completion_tokens": {"value": 3, "unit": "tokens"},
               "usage_prompt_cache_read_tokens": {"value": 64, "unit": "tokens"}}
    rec = {"metadata": meta, "metrics": metrics}
    for k, v in over.items():
        (meta if k in meta else rec)[k] = v
    return rec


def test_aiperf_records_map_to_the_requests_table(tmp_path):
    recs = [_record(0, benchmark_phase="warmup"), _record(1), _record(2),
            _record(3, error={"code": 500, "type": "ServerError", "message": "boom"})]
    path = tmp_path / "profile_export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert peer_kind(path) == peer_kind(tmp_path) == "aiperf"
    df = requests_from_aiperf(recs, path)
    assert list(df["status"]) == ["ok", "ok", "ok", "error"] and df["warmup"].tolist() == [True, False, False, False]
    assert df["error"].iloc[3] == "HTTP 500: boom"
    ok = df.iloc[1]
    assert ok["sent"] == pytest.approx(1.0) and ok["intended_start"] == pytest.approx(0.998)  # from the first send
    assert ok["first_token"] - ok["sent"] == pytest.approx(0.05) and ok["last_token"] - ok["sent"] == pytest.approx(0.15)
    assert ok["itl"] == pytest.approx([0.04, 0.06]) and ok["chunks"] == 3
    assert (ok["prompt_tokens"], ok["expected_prompt_tokens"], ok["cached_tokens"]) == (101, 100, 64)
    assert (ok["session"], ok["call_index"]) == ("c0", 1)

    run = load_run(tmp_path)  # the artifact directory
    (s,) = run.summary.values()
    assert (s["measured"], s["completed"], s["failed"], s["warmup_excluded"]) == (3, 2, 1, 1)
    assert s["ttft_p50"] == pytest.approx(50.0) and s["tpot_p50"] == pytest.approx(50.0)
    assert s["schedule_lag_p50"] == pytest.approx(2.0)
    assert s["prefix_cache_hit_ratio"] == pytest.approx(64 / 101)


def test_unreadable_peer_files_name_the_file(tmp_path, capsys):
    bad = tmp_path / "profile_export.jsonl"
    bad.write_text('{"metadata": {"request_start_ns": 1}, "metrics": {}}\n{"metadata": 1, "metrics": 2}\n')
    assert main(["compare", str(bad), str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    half = tmp_path / "v.json"
    half.write_text(json.dumps({"backend": "vllm", "ttfts": [0.1], "duration": 1.0}))
    assert main(["report", str(half)]) == 2
    assert "save-detailed" in capsys.readouterr().err
