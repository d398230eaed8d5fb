"""Routing policies (bench/tiers/routing/) and per-tier prices (bench/tiers/pricing.py): pure unit tests,
no servers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from bench.tiers.pricing import DEFAULT_PRICES, Price, PriceTable, cost_of_requests
from bench.tiers.routing import (POLICIES, Budget, CallInfo, ContextThreshold, Decision, FixedTier, KeywordHeuristic,
                                 Oracle, RoutingPolicy, TierInfo, call_info_from_request, classify_keywords,
                                 estimate_tokens, make_policy, tier_info)

EDGE = TierInfo("edge", 5.0, "small", 0.10, 0.40)
REGIONAL = TierInfo("regional", 90.0, "small", 0.30, 1.20)
CENTRAL = TierInfo("central", 300.0, "large", 2.50, 10.0)
TIERS = [EDGE, REGIONAL, CENTRAL]


def call(text: str = "", tokens: int | None = None, complexity: str | None = None) -> CallInfo:
    return CallInfo(prompt_tokens=tokens, prompt_text=text, complexity=complexity)


# -- policies -----------------------------------------------------------------------------------

def test_fixed_tier():
    p = FixedTier(CENTRAL)
    assert isinstance(p, RoutingPolicy) and p.name == "fixed"
    d = p.choose(call("list the files"))
    assert d == Decision("central", "fixed")
    tier, reason = d  # the gateway unpacks a decision as (tier, reason)
    assert (tier, reason) == ("central", "fixed")


def test_keyword_heuristic_routes_by_class():
    p = KeywordHeuristic(EDGE, REGIONAL, CENTRAL)
    d = p.choose(call("ls src/ and read main.py", 500))
    assert d.tier == "edge" and d.reason.startswith("keyword: simple") and "'ls'" in d.reason
    assert p.choose(call("implement the parser change", 500)).tier == "regional"
    d = p.choose(call("refactor the scheduler for fairness", 500))
    assert d.tier == "central" and "complex" in d.reason
    # no medium tier: moderate calls stay at the small tier
    assert KeywordHeuristic(EDGE, None, CENTRAL).choose(call("fix the failing test", 500)).tier == "edge"


def test_keyword_heuristic_escalates_long_context():
    p = KeywordHeuristic(EDGE, REGIONAL, CENTRAL, long_context_tokens=1000, very_long_context_tokens=5000)
    assert p.choose(call("cat foo.py", 200)).tier == "edge"
    d = p.choose(call("cat foo.py", 2000))
    assert d.tier == "regional" and "escalates" in d.reason
    assert p.choose(call("cat foo.py", 6000)).tier == "central"
    d = p.choose(call("debug the \u00fcber\tflaky race", 10))  # the reason goes in a header: ASCII only
    assert d.tier == "central" and d.reason.isascii() and "\t" not in d.reason
    with pytest.raises(ValueError, match="very_long_context_tokens"):
        KeywordHeuristic(EDGE, None, CENTRAL, long_context_tokens=100, very_long_context_tokens=10)


def test_context_threshold():
    p = ContextThreshold(EDGE, CENTRAL, max_tokens=8000)
    assert p.choose(call("x", 8000)).tier == "edge"
    d = p.choose(call("x", 8001))
    assert d.tier == "central" and "8001 tokens > 8000" in d.reason
    # no token count: ~4 characters per token from the text
    d = p.choose(call("a" * 40_000))
    assert d.tier == "central" and "~10000" in d.reason
    assert p.choose(call("a" * 400)).tier == "edge"


def test_oracle_reads_the_label():
    p = Oracle({"simple": EDGE, "moderate": REGIONAL, "complex": CENTRAL}, default=CENTRAL)
    assert p.choose(call(complexity="simple")).tier == "edge"
    assert p.choose(call(complexity="Moderate")).tier == "regional"
    assert p.choose(call(complexity="complex")).tier == "central"
    d = p.choose(call("list files"))  # the text does not matter, only the label
    assert d.tier == "central" and "no complexity label" in d.reason
    assert "unmapped" in p.choose(call(complexity="weird")).reason
    with pytest.raises(ValueError, match="hard"):
        Oracle({"hard": CENTRAL}, CENTRAL)


def test_budget_picks_cheapest_within_latency_budget():
    p = Budget(TIERS, latency_budget_ms=500)
    d = p.choose(call(tokens=1000))
    assert d.tier == "edge" and "cheapest within 500 ms" in d.reason
    # with inference estimates the cheap edge tier no longer fits; central does
    slow_edge = TierInfo("edge", 5.0, "small", 0.10, 0.40, est_prefill_ms_per_1k_tokens=100, est_decode_ms_per_token=50)
    fast_central = TierInfo("central", 300.0, "large", 2.50, 10.0, est_prefill_ms_per_1k_tokens=10,
                            est_decode_ms_per_token=1)
    p = Budget([slow_edge, fast_central], latency_budget_ms=1000, expected_output_tokens=100)
    # edge: 5 + 100 + 5000 ms; central: 300 + 10 + 100 ms
    d = p.choose(call(tokens=1000))
    assert d.tier == "central" and "est 410 ms" in d.reason
    # over the cost budget: latency still decides, and the reason says so
    d = Budget([slow_edge, fast_central], 1000, cost_budget_per_call=1e-6, expected_output_tokens=100).choose(call(tokens=1000))
    assert d.tier == "central" and "over the cost budget" in d.reason


def test_budget_falls_back_to_fastest():
    p = Budget(TIERS, latency_budget_ms=1)
    d = p.choose(call(tokens=100))
    assert d.tier == "edge" and "no tier within 1 ms; fastest" in d.reason
    # within the cost budget when some tier is: central is fastest but too expensive
    cheap_slow = TierInfo("cheap", 800.0, "small", 0.0, 0.0)
    pricey_fast = TierInfo("pricey", 100.0, "large", 100.0, 100.0)
    d = Budget([cheap_slow, pricey_fast], 50, cost_budget_per_call=0.01).choose(call(tokens=1000))
    assert d.tier == "cheap" and "fastest within the cost budget" in d.reason
    d = Budget([cheap_slow, pricey_fast], 50).choose(call(tokens=1000))
    assert d.tier == "pricey" and "fastest" in d.reason
    d = Budget([pricey_fast], 50, cost_budget_per_call=0.01).choose(call(tokens=1000))
    assert d.tier == "pricey" and "nor within the cost budget" in d.reason


# -- the keyword classifier against labels ------------------------------------------------------

LABELED = [
    ("list the files in src/", "simple"),
    ("ls -la", "simple"),
    ("cat README.md", "simple"),
    ("grep for TODO in the repo", "simple"),
    ("read config.yaml", "simple"),
    ("rename foo to bar", "simple"),
    ("format this file with black", "simple"),
    ("what is the current branch?", "simple"),
    ("implement the new endpoint for uploads", "moderate"),
    ("fix the failing unit test in test_io.py", "moderate"),
    ("add a --verbose flag to the CLI", "moderate"),
    ("write a docstring for parse()", "moderate"),
    ("explain this function", "moderate"),
    ("design the architecture for a multi-tenant cache", "complex"),
    ("refactor the storage layer to support sharding", "complex"),
    ("prove that the algorithm terminates", "complex"),
    ("debug the intermittent race in the worker pool", "complex"),
    ("why does the scheduler starve low-priority jobs?", "complex"),
    ("find the root cause of the memory growth", "complex"),
    ("weigh the trade-offs between the two designs", "complex"),
]


def test_keyword_classifier_accuracy_on_obvious_cases():
    predicted = [classify_keywords(text, 200) for text, _ in LABELED]
    correct = sum(p == label for p, (_, label) in zip(predicted, LABELED))
    assert correct / len(LABELED) >= 0.95, list(zip(predicted, LABELED))
    for cls in ("simple", "moderate", "complex"):
        assert cls in predicted


def test_keyword_classifier_long_context_escalates():
    assert classify_keywords("cat a.py", 100) == "simple"
    assert classify_keywords("cat a.py", 9000) == "moderate"
    assert classify_keywords("cat a.py", 40_000) == "complex"
    assert classify_keywords("implement it", 9000) == "complex"
    assert classify_keywords("cat a.py", 9000, long_context_tokens=20_000) == "simple"
    # no count: ~10k tokens estimated from the text; only the text's end (the newest instruction) is scanned
    assert classify_keywords("x" * 40_000 + " cat a.py") == "moderate"
    assert classify_keywords("cat a.py " + "x" * 40_000) == "complex"
    assert classify_keywords("hello there", 10) == "moderate"  # no keywords: moderate
    assert classify_keywords("", None) == "moderate"
    assert classify_keywords("please tidy", 10, simple_keywords=("tidy",)) == "simple"
    assert classify_keywords("debug it", 10) == "moderate"  # "debug" alone is no complex keyword...
    assert classify_keywords("debug a race in the pool", 10) == "complex"  # ... debugging a race is


# -- make_policy --------------------------------------------------------------------------------

def test_make_policy_builds_each_kind():
    p = make_policy({"policy": "fixed", "tier": "central"}, TIERS)
    assert isinstance(p, FixedTier) and p.choose(call()).tier == "central"
    p = make_policy({"policy": "keyword", "small": "edge", "large": "central"}, TIERS)
    assert p.choose(call("cat x", 10)).tier == "edge" and p.choose(call("why?", 10)).tier == "central"
    assert p.choose(call("fix it", 10)).tier == "edge"  # no medium: moderate to small
    p = make_policy({"policy": "keyword", "small": "edge", "medium": "regional", "large": "central",
                     "long_context_tokens": 100, "very_long_context_tokens": 1000}, TIERS)
    assert p.choose(call("cat x", 500)).tier == "regional"
    p = make_policy({"policy": "keyword", "simple_keywords": ["tidy"], "complex_keywords": ["ponder"]}, TIERS)
    assert p.choose(call("tidy up", 10)).tier == "edge" and p.choose(call("ponder this", 10)).tier == "central"
    assert p.choose(call("ls", 10)).tier == "edge"  # no keyword left for 'ls': moderate, to the small tier
    assert "no keywords" in p.choose(call("ls", 10)).reason
    p = make_policy({"policy": "context", "small": "edge", "large": "central", "max_tokens": 8000}, TIERS)
    assert p.choose(call(tokens=9000)).tier == "central"
    p = make_policy({"policy": "oracle", "simple": "edge", "moderate": "edge", "complex": "central"}, TIERS)
    assert p.choose(call(complexity="moderate")).tier == "edge"
    assert p.choose(call()).tier == "central"  # default: the complex tier
    p = make_policy({"policy": "budget", "latency_budget_ms": 300, "cost_budget": 0.01}, TIERS)
    assert isinstance(p, Budget) and p.cost_budget == 0.01 and p.choose(call(tokens=100)).tier == "edge"
    p = make_policy({"policy": "budget", "latency_budget_ms": 300, "tiers": ["central"]}, TIERS)
    assert p.choose(call(tokens=100)).tier == "central"


def test_make_policy_defaults_from_tier_sizes():
    p = make_policy({"policy": "context", "max_tokens": 10}, TIERS)
    assert (p.small.name, p.large.name) == ("edge", "central")
    p = make_policy({"policy": "oracle"}, TIERS)
    assert p.choose(call(complexity="simple")).tier == "edge"
    assert p.choose(call(complexity="complex")).tier == "central"


@pytest.mark.parametrize("spec, key", [
    ({"policy": "nope"}, "routing.policy"),
    ({}, "routing.policy"),
    ({"policy": 3}, "routing.policy"),
    ({"policy": "fixed"}, "routing.tier"),
    ({"policy": "fixed", "tier": "mars"}, "routing.tier"),
    ({"policy": "fixed", "tier": 7}, "routing.tier"),
    ({"policy": "fixed", "tier": "edge", "teir": "edge"}, "routing.teir"),
    ({"policy": "context", "small": "edge", "large": "central"}, "routing.max_tokens"),
    ({"policy": "context", "small": "edge", "large": "central", "max_tokens": "8k"}, "routing.max_tokens"),
    ({"policy": "context", "max_tokens": True}, "routing.max_tokens"),
    ({"policy": "context", "max_tokens": 0}, "routing.max_tokens"),
    ({"policy": "keyword", "small": "edge", "large": "centrall"}, "routing.large"),
    ({"policy": "keyword", "long_context_tokens": 1.5}, "routing.long_context_tokens"),
    ({"policy": "keyword", "long_context_tokens": 100, "very_long_context_tokens": 10},
     "routing.very_long_context_tokens"),
    ({"policy": "keyword", "simple_keywords": "ls"}, "routing.simple_keywords"),
    ({"policy": "keyword", "complex_keywords": ["(unclosed"]}, "routing.complex_keywords"),
    ({"policy": "oracle", "complex": ["central"]}, "routing.complex"),
    ({"policy": "budget"}, "routing.latency_budget_ms"),
    ({"policy": "budget", "latency_budget_ms": "fast"}, "routing.latency_budget_ms"),
    ({"policy": "budget", "latency_budget_ms": 100, "cost_budget": -1}, "routing.cost_budget"),
    ({"policy": "budget", "latency_budget_ms": 100, "tiers": "edge"}, "routing.tiers"),
    ({"policy": "budget", "latency_budget_ms": 100, "tiers": ["edge", "moon"]}, "routing.tiers"),
])
def test_make_policy_errors_name_the_key(spec, key):
    with pytest.raises(ValueError) as e:
        make_policy(spec, TIERS)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg, msg


def test_make_policy_rejects_bad_tables():
    with pytest.raises(ValueError, match="routing: expected a table"):
        make_policy(["fixed"], TIERS)
    with pytest.raises(ValueError, match="no tiers"):
        make_policy({"policy": "fixed", "tier": "edge"}, [])
    with pytest.raises(ValueError, match="duplicate tier name 'edge'"):
        make_policy({"policy": "fixed", "tier": "edge"}, [EDGE, EDGE])


def _docstring_example() -> str:
    """The policy example in bench/tiers/routing/__init__.py's docstring: the indented lines after
    'Adding a policy'."""
    import textwrap

    import bench.tiers.routing
    doc = bench.tiers.routing.__doc__.split("Adding a policy", 1)[1]
    lines = doc.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    "))
    end = next((i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("    ")), len(lines))
    return textwrap.dedent("\n".join(lines[start:end])).replace("'''", '"""')


