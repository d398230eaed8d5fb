"""Run specs (bench/spec.py): the typed tables, their one-line errors, run.json's shape, and the
reference docs/spec.md generated from them (tools/spec_docs.py). Pure unit tests, no servers."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.cli.run import spec_from_args
from bench.spec import (ENGINE_KEYS, TOP_KEYS, EngineSpec, FieldError, PriceSpec, RunSpec, ScenarioSpec, SpecError,
                        TierSpec, load_spec, spec_from_dict)
from bench.tiers.routing import POLICIES, SpecReader, TierInfo
from tools import spec_docs

REPO = Path(__file__).resolve().parents[2]


# -- docs/spec.md ---------------------------------------------------------------------------------

def test_docs_spec_md_is_current():
    written = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    assert written == spec_docs.render(), "docs/spec.md is stale: run python -m tools.spec_docs"


def test_every_key_the_loader_reads_is_documented():
    top = {f.name for f in dataclasses.fields(RunSpec)} - {"source"}
    assert set(TOP_KEYS) == top
    doc = spec_docs.render()
    for cls in (RunSpec, spec_docs.specs.TraceSpec, spec_docs.specs.LoadSpec, EngineSpec, TierSpec, ScenarioSpec,
                PriceSpec):
        for f in dataclasses.fields(cls):
            if f.name in ("source", "extra") or (cls is EngineSpec and f.name not in ENGINE_KEYS):
                assert f"| `{f.name}` |" not in doc, f"{cls.__name__}.{f.name}"  # not a key a spec may set
            else:
                assert f"| `{f.name}` |" in doc, f"{cls.__name__}.{f.name}"


def test_a_field_without_a_comment_is_an_error():
    @dataclasses.dataclass
    class Table:
        documented: int = 0  # it has one
        bare: int = 0

    with pytest.raises(ValueError, match="Table.bare: no trailing comment"):
        spec_docs.rows(Table)


SAMPLE = {"tier name": "edge", "integer": 100, "number": 1.0, "list of regexes": ["x"], "list of tier names": ["edge"]}


@pytest.mark.parametrize("name", ["fixed", "keyword", "context", "oracle", "budget"])
def test_policy_keys_are_what_from_spec_reads(name):
    """Each built-in policy's documented keys are exactly the keys its from_spec reads."""
    cls = POLICIES[name]
    table = {"policy": name, **{k: SAMPLE[t] for k, (t, _, _) in cls.keys.items()}}
    reader = SpecReader(table, {"edge": TierInfo("edge", 5.0), "central": TierInfo("central", 300.0, "large")})
    cls.from_spec(reader)
    reader.finish()
    assert reader.read - {"policy"} == set(cls.keys)


# -- the tables -----------------------------------------------------------------------------------

def test_tables_check_their_own_keys():
    assert TierSpec("edge", rtt_ms=5).to_dict() == {"name": "edge", "rtt_ms": 5, "engine": None}
    for kwargs, key in [({"rtt_ms": "x"}, "rtt_ms"), ({"profile": "metro", "rtt_ms": 3}, "profile"),
                        ({"rtt_p5_ms": 5}, "rtt_p5_ms"), ({"size": "huge", "rtt_ms": 1}, "size"),
                        ({"price_per_m_prompt": -1, "rtt_ms": 1}, "price_per_m_prompt"), ({}, "name")]:
        with pytest.raises(FieldError) as e:
            TierSpec("edge", **kwargs)
        assert e.value.field == key and str(e.value).startswith(f"{key}: "), (kwargs, str(e.value))
    with pytest.raises(FieldError, match="^name: "):
        TierSpec("a b", rtt_ms=1)
    with pytest.raises(FieldError, match="^output: expected a number >= 0"):
        PriceSpec(output=-1)
    with pytest.raises(FieldError, match="^name: "):
        ScenarioSpec("")
    with pytest.raises(FieldError, match="^routing: expected a table"):
        ScenarioSpec("s", routing="fixed")
    assert PriceSpec(prompt=1, output=2).to_dict() == {"prompt": 1, "output": 2}


def _spec(body: str) -> str:
    return '[[engines]]\nkind = "reference"\n' + body


