"""analysis.metrics and analysis.sessions on hand-built requests tables with known answers."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import format_summary_table, load_requests, summarize, summarize_run
from analysis.sessions import makespan_summary, sessions_table

T0 = 1024.0  # a base where binary fractions stay exact


def row(sent, chunks, *, out=None, prompt=100, cached=None, engine="ref", tier="", session="s", call=0,
        intended=None, status="ok", error=None, warmup=False, rid=None, **extra):
    """A requests-table row as bench/load/recorder.py record_row writes it; times relative to T0."""
    ts = [T0 + c for c in chunks]
    r = {
        "request_id": rid or f"{session}-{call}-{sent}", "engine": engine, "tier": tier, "session": session,
        "call_index": call, "intended_start": None if intended is None else T0 + intended, "sent": T0 + sent,
        "first_token": ts[0] if ts else None, "last_token": ts[-1] if ts else T0 + sent,
        "itl": [b - a for a, b in zip(ts, ts[1:])], "chunks": len(ts),
        "prompt_tokens": prompt if status == "ok" else None, "output_tokens": (len(ts) if out is None else out) if status == "ok" else None,
        "cached_tokens": cached, "expected_prompt_tokens": prompt, "expected_output_tokens": out or len(ts),
        "status": status, "http_status": 200 if status == "ok" else 500, "error": error,
        "finish_reason": "length" if status == "ok" else None, "warmup": warmup,
    }
    r.update(extra)
    return r


def base_rows():
    return [
        # ttft 0.25, itl [0.125, 0.25], e2el 0.625, 3 tokens -> tpot (0.625-0.25)/2 = 0.1875
        row(0.0, [0.25, 0.375, 0.625], session="a", call=0),
        # 1 token: ttft 0.5 = e2el, no itl, no tpot
        row(0.125, [0.625], session="b", call=0),
        # ttft 0.125, itl [0.125], e2el 0.25, 4 tokens in 2 chunks -> tpot 0.125/3
        row(0.5, [0.625, 0.75], out=4, session="c", call=0),
    ]


def test_vllm_definitions_exact():
    s = summarize(pd.DataFrame(base_rows()))
    assert s["completed"] == 3 and s["failed"] == 0
    ttft = np.array([0.25, 0.5, 0.125])
    assert s["ttft_mean"] == pytest.approx(ttft.mean() * 1000)
    assert s["ttft_p50"] == pytest.approx(250.0) and s["ttft"]["median"] == pytest.approx(250.0)
    assert s["ttft_p99"] == pytest.approx(np.percentile(ttft, 99) * 1000)
    assert s["ttft_std"] == pytest.approx(np.std(ttft) * 1000)
    # TPOT excludes the 1-token output
    assert s["tpot"]["n"] == 2
    assert s["tpot_mean"] == pytest.approx((0.1875 + 0.125 / 3) / 2 * 1000)
    # ITL pooled over every gap of every request
    itl = np.array([0.125, 0.25, 0.125])
    assert s["itl"]["n"] == 3
    assert s["itl_mean"] == pytest.approx(itl.mean() * 1000)
    assert s["itl_p90"] == pytest.approx(np.percentile(itl, 90) * 1000)
    e2el = np.array([0.625, 0.5, 0.25])
    assert s["e2el_p50"] == pytest.approx(500.0)
    assert s["e2el_p99"] == pytest.approx(np.percentile(e2el, 99) * 1000)
    # duration: first send (0.0) to last token (0.75)
    assert s["duration_s"] == pytest.approx(0.75)
    assert s["request_throughput"] == pytest.approx(3 / 0.75)
    assert s["output_throughput"] == pytest.approx((3 + 1 + 4) / 0.75)
    assert s["total_token_throughput"] == pytest.approx((300 + 8) / 0.75)
    assert s["total_output_tokens"] == 8 and s["total_input_tokens"] == 300
    # a given duration overrides
    assert summarize(pd.DataFrame(base_rows()), duration_s=3.0)["request_throughput"] == pytest.approx(1.0)
    json.dumps(s)  # the summary goes into run.json as is


def test_percentiles_match_numpy_linear():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(201):
        n = int(rng.integers(1, 8))
        gaps = rng.exponential(0.02, n - 1)
        first = float(rng.exponential(0.3))
        chunks = list(first + np.concatenate([[0.0], np.cumsum(gaps)]))
        rows.append(row(i * 0.01, [i * 0.01 + c for c in chunks], session=f"s{i}"))
    df = pd.DataFrame(rows)
    s = summarize(df)
    ttft = (df["first_token"] - df["sent"]).to_numpy()
    e2el = (df["last_token"] - df["sent"]).to_numpy()
    itl = np.concatenate([np.asarray(g, dtype=float) for g in df["itl"]])
    for name, a in (("ttft", ttft), ("e2el", e2el), ("itl", itl)):
        for p in (50, 90, 99):
            assert s[f"{name}_p{p}"] == pytest.approx(np.percentile(a, p, method="linear") * 1000, rel=1e-12)
        assert s[name]["median"] == pytest.approx(np.median(a) * 1000, rel=1e-12)


def test_warmup_rows_excluded():
    rows = base_rows() + [row(-5.0, [5.0, 6.0], warmup=True, session="w")]
    s, ref = summarize(pd.DataFrame(rows)), summarize(pd.DataFrame(base_rows()))
    assert s["warmup_excluded"] == 1 and s["measured"] == 3
    for k in ("completed", "duration_s", "ttft_p99", "tpot_p50", "itl_p99", "e2el_p99", "request_throughput"):
        assert s[k] == ref[k]


def test_errors_counted_not_measured():
    rows = base_rows() + [
        row(0.25, [], status="error", error="HTTP 500: boom", session="e1"),
        row(0.25, [0.5], status="error", error="HTTP 500: other", session="e2"),
        row(0.25, [], status="error", error="timeout after 5 s", session="e3"),
    ]
    s, ref = summarize(pd.DataFrame(rows)), summarize(pd.DataFrame(base_rows()))
    assert s["completed"] == 3 and s["failed"] == 3 and s["error_rate"] == 0.5
    assert s["errors"] == {"HTTP 500": 2, "timeout after 5 s": 1}
    for k in ("ttft_mean", "ttft_p99", "itl_mean", "e2el_p50", "tpot_mean", "request_throughput", "output_throughput"):
        assert s[k] == ref[k]


def test_goodput_requires_every_slo():
    df = pd.DataFrame(base_rows())  # ttft 250/500/125, tpot 187.5/(0 for 1 token)/41.7, e2el 625/500/250 ms
    dur = 0.75
    assert summarize(df, slos={"ttft": 300})["good_completed"] == 2
    assert summarize(df, slos={"ttft": 250})["good_completed"] == 2  # metric == SLO is good (vLLM: slo >= metric)
    g = summarize(df, slos={"ttft": 600, "tpot": 50})  # the 1-token request has TPOT 0 for goodput
    assert g["good_completed"] == 2 and g["goodput"] == pytest.approx(2 / dur)
    assert summarize(df, slos={"ttft": 300, "tpot": 50})["good_completed"] == 1
    assert summarize(df, slos={"ttft": 300, "tpot": 50, "e2el": 200})["good_completed"] == 0
    assert summarize(df)["goodput"] is None
    errs = pd.DataFrame(base_rows() + [row(0.0, [], status="error", error="x")])
    assert summarize(errs, slos={"ttft": 10_000})["good_completed"] == 3  # failures are never good
    with pytest.raises(ValueError, match="itl"):
        summarize(df, slos={"itl": 5})


def test_intended_latency_schedule_lag_and_prefix_hit():
    rows = [
        row(0.25, [0.5, 0.75], intended=0.0, cached=50, prompt=100, session="a"),
        row(1.0, [1.125], intended=0.5, cached=None, prompt=100, session="b"),
        row(2.0, [2.5], intended=2.0, cached=30, prompt=200, session="c"),
    ]
    s = summarize(pd.DataFrame(rows), ideal_prefix_hit=0.5)
    ttft_int = np.array([0.5, 0.625, 0.5])
    e2el_int = np.array([0.75, 0.625, 0.5])
    assert s["ttft_intended_p50"] == pytest.approx(np.percentile(ttft_int, 50) * 1000)
    assert s["e2el_intended_p99"] == pytest.approx(np.percentile(e2el_int, 99) * 1000)
    lag = np.array([0.25, 0.5, 0.0])
    assert s["schedule_lag_p50"] == pytest.approx(250.0)
    assert s["schedule_lag_p99"] == pytest.approx(np.percentile(lag, 99) * 1000)
    assert s["schedule_lag_max"] == pytest.approx(500.0)
    assert s["prefix_cache_hit_ratio"] == pytest.approx(80 / 300)  # the row with unknown cached is left out
    assert s["prefix_hit_vs_ideal"] == pytest.approx(80 / 300 / 0.5)
    s2 = summarize(pd.DataFrame(base_rows()))
    assert s2["prefix_cache_hit_ratio"] is None and s2["prefix_hit_vs_ideal"] is None
    assert s2["ttft_intended_p50"] is None and s2["schedule_lag_max"] is None


def test_session_makespan_and_breakdown():
    rows = [  # one sequential session of three calls, given out of order
        row(1.0, [1.5, 1.75], session="x", call=1),  # tool gap 1.0 - 0.5 = 0.5
        row(0.0, [0.25, 0.375, 0.5], session="x", call=0),
        row(2.25, [2.5, 3.0], session="x", call=2, cached=64, prompt=128),  # tool gap 0.5
        row(0.0, [0.125], session="y", call=0, cached=0, prompt=100),
        row(-9.0, [9.0], session="x", call=9, warmup=True),
    ]
    t = sessions_table(pd.DataFrame(rows)).set_index("session")
    x = t.loc["x"]
    assert x["calls"] == 3 and x["completed"] == 3 and x["failed"] == 0
    assert x["makespan_s"] == 3.0
    assert x["queue_prefill_s"] == 0.25 + 0.5 + 0.25
    assert x["decode_s"] == 0.25 + 0.25 + 0.5
    assert x["tool_s"] == 1.0
    assert x["network_s"] == 0.0
    assert x["queue_prefill_s"] + x["decode_s"] + x["tool_s"] == x["makespan_s"]
    assert x["prefix_hit_ratio"] == 0.5
    assert t.loc["y", "makespan_s"] == 0.125 and t.loc["y", "prefix_hit_ratio"] == 0.0

    # a network_s column (the tiers' delay) comes out of TTFT; the parts still sum to the makespan
    net = [dict(r, network_s=0.0625) for r in rows]
    xn = sessions_table(pd.DataFrame(net)).set_index("session").loc["x"]
    assert xn["network_s"] == 3 * 0.0625
    assert xn["queue_prefill_s"] == 1.0 - 3 * 0.0625
    assert xn["network_s"] + xn["queue_prefill_s"] + xn["decode_s"] + xn["tool_s"] == xn["makespan_s"]

    m = makespan_summary(sessions_table(pd.DataFrame(rows)))
    assert m["sessions"] == 2
    assert m["makespan_p50_s"] == pytest.approx(np.percentile([3.0, 0.125], 50))
    assert m["makespan_p99_s"] == pytest.approx(np.percentile([3.0, 0.125], 99))
    assert m["makespan_mean_s"] == pytest.approx(1.5625)
    shares = [m[f"{p}_share"] for p in ("network", "queue_prefill", "decode", "tool")]
    assert sum(shares) == pytest.approx(1.0)
    assert m["tool_share"] == pytest.approx((1.0 / 3.0 + 0.0) / 2)
    s = summarize(pd.DataFrame(rows))
    assert s["makespan_p50_s"] == m["makespan_p50_s"] and s["sessions"]["sessions"] == 2


def test_failed_call_time_counts_toward_its_session():
    rows = [row(0.0, [0.25, 0.5], session="x", call=0),
            row(1.0, [], status="error", error="timeout after 1 s", session="x", call=1,
                last_token=T0 + 2.0)]
    x = sessions_table(pd.DataFrame(rows)).iloc[0]
    assert x["failed"] == 1 and x["makespan_s"] == 2.0
    assert x["queue_prefill_s"] + x["decode_s"] + x["tool_s"] == 2.0


def test_summarize_run_groups_and_table():
    rows = base_rows() + [dict(r, engine="vllm", tier="metro") for r in base_rows()[:2]]
    out = summarize_run(pd.DataFrame(rows))
    assert list(out) == ["ref", "vllm@metro"]
    assert out["ref"]["completed"] == 3 and out["vllm@metro"]["completed"] == 2
    assert out["vllm@metro"]["engine"] == "vllm" and out["vllm@metro"]["tier"] == "metro"
    text = format_summary_table(out)
    lines = text.splitlines()
    assert "ref" in lines[0] and "vllm@metro" in lines[0]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert any(line.startswith("TTFT p99 ms") for line in lines)
    assert "makespan p50 s" in text and "prefix hit" in text


def test_all_failed_or_empty_does_not_crash():
    s = summarize(pd.DataFrame([row(0.0, [], status="error", error="disconnected: reset")]))
    assert s["completed"] == 0 and s["errors"] == {"disconnected": 1}
    assert s["ttft_p50"] is None and s["tpot"]["n"] == 0
    e = summarize(pd.DataFrame([row(0.0, [0.5], warmup=True)]))
    assert e["measured"] == 0 and e["request_throughput"] is None and e["makespan_p50_s"] is None


def _write_jsonl(path, rows, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def test_load_requests_jsonl_equals_parquet(tmp_path):
    rows = base_rows() + [row(0.25, [], status="error", error="HTTP 503: busy", session="e"),
                          row(0.0, [0.125, 0.25], cached=64, tier="metro", session="m", intended=0.0),
                          row(-1.0, [0.0], warmup=True, session="w")]
    frag = tmp_path / "frag"
    frag.mkdir()
    _write_jsonl(frag / "requests.111.jsonl", rows[:3], tail=b'{"request_id": "cut sho')  # interrupted write
    _write_jsonl(frag / "requests.222.jsonl", rows[3:])
    pq = tmp_path / "pq"
    pq.mkdir()
    pd.DataFrame(rows).to_parquet(pq / "requests.parquet")
    a, b = load_requests(frag), load_requests(pq)
    assert len(a) == len(rows)
    pd.testing.assert_frame_equal(a, b)
    assert summarize_run(frag) == summarize_run(pq)
    assert isinstance(b["itl"].iloc[0], list)


def test_load_requests_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        load_requests(tmp_path / "nope")
    with pytest.raises(ValueError, match="no requests"):
        load_requests(tmp_path)
    bad = tmp_path / "requests.1.jsonl"
    bad.write_bytes(b'{"request_id": "a"}\nnot json\n{"request_id": "b"}\n')
    with pytest.raises(ValueError, match=r"requests\.1\.jsonl:2"):
        load_requests(tmp_path)
    (tmp_path / "requests.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ValueError, match=r"requests\.parquet"):
        load_requests(tmp_path)
