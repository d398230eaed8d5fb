"""A real peer replays tierbench's Mooncake output: NVIDIA's AIPerf (`aiperf profile`, its
mooncake_trace loader with --fixed-schedule) against `tierbench serve`, and tierbench reads back
what AIPerf wrote.

AIPerf is installed by the test into its own virtual environment in the tierbench cache
($TIERBENCH_CACHE, else ~/.cache/tierbench: aiperf-<version>/), so that its dependencies never
touch .venv; the first run pays the install (about 1.5 minutes here), later runs reuse it. Skipped,
saying why, only when pip cannot install it.

AIPerf cannot load a tokenizer from a local directory in its worker processes: AIPerf 0.13's
parallel decode (used for 10 prompts or more) forces HF_HUB_OFFLINE=1 in each worker, and offline
it looks the name up with huggingface_hub.snapshot_download, which rejects a path ("Repo id must be
in the form 'repo_name' or 'namespace/repo_name'"). The workaround that works: lay the tiny
model's tokenizer files out as a Hugging Face cache entry (hub/models--tierbench--tiny/snapshots/
<rev>/ with refs/main) and run AIPerf with HF_HUB_CACHE pointing there, HF_HUB_OFFLINE=1 and
`--tokenizer tierbench/tiny` (aiperf_tokenizer_cache below; README.md says it too).

The workload: a tierbench-native trace of multi-turn sessions (64-token hash blocks, a system
prefix shared by every session), converted with `tierbench trace convert --to mooncake
--token-scale 0.25 --block-size 16`, so each source block becomes one written block.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from tests.conftest import RefServer, serving

REPO = Path(__file__).resolve().parents[3]
AIPERF_VERSION = "0.13.0"
SESSIONS, CALLS, SHARED_BLOCKS = 4, 4, 4


def aiperf_venv() -> Path:
    """AIPerf's own environment in the tierbench cache, installed on first use (pytest.skip, with
    pip's last words, where pip cannot install it)."""
    root = Path(os.environ.get("TIERBENCH_CACHE") or Path.home() / ".cache" / "tierbench")
    venv = root / f"aiperf-{AIPERF_VERSION}"
    stamp = venv / "tierbench-installed.txt"
    if stamp.is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # a half-finished install
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"aiperf=={AIPERF_VERSION}"],
                           capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"cannot install aiperf=={AIPERF_VERSION} with pip: {(r.stderr or r.stdout).strip()[-400:]}")
    stamp.write_text(f"aiperf {AIPERF_VERSION} installed in {time.monotonic() - t0:.0f} s\n")
    print(f"\ninstalled aiperf {AIPERF_VERSION} in {time.monotonic() - t0:.0f} s into {venv}")
    return venv