def test_user_policy_registered_in_policies():
    # the docstring's own example, run as written: it registers itself in POLICIES
    exec(compile(_docstring_example(), "bench/tiers/routing/__init__.py docstring", "exec"), {})
    assert "first-call" in POLICIES
    try:
        p = make_policy({"policy": "first-call", "small": "edge", "large": "central"}, TIERS)
        assert isinstance(p, RoutingPolicy)
        assert p.choose(CallInfo(call_index=0)).tier == "central"
        assert p.choose(CallInfo(call_index=3)) == Decision("edge", "follow-up call")
        with pytest.raises(ValueError, match=r"^routing\.extra: unknown key for policy 'first-call'"):
            make_policy({"policy": "first-call", "small": "edge", "large": "central", "extra": 1}, TIERS)
        with pytest.raises(ValueError, match=r"^routing\.small: missing"):
            make_policy({"policy": "first-call", "large": "central"}, TIERS)
    finally:
        del POLICIES["first-call"]


def test_tier_info_from_tier_objects_and_dicts():
    # a bench/tiers/network.py Tier, duck-typed: network.median_rtt_ms, prices, extra keys
    tier = SimpleNamespace(name="cloud", network=SimpleNamespace(median_rtt_ms=316.2), price_per_m_prompt=0.0,
                           price_per_m_output=0.0, extra={"est_decode_ms_per_token": 20.0})
    info = tier_info(tier, PriceTable({"cloud": (1.0, 4.0)}))
    assert info.size == "large" and info.rtt_p50_ms == 316.2 and info.est_decode_ms_per_token == 20.0
    assert (info.price_per_m_prompt, info.price_per_m_output) == (1.0, 4.0)
    edge = SimpleNamespace(name="edge", network=SimpleNamespace(median_rtt_ms=22.0), price_per_m_prompt=0.2,
                           price_per_m_output=0.8, extra={"size": "small"})
    assert tier_info(edge, PriceTable()).price_per_m_prompt == 0.2  # its own prices win
    assert tier_info({"name": "x", "rtt_ms": 10}).size == "small"
    with pytest.raises(ValueError, match="size"):
        tier_info({"name": "x", "rtt_ms": 10, "size": "huge"})
    with pytest.raises(ValueError, match="rtt_p50_ms"):
        tier_info({"name": "x"})
    p = make_policy({"policy": "fixed", "tier": "cloud"}, [tier, edge])
    assert p.choose(call()).tier == "cloud"


