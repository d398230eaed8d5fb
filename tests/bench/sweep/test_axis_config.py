"""Sweep axes and the [sweep] table: what each form expands to, and bad input naming the field."""
from __future__ import annotations

import pytest

from bench.sweep.axis import AxisError, auto_rates, auto_sessions, parse_axis
from bench.sweep.config import SweepConfig, SweepConfigError


def test_lists_geometric_series_and_auto():
    assert parse_axis("1, 2,4", closed=False).values == [1.0, 2.0, 4.0]
    assert parse_axis([1, 2, 8], closed=True).values == [1.0, 2.0, 8.0]
    g = parse_axis("geom:0.5:8:5", closed=False).values
    assert g == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0])
    assert parse_axis("geom:1:20:4", closed=True).values == [1.0, 3.0, 7.0, 20.0]  # rounded, distinct
    a = parse_axis("auto:4", closed=False)
    assert a.is_auto and a.auto_n == 4
    assert parse_axis("auto", closed=True).auto_n == 64
    assert auto_sessions(20) == [1, 2, 4, 8, 16, 20] and auto_sessions(8) == [1, 2, 4, 8]
    assert auto_rates(1.0, 6.0, 4) == pytest.approx([2.0, 3.0, 4.0, 5.0])  # strictly between
    assert auto_rates(5.0, 5.0, 3) == []


@pytest.mark.parametrize("text, closed, says", [
    ("1,4,2", False, "must increase"),
    ("2,2", False, "must increase"),
    ("0,1", False, "must be > 0"),
    ("1,2.5", True, "whole numbers"),
    ("geom:8:1:3", False, "0 < LO < HI"),
    ("geom:1:8", False, "geom:LO:HI:N"),
    ("auto:x", False, "auto:N"),
    ("one,two", False, "separated by commas"),
    (["1", 2], False, "array of numbers"),
])
def test_bad_axes_say_why(text, closed, says):
    with pytest.raises(AxisError, match=says):
        parse_axis(text, closed)


def test_the_axis_picks_the_loop_and_flags_win_over_the_table():
    cfg = SweepConfig.build({"rates": [1, 2]}, {}, closed=True)
    assert not cfg.closed and cfg.axis.values == [1.0, 2.0]  # the table's one axis: open loop
    cfg = SweepConfig.build({"rates": [1, 2]}, {"sessions": "1,4"}, closed=False)
    assert cfg.closed and cfg.axis.values == [1.0, 4.0]
    cfg = SweepConfig.build({"rates": [1, 2], "sessions": [1, 2]}, {}, closed=True)
    assert cfg.closed  # both in the table: the spec's load.mode decides
    cfg = SweepConfig.build({}, {}, closed=False)
    assert cfg.axis.is_auto and not cfg.closed
    cfg = SweepConfig.build({"slos": ["ttft_p99<=2000", "makespan_p90<=60"], "confidence": 0.9}, {"slos": None}, True)
    assert [r.metric for r in cfg.rules()] == ["ttft", "makespan"] and cfg.rules()[1].bound_ms == 60000


@pytest.mark.parametrize("table, flags, field, says", [
    ({"rate": [1]}, {}, "sweep.rate", "unknown key"),
    ({}, {"rates": "1", "sessions": "1"}, "sweep.rates", "not both"),
    ({"slos": ["queue_p99<=5"]}, {}, "sweep.slos", "METRIC_pQ<=BOUND"),
    ({"slos": "ttft_p99<=5"}, {}, "sweep.slos", "an array"),
    ({"confidence": 1.5}, {}, "sweep.confidence", "between 0.5 and 1"),
    ({"resolution": 0}, {}, "sweep.resolution", "between 0 and 1"),
    ({"stop_at_saturation": "no"}, {}, "sweep.stop_at_saturation", "true or false"),
    ({"sessions": "4,2"}, {}, "sweep.sessions", "must increase"),
])
def test_bad_tables_name_the_field(table, flags, field, says):
    with pytest.raises(SweepConfigError, match=says) as e:
        SweepConfig.build(table, flags, closed=True)
    assert e.value.fieldname == field
