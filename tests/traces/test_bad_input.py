"""Every kind of bad input exits 2 with one line naming file, line and field, never a traceback."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from bench.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def weka_line(**overrides) -> dict:
    req = {"t": 0.0, "type": "n", "in": 100, "out": 5, "hash_ids": [1], "stop": "tool_use", "think_time": 0.0}
    req.update(overrides)
    return {"id": "trace_0000", "block_size": 64, "hash_id_scope": "local", "requests": [req]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_one_line(code, err, *needles):
    assert code == 2
    assert "\n" not in err and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_truncated_gzip(tmp_path, capsys):
    good = tmp_path / "good.jsonl.gz"
    with gzip.open(good, "wt") as f:
        for i in range(200):
            f.write(json.dumps(weka_line()) + "\n")
    data = good.read_bytes()
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, "trace", "stats", str(bad))
    assert_one_line(code, err, str(bad), "truncated or corrupt gzip")
    assert ":" in err.split(str(bad))[1][:2]  # a line number follows the file name


def test_missing_key(tmp_path, capsys):
    p = write_jsonl(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": 5, "output_length": 3},
                                            {"timestamp": 1, "input_length": 5}])
    code, err = run_cli(capsys, "trace", "stats", str(p), "--format", "mooncake")
    assert_one_line(code, err, f"{p}:2", "output_length", "missing key")


def test_missing_nested_key_names_its_path(tmp_path, capsys):
    rec = weka_line()
    del rec["requests"][0]["out"]
    p = write_jsonl(tmp_path / "w.jsonl", [rec])
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:1", "requests[0].out")


def test_missing_column(tmp_path, capsys):
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n")
    code, err = run_cli(capsys, "trace", "stats", str(p), "--format", "azure")
    assert_one_line(code, err, f"{p}:1", "GeneratedTokens", "missing column")


@pytest.mark.parametrize("value, needle", [(-3, "must be >= 0"), (12.5, "expected an integer"),
                                           ("12", "expected an integer"), (True, "expected an integer")])
def test_bad_token_counts(tmp_path, capsys, value, needle):
    p = write_jsonl(tmp_path / "w.jsonl", [weka_line(), weka_line(**{"in": value})])
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:2", "requests[0].in", needle)


def test_bad_token_count_csv(tmp_path, capsys):
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,4808,10\n"
                 "2023-11-16 18:17:04.03,-1,8\n")
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:3", "ContextTokens", "must be >= 0")


def _mooncake_backwards(tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [{"timestamp": 5, "input_length": 5, "output_length": 3},
                                              {"timestamp": 4, "input_length": 5, "output_length": 3}]), 2, "timestamp"


def _azure_backwards(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:05,1,1\n2023-11-16 18:17:04,1,1\n")
    return p, 3, "TIMESTAMP"


def _weka_backwards(tmp_path):
    rec = weka_line()
    rec["requests"].append({**rec["requests"][0], "t": -1.0 + 0.5})
    rec["requests"][0]["t"] = 2.0
    return write_jsonl(tmp_path / "w.jsonl", [rec]), 1, "requests[1].t"


@pytest.mark.parametrize("make", [_mooncake_backwards, _azure_backwards, _weka_backwards],
                         ids=["mooncake", "azure", "weka"])
def test_timestamps_backwards(tmp_path, capsys, make):
    p, line, field = make(tmp_path)
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:{line}", field, "backwards")


def test_unknown_format(tmp_path, capsys):
    p = tmp_path / "x.txt"
    p.write_text("hello\nworld\n")
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, str(p), "format", "unknown trace format")


def test_unknown_format_override(tmp_path, capsys):
    p = tmp_path / "x.jsonl"
    p.write_text("{}\n")
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, str(p), "format")


@pytest.mark.parametrize("fmt", [None, "weka", "mooncake", "azure", "native"])
def test_empty_file(tmp_path, capsys, fmt):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    argv = ["trace", "stats", str(p)] + (["--format", fmt] if fmt else [])
    code, err = run_cli(capsys, *argv)
    assert_one_line(code, err, str(p), "empty file")


def test_invalid_json_line(tmp_path, capsys):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"timestamp": 1, "input_\n')
    code, err = run_cli(capsys, "trace", "stats", str(p), "--format", "mooncake")
    assert_one_line(code, err, f"{p}:2", "invalid JSON")


def test_native_bad_index_and_stop(tmp_path, capsys):
    p = write_jsonl(tmp_path / "n.jsonl", [{"session": "a", "index": 0, "prompt_tokens": 1, "output_tokens": 1},
                                            {"session": "a", "index": 2, "prompt_tokens": 1, "output_tokens": 1}])
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:2", "index")
    p = write_jsonl(tmp_path / "n2.jsonl", [{"session": "a", "index": 0, "prompt_tokens": 1, "output_tokens": 1,
                                             "stop": "maybe"}])
    code, err = run_cli(capsys, "trace", "stats", str(p))
    assert_one_line(code, err, f"{p}:1", "stop")


def test_missing_path(tmp_path, capsys):
    code, err = run_cli(capsys, "trace", "stats", str(tmp_path / "nope.jsonl"))
    assert_one_line(code, err, "nope.jsonl", "no such file")


def test_real_entry_point_prints_no_traceback(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": -5, "output_length": 3}])
    r = subprocess.run([sys.executable, "-m", "bench", "trace", "stats", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"tierbench: error: {p}:1: field 'input_length': must be >= 0, got -5"
    assert r.stdout == ""
