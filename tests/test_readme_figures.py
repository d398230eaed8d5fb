"""README figures come from result files: the "On a GPU" table is what tools/gpu_table.py renders
from results/h100/engine.json, so editing either alone fails here."""
from __future__ import annotations

import json

from tools.gpu_table import README, RESULT, render, updated


def test_gpu_table_matches_its_result_file():
    text = README.read_text(encoding="utf-8")
    assert updated(text, render(json.loads(RESULT.read_text()))) == text, "run python -m tools.gpu_table"


def test_gpu_table_says_not_met_where_a_target_is_missed():
    record = json.loads(RESULT.read_text())
    record["decode_ms_bs1_ctx1024"] = record["targets"]["decode_ms_bs1_ctx1024"]["target"] + 1
    assert "| `decode_ms_bs1_ctx1024` |" in render(record) and "**not met**" in render(record).split("\n")[4]
    record["decode_ms_bs1_ctx1024"] = record["targets"]["decode_ms_bs1_ctx1024"]["target"] - 1
    assert "**not met**" not in render(record).split("\n")[4]