def test_real_tier_objects():
    from bench.tiers.network import Tier
    t = Tier.from_dict({"name": "central", "url": "http://127.0.0.1:1", "profile": "central"})
    info = tier_info(t)
    assert info.name == "central" and info.size == "large" and 200 < info.rtt_p50_ms < 500


# -- call_info_from_request -----------------------------------------------------------------------

def test_call_info_completions_token_ids():
    info = call_info_from_request({"model": "m", "prompt": [1, 2, 3, 4, 5]},
                                  {"X-Tierbench-Session": "s1", "X-Tierbench-Call-Index": "3",
                                   "X-Tierbench-Complexity": "Complex"})
    assert info.prompt_tokens == 5 and info.prompt_text == ""
    assert (info.session, info.call_index, info.complexity) == ("s1", 3, "complex")
    assert info.headers["x-tierbench-session"] == "s1"


def test_call_info_completions_string():
    info = call_info_from_request({"prompt": "grep TODO " * 10}, {"x-session-id": "abc", "x-tierbench-call-index": "x"})
    assert info.prompt_text.startswith("grep TODO") and info.prompt_tokens == estimate_tokens("grep TODO " * 10)
    assert info.session == "abc" and info.call_index is None and info.complexity is None
    assert call_info_from_request({"prompt": ["ab", "cd"]}, {}).prompt_text == "ab\ncd"
    assert call_info_from_request({"prompt": [[1, 2], [3]]}, {}).prompt_tokens == 3


