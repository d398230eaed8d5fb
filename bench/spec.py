"""Run specs: a TOML file, or the same from command-line flags.

    name = "agentic-cpu"
    model = "tiny"                 # a checkpoint dir, or "tiny" (built on first use)

    [trace]
    path = "profile:swe-agent"     # file, directory, or profile:NAME
    sessions = 16
    seed = 0
    token_scale = 0.05
    max_context = 2048
    think_scale = 0.1
    time_scale = 1.0
    calls_per_session = 30         # optional: sessions with >= 30 calls, cut to their first 30

    [load]
    mode = "closed"                # closed (locust sessions) | open (calls at their times)
    users = 8                      # closed loop: concurrent sessions
    session_rate = 0.0             # closed loop: session arrivals/s (0: the trace's)
    arrivals = "trace"             # open loop: trace | poisson | gamma
    rate = 0.0                     # open loop: calls/s for poisson | gamma
    duration_s = 0.0               # 0: until the workload is done
    warmup_s = 0.0
    repetitions = 1
    workers = 0                    # locust worker processes (distributed mode)
    side_by_side = false           # all engines at once instead of one after another
    early_stop = ["ttft_p99<=500"] # stop once every percentile target is met or missed (MLPerf-style)
    early_stop_confidence = 0.95

    [[engines]]
    kind = "reference"             # reference | vllm | url
    args = ["--max-num-seqs", "32"]

    [slos]
    ttft_ms = 1000

    # Latency tiers (optional): a network profile in front of an engine; the run then replays the
    # workload once per scenario through the tier gateway (bench/gateway.py), whose routing policy
    # (bench/routing.py) picks each call's tier. Without [[scenarios]]: one per tier, every call there.
    [[tiers]]
    name = "edge"
    engine = "reference"           # one of the [[engines]] names
    profile = "metro"              # device | metro | regional | central | NAME:RTT_MS; or rtt_ms = 50
    [[scenarios]]
    name = "hybrid-oracle"
    routing = { policy = "oracle", simple = "edge", complex = "central" }
    [prices.edge]                  # USD per million tokens (bench/pricing.py has defaults)
    prompt = 0.1
    output = 0.4
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines.launch import KINDS, EngineSpec
from traces.errors import TraceError


@dataclass
class TraceSpec:
    path: str = "profile:demo"
    format: str | None = None
    sessions: int | None = None
    seed: int = 0
    token_scale: float = 1.0
    max_context: int | None = None
    think_scale: float = 1.0
    time_scale: float = 1.0
    calls_per_session: int | None = None  # keep sessions with at least N calls, cut to their first N


@dataclass
class LoadSpec:
    mode: str = "closed"
    users: int = 8
    session_rate: float = 0.0
    arrivals: str = "trace"
    rate: float = 0.0
    gamma_cv: float = 2.0
    duration_s: float = 0.0
    warmup_s: float = 0.0
    repetitions: int = 1
    workers: int = 0
    master_host: str | None = None
    timeout_s: float = 600.0
    side_by_side: bool = False  # engines run at the same time (default: one after another)
    early_stop: list[str] = field(default_factory=list)  # e.g. ["ttft_p99<=500"]: stop once decided
    early_stop_confidence: float = 0.95

    def early_stop_rules(self) -> list:
        from analysis.stats import EarlyStopRule
        return [EarlyStopRule.parse(r, self.early_stop_confidence) for r in self.early_stop]


@dataclass
class RunSpec:
    name: str = "run"
    model: str = "tiny"
    trace: TraceSpec = field(default_factory=TraceSpec)
    load: LoadSpec = field(default_factory=LoadSpec)
    engines: list[EngineSpec] = field(default_factory=lambda: [EngineSpec("reference")])
    slos: dict[str, float] = field(default_factory=dict)
    # latency tiers: each a network profile in front of one of the engines (bench/tiers.py keys,
    # plus `engine`); scenarios replay the workload through the tier gateway, each with its
    # routing policy (bench/routing.py); prices per tier (bench/pricing.py)
    tiers: list[dict] = field(default_factory=list)
    scenarios: list[dict] = field(default_factory=list)
    prices: dict = field(default_factory=dict)
    source: str = ""  # the spec file, if any

    def tier_scenarios(self) -> list[dict]:
        """The scenarios to run: as given, or one per tier (every call to that tier)."""
        if self.scenarios:
            return self.scenarios
        return [{"name": t["name"], "routing": {"policy": "fixed", "tier": t["name"]}} for t in self.tiers]

    def to_dict(self) -> dict:
        return asdict(self)


_INTS = {"sessions", "max_context", "users", "repetitions", "workers", "seed", "calls_per_session"}
_CHOICES = {("load", "mode"): ("closed", "open"), ("load", "arrivals"): ("trace", "poisson", "gamma")}
_POSITIVE = {("load", "users"), ("load", "repetitions"), ("trace", "token_scale"),
             ("trace", "time_scale"), ("trace", "sessions"), ("trace", "max_context"), ("load", "timeout_s"),
             ("trace", "calls_per_session")}
_NONNEG = {("trace", "think_scale"), ("load", "session_rate"), ("load", "rate"), ("load", "duration_s"), ("load", "warmup_s"),
           ("load", "workers"), ("load", "gamma_cv")}


def load_spec(path: str | Path) -> RunSpec:
    """Parse and validate a TOML run spec; TraceError names the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(p, f"cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise TraceError(p, f"invalid TOML: {str(e).split(' (at')[0]}", int(m.group(1)) if m else None) from None
    return spec_from_dict(data, p, text)


def spec_from_dict(data: dict, path: Path | str = "<flags>", text: str = "") -> RunSpec:
    def fail(msg: str, fieldname: str, key: str | None = None):
        raise TraceError(path, msg, _line_of(text, key or fieldname.split(".")[-1].split("[")[0]), fieldname)

    known_top = {"name", "model", "trace", "load", "engines", "slos", "tiers", "scenarios", "prices"}
    for k in data:
        if k not in known_top:
            fail(f"unknown key (known: {', '.join(sorted(known_top))})", k)
    spec = RunSpec(source=str(path))
    spec.name = str(data.get("name", spec.name))
    spec.model = str(data.get("model", spec.model))
    for section, obj in (("trace", spec.trace), ("load", spec.load)):
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            fail("expected a table", section)
        for k, v in raw.items():
            if not hasattr(obj, k):
                fail(f"unknown key (known: {', '.join(sorted(vars(obj)))})", f"{section}.{k}", k)
            setattr(obj, k, _check(section, k, v, getattr(obj, k), fail))
    engines = data.get("engines")
    if engines is not None:
        if not isinstance(engines, list) or not engines:
            fail("expected a non-empty array of tables ([[engines]])", "engines")
        spec.engines = []
        for i, e in enumerate(engines):
            where = f"engines[{i}]"
            if not isinstance(e, dict):
                fail("expected a table", where)
            kind = e.get("kind") or ("url" if "url" in e else None)
            if kind not in KINDS:
                fail(f"expected kind = one of {', '.join(KINDS)}", f"{where}.kind", "kind")
            args = e.get("args", [])
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                fail("expected an array of strings", f"{where}.args", "args")
            env = e.get("env", {})
            if not isinstance(env, dict):
                fail("expected a table of strings", f"{where}.env", "env")
            unknown = set(e) - {"kind", "name", "model", "url", "served_model", "api_key_env", "args", "env", "startup_timeout_s"}
            if unknown:
                fail(f"unknown key {sorted(unknown)[0]!r}", f"{where}.{sorted(unknown)[0]}", sorted(unknown)[0])
            if kind == "url" and not str(e.get("url", "")).startswith(("http://", "https://")):
                fail("expected an http(s) URL", f"{where}.url", "url")
            spec.engines.append(EngineSpec(kind, name=e.get("name", ""), model=e.get("model"), url=e.get("url"),
                                           served_model=e.get("served_model"), api_key_env=e.get("api_key_env"),
                                           args=list(args), env={str(k): str(v) for k, v in env.items()},
                                           startup_timeout_s=float(e.get("startup_timeout_s", 0.0))))
        names = [e.name for e in spec.engines]
        for i, n in enumerate(names):
            if n in names[:i]:
                fail(f"duplicate engine name {n!r}: give each a name", f"engines[{i}].name", "name")
    slos = data.get("slos", {})
    if not isinstance(slos, dict):
        fail("expected a table", "slos")
    for k, v in slos.items():
        if k not in ("ttft_ms", "tpot_ms", "e2el_ms", "itl_ms"):
            fail("unknown SLO (ttft_ms, tpot_ms, itl_ms, e2el_ms)", f"slos.{k}", k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            fail(f"expected a positive number, got {v!r}", f"slos.{k}", k)
        spec.slos[k] = float(v)
    _tiers_from_dict(data, spec, fail)
    if spec.load.mode == "open" and spec.load.arrivals != "trace" and not spec.load.rate:
        fail("open-loop poisson/gamma arrivals need load.rate > 0", "load.rate", "rate")
    return spec


def _tiers_from_dict(data: dict, spec: RunSpec, fail) -> None:
    """[[tiers]], [[scenarios]] and [prices], checked with the code that will use them."""
    from bench.pricing import PriceTable
    from bench.routing import make_policy
    from bench.tiers import Tier

    tiers, scenarios, prices = data.get("tiers", []), data.get("scenarios", []), data.get("prices", {})
    if not isinstance(tiers, list):
        fail("expected an array of tables ([[tiers]])", "tiers")
    if not isinstance(scenarios, list):
        fail("expected an array of tables ([[scenarios]])", "scenarios")
    if not isinstance(prices, dict):
        fail("expected a table ([prices.TIER])", "prices")
    if scenarios and not tiers:
        fail("scenarios need [[tiers]]", "scenarios")
    engine_names = [e.name for e in spec.engines]
    checked = []
    for i, t in enumerate(tiers):
        where = f"tiers[{i}]"
        if not isinstance(t, dict):
            fail("expected a table", where)
        eng = t.get("engine", engine_names[0] if len(engine_names) == 1 else None)
        if eng not in engine_names:
            fail(f"expected engine = the name of one of the [[engines]] ({', '.join(engine_names)})",
                 f"{where}.engine", "engine")
        body = {k: v for k, v in t.items() if k != "engine"}
        try:
            checked.append(Tier.from_dict({**body, "url": "http://127.0.0.1:1"}))
        except ValueError as e:
            fail(str(e), where, "name")
        spec.tiers.append({**body, "engine": eng})
    names = [t.name for t in checked]
    for i, n in enumerate(names):
        if n in names[:i]:
            fail(f"duplicate tier name {n!r}", f"tiers[{i}].name", "name")
    try:
        table = PriceTable.from_spec(prices)
    except ValueError as e:
        fail(str(e), "prices")
    spec.prices = dict(prices)
    seen = set()
    for i, sc in enumerate(scenarios):
        where = f"scenarios[{i}]"
        if not isinstance(sc, dict) or not isinstance(sc.get("name"), str) or not sc["name"]:
            fail("expected a table with a name", f"{where}.name", "name")
        if sc["name"] in seen:
            fail(f"duplicate scenario name {sc['name']!r}", f"{where}.name", "name")
        seen.add(sc["name"])
        unknown = set(sc) - {"name", "routing"}
        if unknown:
            fail(f"unknown key {sorted(unknown)[0]!r} (known: name, routing)", f"{where}.{sorted(unknown)[0]}")
        routing = sc.get("routing", {})
        if not isinstance(routing, dict):
            fail("expected a table", f"{where}.routing", "routing")
        try:
            make_policy(routing, checked, table)
        except ValueError as e:
            fail(str(e), f"{where}.routing", "routing")
        spec.scenarios.append({"name": sc["name"], "routing": dict(routing)})


def _check(section: str, key: str, value, default, fail):
    fieldname = f"{section}.{key}"
    if key == "early_stop":
        from analysis.stats import EarlyStopRule
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail("expected an array of rules like \"ttft_p99<=500\"", fieldname, key)
        for v in value:
            try:
                EarlyStopRule.parse(v)
            except ValueError as e:
                fail(str(e), fieldname, key)
        return list(value)
    if key == "early_stop_confidence":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 < value < 1:
            fail(f"expected a number between 0.5 and 1, got {value!r}", fieldname, key)
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail(f"expected true or false, got {value!r}", fieldname, key)
        return value
    if (section, key) in _CHOICES:
        if value not in _CHOICES[(section, key)]:
            fail(f"expected one of {', '.join(_CHOICES[(section, key)])}, got {value!r}", fieldname, key)
        return value
    if isinstance(default, str) or key in ("path", "format", "master_host"):
        if value is not None and not isinstance(value, str):
            fail(f"expected a string, got {value!r}", fieldname, key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"expected a number, got {value!r}", fieldname, key)
    if key in _INTS and not float(value).is_integer():
        fail(f"expected an integer, got {value!r}", fieldname, key)
    if (section, key) in _POSITIVE and value <= 0:
        fail(f"must be > 0, got {value!r}", fieldname, key)
    if (section, key) in _NONNEG and value < 0:
        fail(f"must be >= 0, got {value!r}", fieldname, key)
    if key in _INTS:
        return int(value)
    return float(value)


def _line_of(text: str, key: str | None) -> int | None:
    if not text or not key:
        return None
    m = re.search(rf"^\s*{re.escape(key)}\s*=", text, re.M) or re.search(rf"^\s*\[+\s*{re.escape(key)}\s*\]+", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None
