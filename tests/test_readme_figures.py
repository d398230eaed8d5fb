"""README figures come from result files: every `figures:NAME` block in README.md is what
tools/readme_figures.py renders from results/, so editing either alone fails here; and the
renderers say what the numbers support (an interval that includes 1 is no difference, a makespan
interval over few sessions carries the unreliable mark)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from analysis.ab import log_t_interval

from tools import gpu_table, readme_figures as rf


def test_readme_blocks_match_their_result_files():
    text = rf.README.read_text(encoding="utf-8")
    new, stale = rf.rendered(text)
    assert stale == [], f"stale README blocks {stale}: run python -m tools.readme_figures"
    assert new == text


def test_check_names_the_stale_block(tmp_path):
    """The --check logic on a copy of the repository's README and results with one figure changed."""
    shutil.copytree(rf.ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("*.parquet", "*.log", "*.jsonl"))
    soak = tmp_path / "results" / "soak-cpu" / "soak.json"
    d = json.loads(soak.read_text())
    d["completed"] += 1
    soak.write_text(json.dumps(d))
    _, stale = rf.rendered(rf.README.read_text(encoding="utf-8"), tmp_path)
    assert stale == ["soak"]


def test_check_command_passes_on_the_committed_readme():
    for mod in ("tools.readme_figures", "tools.gpu_table"):
        r = subprocess.run([sys.executable, "-m", mod, "--check"], cwd=rf.ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_a_missing_block_is_an_error():
    with pytest.raises(ValueError, match="block 'soak'"):
        rf.replace_block("no markers here", "soak", "x")


def test_gpu_table_says_not_met_where_a_target_is_missed():
    record = json.loads(gpu_table.RESULT.read_text())
    record["decode_ms_bs1_ctx1024"] = record["targets"]["decode_ms_bs1_ctx1024"]["target"] + 1
    assert "| `decode_ms_bs1_ctx1024` |" in gpu_table.render(record) and "**not met**" in gpu_table.render(record).split("\n")[4]
    record["decode_ms_bs1_ctx1024"] = record["targets"]["decode_ms_bs1_ctx1024"]["target"] - 1
    assert "**not met**" not in gpu_table.render(record).split("\n")[4]


def test_ratio_interval_over_paired_repeats():
    # the same 10% speedup every repeat: no spread, an interval of zero width around 1.1
    iv = log_t_interval([1.1 / 1.0, 2.2 / 2.0, 3.3 / 3.0], 0.95)
    est, lo, hi = iv.estimate, iv.lo, iv.hi
    assert est == pytest.approx(1.1) and lo == pytest.approx(1.1) and hi == pytest.approx(1.1)
    # ratios on both sides of 1: the interval includes 1
    iv = log_t_interval([0.9, 1.2, 0.95, 1.1], 0.95)
    lo, hi = iv.lo, iv.hi
    assert lo < 1 < hi
    assert rf.ratio_words(lo, hi, "faster", "slower") == "no difference measured"
    assert rf.ratio_words(1.05, 1.2, "faster", "slower") == "faster"
    assert rf.ratio_words(0.8, 0.95, "faster", "slower") == "slower"


def test_offline_block_says_no_difference_when_the_repeats_disagree(tmp_path):
    src = json.loads((rf.ROOT / "results/reference-cpu/offline.json").read_text())
    (tmp_path / "results/reference-cpu").mkdir(parents=True)
    path = tmp_path / "results/reference-cpu/offline.json"
    src["engine"]["runs_s"], src["hf_transformers"]["runs_s"] = [1.0, 1.0, 1.0, 1.0], [0.9, 1.2, 0.95, 1.1]
    path.write_text(json.dumps(src))
    assert "no difference measured" in rf.render_offline(tmp_path)
    src["hf_transformers"]["runs_s"] = [2.0, 2.1, 1.9, 2.05]
    path.write_text(json.dumps(src))
    text = rf.render_offline(tmp_path)
    assert "the reference engine is faster" in text and "no difference" not in text


def _ab(ratio: tuple[float, float, float], higher_is_better: bool, status: str = "completed") -> dict:
    """A synthetic ab.json (B/A ratios; A the reference engine, B vLLM) in the lead's schema."""
    est, lo, hi = ratio
    metric = "output_throughput" if higher_is_better else "ttft_p99"
    return {"kind": "tierbench-ab", "name": "cpu-agentic", "status": status, "confidence": 0.95, "pairs": 3,
            "variants": {"A": {"label": "reference"}, "B": {"label": "vllm"}},
            "rounds": [{"index": i, "pair": i // 2, "variant": "AB"[i % 2], "wall_s": 40.0, "status": "ok"} for i in range(6)],
            "comparison": {metric: {"a": 100.0, "b": 100.0 * est, "higher_is_better": higher_is_better,
                                    "ratio": {"estimate": est, "lo": lo, "hi": hi, "confidence": 0.95, "n": 3,
                                              "method": "t on log ratios of pairs"},
                                    "verdict": "?"}},
            "provenance": {"git_commit": "0123456789abcdef", "date": "2026-11-28T00:00:00+00:00",
                           "command": "tierbench ab examples/agentic-cpu.toml"}}


@pytest.mark.parametrize("ratio,higher,words", [
    ((1.0, 0.8, 1.25), False, "no difference measured"),   # B/A interval includes 1
    ((2.0, 1.5, 2.5), False, "reference wins"),            # vLLM's latency twice the reference's
    ((0.5, 0.4, 0.6), False, "reference loses"),
    ((0.5, 0.4, 0.6), True, "reference wins"),             # vLLM's throughput half the reference's
    ((1.5, 1.2, 1.8), True, "reference loses"),
])
def test_ab_block_words_follow_the_interval(tmp_path, ratio, higher, words):
    (tmp_path / "results/ab-cpu-agentic").mkdir(parents=True)
    (tmp_path / "results/ab-cpu-agentic/ab.json").write_text(json.dumps(_ab(ratio, higher)))
    text = rf.render_ab(tmp_path, "cpu-agentic")
    row = next(line for line in text.splitlines() if line.startswith(("| ttft_p99", "| output_throughput")))
    assert row.rstrip(" |").endswith(words), row
    # the table shows reference/vLLM = 1/estimate with the interval [1/hi, 1/lo]
    assert f"{1 / ratio[0]:.2f} [{1 / ratio[2]:.2f}, {1 / ratio[1]:.2f}]" in row
    assert "3 pairs" in text and "`0123456`" in text and "incomplete" not in text


def test_ab_block_says_incomplete_and_not_yet_measured(tmp_path):
    assert "not yet measured" in rf.render_ab(tmp_path, "cpu-azure")
    (tmp_path / "results/ab-cpu-azure").mkdir(parents=True)
    (tmp_path / "results/ab-cpu-azure/ab.json").write_text(json.dumps(_ab((1.0, 0.9, 1.1), False, status="incomplete")))
    assert "incomplete" in rf.render_ab(tmp_path, "cpu-azure")


def test_tier_study_marks_unreliable_makespans(tmp_path):
    claims = json.loads((rf.ROOT / "results/tier-study/claims.json").read_text())
    (tmp_path / "results/tier-study").mkdir(parents=True)
    path = tmp_path / "results/tier-study/claims.json"
    path.write_text(json.dumps(claims))
    assert rf.DAGGER in rf.render_tier_study(tmp_path)  # 8 sessions: the file says unreliable
    for s in claims["scenarios"].values():
        for k in ("makespan_p50_s", "makespan_p99_s"):
            s[k]["method"] = "Woodruff, session-bootstrap SE"
    path.write_text(json.dumps(claims))
    assert rf.DAGGER not in rf.render_tier_study(tmp_path)


def test_fidelity_block_shows_every_split_and_the_noise_floor():
    d = json.loads((rf.ROOT / "results/fidelity/fidelity.json").read_text())
    text = rf.render_fidelity(rf.ROOT)
    for s in d["sources"].values():
        for r in s["split_half"] + s["holdout_20pct"]:
            assert f"split {r['split_seed']} | {r['calls_per_session']:.3f} ({r['halves_ks']['calls_per_session']:.3f})" in text
        assert f"pass rate {s['holdout_20pct_pass_rate']:.0%}" in text


def test_tier_study_verdicts_follow_the_measurement():
    """bench/tiers/study.py computes each verdict: rerun on the committed tier-study run, then with
    its network time doubled and with complexity labels claimed, the verdicts move."""
    import pandas as pd

    from bench.tiers.study import claims

    out = rf.ROOT / "results/tier-study"
    df, st = pd.read_parquet(out / "requests.parquet"), pd.read_parquet(out / "sessions.parquet")
    info = json.loads((out / "run.json").read_text())
    shapes = json.loads((out / "claims.json").read_text())["claims"][2]["real_shapes"]
    by_id = {c["id"]: c for c in claims(df, st, info, shapes=shapes)["claims"]}
    assert by_id["sequential-central"]["verdict"] == "holds for network time; tool time dominates the makespan"
    assert by_id["small-model-share"]["verdict"] == "not testable from these traces"
    slow = st.assign(network_s=st["network_s"] * 2)
    labelled = {k: {**v, "complexity_labels": True} for k, v in shapes.items()}
    by_id = {c["id"]: c for c in claims(df, slow, info, shapes=labelled)["claims"]}
    assert by_id["sequential-central"]["verdict"].startswith("does not hold for network time")
    assert by_id["small-model-share"]["verdict"] != "not testable from these traces"


def test_check_exits_1_with_one_line_naming_the_block(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    text = rf.README.read_text(encoding="utf-8")
    start, _ = rf.markers("offline")
    i = text.index(start) + len(start) + 1
    readme.write_text(text[:i] + "1.08x typed by hand\n" + text[i:], encoding="utf-8")
    monkeypatch.setattr(rf, "README", readme)
    assert rf.main(["--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'offline'" in err
    assert rf.main([]) == 0 and readme.read_text(encoding="utf-8") == text  # the rewrite restores it


def _retention_study(unreliable: bool = False) -> dict:
    """A synthetic results/retention-cpu/study.json in tools/retention_study.py's schema."""
    method = "Woodruff, session-bootstrap SE" + ("; fewer than 10 calls in the tail: unreliable" if unreliable else "")

    def iv(est, lo, hi):
        return {"estimate": est, "lo": lo, "hi": hi, "confidence": 0.95, "n": 16, "clusters": 8, "method": method}

    def pt(p90, lo, hi, evicted):
        return {"makespan_p50_s": iv(p90 / 2, p90 / 2 - 1, p90 / 2 + 1), "makespan_p90_s": iv(p90, lo, hi),
                "ttft_p99_ms": iv(120.0, 100.0, 150.0), "prefix_hit_vs_ideal": 0.93, "evicted_tokens_per_call": evicted,
                "lost_tokens_per_call": None if evicted is None else evicted / 4,
                "recomputed_tokens_per_call": 0.0, "computed_prompt_tokens_per_call": 310.0,
                "ideal_computed_prompt_tokens_per_call": 250.0}

    return {"command": "python -m tools.retention_study", "repetitions": 2, "confidence": 0.95,
            "scale": {"token_scale": 0.02, "think_scale": 0.1, "think_clip_s": 60.0, "calls": 8},
            "setting": {"num_blocks": 848, "block_size": 16, "kv_bytes_per_token": 1024},
            "points": {"agent-aware": {"1": pt(10.0, 9.0, 11.0, 0.0), "8": pt(25.0, 23.0, 27.0, 512.0)},
                       "lru": {"1": pt(10.5, 9.5, 11.5, 0.0), "8": pt(40.0, 30.0, 50.0, 900.0)},
                       "vllm": {"1": pt(11.0, 10.0, 12.0, None), "8": pt(30.0, 20.0, 45.0, None)}},
            "knees": {"agent-aware": {"knee": 8, "knee_estimate": 8}, "lru": {"knee": 8, "knee_estimate": 8},
                      "vllm": {"knee": None, "knee_estimate": 8}},
            "rankings": {"1": {"text": "no difference measured"}, "8": {"text": "agent-aware < lru"}},
            "provenance": {"git_commit": "0123456789abcdef", "date": "2026-12-01T00:00:00+00:00"}}


def test_retention_block_not_yet_measured_then_rendered(tmp_path):
    assert "Not yet measured" in rf.render_retention(tmp_path)
    (tmp_path / "results/retention-cpu").mkdir(parents=True)
    (tmp_path / "results/retention-cpu/study.json").write_text(json.dumps(_retention_study()))
    text = rf.render_retention(tmp_path)
    assert "| agent-aware | 8 | 12.5 [11.5, 13.5] | 25.0 [23.0, 27.0] | 120.0 [100.0, 150.0] | 0.93 | 512 | 128 | 0 | 310 (250) |" in text
    assert "| vllm | 8 |" in text and "| - | - | 0 | 310" in text.split("| vllm | 8 |")[1]  # no eviction counter: "-"
    assert "848 blocks of 16 tokens (13.2 MiB)" in text
    assert "agent-aware: N = 8; lru: N = 8; vllm: not reached (estimate alone: N = 8)" in text
    assert "N = 1: no difference measured; N = 8: agent-aware < lru" in text
    assert "`0123456`" in text and rf.DAGGER not in text


def test_retention_block_marks_unreliable_makespans(tmp_path):
    (tmp_path / "results/retention-cpu").mkdir(parents=True)
    (tmp_path / "results/retention-cpu/study.json").write_text(json.dumps(_retention_study(unreliable=True)))
    text = rf.render_retention(tmp_path)
    assert f"25.0 [23.0, 27.0]{rf.DAGGER}" in text and "fewer than ten sessions" in text
