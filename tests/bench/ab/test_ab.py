"""`tierbench ab` end to end on the real reference engine (examples/ci-smoke.toml, the tiny model):
two servers, one a git worktree of HEAD, rounds A B B A, the A/B gate; and its bad input: a ref
that does not exist, a variant that cannot start, a variant that answers a different workload, a
variant that dies mid-run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.measure.instant_server import InstantServer
from tests.bench.test_gate_e2e import COUNTERS, SPEC, tierbench

REPO = Path(__file__).resolve().parents[3]


def worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines()]


@pytest.mark.slow
def test_ab_rounds_alternate_and_counters_agree_exactly(tmp_path):
    out = tmp_path / "ab"
    before = worktrees()
    pin = ["--server-cpus", "1", "--client-cpus", "0"] if len(os.sched_getaffinity(0)) >= 2 else []
    r = tierbench("ab", str(SPEC), "--a", "ref:HEAD", "--pairs", "2", *pin, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ab = json.loads((out / "ab.json").read_text())
    assert ab["pinning"]["server_cpus"] == ([1] if pin else None)
    assert ab["status"] == "completed" and ab["pairs"] == 2
    assert [r["variant"] for r in ab["rounds"]] == ["A", "B", "B", "A"]
    assert ab["variants"]["A"]["label"].startswith("reference@") and ab["variants"]["A"]["commit"]
    assert all(r["cache_reset"] for r in ab["rounds"])  # every round starts from an empty prefix cache
    # the same calls in every round: the engine does exactly the same work on both sides
    for k in COUNTERS[:4]:
        assert len({r["counters"][k] for r in ab["rounds"]}) == 1, k
    df = pd.read_parquet(out / "requests.parquet")
    assert sorted(df["tier"].unique()) == [f"round{i:02d}" for i in range(4)]
    assert (df.groupby("tier").size() == ab["rounds"][0]["calls"]).all() and (df["status"] == "ok").all()
    row = ab["comparison"]["tpot_p50"]
    assert len(row["pair_ratios"]) == 2 and len(row["within_round"]) == 2 and row["within_round"][0]["paired"]
    assert worktrees() == before  # A's worktree is gone

    g = tierbench("gate", "--ab", str(out), *[a for c in COUNTERS for a in ("--metric", c)],
                  "--advisory", "tpot_p50", "--markdown", str(tmp_path / "g.md"), "--junit", str(tmp_path / "g.xml"))
    assert g.returncode == 0, g.stdout + g.stderr
    assert "A/B" in g.stdout and "| `A->B.steps` | exact |" in g.stdout


@pytest.mark.slow
def test_ab_gate_fails_a_slower_engine_on_timing(tmp_path):
    out = tmp_path / "ab"
    # 3 ms per step on a ~0.6 ms step: several times slower, whatever the machine is doing
    r = tierbench("ab", str(SPEC), "--b-arg=--step-delay-ms=3", "--b-scrape", "0.2", "--pairs", "3", "--out", str(out),
                  "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ab = json.loads((out / "ab.json").read_text())
    assert ab["variants"]["B"]["extra_args"] == ["--step-delay-ms=3"]
    # B's /metrics scraped during its rounds only (what scraping costs is an A/B like this one)
    assert ab["scrape_s"] == {"A": 0.0, "B": 0.2}
    assert all((r["scrapes"] >= 2) == (r["variant"] == "B") for r in ab["rounds"]), ab["rounds"]
    assert ab["comparison"]["tpot_p50"]["verdict"] == "B worse"
    assert ab["comparison"]["output_throughput"]["verdict"] == "B worse"
    g = tierbench("gate", "--ab", str(out), "--metric", "tpot_p50", "--metric", "output_throughput",
                  "--metric", "steps", "--markdown", str(tmp_path / "g.md"), "--junit", str(tmp_path / "g.xml"))
    assert g.returncode == 1, g.stdout + g.stderr
    assert "slower: lower 95% bound" in g.stdout and "throughput down" in g.stdout
    assert "| `A->B.steps` | exact |" in g.stdout and "equal" in g.stdout  # counters do not move with time


def test_ab_b_on_as_own_server_scrapes_only_in_b_rounds(tmp_path):
    out = tmp_path / "ab"
    r = tierbench("ab", str(SPEC), "--b", "A", "--b-scrape", "0.05", "--pairs", "2", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ab = json.loads((out / "ab.json").read_text())
    assert ab["variants"]["B"]["source"] == "A" and r.stderr.count("starting server") == 1  # one server
    assert all((x["scrapes"] >= 2) == (x["variant"] == "B") for x in ab["rounds"]), ab["rounds"]
    assert ab["pairs"] == 2 and ab["comparison"]["tpot_p50"]["verdict"]
    bad = tierbench("ab", str(SPEC), "--a", "A", "--pairs", "2")
    assert bad.returncode == 2 and "'A' (A's own server) is for --b only" in bad.stderr


def test_ab_unknown_git_ref_is_bad_input(tmp_path):
    r = tierbench("ab", str(SPEC), "--a", "ref:no-such-ref-xyz", "--out", str(tmp_path / "ab"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["tierbench: error: variant A: git ref 'no-such-ref-xyz' does not exist "
                                             f"in {REPO}"]
    assert not (tmp_path / "ab").exists()  # nothing started, nothing written


def test_ab_variant_kinds_are_checked(tmp_path):
    r = tierbench("ab", str(SPEC), "--b", "nonsense", "--out", str(tmp_path / "ab"))
    assert r.returncode == 2 and "variant B: 'nonsense': expected spec, ref:GITREF" in r.stderr
    r = tierbench("ab", str(SPEC), "--b", "http://127.0.0.1:9", "--b-arg=--x", "--out", str(tmp_path / "ab"))
    assert r.returncode == 2 and "variant B: server flags '--x' cannot be given to a running URL" in r.stderr
    r = tierbench("ab", str(SPEC), "--pairs", "1")
    assert r.returncode == 2 and "an interval needs two pairs" in r.stderr
    r = tierbench("ab", str(SPEC), "--server-cpus", "999")
    assert r.returncode == 2 and "--server-cpus: '999': CPU 999 is not available here" in r.stderr


@pytest.mark.slow
def test_ab_variant_that_fails_to_start_is_named(tmp_path):
    r = tierbench("ab", str(SPEC), "--b-arg=--no-such-flag", "--out", str(tmp_path / "ab"))
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("tierbench: error: variant B (reference --no-such-flag) failed to start:"), line
    assert "no-such-flag" in line.split("log:")[-1]  # the server's own complaint, from its log
    assert json.loads((tmp_path / "ab" / "ab.json").read_text())["status"] == "failed before the first round"


@pytest.mark.slow
def test_ab_variant_answering_another_workload_is_refused(tmp_path):
    # A real server that does not honour max_tokens (the instant server capped at 2 chunks): its
    # rounds would not do the work A does, so the A/B refuses to compare them.
    with InstantServer(tmp_path, ttft_ms=1, itl_ms=1, max_output=2) as srv:
        r = tierbench("ab", str(SPEC), "--b", srv.url, "--out", str(tmp_path / "ab"))
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("tierbench: error: variant B: gets a different workload: call warmup-"), line
    assert "returned 2 output tokens" in line


def _pid_logging_to(log: Path) -> int | None:
    """The process whose stdout is `log` (the server started for a variant)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "fd" / "1") == str(log):
                    return int(d.name)
            except OSError:
                continue
    return None


