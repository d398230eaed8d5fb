"""tierbench's metric definitions and measurements against vLLM's own benchmark client
(`vllm bench serve`, run as `python -m bench.measure.vllm_bench`), on one reference server.

1. Definitions, exactly. Every vLLM run's per-request output (--save-detailed: start_times, ttfts,
   itls, latencies, input_lens, output_lens, errors) is turned into a tierbench requests table and
   summarized by analysis.metrics.summarize; that gives vLLM's own summary figures (mean, std,
   median, p90, p99 of TTFT, TPOT, ITL, E2EL; token counts; request, output and total throughput)
   to floating-point precision. Throughputs use vLLM's `duration`: its detailed output has no
   benchmark start time, and vLLM times from before the first send to the return of the last
   request where tierbench times first send to last token; that gap is checked to be small.

2. Measurements, within noise. vLLM's client and `tierbench run` replay the same request list
   against the same server: one timed-trace file (bench/measure/vllm_agreement.py), which vLLM reads as
   `--dataset-name timed_trace` and tierbench as `--format mooncake --mode open`: the same number
   of requests, token-id prompts of the same length, the same output lengths (ignore_eos, greedy),
   sent at the same offsets from the first send, with no cap on concurrency in either tool.
   What the tools cannot make identical: the prompt tokens themselves (each draws its own random
   ids; the server runs without a prefix cache, so only lengths matter), the HTTP client (aiohttp
   on one event loop vs. tierbench's own HTTP/1.1 reader (bench/load/wire.py) on threads), a few request fields (vLLM adds
   repetition_penalty 1 and logprobs null, tierbench min_tokens), and, for throughput, the
   duration each divides by (see 1).
   Both tools get the same CPU: the server is pinned to core 0 and whichever client is measuring to
   core 1 (os.sched_setaffinity, inherited by their children), so neither client competes with the
   server for a core. Each tool runs RUNS = 7 times, interleaved in rounds (V T V T ...) so that drift
   in the machine's load hits both alike.

   Latency medians (ttft_p50, tpot_p50, itl_p50, e2el_p50): the median over rounds of the paired
   difference (tierbench - vLLM, same round) must lie within MEDIAN_TOL = 15 % of vLLM's figure, or
   within 3 standard errors of that median where this run's own round-to-round noise is larger; TTFT
   and E2EL may be lower under tierbench by up to 5 ms besides (vLLM's client times its own aiohttp
   work: CLIENT_OFFSET_MS), never higher. Means and throughputs: twice the larger same-tool spread,
   floored at 10 % (means) and 3 % (throughputs).

   Why not 5 %: measured on this shared 2-core machine with server and clients pinned as above,
   tierbench minus vLLM relative to vLLM, one figure per test run:
     3 rounds, median over runs, quiet:  tpot_p50 +12.3 -3.2 +2.0   itl_p50 +7.4 -0.7 +0.1
                                         e2el_p50 +7.8 -3.1 +0.1    ttft_p50 -10.9 -14.3 -15.3 %
                                         (-0.8, -1.0, -1.2 ms); user-space stamps: tpot_p50 +18.3,
                                         -5.8; unpinned: +6.7 %
     7 rounds, paired, another test suite running on the machine (E), quieter (F, G), noisy (H):
                 tpot_p50    E -6.5 +12.0 -1.7    F +10.2 +0.5   G +0.5 +5.3   H  -6.6
                 itl_p50     E -1.3  +8.0 -0.1    F  +6.4 -0.1   G -0.4 +5.7   H -15.0
                 e2el_p50    E -10.8 +6.6 -4.4    F  +5.9 -0.6   G -2.4 +1.7   H  -7.1
                 ttft_p50    E -3.8 -0.9 -1.1 ms  F -0.8 -1.0    G -0.8 -1.0   H  -1.5 ms
   A flat 5 % fails about half of these. Part is noise (one tool's TPOT p50 moves 0.574..0.653 ms
   within three runs), part is not: in the first run F the tierbench rounds had a TPOT 9-11 % higher
   than the vLLM round beside them in 4 of 7 rounds, with each client on its own core and the server
   alone on its own (the cause is not found; the server does no extra work for tierbench's
   min_tokens with ignore_eos). 15 % covers every paired difference measured with the default client
   (at most 12.0 %, and 15.0 % in run H, whose own noise widened its bar to 31 %); the throughputs
   agreed to 0.0-1.0 % in every run, the definitions (1.) exactly.

Skipped where vLLM cannot be imported (engines.launch.have_vllm).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.measure.vllm_agreement import MARK, VLLM_KEYS, requests_from_vllm, summary_from_vllm, vllm_args, write_timed_trace
from engines.launch import EngineSpec, Server, have_vllm, vllm_python

REPO = Path(__file__).resolve().parents[3]

# The workload: N requests of IN prompt and OUT output tokens, Poisson arrivals at RATE/s (about 3 s
# of sends), light enough for the tiny model on one torch thread to keep up, so that latencies are
# the server's service time plus what the client adds, with occasional batching.
N, IN, OUT, RATE, SEED = 24, 256, 64, 8.0, 1
RUNS = 7  # per tool
COMPARED = ["ttft_mean", "ttft_p50", "tpot_mean", "tpot_p50", "itl_mean", "itl_p50", "e2el_mean", "e2el_p50",
            "request_throughput", "output_throughput"]  # p99 of 24 rests on the two slowest: too noisy
NOISE_K, NOISE_FLOOR = 2.0, 0.03
# The two HTTP clients' own overhead is not the same, and it lands in TTFT (so in E2EL too), not in
# the gaps between chunks. Against bench.measure.instant_server, which logs on the shared monotonic clock
# when each request arrived and each chunk left, vLLM's client added 1.7 ms between its timer's
# start and the request's arrival (aiohttp's post machinery runs inside the timer) plus 0.15 ms
# on the first chunk, tierbench's 0.5 ms in all: vLLM reports TTFT about 1.3 ms higher on this
# 2-core machine, for the same server. Figures containing TTFT get that much (with margin) as an
# absolute floor; ITL and TPOT agreed to 0.01 ms there.
CLIENT_OVERHEAD_FLOOR_MS = {"ttft": 2.0, "e2el": 2.0}
# The latency medians must agree within MEDIAN_TOL of vLLM's figure, or NOISE_SE standard errors
# where this run's own round-to-round noise is larger (see bounds; the module doc has the numbers and
# why not 5 %).
# TTFT and E2EL may besides be lower under tierbench by CLIENT_OFFSET_MS, never higher: vLLM's client
# times aiohttp's own work from before the send to the parsed first chunk, and that work grows with the
# load on the client's core, while tierbench's chunk times are the kernel's receive stamps. Measured
# here (tierbench minus vLLM, TTFT p50): -0.8 to -1.2 ms on a quiet machine, -2.2 to -3.8 ms while
# another test suite ran on it. Means (one slow request moves them) and throughputs keep the noise
# rule: NOISE_K x the larger same-tool spread, floored at MEAN_FLOOR / NOISE_FLOOR.
MEDIANS = ("ttft_p50", "tpot_p50", "itl_p50", "e2el_p50")
MEDIAN_TOL = 0.15
NOISE_SE = 3.0
CLIENT_OFFSET_MS = {"ttft": 5.0, "e2el": 5.0}
MEAN_FLOOR = 0.10

# The same CPU for both clients: the server on core 0, whichever client is measuring on core 1, so
# that neither client takes CPU from the server (or the server from it) and the two see the same
# conditions. Children inherit the affinity of the thread that starts them. None where this process
# may not use two cores (then nothing is pinned).
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPUS, CLIENT_CPUS = ({_CPUS[0]}, {_CPUS[1]}) if len(_CPUS) >= 2 else (None, None)


@contextlib.contextmanager
def pinned(cpus: set[int] | None):
    """This thread on `cpus` while the block runs (so what it starts inherits them), then as before.
    (Not a preexec_fn: that is unsafe in a process with threads, and this one has the runner's reader.)"""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class VllmRunner:
    """`python -m bench.measure.vllm_agreement` in the vLLM interpreter: vLLM's client imported once, one
    `vllm bench serve` per call of run()."""

    def __init__(self, log: Path):
        self.log_path = log
        self.log = open(log, "w")
        with pinned(CLIENT_CPUS):  # vLLM's client: core 1
            self.proc = subprocess.Popen([vllm_python(), "-m", "bench.measure.vllm_agreement"], cwd=REPO, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.answers.put(json.loads(line[len(MARK):]))
        self.answers.put(None)  # the runner exited

    def wait(self, timeout: float) -> dict | None:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"vLLM runner: no answer in {timeout:.0f} s; {self.tail()}") from None

    def run(self, args: list[str], timeout: float = 120) -> None:
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        r = self.wait(timeout)
        assert r is not None and r.get("ok"), f"vLLM bench failed: {r}; {self.tail()}"

    def tail(self, n: int = 3000) -> str:
        self.log.flush()
        return "log tail: " + self.log_path.read_text(errors="replace")[-n:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def bench_env(tiny_model_dir, tmp_path_factory):
    """The reference server (one torch thread, no prefix cache: no run, or tool, serves another's
    prompt from cache), vLLM's client imported beside it, the trace, and a warm-up run."""
    if vllm_python() == sys.executable and importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    d = tmp_path_factory.mktemp("agree")
    runner = VllmRunner(d / "vllm-runner.log")  # imports while the server starts
    spec = EngineSpec("reference", name="ref", model=str(tiny_model_dir), served_model="tiny",
                      args=["--served-model-name", "tiny", "--max-model-len", "1024", "--num-threads", "1",
                            "--no-prefix-caching"], env={"TIERBENCH_API_KEY": ""})
    server = Server(spec, d)
    try:
        with pinned(SERVER_CPUS):  # the server and every thread it starts: core 0
            server.start()
        if SERVER_CPUS:
            assert os.sched_getaffinity(server.proc.pid) == SERVER_CPUS
            assert os.sched_getaffinity(runner.proc.pid) == CLIENT_CPUS
        ready = runner.wait(300)
        if ready is None:
            if not have_vllm():
                pytest.skip("vllm is not importable")
            raise AssertionError(f"vLLM runner exited before it was ready; {runner.tail()}")
        trace = d / "trace.jsonl"
        offsets = write_timed_trace(trace, N, IN, OUT, RATE, seed=SEED)
        # Warm-up (not measured): the server's first steps, before either tool's runs.
        runner.run(vllm_args(server.base_url, server.model_name, tiny_model_dir, trace, 8, d, "warmup.json"))
        yield {"dir": d, "server": server, "runner": runner, "trace": trace, "offsets": offsets,
               "model": tiny_model_dir}
    finally:
        runner.close()
        server.stop()


def run_vllm(env, name: str) -> dict:
    env["runner"].run(vllm_args(env["server"].base_url, env["server"].model_name, env["model"], env["trace"], N,
                                env["dir"], name))
    return json.loads((env["dir"] / name).read_text())


def run_tierbench(env, name: str) -> tuple[dict, Path]:
    """`tierbench run` in open loop: the trace's one-call sessions sent at its timestamps."""
    out = env["dir"] / name
    with pinned(CLIENT_CPUS):  # tierbench's client: core 1
        r = subprocess.run([sys.executable, "-m", "bench", "run", "--trace", str(env["trace"]), "--format",
                            "mooncake", "--engine", env["server"].base_url, "--model", str(env["model"]), "--mode",
                            "open", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=180,
                           cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    (summary,) = info["summary"].values()
    return summary, out


def check_definitions(res: dict) -> tuple[float, float]:
    """tierbench's summary of vLLM's own per-request output is vLLM's summary. Returns the largest
    relative difference over VLLM_KEYS and how much shorter tierbench's own duration is (s)."""
    s = summary_from_vllm(res)
    worst = 0.0
    for ours, theirs in VLLM_KEYS.items():
        assert s[ours] == pytest.approx(res[theirs], rel=1e-9, abs=1e-9), (ours, s[ours], theirs, res[theirs])
        worst = max(worst, abs(s[ours] - res[theirs]) / max(abs(res[theirs]), 1e-12))
    for m in ("ttft", "tpot", "itl", "e2el"):  # vLLM reports its median twice
        assert res[f"p50_{m}_ms"] == pytest.approx(res[f"median_{m}_ms"], rel=1e-12)
    # tierbench's own duration (first send to last token) sits inside vLLM's (benchmark start,
    # before the first send, to the return of the last request), a few ms shorter.
    own = summary_from_vllm({**res, "duration": None})["duration_s"]
    assert 0 <= res["duration"] - own < 0.05 * res["duration"], (res["duration"], own)
    return worst, res["duration"] - own


def send_offsets(sent) -> np.ndarray:
    a = np.sort(np.asarray(sent, dtype=float))
    return a - a[0]


@pytest.mark.slow
def test_tierbench_agrees_with_vllm_bench_serve(bench_env):
    t0 = time.monotonic()
    vllm_runs: list[dict] = []
    tb_runs: list[tuple[dict, Path]] = []
    for i in range(RUNS):  # interleaved, so that drift in the machine's load hits both tools alike
        vllm_runs.append(run_vllm(bench_env, f"vllm-{i}.json"))
        tb_runs.append(run_tierbench(bench_env, f"tierbench-{i}"))
    wall = time.monotonic() - t0

    # --- 1. definitions: exact, on every vLLM run
    checked = [check_definitions(res) for res in vllm_runs]
    print(f"\ndefinitions: largest relative difference {max(w for w, _ in checked):.1e} over {len(VLLM_KEYS)} "
          f"figures x {RUNS} runs; vLLM's duration - first send to last token: "
          + ", ".join(f"{d * 1000:.1f} ms" for _, d in checked))

    # --- the same requests: every request completed with the trace's token counts in both tools,
    # sent on the trace's schedule (vLLM's start_times and tierbench's sent are both perf_counter)
    from analysis.metrics import load_requests
    want = bench_env["offsets"]
    for res in vllm_runs:
        assert res["completed"] == N and res["failed"] == 0
        assert res["input_lens"] == [IN] * N and res["output_lens"] == [OUT] * N
        lag = send_offsets(res["start_times"]) - want
        assert np.median(np.abs(lag)) < 0.02 and np.abs(lag).max() < 0.5, lag
    for s, out in tb_runs:
        req = load_requests(out)
        assert len(req) == N and (req["status"] == "ok").all()
        assert (req["prompt_tokens"] == IN).all() and (req["output_tokens"] == OUT).all()
        lag = send_offsets(req["sent"]) - want
        assert np.median(np.abs(lag)) < 0.02 and np.abs(lag).max() < 0.5, lag

    # --- 2. measurements: the tools' figures agree within the tolerance (see bounds)
    vllm_sum = [summary_from_vllm(r) for r in vllm_runs]  # == vLLM's figures (checked above)
    rows, bad = [], []
    for key in COMPARED:
        v = np.array([s[key] for s in vllm_sum])
        t = np.array([s[key] for s, _ in tb_runs])
        vm = float(np.median(v))
        diff, lo, hi = bounds(key, v, t)
        rows.append(f"{key:20} vllm {vm:9.3f} [{v.min():.3f}..{v.max():.3f}]  tierbench {np.median(t):9.3f} "
                    f"[{t.min():.3f}..{t.max():.3f}]  diff {diff:+8.3f} ({diff / vm:+6.1%})  allowed [{lo:+.3f}, "
                    f"{hi:+.3f}] ({hi / vm:.1%})  per round " + " ".join(f"{b / a - 1:+.1%}" for a, b in zip(v, t)))
        if not lo <= diff <= hi:
            bad.append(key)
    table = "\n".join(rows)
    print(f"{RUNS} runs per tool, {N} requests each, {wall:.1f} s\n{table}")
    assert not bad, f"outside the tolerance: {bad}\n{table}"


def bounds(key: str, v: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """tierbench's figure minus vLLM's, and the range it must lie in, for one compared figure from the
    runs of each tool (v[i] and t[i] ran back to back, round i).

    Latency medians (MEDIANS): the median over rounds of the paired difference t[i] - v[i], within
    MEDIAN_TOL of vLLM's figure, or, where this run's own noise is larger, NOISE_SE standard errors of
    that median (estimated from the rounds' spread: 1.4826 x MAD x 1.253 / sqrt(rounds)). TTFT and
    E2EL may be lower by CLIENT_OFFSET_MS besides, never higher. Means and throughputs:
    the difference of the medians over runs within NOISE_K x the larger same-tool spread, floored."""
    metric = key.split("_")[0]
    vm = float(np.median(v))
    if key in MEDIANS:
        d = t - v
        diff = float(np.median(d))
        se = 1.4826 * float(np.median(np.abs(d - diff))) * 1.253 / np.sqrt(len(d))
        tol = max(MEDIAN_TOL * abs(vm), NOISE_SE * se)
        return diff, -tol - CLIENT_OFFSET_MS.get(metric, 0.0), tol
    diff = float(np.median(t)) - vm
    floor = NOISE_FLOOR if key.endswith("throughput") else MEAN_FLOOR
    tol = max(NOISE_K * max(np.ptp(v), np.ptp(t)), floor * abs(vm), CLIENT_OVERHEAD_FLOOR_MS.get(metric, 0.0))
    return diff, -tol, tol


def test_vllm_output_converts_to_requests_table():
    """The conversion alone, on a hand-made vLLM result: one failure, one 1-token output."""
    res = {"start_times": [10.0, 11.0, 12.0], "ttfts": [0.1, 0.2, 0.0], "itls": [[0.01, 0.03], [], []],
           "latencies": [0.14, 0.2, 0.0], "input_lens": [5, 6, 7], "output_lens": [3, 1, 0],
           "errors": ["", "", "HTTP 500"], "duration": 2.5}
    df = requests_from_vllm(res)
    assert list(df["status"]) == ["ok", "ok", "error"]
    s = summary_from_vllm(res)
    assert s["completed"] == 2 and s["failed"] == 1 and s["total_output_tokens"] == 4
    assert s["ttft_mean"] == pytest.approx(150.0)
    assert s["tpot_mean"] == pytest.approx(20.0)  # (0.14 - 0.1) / 2; the 1-token output has no TPOT
    assert s["itl_mean"] == pytest.approx(20.0) and s["itl"]["n"] == 2
    assert s["e2el_mean"] == pytest.approx(170.0)
    assert s["output_throughput"] == pytest.approx(4 / 2.5)
    with pytest.raises(ValueError, match="save-detailed"):
        requests_from_vllm({"duration": 1.0})
