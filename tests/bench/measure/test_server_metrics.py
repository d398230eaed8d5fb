"""Server-side metrics (bench/measure/server_metrics.py): the Prometheus text of both engines
parsed to one set of columns, a real reference server scraped while calls run, servers without
/metrics recorded as unavailable, a scrape that times out midway counted, the summary's numbers,
and `tierbench run` writing server_metrics.parquet (or not, with scrape_interval_s = 0)."""
from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.measure.server_metrics import SOURCES, ServerMetricsScraper, parse_metrics, summarize_server_metrics
from engines.reference.metrics import ServerMetrics, render_metrics
from tests.conftest import RefServer, serving

REPO = Path(__file__).resolve().parents[3]

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 600.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1200.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 300.0
vllm:generation_tokens_total{engine="1",model_name="m"} 20.0
"""


def test_vllm_text_summed_over_labels():
    """Samples of one name are summed over label sets (KV usage, a share, averaged); _created is not a total."""
    v = parse_metrics(VLLM_TEXT)
    assert v == {"running": 5.0, "waiting": 4.0, "kv_usage": 0.375, "prefix_queries": 1000.0, "prefix_hits": 600.0,
                 "preemptions": 7.0, "prompt_tokens": 1200.0, "generation_tokens": 320.0}


def test_reference_engine_text_vllm_names_first():
    """The reference engine's own renderer: the columns come from its vLLM names, equal to the stats."""
    stats = {"num_running": 3, "num_waiting": 2, "kv_usage": 0.4, "prefix_queried_tokens": 96,
             "prefix_hit_tokens": 64, "preemptions": 1, "generation_tokens": 50}
    m = ServerMetrics()
    m.prompt_tokens = 120
    v = parse_metrics(render_metrics(stats, m, "tiny", True))
    assert v == {"running": 3, "waiting": 2, "kv_usage": 0.4, "prefix_queries": 96, "prefix_hits": 64,
                 "preemptions": 1, "prompt_tokens": 120, "generation_tokens": 50}


def test_tierbench_names_are_the_fallback():
    text = ("# TYPE tierbench_queue_depth gauge\ntierbench_queue_depth 6\n"
            "# TYPE tierbench_kv_usage_ratio gauge\ntierbench_kv_usage_ratio 0.75\n"
            "# TYPE tierbench_preemptions counter\ntierbench_preemptions_total 2\n")
    v = parse_metrics(text)
    assert (v["waiting"], v["kv_usage"], v["preemptions"]) == (6, 0.75, 2)
    assert math.isnan(v["running"]) and math.isnan(v["prompt_tokens"])  # NaN where the server lacks one


@pytest.mark.parametrize("text", ["<html><body>Not here</body></html>", '{"status": "ok"}',
                                  "# TYPE other_metric gauge\nother_metric 1\n", ""])
def test_not_prometheus_or_no_known_metric_is_unreadable(text):
    with pytest.raises(ValueError):
        parse_metrics(text)


def test_summary_exact_numbers():
    df = pd.DataFrame({
        "t": [103.0, 100.0, 101.0, 102.0],  # out of order: the summary sorts by time
        "engine": "e", "tier": "",
        "running": [1.0, 0.0, 2.0, 3.0], "waiting": [0.0, 0.0, 4.0, 2.0], "kv_usage": [0.1, 0.0, 0.5, 0.8],
        "prefix_queries": [500.0, 100.0, 200.0, 300.0], "prefix_hits": [250.0, 50.0, 100.0, 150.0],
        "preemptions": [9.0, 2.0, 5.0, 5.0], "prompt_tokens": np.nan, "generation_tokens": [9.0, 1.0, 3.0, 6.0]})
    s = summarize_server_metrics(df)
    assert s == {"kv_usage_peak": 0.8, "kv_usage_mean": pytest.approx(0.35), "queue_mean": 1.5, "queue_peak": 4.0,
                 "running_mean": 1.5, "server_preemptions": 7.0, "server_prefix_hit_ratio": 0.5,
                 "server_metrics_samples": 4}


def test_summary_without_scrapes_is_none():
    s = summarize_server_metrics(pd.DataFrame(columns=["t", "engine", "tier", *SOURCES]))
    assert s.pop("server_metrics_samples") == 0
    assert set(s.values()) == {None}


def test_connection_refused_is_unavailable():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = ServerMetricsScraper(f"http://127.0.0.1:{port}", "gone", interval_s=0.05).start()
    assert sc.stop().unavailable.startswith("ConnectionRefusedError") and sc.rows == []


def test_negative_interval_exits_2(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text("[load]\nusers = 2\nscrape_interval_s = -1\n")
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "spec.toml:3: field 'load.scrape_interval_s': must be >= 0" in err and "\n" not in err


# ----------------------------------------------------------------------------- loopback HTTP servers

@contextlib.contextmanager
def loopback(answer):
    """An http.server on loopback whose GET calls answer(handler, n) (n: the request's number)."""
    count = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server

        def do_GET(self):
            count[0] += 1
            status, body = answer(self, count[0])
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", count
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status, body, why", [
    (404, b"Not Found", "HTTP 404"),
    (200, b"<html><body>hello</body></html>", "not Prometheus text"),
])
def test_server_without_metrics_is_unavailable(status, body, why):
    with loopback(lambda h, n: (status, body)) as (url, count):
        sc = ServerMetricsScraper(url, "plain", interval_s=0.05).start()
        time.sleep(0.2)
        sc.stop()
    assert why in sc.unavailable and "\n" not in sc.unavailable
    assert sc.rows == [] and count[0] == 1  # decided by the first scrape: no more are sent


