"""tools/retention_study.py: the scaled setting and its KV budget on the materialized workload, the
bad-input exits (before anything runs), the knee and ranking logic on synthetic figures, and (slow)
the whole study end to end at a tiny scale."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools import retention_study as rs


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return rs.clipped_profile(tmp_path_factory.mktemp("profile") / "p.json", rs.THINK_CLIP_S)


def test_clipped_profile_caps_every_think_time(profile):
    from traces.synth import load_profile

    p = load_profile(profile)
    assert max(max(q.q) for q in p.think_s.values()) == rs.THINK_CLIP_S
    assert max(max(q.q) for q in load_profile(rs.PROFILE).think_s.values()) > rs.THINK_CLIP_S


def test_budget_holds_the_working_sets_of_n_sessions_but_not_2n(profile):
    st = rs.setting([1, 4, 8], profile, rs.Scale(), None)
    w = st["workload"]
    mean4 = w["4"]["mean_working_set_blocks"]
    assert st["num_blocks"] == rs.budget_blocks(mean4)
    assert rs.BUDGET_SESSIONS * mean4 <= st["num_blocks"] < 2 * rs.BUDGET_SESSIONS * mean4
    assert w["4"]["working_sets_of_n_concurrent"] < 1 < w["8"]["working_sets_of_n_concurrent"]
    # the scale the docstring states: prompts of hundreds to a few thousand tokens, 8 calls a session
    assert 100 <= min(w["4"]["first_prompt_tokens"]) and w["4"]["largest_prompt_tokens"] <= rs.MAX_CONTEXT
    assert w["4"]["calls"] == rs.CALLS * w["4"]["sessions"] and w["8"]["sessions"] == 16
    # the scaling keeps reuse: the scaled ideal hit ratio within 0.05 of the unscaled one
    assert abs(st["ideal_prefix_hit_scaled"] - st["ideal_prefix_hit_unscaled"]) < 0.05
    assert st["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 4


def test_a_given_budget_is_used_as_is(profile):
    st = rs.setting([1], profile, rs.Scale(), 1000)
    assert st["num_blocks"] == 1000 and st["computed_budget"] is False


def test_working_sets_count_prompt_and_output_in_blocks():
    from bench.load.workload import CallPlan, SessionPlan

    plan = SessionPlan("s", 0.0)
    plan.calls = [CallPlan(0, list(range(20)), 5, 0.0, None, None), CallPlan(1, list(range(40)), 9, 1.0, None, None)]
    assert rs.working_sets([plan]) == [4]  # 49 tokens -> 4 blocks of 16


@pytest.mark.parametrize("argv,option", [
    (["--policies", "agent-aware,fifo"], "--policies: unknown policy 'fifo'"),
    (["--sessions", "0,1"], "--sessions: a session count must be at least 1"),
    (["--sessions", "1,4,2"], "--sessions: counts must increase"),
    (["--sessions", "1,1"], "--sessions: counts must increase"),
    (["--sessions", "1,x"], "--sessions: expected increasing whole numbers"),
    (["--sessions", "1,2,8", "--num-blocks", "7"], "--num-blocks: 7 blocks cannot hold one block per concurrent session"),
])
def test_bad_input_exits_2_naming_the_option(argv, option, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        rs.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # checked before anything ran or was written


def _iv(est, lo, hi):
    return {"estimate": est, "lo": lo, "hi": hi}


def _pt(est, lo, hi):
    return {"makespan_p90_s": _iv(est, lo, hi)}


def test_knee_needs_the_interval_above_twice_the_base():
    points = {1: _pt(10, 9, 11), 2: _pt(15, 12, 18), 4: _pt(22, 19, 25), 8: _pt(30, 21, 40), 16: _pt(50, 40, 60)}
    k = rs.knee(points)
    assert k["bar_s"] == 20 and k["knee_estimate"] == 4 and k["knee"] == 8
    assert rs.knee({1: _pt(10, 9, 11), 2: _pt(12, 10, 14)})["knee"] is None


def test_ranking_only_where_intervals_separate():
    at = {"agent-aware": _pt(10, 9, 11), "lru": _pt(14, 12, 16), "next-call": _pt(11, 9.5, 12.5)}
    r = rs.ranking(at)
    assert r["separated"] == ["agent-aware < lru"] and r["order_by_estimate"] == ["agent-aware", "next-call", "lru"]
    r = rs.ranking({"agent-aware": _pt(10, 8, 12), "lru": _pt(11, 9, 13)})
    assert r["separated"] == [] and r["text"] == "no difference measured"


def test_point_pools_repetitions_and_counts_per_call():
    run = {"status": "completed", "completed": 4, "failed": 0, "prompt_tokens": 1000, "hit": 0.5, "ideal": 0.8,
           "counters": {"evictions": 2, "recomputed_tokens": 8, "prompt_tokens_computed": 500},
           "makespans": [("s0", 1.0), ("s1", 2.0)], "ttfts_ms": [("s0", 10.0), ("s0", 20.0), ("s1", 30.0), ("s1", 40.0)]}
    other = {**run, "hit": 0.7, "prompt_tokens": 3000}
    p = rs.point([run, other], {"ideal_prefix_hit": 0.8, "prompt_tokens": 1000, "calls": 4})
    assert p["sessions"] == 4 and p["calls"] == 8 and p["repetitions"] == 2
    assert p["prefix_hit"] == pytest.approx(0.65) and p["prefix_hit_vs_ideal"] == pytest.approx(0.65 / 0.8)
    assert p["evicted_tokens_per_call"] == 2 * 2 * 16 / 8 and p["recomputed_tokens_per_call"] == 2
    assert p["computed_prompt_tokens_per_call"] == 125 and p["ideal_computed_prompt_tokens_per_call"] == pytest.approx(50)
    # vLLM exports no eviction counter: not reported rather than zero
    assert rs.point([{**run, "counters": {}}], {"ideal_prefix_hit": 0.8, "prompt_tokens": 1, "calls": 1})[
        "evicted_tokens_per_call"] is None


def test_rotation_puts_no_policy_always_first():
    kinds = rs.variants(["agent-aware", "lru", "next-call"], vllm=True)
    firsts = {rs.rotated(kinds, k)[0] for k in range(len(kinds))}
    assert len(firsts) == len(kinds)


def test_spec_toml_reads_back_as_the_run_spec(tmp_path):
    from bench.spec import load_spec

    trace = rs.trace_table(tmp_path / "p.json", 2, rs.Scale())
    spec = {"name": "x", "model": "tiny", "trace": trace, "load": {"mode": "closed", "users": 2, "repetitions": 1},
            "engines": [rs.engine_table("reference", "lru", 300, 8192), rs.engine_table("vllm", "lru", 301, 8192)]}
    (tmp_path / "s.toml").write_text(rs.to_toml(spec))
    s = load_spec(tmp_path / "s.toml")
    assert s.trace.think_scale == rs.THINK_SCALE and s.load.users == 2 and s.trace.calls_per_session == rs.CALLS
    assert s.engines[0].args[-4:] == ["--kv-retention", "lru", "--num-blocks", "300"]
    v = s.engines[1].args
    # 301 blocks of 16 = 4816 tokens -> 151 blocks of 32 (4832), plus vLLM's null block
    assert v[v.index("--num-gpu-blocks-override") + 1] == "152" and v[v.index("--block-size") + 1] == "32"


@pytest.mark.slow
def test_study_end_to_end_at_a_tiny_scale(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tools.retention_study", "--sessions", "1,2", "--policies", "agent-aware,lru",
           "--repetitions", "1", "--no-vllm", "--out", str(out), "--token-scale", "0.005", "--think-scale", "0.01",
           "--calls", "3"]
    r = subprocess.run(cmd, cwd=rs.REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((out / "study.json").read_text())
    assert set(d["points"]) == {"agent-aware", "lru"} and set(d["points"]["lru"]) == {"1", "2"}
    p = d["points"]["agent-aware"]["2"]
    assert p["sessions"] == 8 and p["makespan_p90_s"]["estimate"] > 0 and p["evicted_tokens_per_call"] is not None
    assert set(d["knees"]) == {"agent-aware", "lru"} and set(d["rankings"]) == {"1", "2"}
    run = out / "runs" / "reference-lru-n2-r0"
    assert (run / "run.json").exists() and (run / "sessions.parquet").exists() and not (run / "workload.jsonl").exists()
    assert r.stderr.count("makespan p90") == 4
    assert p["lost_tokens_per_call"] is not None and "Where the evictions land" in (out / "report.md").read_text()
    # the same command again keeps every completed run (a study cut short resumes), --fresh reruns
    r = subprocess.run(cmd, cwd=rs.REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stderr.count("(kept)") == 4, r.stderr[-2000:]
    assert json.loads((out / "study.json").read_text())["points"]["agent-aware"]["2"] == p


def test_a_budget_below_the_largest_call_exits_2(profile, capsys):
    with pytest.raises(SystemExit) as e:
        rs.setting([1], profile, rs.Scale(), 20)
    assert e.value.code == 2 and "--num-blocks: 20 blocks cannot hold the workload's largest call" in capsys.readouterr().err
