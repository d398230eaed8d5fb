"""The synthetic workload generator, its profiles and their fitting, on the bundled profiles and
on small traces made here (the fidelity against the real traces is in test_fidelity.py)."""
from __future__ import annotations

import copy
import math

import numpy as np
import orjson
import pytest

from traces.errors import TraceError
from traces.fit import fit_profile, fit_quantiles
from traces.load import load_trace
from traces.model import COMPLEXITIES, STOP_END, STOP_TOOL, Call, Session, Trace
from traces.profile import KNOTS, Profile, Quantiles, scale_profile
from traces.stats import common_prefix_len, call_series, trace_stats
from traces.synth import _Ids, bundled_profiles, draw_session, load_profile, synthesize


@pytest.fixture(scope="module")
def coding() -> Profile:
    return load_profile("agentic-coding")


@pytest.fixture(scope="module")
def demo() -> Profile:
    return load_profile("demo")


def _fingerprint(trace: Trace) -> list:
    return [(s.id, s.parent_id, s.parent_call, s.start_s,
             [(c.prompt_tokens, c.output_tokens, c.arrival_s, c.think_s, c.stop, c.complexity,
               c.hash_ids.tobytes()) for c in s.calls]) for s in trace.sessions]


# ----------------------------------------------------------------------------------------------
# Bundled profiles and loading


def test_bundled_profiles_load_and_are_small():
    names = bundled_profiles()
    assert {"agentic-coding", "swe-agent", "demo"} <= set(names)
    from importlib import resources
    for name in names:
        data = (resources.files("traces") / "profiles" / f"{name}.json").read_bytes()
        assert len(data) < 30_000, name
        p = load_profile(name)
        assert p.name == name
        assert p.fitted_from.get("sessions", 0) > 0
    assert any("scale_profile" in n for n in load_profile("demo").notes)  # how it was made


def test_unknown_profile_lists_the_bundled_ones():
    with pytest.raises(TraceError) as e:
        load_profile("no-such-profile")
    assert e.value.field == "profile"
    for name in bundled_profiles():
        assert name in str(e.value)


def test_load_profile_from_a_file_and_load_trace_dispatch(tmp_path, demo):
    path = tmp_path / "mine.json"
    demo.save(path)
    assert load_profile(str(path)).to_dict() == demo.to_dict()
    t = load_trace(f"profile:{path}", sessions=3, seed=1)
    assert len([s for s in t.sessions if s.parent_id is None]) == 3
    t2 = load_trace("profile:demo", sessions=3, seed=1)
    assert _fingerprint(t) == _fingerprint(t2)
    assert t2.format == "synth" and t2.hash_scope == "global" and t2.block_size == demo.block_size


# ----------------------------------------------------------------------------------------------
# JSON round trip and validation


def test_profile_json_round_trip(coding, demo):
    for p in (coding, demo):
        text = p.to_json()
        again = Profile.from_json(text)
        assert again.to_dict() == p.to_dict()
        assert again.to_json() == text
        assert orjson.loads(text)["tierbench_profile"] == 1