def test_api_key_is_sent_and_connection_kept_alive():
    peers = set()

    def answer(h, n):
        peers.add(h.client_address)
        ok = h.headers.get("Authorization") == "Bearer sekret"
        return (200, VLLM_TEXT.encode()) if ok else (401, b"no")

    with loopback(answer) as (url, count):
        sc = ServerMetricsScraper(url, "keyed", "rep1", interval_s=0.05, api_key="sekret").start()
        time.sleep(0.4)
        sc.stop()
    assert sc.unavailable is None and sc.failures == 0 and len(sc.rows) >= 4
    assert len(peers) == 1  # one connection for every scrape
    assert sc.rows[0]["tier"] == "rep1" and sc.rows[0]["running"] == 5.0


def test_scrape_timing_out_midway_is_counted():
    """Scrapes 3 to 5 take longer than the timeout: each is skipped and counted; scraping goes on."""
    def answer(h, n):
        if 3 <= n <= 5:
            time.sleep(0.6)
        return 200, VLLM_TEXT.encode()

    with loopback(answer) as (url, count):
        sc = ServerMetricsScraper(url, "slow", interval_s=0.05, timeout_s=0.3).start()
        deadline = time.monotonic() + 10
        while len(sc.rows) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        sc.stop()
    assert sc.unavailable is None and sc.failures == 3 and len(sc.rows) >= 5


# ----------------------------------------------------------------------------- a real reference server

def _complete(url: str, max_tokens: int) -> None:
    body = json.dumps({"model": RefServer.NAME, "prompt": list(range(1, 200)), "max_tokens": max_tokens,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200


def test_real_reference_server_scraped_while_calls_run(tiny_model_dir, tmp_path):
    """Six calls at once on a server that runs two: some tick sees calls running, some waiting and KV in
    use; the counters never go down and add up to what was generated."""
    with serving(RefServer(tiny_model_dir, tmp_path / "scraped.log", "--max-num-seqs", "2")) as (srv,):
        sc = ServerMetricsScraper(srv.url, "reference", interval_s=0.05).start()
        calls = [threading.Thread(target=_complete, args=(srv.url, 400)) for _ in range(6)]
        for c in calls:
            c.start()
        for c in calls:
            c.join(180)
        sc.stop()
    assert sc.unavailable is None and sc.failures == 0
    df = pd.DataFrame(sc.rows)
    assert len(df) >= 3 and (df["engine"] == "reference").all()
    assert (df["running"] > 0).any() and (df["waiting"] > 0).any() and (df["kv_usage"] > 0).any()
    assert df["kv_usage"].between(0, 1).all() and df["running"].max() <= 2
    for col in ("prefix_queries", "prefix_hits", "preemptions", "prompt_tokens", "generation_tokens"):
        assert df[col].notna().all() and (df[col].diff().dropna() >= 0).all(), col
    assert df["generation_tokens"].iloc[-1] - df["generation_tokens"].iloc[0] == 6 * 400
    assert df["t"].is_monotonic_increasing


# ----------------------------------------------------------------------------- `tierbench run`

def _run(tmp_path: Path, model: Path, interval: float, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'[load]\nscrape_interval_s = {interval}\n')
    out = tmp_path / name
    env = {**os.environ, "TIERBENCH_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(spec), "--trace", "profile:demo", "--sessions", "3",
                        "--model", str(model), "--engine", "reference", "--users", "3", "--think-scale", "0.2",
                        "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=300,
                       cwd=REPO)
    return r, out


def test_run_writes_server_metrics(tiny_model_dir, tmp_path):
    r, out = _run(tmp_path, tiny_model_dir, 0.1, "scraped")
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out / "server_metrics.parquet")
    assert len(df) >= 2 and set(df["engine"]) == {"reference"} and set(df["tier"]) == {""}
    assert list(df.columns) == ["t", "engine", "tier", *SOURCES]
    info = json.loads((out / "run.json").read_text())
    assert info["engines"]["reference"]["server_metrics"] == "ok"
    s = info["summary"]["reference"]
    assert s["server_metrics_samples"] == len(df) and 0 < s["kv_usage_peak"] <= 1 and s["running_mean"] > 0
    assert s["server_preemptions"] >= 0 and s["queue_peak"] >= 0 and s["queue_mean"] >= 0
    assert 0 <= s["server_prefix_hit_ratio"] <= 1 and s["kv_usage_mean"] <= s["kv_usage_peak"]
    assert info["engines"]["reference"]["repetitions"][0]["server_metrics"]["samples"] == len(df)
    assert not (out / "server_metrics.jsonl").exists()  # the journal is merged and gone
    assert "KV-cache usage (server" in (out / "report.html").read_text()  # the timeline's server panels


def test_run_with_scraping_off_writes_no_file(tiny_model_dir, tmp_path):
    r, out = _run(tmp_path, tiny_model_dir, 0, "unscraped")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "server_metrics.parquet").exists()
    info = json.loads((out / "run.json").read_text())
    assert "server_metrics" not in info["engines"]["reference"]
    assert info["summary"]["reference"]["kv_usage_peak"] is None
    assert "KV-cache usage (server" not in (out / "report.html").read_text()