def test_call_info_chat_latest_user_or_tool_message():
    body = {"messages": [
        {"role": "system", "content": "You are a coding agent. " * 100},
        {"role": "user", "content": "Refactor the storage layer."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "ls", "arguments": '{"path": "."}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "a.py\nb.py"}]},
        {"role": "assistant", "content": "Let me look."},
    ]}
    info = call_info_from_request(body, {})
    assert info.prompt_text == "a.py\nb.py"
    total = sum(estimate_tokens(t) for t in ["You are a coding agent. " * 100, "Refactor the storage layer.",
                                             '{"path": "."}', "a.py\nb.py", "Let me look."])
    assert info.prompt_tokens == total
    only_system = call_info_from_request({"messages": [{"role": "system", "content": "hi"}]}, {})
    assert only_system.prompt_text == "hi"
    # the keyword policy sees the latest message, not the whole history
    p = KeywordHeuristic(EDGE, None, CENTRAL)
    assert p.choose(call_info_from_request({"messages": body["messages"][:2]}, {})).tier == "central"


# -- pricing ------------------------------------------------------------------------------------

def test_price_arithmetic():
    t = PriceTable()
    assert t.cost("central", 1_000_000, 0) == pytest.approx(2.5)
    assert t.cost("central", 0, 1_000_000) == pytest.approx(10.0)
    # cached tokens are among the prompt tokens, billed at the cached price
    assert t.cost("central", 1_000_000, 100_000, cached_tokens=400_000) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 1.0)
    assert t.cost("device", 10**6, 10**6) == 0.0
    no_cache_price = PriceTable({"lab": (1.0, 2.0)})
    assert no_cache_price.cost("lab", 1000, 0, cached_tokens=1000) == pytest.approx(0.001)  # cached at the prompt price
    assert PriceTable({"lab": Price(1.0, 2.0, 0.5)}).cost("lab", 2000, 500, 1000) == pytest.approx(0.0025)