def _broken(p: Profile, edit) -> dict:
    d = copy.deepcopy(p.to_dict())
    edit(d)
    return d


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("block_size"), "block_size"),
    (lambda d: d.update(block_size="16"), "block_size"),
    (lambda d: d.update(block_size=0), "block_size"),
    (lambda d: d["context"].pop("p_edit"), "context.p_edit"),
    (lambda d: d["context"]["p_edit"].update(tool_call=1.5), "context.p_edit.tool_call"),
    (lambda d: d["context"]["p_edit"].update(bogus=0.1), "context.p_edit.bogus"),
    (lambda d: d["calls_per_session"].pop("q"), "calls_per_session.q"),
    (lambda d: d["calls_per_session"].update(q=[3, 2] + d["calls_per_session"]["q"][2:]), "calls_per_session.q"),
    (lambda d: d["first_prompt_tokens"].update(q=[-1] + d["first_prompt_tokens"]["q"][1:]), "first_prompt_tokens.q"),
    (lambda d: d["first_prompt_tokens"].update(q=[1, 2]), "first_prompt_tokens.p"),
    (lambda d: d["stop_probabilities"].update(tool_call=0.2), "stop_probabilities"),
    (lambda d: d["think_s"].pop("tool_call"), "think_s.tool_call"),
    (lambda d: d["output_tokens"]["tool_call"].update(log="yes"), "output_tokens.tool_call.log"),
    (lambda d: d["context"]["appended_tokens"].pop(), "context.appended_tokens"),
    (lambda d: d["context"]["appended_tokens"][1].update(q="x"), "context.appended_tokens[1].q"),
    (lambda d: d["context"]["edit"]["kept_fraction"].update(q=[0.5] * 26 + [1.5]), "context.edit.kept_fraction.q"),
    (lambda d: d["context"].update(size_edges=[5.0, 4.0] + d["context"]["size_edges"][2:]), "context.size_edges"),
    (lambda d: d["complexity_mix"].update(simple=0.9), "complexity_mix"),
    (lambda d: d.update(arrival_rate_per_s=-1), "arrival_rate_per_s"),
    (lambda d: d["subagents"].update(spawn_probability=None), "subagents.spawn_probability"),
    (lambda d: d.update(tierbench_profile=7), "tierbench_profile"),
])
def test_bad_profile_names_the_field(coding, edit, field, tmp_path):
    d = _broken(coding, edit)
    with pytest.raises(TraceError) as e:
        Profile.from_json(d, "p.json")
    assert e.value.field == field, str(e.value)
    assert e.value.path == "p.json"
    # ... and the same from a file, through load_profile
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(d))
    with pytest.raises(TraceError) as e2:
        load_profile(path)
    assert e2.value.field == field and str(path) in str(e2.value)


def test_invalid_json_is_a_trace_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(TraceError, match="invalid JSON"):
        load_profile(path)


# ----------------------------------------------------------------------------------------------
# Determinism and the fields of a call


def test_same_seed_same_trace_and_different_seeds_differ(coding):
    a, b = synthesize(coding, 12, seed=7), synthesize(coding, 12, seed=7)
    assert _fingerprint(a) == _fingerprint(b)
    c = synthesize(coding, 12, seed=8)
    assert _fingerprint(a) != _fingerprint(c)
    assert [len(s.calls) for s in a.sessions] != [len(s.calls) for s in c.sessions]


def test_rate_moves_sessions_in_time_without_changing_them(demo):
    a, b = synthesize(demo, 20, 3, rate=0.5), synthesize(demo, 20, 3, rate=2.0)
    strip = lambda t: [[(c.prompt_tokens, c.output_tokens, c.hash_ids.tobytes()) for c in s.calls] for s in t.sessions]
    assert strip(a) == strip(b)
    assert a.sessions[-1].start_s > b.sessions[-1].start_s


def test_calls_carry_the_fields(demo):
    t = synthesize(demo, 50, seed=0, rate=0.2)
    assert t.meta["arrival_rate_per_s"] == 0.2
    starts = [s.start_s for s in t.sessions if s.parent_id is None]
    assert starts[0] == 0.0 and all(b >= a for a, b in zip(starts, starts[1:]))
    for s in t.sessions:
        clock = s.start_s
        for c in s.calls:
            assert c.session_id == s.id and c.model is None
            assert c.prompt_tokens >= 1 and c.output_tokens >= 1
            assert c.prompt_tokens <= demo.context.max_context_tokens
            assert c.stop in (STOP_TOOL, STOP_END, None)
            assert c.complexity in COMPLEXITIES
            assert c.hash_ids.dtype == np.int64 and len(c.hash_ids) == math.ceil(c.prompt_tokens / t.block_size)
            if c.index == 0:
                assert c.think_s is None
            else:
                assert c.think_s >= 0
                clock += c.think_s
            assert c.arrival_s == pytest.approx(clock)  # start + the think times before it
    closed = synthesize(demo, 5, seed=0)
    assert closed.meta["arrival_rate_per_s"] is None
    assert all(c.arrival_s is None for c in closed.calls()) and all(s.start_s is None for s in closed.sessions)


def test_demo_profile_is_small_and_quick(demo):
    t = synthesize(demo, 200, seed=0)
    top = [s for s in t.sessions if s.parent_id is None]
    assert all(4 <= len(s.calls) <= 8 for s in top)
    cs = call_series(t)
    assert 100 <= np.median(cs.prompt) <= 1000 and cs.prompt.max() <= 4096
    assert cs.output.min() >= 16 and cs.output.max() <= 32
    think = cs.think[~np.isnan(cs.think)]
    assert think.min() >= 0.2 - 1e-9 and think.max() <= 2.0 + 1e-9


