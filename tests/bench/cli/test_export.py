"""`tierbench export --format vllm` on hand-made run directories: where it writes, what, and its
bad-input exits. The live comparison with vLLM's own file is tests/analysis/test_vllm_result.py."""
from __future__ import annotations

import json

import pytest

from analysis.vllm_result import to_vllm_result
from bench.cli import build_parser, main
from tests.analysis.test_metrics import row
from tests.analysis.test_vllm_result import hand_rows, write_run


def test_one_point_goes_to_run_dir(tmp_path, capsys):
    run = write_run(tmp_path / "run", hand_rows())
    assert main(["export", str(run), "--format", "vllm"]) == 0
    written = json.loads((run / "vllm-result.json").read_text())
    assert written == to_vllm_result(run)
    assert "vllm-result.json" in capsys.readouterr().out


def test_every_point_gets_its_file(tmp_path):
    rows = [row(0.0, [0.25], engine="a"), row(0.0, [0.5], engine="b", session="t"),
            row(1.0, [1.25], engine="b", session="u", tier="rep1")]
    run = write_run(tmp_path / "run", rows, engines={"a": {"kind": "reference"}, "b": {"kind": "vllm"}})
    assert main(["export", str(run), "--format", "vllm"]) == 0
    names = sorted(p.name for p in run.glob("vllm-result*.json"))
    assert names == ["vllm-result-a.json", "vllm-result-b-rep1.json", "vllm-result-b.json"]
    assert json.loads((run / "vllm-result-b-rep1.json").read_text())["ttfts"] == [0.25]
    # one engine's points, then one point by name, to --out with other percentiles
    for p in run.glob("vllm-result*.json"):
        p.unlink()
    assert main(["export", str(run), "--format", "vllm", "--engine", "b"]) == 0
    assert sorted(p.name for p in run.glob("vllm-result*.json")) == ["vllm-result-b-rep1.json", "vllm-result-b.json"]
    out = tmp_path / "x" / "b.json"
    assert main(["export", str(run), "--format", "vllm", "--engine", "b", "--tier", "rep1", "--out", str(out),
                 "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,90"]) == 0
    r = json.loads(out.read_text())
    assert r["backend"] == "vllm" and r["completed"] == 1
    assert {k for k in r if k.endswith("_ms")} == {f"{s}_{m}_ms" for m in ("ttft", "e2el")
                                                   for s in ("mean", "median", "std", "p50", "p90")}


@pytest.mark.parametrize("argv, message", [
    (["nowhere"], "nowhere: not a run directory (no run.json)"),
    (["RUN", "--engine", "nope"], "requests.parquet: field 'engine': no engine 'nope' (the run has a, b)"),
    (["RUN", "--engine", "a", "--tier", "rep9"], "field 'tier': engine 'a' has no tier 'rep9'"),
    (["RUN", "--out", "one.json"], "--out: "),
    (["RUN", "--percentile-metrics", "ttft,latency"], "--percentile-metrics 'ttft,latency': expected some of"),
    (["RUN", "--metric-percentiles", "50,101"], "--metric-percentiles '50,101': expected"),
    (["EMPTY"], "requests.parquet: no measured requests"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    rows = [row(0.0, [0.25], engine="a"), row(0.0, [0.5], engine="b", session="t")]
    run = write_run(tmp_path / "run", rows)
    empty = write_run(tmp_path / "empty", [])
    (empty / "requests.parquet").unlink()
    where = {"RUN": str(run), "EMPTY": str(empty), "nowhere": str(tmp_path / "nowhere")}
    assert main(["export", *[where.get(a, a) for a in argv], "--format", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not list(run.glob("vllm-result*.json"))


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["export", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "vllm bench serve --save-result" in out and "--percentile-metrics" in out and "vllm-result" in out
