"""The soak benchmark's 1-minute version: steady load on the real reference server; memory after
warm-up stays flat and the free KV block count returns to its start."""
from __future__ import annotations

from bench.measure.soak import MEMORY_BAR, soak


def test_one_minute_soak(tiny_model_dir, tmp_path):
    r = soak(1.0, 3.0, tmp_path / "soak.json", model=str(tiny_model_dir))
    assert r["errors"] == 0 and r["completed"] > 100
    assert r["free_blocks_end"] == r["free_blocks_start"]
    assert r["memory_growth_after_warmup"] < MEMORY_BAR, r["memory_growth_after_warmup"]
    assert len(r["samples"]) > 40