def test_subagents_have_parents(coding):
    t = synthesize(coding, 40, seed=2, rate=0.01)
    by_id = {s.id: s for s in t.sessions}
    subs = [s for s in t.sessions if s.parent_id is not None]
    assert subs, "agentic-coding spawns subagents"
    for s in subs:
        parent = by_id[s.parent_id]
        assert parent.parent_id is None
        assert 0 <= s.parent_call < len(parent.calls)
        assert s.start_s == parent.calls[s.parent_call].arrival_s
        assert s.calls[0].think_s is None
        # a subagent has its own system prompt: no blocks shared with its parent's first call
        assert common_prefix_len(s.calls[0].hash_ids, parent.calls[0].hash_ids) == 0


# ----------------------------------------------------------------------------------------------
# The context model and the hash ids


def test_hash_prefix_sharing_equals_kept_tokens(coding):
    rng = np.random.default_rng(0)
    ids = _Ids(coding.shared_prefix_tokens // coding.block_size)
    bs = coding.block_size
    kinds = {"full": 0, "partial": 0}
    for i in range(30):
        s, kept = draw_session(coding, rng, ids, f"s{i}", 120, 20_000, None)
        for k in range(1, len(s.calls)):
            a, b = s.calls[k - 1], s.calls[k]
            assert kept[k] % bs == 0
            assert common_prefix_len(b.hash_ids, a.hash_ids) * bs == kept[k]
            kinds["full" if kept[k] == (a.prompt_tokens // bs) * bs else "partial"] += 1
    assert kinds["full"] > 10 * kinds["partial"] > 0
    # ... and stats sees exactly that reuse
    t = Trace([s], block_size=bs)
    assert list(call_series(t).kept[1:]) == kept[1:]


def test_shared_prefix_is_shared_across_sessions(coding):
    t = synthesize(coding, 10, seed=0)
    top = [s for s in t.sessions if s.parent_id is None]
    n = coding.shared_prefix_tokens // coding.block_size
    first = top[0].calls[0].hash_ids[:n]
    for s in top:
        assert np.array_equal(s.calls[0].hash_ids[:n], first)
        assert common_prefix_len(s.calls[0].hash_ids, top[0].calls[0].hash_ids if s is not top[0] else top[1].calls[0].hash_ids) == n
    # every id after the shared prefix is the session's own
    owned = [set(np.concatenate([c.hash_ids for c in s.calls]).tolist()) - set(first.tolist()) for s in top]
    assert sum(len(o) for o in owned) == len(set().union(*owned))


def test_prompts_stay_under_the_context_limit(coding):
    t = synthesize(coding, 60, seed=4)
    cs = call_series(t)
    assert cs.prompt.max() <= coding.context.max_context_tokens
    # long sessions compact: some calls keep only a small part of a large previous prompt
    prev = np.r_[0, cs.prompt[:-1]]
    shrink = (cs.index > 0) & (cs.prompt < 0.75 * prev) & (prev > 100_000)
    assert shrink.any()


def test_complexity_and_stop_mix_on_a_large_draw(demo):
    t = synthesize(demo, 2000, seed=5)
    calls = list(t.calls())
    for k, share in demo.complexity_mix.items():
        assert sum(c.complexity == k for c in calls) / len(calls) == pytest.approx(share, abs=0.02)
    assert demo.complexity_mix == {"simple": 0.5, "moderate": 0.25, "complex": 0.25}  # the default: no labels
    last = [s.calls[-1].stop for s in t.sessions]
    assert sum(x == STOP_END for x in last) / len(last) == pytest.approx(demo.last_stop_probabilities["end_turn"], abs=0.03)


def test_labelled_complexity_is_fitted():
    calls = [Call("a", i, 100 + i, 10, complexity=COMPLEXITIES[i % 2]) for i in range(10)]
    p = fit_profile(Trace([Session("a", calls)]), "x")
    assert p.complexity_mix == {"simple": 0.5, "moderate": 0.5, "complex": 0.0}


# ----------------------------------------------------------------------------------------------
# Fitting


def test_integer_quantiles_reproduce_atoms():
    rng = np.random.default_rng(0)
    # Few distinct values, with gaps: knots sit at the atoms' edges.
    x = rng.choice([1, 2, 3, 10], size=5000, p=[0.4, 0.3, 0.2, 0.1])
    q = fit_quantiles(x)
    assert q.integer
    y = q.sample(np.random.default_rng(1), 20000)
    assert set(np.unique(y).tolist()) == {1, 2, 3, 10}
    for v, share in ((1, 0.4), (2, 0.3), (3, 0.2), (10, 0.1)):
        assert np.mean(y == v) == pytest.approx(share, abs=0.02)
    # Many values at 1 s resolution (think times): the fixed grid, and flooring gives the atoms back.
    x = np.floor(rng.exponential(8.0, 20000))
    q = fit_quantiles(x)
    assert q.integer and q.p == list(KNOTS)
    y = q.sample(np.random.default_rng(2), 40000)
    for v in range(6):
        assert np.mean(y == v) == pytest.approx(np.mean(x == v), abs=0.01)
    assert Quantiles.constant(1, integer=True).sample(rng, 5).tolist() == [1.0] * 5


def test_refit_of_a_synthetic_trace_recovers_the_profile(demo):
    t = synthesize(demo, 1500, seed=11)
    p = fit_profile(t, "refit")
    assert p.block_size == demo.block_size
    assert p.shared_prefix_tokens == (demo.shared_prefix_tokens // demo.block_size) * demo.block_size
    assert p.calls_per_session.median() == pytest.approx(demo.calls_per_session.median(), abs=1)
    assert p.output_tokens["tool_call"].median() == pytest.approx(demo.output_tokens["tool_call"].median(), abs=1.5)
    assert p.think_s["tool_call"].median() == pytest.approx(demo.think_s["tool_call"].median(), rel=0.1)
    t2 = synthesize(p, 1500, seed=12)
    assert trace_stats(t2)["prefix_reuse_ratio"] == pytest.approx(trace_stats(t)["prefix_reuse_ratio"], abs=0.02)


def test_fit_single_call_trace_with_arrivals():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(0.5, 400))  # 2 sessions per second
    sessions = [Session(f"r{i}", [Call(f"r{i}", 0, int(rng.integers(100, 4000)), int(rng.integers(1, 300)),
                                       arrival_s=float(t))], start_s=float(t)) for i, t in enumerate(times)]
    p = fit_profile(Trace(sessions, format="azure"), "single")
    assert p.calls_per_session.median() == 1
    assert p.arrival_rate_per_s == pytest.approx(2.0, rel=0.15)
    t = synthesize(p, 300, seed=0)
    assert all(len(s.calls) == 1 for s in t.sessions)
    assert trace_stats(t)["arrival_rate_per_s"] == pytest.approx(2.0, rel=0.2)
    assert trace_stats(t)["prefix_reuse_ratio"] == 0.0  # no prefix information: nothing shared


def test_fit_without_prefix_information_has_no_reuse():
    sessions = []
    for i in range(40):
        calls = [Call(f"s{i}", k, 1000 + 500 * k, 50, think_s=None if k == 0 else 2.0, stop=STOP_TOOL)
                 for k in range(5)]
        sessions.append(Session(f"s{i}", calls))
    p = fit_profile(Trace(sessions), "noprefix")
    assert p.shared_prefix_tokens == 0
    assert any("no prefix information" in n for n in p.notes)
    t = synthesize(p, 40, seed=0)
    assert trace_stats(t)["prefix_reuse_ratio"] == 0.0
    assert np.median(call_series(t).prompt) == pytest.approx(2000, rel=0.2)


def test_scale_profile_keeps_shape(coding):
    small = scale_profile(coding, token_scale=0.01, think_scale=0.1, max_calls=10, min_calls=2, name="small")
    assert small.name == "small" and "scale_profile" in small.notes[0]
    assert small.context.p_edit == coding.context.p_edit
    t = synthesize(small, 300, seed=0)
    assert all(2 <= len(s.calls) <= 10 for s in t.sessions if s.parent_id is None)
    assert small.think_s["tool_call"].median() == pytest.approx(coding.think_s["tool_call"].quantile(0.5) * 0.1, rel=0.01)
    Profile.from_json(small.to_json())  # still a valid profile