@pytest.mark.parametrize("body, message", [
    ('[[tiers]]\nname = "edge"\nrtt_ms = "x"\n', "t.toml:5: field 'tiers[0].rtt_ms': expected a number, got 'x'"),
    ('[[tiers]]\nname = "a"\nrtt_ms = 5\n[[tiers]]\nname = "a"\nrtt_ms = 6\n',
     "t.toml:7: field 'tiers[1].name': duplicate tier name 'a'"),
    ('[[tiers]]\nname = "e"\nengine = "nope"\nrtt_ms = 5\n',
     "t.toml:5: field 'tiers[0].engine': expected engine = the name of one of the [[engines]] (reference)"),
    ('[[tiers]]\nrtt_ms = 5\n', "t.toml:3: field 'tiers[0].name': missing"),
    ('[[tiers]]\nname = "e"\nrtt_ms = 5\n[[scenarios]]\nname = "s"\nrouting = { policy = "context", max_tokens = 0 }\n',
     "t.toml:8: field 'scenarios[0].routing.max_tokens': must be >= 1, got 0"),
    ('[[tiers]]\nname = "e"\nrtt_ms = 5\n[[scenarios]]\nname = "s"\nrouting = { policy = "fixed", tier = "e" }\n'
     'teir = "e"\n', "t.toml:9: field 'scenarios[0].teir': unknown key 'teir' (known: name, routing)"),
    ('[[scenarios]]\nname = "s"\n', "t.toml:3: field 'scenarios': scenarios need [[tiers]]"),
    ('[[tiers]]\nname = "lab"\nrtt_ms = 5\n[prices.lab]\nprompt = 1.0\n',
     "t.toml:6: field 'prices.lab.output': missing (USD per million output tokens)"),
    ('[[tiers]]\nname = "lab"\nrtt_ms = 5\n[prices.central]\npromt = 1\n',
     "t.toml:7: field 'prices.central.promt': unknown key 'promt' (known: prompt, output, cached_prompt)"),
    ('[load]\nmode = "sideways"\n', "t.toml:4: field 'load.mode': expected one of closed, open, got 'sideways'"),
])
def test_spec_errors_name_file_line_and_field(body, message):
    text = _spec(body)
    with pytest.raises(SpecError) as e:
        spec_from_dict(tomllib.loads(text), "t.toml", text)
    assert str(e.value) == message


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[load\n")
    with pytest.raises(SpecError) as e:
        load_spec(bad)
    assert e.value.line == 2 and str(e.value).startswith(f"{bad}:2: invalid TOML")


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    p = tmp_path / "t.toml"
    p.write_text(_spec('[[tiers]]\nname = "edge"\nrtt_ms = -3\n'))
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{p}:5: field 'tiers[0].rtt_ms'" in err[0], err


# -- run.json's shape -----------------------------------------------------------------------------

def test_to_dict_keeps_the_tables_as_given():
    spec = load_spec(REPO / "examples" / "tier-study.toml")
    assert all(isinstance(t, TierSpec) for t in spec.tiers) and all(isinstance(s, ScenarioSpec) for s in spec.scenarios)
    d = spec.to_dict()
    assert d["tiers"] == [{"name": "edge", "profile": "metro", "size": "small", "engine": "edge-model"},
                          {"name": "central", "profile": "central", "size": "large", "engine": "central-model"}]
    assert d["scenarios"][0] == {"name": "all-central", "routing": {"policy": "fixed", "tier": "central"}}
    assert d["prices"] == {"edge": {"prompt": 0.1, "output": 0.4}, "central": {"prompt": 2.5, "output": 10.0}}
    assert list(d) == [*TOP_KEYS, "source"]
    # what run.json holds reads back as the same spec
    data = {k: v for k, v in d.items() if k != "source"}
    assert spec_from_dict(data, spec.source).to_dict() == d


def test_unknown_tier_keys_are_kept():
    text = _spec('[[tiers]]\nname = "edge"\nrtt_ms = 5\nregion = "eu"\n')
    spec = spec_from_dict(tomllib.loads(text), "t.toml", text)
    assert spec.tiers[0].extra == {"region": "eu"}
    assert spec.to_dict()["tiers"] == [{"name": "edge", "rtt_ms": 5, "region": "eu", "engine": "reference"}]
    assert spec.tiers[0].tier("http://h:1", "m").extra == {"region": "eu"}


def test_tier_flags_become_tier_specs():
    args = build_parser().parse_args(["run", "--engine", "http://127.0.0.1:9", "--tier", "lab:50", "--tier", "metro"])
    spec = spec_from_args(args)
    assert [t.to_dict() for t in spec.tiers] == [{"name": "lab", "profile": "lab:50", "engine": "127.0.0.1:9"},
                                                 {"name": "metro", "profile": "metro", "engine": "127.0.0.1:9"}]
    assert [(s.name, s.routing) for s in spec.tier_scenarios()] == [("lab", {"policy": "fixed", "tier": "lab"}),
                                                                   ("metro", {"policy": "fixed", "tier": "metro"})]
    args = build_parser().parse_args(["run", "--engine", "http://127.0.0.1:9", "--tier", "lab:5", "--tier", "lab:6"])
    with pytest.raises(SpecError, match=r"^<flags>: field 'tiers\[1\]\.name': duplicate tier name 'lab'"):
        spec_from_args(args)


def test_price_table_merges_over_the_defaults():
    spec = RunSpec(prices={"central": PriceSpec(output=12.0)})
    t = spec.price_table()
    assert (t.price("central").prompt, t.price("central").output) == (2.5, 12.0)