@pytest.mark.slow
def test_ab_variant_dying_mid_run_keeps_its_rounds(tmp_path):
    out = tmp_path / "ab"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ab", str(SPEC), "--pairs", "4", "--out", str(out),
                             "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        # round 2 is B's (pair 1 starts with B): kill B's server once that round has records
        while time.monotonic() < deadline and proc.poll() is None:
            if any('"round02"' in f.read_text() for f in out.glob("requests.*.jsonl")):
                break
            time.sleep(0.01)
        pid = _pid_logging_to(out / "server-B.log")
        assert pid, "server B not found"
        os.kill(pid, 9)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    ab = json.loads((out / "ab.json").read_text())
    assert ab["status"].startswith("incomplete: variant B died in round 2"), ab["status"]
    assert [r["status"] for r in ab["rounds"]] == ["ok", "ok", "died"]
    assert ab["pairs"] == 1 and len(ab["comparison"]["tpot_p50"]["pair_ratios"]) == 1
    df = pd.read_parquet(out / "requests.parquet")
    assert set(df["tier"]) >= {"round00", "round01"}  # the finished rounds' calls are all kept
    assert json.loads((out / "run.json").read_text())["status"].startswith("incomplete")
    g = tierbench("gate", "--ab", str(out), "--metric", "tpot_p50", "--markdown", "", "--junit", "")
    assert g.returncode == 1 and "fewer than two complete round pairs" in g.stdout