def test_price_table_from_spec_merges_and_validates():
    t = PriceTable.from_spec({"central": {"output": 12.0}, "lab": {"prompt": 0.2, "output": 0.8}})
    assert t.price("central") == Price(2.5, 12.0, 1.25)  # other keys kept from the default
    assert t.price("lab") == Price(0.2, 0.8)
    assert t.price("edge") == DEFAULT_PRICES["edge"]
    assert PriceTable.from_spec(None).to_dict() == PriceTable().to_dict()
    assert "central" not in PriceTable.from_spec({"lab": {"prompt": 1, "output": 1}}, defaults=False)
    for table, key in [
        ({"lab": {"prompt": 1.0}}, "prices.lab.output"),
        ({"lab": {"prompt": "cheap", "output": 1}}, "prices.lab.prompt"),
        ({"central": {"output": -1}}, "prices.central.output"),
        ({"central": {"cached_prompt": True}}, "prices.central.cached_prompt"),
        ({"central": {"promt": 1}}, "prices.central.promt"),
        ({"central": 3}, "prices.central"),
        ({"lab": (1.0,)}, "prices.lab"),
    ]:
        with pytest.raises(ValueError) as e:
            PriceTable.from_spec(table)
        assert str(e.value).startswith(key) and "\n" not in str(e.value), (table, str(e.value))
    with pytest.raises(ValueError, match="prices: expected a table"):
        PriceTable.from_spec([1, 2])
    with pytest.raises(ValueError, match=r"no price for tier 'mars'.*\[prices\.mars\]"):
        PriceTable().cost("mars", 1, 1)
    with pytest.raises(ValueError, match="cached_tokens"):
        PriceTable().cost("central", 10, 1, cached_tokens=11)
    with pytest.raises(ValueError, match="output_tokens"):
        PriceTable().cost("central", 10, -1)


