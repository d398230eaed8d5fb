"""Records: the rows written for calls a dead server never got."""
from __future__ import annotations

import orjson

from analysis.metrics import load_requests, summarize_run
from bench.load.client import Record
from bench.load.recorder import Recorder, record_unsent
from bench.load.workload import CallPlan, SessionPlan


def _plans():
    return [SessionPlan("a", 0.0, [CallPlan(0, [1, 2, 3], 4), CallPlan(1, [1, 2, 3, 4], 4)]),
            SessionPlan("b", 5.0, [CallPlan(0, [7], 2)]),
            SessionPlan("c", 50.0, [CallPlan(0, [9, 9], 3)])]


def test_unsent_calls_get_failed_rows(tmp_path):
    rec = Recorder(tmp_path, "eng", "rep0")
    rec.write(Record(request_id="a#0", session="a", call_index=0, sent=1.0, first_token=1.1, last_token=1.2,
                     chunk_times=[1.1, 1.2], output_tokens=2, expected_prompt_tokens=3, expected_output_tokens=4))
    rec.close()
    other = Recorder(tmp_path, "other", "rep0")  # another engine's rows do not count as this one's
    other.write(Record(request_id="b#0", session="b", call_index=0, sent=1.0, last_token=1.5))
    other.close()
    n = record_unsent(tmp_path, _plans(), "eng", "rep0", "not-sent", "not sent: the eng server died mid-run",
                      duration_s=10.0)
    assert n == 2  # a#1 and b#0; c starts after the 10 s duration
    df = load_requests(tmp_path)
    mine = df[df["engine"] == "eng"]
    unsent = mine[mine["status"] == "error"]
    assert sorted(unsent["request_id"]) == ["a#1", "b#0"]
    assert unsent["sent"].isna().all() and (unsent["error"] == "not sent: the eng server died mid-run").all()
    assert (unsent["error_reason"] == "not-sent").all() and (unsent["retries"] == 0).all()
    assert list(unsent.sort_values("request_id")["expected_prompt_tokens"]) == [4, 1]
    s = summarize_run(mine)["eng@rep0"]
    assert s["completed"] == 1 and s["failed"] == 2 and s["errors"] == {"not-sent": 2}
    # rerun after the first: nothing left to add
    assert record_unsent(tmp_path, _plans(), "eng", "rep0", "not-sent", "x", duration_s=10.0) == 0


def test_lost_rows_only_for_the_dead_process_share(tmp_path):
    n = record_unsent(tmp_path, _plans(), "eng", "", "lost", "lost: locust process 9 died", sessions={"a", "c"})
    assert n == 3  # a#0, a#1, c#0; b belonged to another process
    rows = load_requests(tmp_path)
    assert sorted(rows["request_id"]) == ["a#0", "a#1", "c#0"] and set(rows["error_reason"]) == {"lost"}
    assert record_unsent(tmp_path, _plans(), "eng", "", "lost", "x", sessions=set()) == 0


def test_unsent_ignores_a_partial_last_line(tmp_path):
    rec = Recorder(tmp_path, "eng")
    rec.close()
    with open(rec.path, "ab") as f:  # a write cut off mid-line: that call did not finish
        f.write(orjson.dumps({"engine": "eng", "session": "b", "call_index": 0})[:20])
    assert record_unsent(tmp_path, _plans()[1:2], "eng", "", "not-sent", "gone") == 1
    rows = load_requests(tmp_path)
    assert list(rows["request_id"]) == ["b#0"] and rows["error"].iloc[0] == "gone"
