"""The progress bar's live figures: sessions finished, errors, recent output-token throughput."""
from __future__ import annotations

from bench.load.progress import LiveStats
from bench.load.workload import CallPlan, SessionPlan


def test_sessions_errors_and_windowed_throughput():
    plans = [SessionPlan("a", 0.0, [CallPlan(0, [1], 4), CallPlan(1, [1], 4)]), SessionPlan("b", 0.0, [CallPlan(0, [1], 4)]),
             SessionPlan("empty", 0.0, [])]
    st = LiveStats.from_plans(plans)
    st._start = 0.0
    st.add("a", True, 100, now=1.0)
    assert st.sessions_done == 0 and st.postfix(now=2.0) == "sessions 0/2, 50 tok/s"  # 100 tokens over 2 s
    st.add_row({"session": "a", "status": "ok", "output_tokens": None, "chunks": 30}, now=3.0)  # no usage: chunks
    st.add_row({"session": "b", "status": "error", "output_tokens": None, "chunks": 7}, now=4.0)  # failed: 0 tokens
    assert st.sessions_done == 2 and st.calls == 3 and st.errors == 1
    assert st.tokens_per_s(now=5.0) == 130 / 5.0
    # ten seconds later the first call has left the window: the rate is recent, not cumulative
    assert st.tokens_per_s(now=12.0) == 30 / 10.0
    assert st.postfix(now=100.0) == "sessions 2/2, 0 tok/s, errors 1"