def test_price_table_with_tier_prices():
    tiers = [SimpleNamespace(name="central", price_per_m_prompt=3.0, price_per_m_output=15.0),
             SimpleNamespace(name="edge", price_per_m_prompt=0.0, price_per_m_output=0.0),
             {"name": "lab", "price_per_m_prompt": 0.0, "price_per_m_output": 0.0},  # run.json's tier dicts
             {"name": "metro", "price_per_m_prompt": 0.2, "price_per_m_output": 0.8}]
    t = PriceTable().add_tier_prices(tiers)
    assert t.price("central") == Price(3.0, 15.0)
    assert t.price("edge") == DEFAULT_PRICES["edge"]  # 0/0 keeps the default
    assert t.price("metro") == Price(0.2, 0.8)
    assert "lab" not in t  # no price anywhere: unpriced, not a guessed 0


def test_cost_of_requests():
    df = pd.DataFrame({
        "tier": ["central", "central", "edge", "edge-rep0", "mars", "central", "edge"],
        "prompt_tokens": [1_000_000, 500_000, 1_000_000, 1_000_000, 10, 1_000_000, None],
        "output_tokens": [0, 100_000, 1_000_000, 0, 10, 1_000_000, 5],
        "cached_tokens": [500_000, None, 2_000_000, 0, 0, 0, 0],
        "status": ["ok", "ok", "ok", "ok", "ok", "error", "ok"],
        "warmup": [False, False, False, False, False, False, True],
    })
    out = cost_of_requests(df)
    central = out["tiers"]["central"]
    assert central["requests"] == 2 and central["prompt_tokens"] == 1_500_000 and central["cached_tokens"] == 500_000
    assert central["cost_usd"] == pytest.approx(0.5 * 2.5 + 0.5 * 1.25 + 0.5 * 2.5 + 0.1 * 10)
    edge = out["tiers"]["edge"]
    assert edge["requests"] == 2  # "edge-rep0" is priced as edge; the warm-up row is left out
    assert edge["cached_tokens"] == 1_000_000  # capped at the prompt tokens
    assert edge["cost_usd"] == pytest.approx(1.0 * 0.05 + 1.0 * 0.40 + 1.0 * 0.10)
    assert out["unpriced"] == {"mars": 1}
    assert out["total_usd"] == pytest.approx(central["cost_usd"] + edge["cost_usd"])
    every = cost_of_requests(df, statuses=None, include_warmup=True)
    assert every["tiers"]["central"]["requests"] == 3 and every["tiers"]["edge"]["requests"] == 3
    assert cost_of_requests(df.iloc[:0])["total_usd"] == 0.0
    with pytest.raises(ValueError, match="missing column 'output_tokens'"):
        cost_of_requests(df.drop(columns=["output_tokens"]))
    assert math.isfinite(cost_of_requests(df.drop(columns=["cached_tokens", "warmup"]))["total_usd"])