def aiperf_tokenizer_cache(model_dir: Path, root: Path, repo: str = "tierbench/tiny") -> dict:
    """The model's tokenizer as a Hugging Face cache entry, and the environment that makes AIPerf
    (main process and decode workers alike) load it from there without a network."""
    rev = "0" * 40
    entry = root / "hub" / f"models--{repo.replace('/', '--')}"
    snap = entry / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, snap / name)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(rev)
    return {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_source(path: Path) -> None:
    """SESSIONS sessions of CALLS calls (native JSONL, 64-token blocks, global ids): every prompt
    starts with the shared system blocks, each call extends its session's previous prompt by 6
    blocks and a 20-token tail, and sessions start 0.25 s apart with calls 1 s apart."""
    lines = [{"tierbench_trace": 1, "block_size": 64, "hash_scope": "global", "meta": {}}]
    next_id = 100
    for s in range(SESSIONS):
        ids = list(range(1, SHARED_BLOCKS + 1))
        for k in range(CALLS):
            ids = ids + list(range(next_id, next_id + (4 if k == 0 else 6)))
            next_id += 10
            lines.append({"session": f"s{s}", "index": k, "prompt_tokens": 64 * len(ids) + 20, "output_tokens": 32,
                          "arrival_s": 0.25 * s + 1.0 * k, "hash_ids": ids})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def aiperf(tmp_path_factory):
    return aiperf_venv() / "bin" / "aiperf"


@pytest.mark.slow
def test_aiperf_replays_a_converted_trace(aiperf, tiny_model_dir, tmp_path, capsys):
    from analysis.rundata import load_run
    from traces.load import load_trace
    from traces.stats import trace_stats

    src, conv = tmp_path / "source.jsonl", tmp_path / "trace.jsonl"
    write_source(src)
    assert main(["trace", "convert", str(src), "--to", "mooncake", "--token-scale", "0.25", "--block-size", "16",
                 "-o", str(conv)]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in conv.read_text().splitlines()]
    ideal = trace_stats(load_trace(conv))["prefix_reuse_ratio"]  # read back with the note's 16-token blocks
    assert len(rows) == SESSIONS * CALLS and ideal > 0.5

    env = {**os.environ, **aiperf_tokenizer_cache(tiny_model_dir, tmp_path / "hf")}
    art = tmp_path / "aiperf"
    with serving(RefServer(tiny_model_dir, tmp_path / "ref.log")) as (server,):
        t0 = time.monotonic()
        r = subprocess.run([str(aiperf), "profile", "--model", RefServer.NAME, "--url", server.url,
                            "--endpoint-type", "completions", "--streaming", "--tokenizer", "tierbench/tiny",
                            "--input-file", str(conv), "--custom-dataset-type", "mooncake_trace", "--fixed-schedule",
                            "--isl-block-size", "16", "--export-level", "records", "--artifact-dir", str(art),
                            "--ui", "none", "--workers-max", "1", "--record-processors", "1", "--random-seed", "0"],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        wall = time.monotonic() - t0
    log = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, log
    assert "Repo id must be" not in log

    # Every request sent, each with the file's input length (AIPerf's own count), in schedule order.
    records = [json.loads(x) for x in (art / "profile_export.jsonl").read_text().splitlines() if x.strip()]
    records.sort(key=lambda x: x["metadata"]["credit_issued_ns"])
    assert len(records) == len(rows)
    assert not [x for x in records if x.get("error")], [x["error"] for x in records if x.get("error")][:3]
    value = lambda x, k: x["metrics"][k]["value"]  # noqa: E731
    assert [value(x, "input_sequence_length") for x in records] == [row["input_length"] for row in rows]
    # The server counts one token more: the BOS it puts before every prompt.
    assert [value(x, "usage_prompt_tokens") for x in records] == [row["input_length"] + 1 for row in rows]

    # The server saw the reuse the file encodes (its own cached_tokens, through AIPerf's export).
    cached = np.array([value(x, "usage_prompt_cache_read_tokens") for x in records], dtype=float)
    prompt = np.array([value(x, "usage_prompt_tokens") for x in records], dtype=float)
    hit = cached.sum() / prompt.sum()
    print(f"\naiperf {AIPERF_VERSION}: {len(records)} requests in {wall:.1f} s; server prefix hit {hit:.4f}, "
          f"ideal (the file, infinite cache) {ideal:.4f}, difference {abs(hit - ideal) * 100:.2f} points")
    assert abs(hit - ideal) <= 0.02

    # tierbench reads what AIPerf wrote, under its own definitions, which are AIPerf's for TTFT and latency.
    run = load_run(art)
    (group,) = run.groups()
    s = run.summary[group]
    assert s["completed"] == len(rows) and s["failed"] == 0
    assert s["prefix_cache_hit_ratio"] == pytest.approx(hit)
    theirs = json.loads((art / "profile_export_aiperf.json").read_text())
    assert s["ttft_p50"] == pytest.approx(theirs["time_to_first_token"]["p50"], rel=1e-9)
    assert s["e2el_mean"] == pytest.approx(theirs["request_latency"]["avg"], rel=1e-9)
    assert main(["report", str(art), "-o", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0


def test_trace_stats_reads_what_aiperf_replays(aiperf, tmp_path, capsys):
    """`tierbench trace stats` characterizes AIPerf's datasets where they are traces: the Mooncake
    schedules AIPerf ships as examples, and a WEKA trace file that AIPerf's own WekaTrace model
    accepts (its weka loader's input: normal and streaming calls, a subagent)."""
    py = aiperf.parent / "python"
    site = subprocess.run([str(py), "-c", "import aiperf, os; print(os.path.dirname(aiperf.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    examples = sorted((Path(site) / "config" / "templates" / "data").glob("*.jsonl"))
    assert examples, site
    for path in examples:
        assert main(["trace", "stats", str(path), "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["format"] == "mooncake" and st["calls"] == len(path.read_text().splitlines())

    call = lambda t, kind, n, ids, **kw: {"t": t, "type": kind, "model": "m", "in": n, "out": 20,  # noqa: E731
                                         "hash_ids": ids, "stop": "tool_use", **kw}
    weka = {"id": "trace_x", "models": ["m"], "block_size": 64, "hash_id_scope": "local", "tool_tokens": 100,
            "system_tokens": 28, "requests": [
                call(0.0, "n", 200, [1, 2, 3]),
                {"t": 1.0, "type": "subagent", "agent_id": "agent_001", "subagent_type": "Explore", "duration_ms": 900,
                 "total_tokens": 300, "tool_use_count": 1, "status": "completed", "models": ["m"],
                 "requests": [call(0.0, "n", 150, [1, 9]), call(0.5, "s", 260, [1, 9, 10, 11], ttft=0.2)]},
                call(2.5, "s", 330, [1, 2, 3, 4, 5], think_time=1.5, ttft=0.3)]}
    path = tmp_path / "trace_x.json"
    path.write_text(json.dumps(weka))
    ok = subprocess.run([str(py), "-c", "import sys; from aiperf.dataset.loader.weka_trace_models import WekaTrace; "
                         "WekaTrace.model_validate_json(open(sys.argv[1]).read())", str(path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert main(["trace", "stats", str(path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["format"], st["sessions"], st["subagent_sessions"], st["calls"]) == ("weka", 1, 1, 4)
