"""Run specs: a TOML file, or the same from command-line flags, describing one run.

docs/spec.md lists every table and key with its type, default and meaning; tools/spec_docs.py
writes it from the dataclasses below (a field's trailing comment is its meaning there, so keep
each one a single line) and a test fails when it is stale.

Each table is a dataclass that checks its own keys (`__post_init__`, raising FieldError with the
key); `RunSpec.check` checks what spans tables (a tier's engine, unique names, each scenario's
routing over the tiers and prices). `load_spec` / `spec_from_dict` turn either into a SpecError
that names the file, the line where known, and the field: `spec.toml:12: field 'tiers[0].rtt_ms': ...`.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load.open_loop import ARRIVALS
from bench.tiers.network import TIER_NAME, FaultError, Tier, fault_profile, faults_from_dict, profile_from_dict
from bench.tiers.routing import SIZES
from engines.launch import KINDS, EngineSpec

if TYPE_CHECKING:
    from bench.tiers.pricing import PriceTable

MODES = ("closed", "open")  # closed: locust sessions; open: calls at their times
TOP_KEYS = ("name", "model", "trace", "load", "engines", "slos", "tiers", "scenarios", "prices", "sweep")
# [slos]: each a bound in ms for goodput; vLLM's goodput takes these three (ITL is per gap, not per call)
SLOS = {"ttft_ms": "time to first token", "tpot_ms": "time per output token", "e2el_ms": "end-to-end latency"}
# [[engines]]: engines/launch.py's EngineSpec (`tierbench ab` sets cwd for a git ref and cpus, not specs)
ENGINE_KEYS = tuple(f.name for f in fields(EngineSpec) if f.name not in ("cwd", "cpus"))


class SpecError(Exception):
    """Bad input in a run spec. `str()` is the one line the CLI prints: FILE[:LINE]: field 'X': message."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        self.path, self.message, self.line, self.field = str(path), message, line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class FieldError(ValueError):
    """A bad key of one table, from the table's own check; the loader adds the file, line and table."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class TraceSpec:
    """The sessions to replay and how they are scaled."""
    path: str = "profile:demo"  # a trace file, a directory of them, or profile:NAME (synthetic sessions)
    format: str | None = None  # the trace's format (default: detected)
    sessions: int | None = None  # sessions to replay (default: all of a file; 32 from a profile)
    seed: int = 0  # seed of the synthetic sessions and every random draw of the run
    token_scale: float = 1.0  # scale every prompt and output length
    max_context: int | None = None  # cut prompts to this many tokens (default: no limit)
    think_scale: float = 1.0  # scale the tool/think time between a session's calls (0: none)
    time_scale: float = 1.0  # scale the trace's arrival times (open loop)
    calls_per_session: int | None = None  # keep sessions with at least N calls, cut to their first N


@dataclass
class LoadSpec:
    """How the sessions are played against each engine."""
    mode: str = "closed"  # closed (locust sessions) | open (calls at their times)
    users: int = 8  # closed loop: concurrent sessions
    session_rate: float = 0.0  # closed loop: session arrivals/s (0: the trace's)
    arrivals: str = "trace"  # open loop: trace | poisson | gamma
    rate: float = 0.0  # open loop: calls/s for poisson | gamma
    gamma_cv: float = 2.0  # open loop: the gamma arrivals' coefficient of variation
    duration_s: float = 0.0  # stop after this long (0: when the workload is done)
    warmup_s: float = 0.0  # leave the first seconds out of the measurement
    repetitions: int = 1  # replays of the workload per engine
    workers: int = 0  # locust worker processes (distributed mode; 0: one process)
    master_host: str | None = None  # bind the locust master here; remote workers connect to it
    timeout_s: float = 600.0  # one call's whole time-out, from its send to its last byte (timeout:total)
    connect_timeout_s: float = 30.0  # one call's time-out to connect, TCP and TLS (timeout:connect; 0: none)
    ttft_timeout_s: float = 0.0  # one call's time-out from its send to its first token (timeout:ttft; 0: none)
    stall_timeout_s: float = 0.0  # the longest gap in a stream once tokens flow (timeout:stall; 0: none)
    retry_rejected: int = 0  # resend a call rejected with 429/503 and Retry-After up to N times, after the delay
    side_by_side: bool = False  # all engines at once instead of one after another
    early_stop: list[str] = field(default_factory=list)  # stop once every target is decided, e.g. ["ttft_p99<=500"]
    early_stop_confidence: float = 0.95  # the confidence early_stop decides at
    scrape_interval_s: float = 1.0  # seconds between scrapes of each engine's /metrics (server_metrics.parquet; 0: off)

    def early_stop_rules(self) -> list:
        from analysis.stats import EarlyStopRule
        return [EarlyStopRule.parse(r, self.early_stop_confidence) for r in self.early_stop]


@dataclass
class TierSpec:
    """A network profile in front of one of the [[engines]] (bench/tiers/network.py)."""
    name: str  # the tier's name; a built-in profile's name alone is that profile
    profile: str | dict | None = None  # built-in NAME or NAME:RTT_MS, then ,KEY=VALUE faults; or a table of rtt_* keys
    rtt_ms: float | None = None  # a fixed round trip (instead of profile)
    rtt_p5_ms: float | None = None  # a lognormal round trip's 5th percentile (with rtt_p95_ms)
    rtt_p95_ms: float | None = None  # a lognormal round trip's 95th percentile (with rtt_p5_ms)
    jitter_ms: float | None = None  # extra delay per transfer, uniform in +-jitter_ms (default 0)
    bandwidth_mbps: float | None = None  # link rate: a transfer also takes bytes * 8 / rate (default: unlimited)
    faults: dict | None = None  # faults the gateway injects on purpose: a table of the keys below (default: none)
    size: str | None = None  # the model class there, small | large (default: large from 150 ms median RTT)
    price_per_m_prompt: float | None = None  # USD per million prompt tokens (default: [prices.NAME])
    price_per_m_output: float | None = None  # USD per million output tokens (default: [prices.NAME])
    est_prefill_ms_per_1k_tokens: float | None = None  # prefill speed estimate for the budget policy
    est_decode_ms_per_token: float | None = None  # decode speed estimate for the budget policy
    api_key_env: str | None = None  # environment variable whose API key the gateway sends upstream
    engine: str | None = None  # the [[engines]] name serving it (default: the only engine)
    extra: dict = field(default_factory=dict)  # any other key: kept with the tier, unchecked

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TIER_NAME.match(self.name):
            raise FieldError("name", f"expected a tier name (letters, digits, _ . -), got {self.name!r}")
        for key in ("engine", "api_key_env"):
            _expect_str(self, key)
        for key in ("rtt_ms", "rtt_p5_ms", "rtt_p95_ms", "jitter_ms", "bandwidth_mbps"):
            _expect_number(self, key)
        for key in ("price_per_m_prompt", "price_per_m_output", "est_prefill_ms_per_1k_tokens",
                    "est_decode_ms_per_token"):
            _expect_number(self, key, minimum=0)
        if self.size is not None and self.size not in SIZES:
            raise FieldError("size", f"expected one of {', '.join(SIZES)}, got {self.size!r}")
        if self.faults is not None:
            try:
                fault_profile(self.faults)
            except FaultError as e:
                raise FieldError("faults" if e.key == "faults" else f"faults.{e.key}", e.message) from None
        try:
            profile_from_dict(self.table(), self.name)
            faults_from_dict(self.table(), self.name)
        except ValueError as e:
            given = [k for k in ("profile", "rtt_ms", "rtt_p5_ms", "rtt_p95_ms") if getattr(self, k) is not None]
            raise FieldError(given[0] if given else "name", str(e)) from None

    def table(self) -> dict:
        """The tier's keys as given, but `engine`: what bench/tiers/network.py Tier.from_dict reads."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("engine", "extra")}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def tier(self, url: str, model: str | None = None) -> Tier:
        """The network.py Tier in front of `url`, the engine's (known once it runs)."""
        return Tier.from_dict({**self.table(), "url": url, "model": model})

    def to_dict(self) -> dict:
        return {**self.table(), "engine": self.engine}


@dataclass
class ScenarioSpec:
    """One replay of the workload through the tier gateway, each call routed by its policy."""
    name: str  # the scenario's name: its group (engine column) in the results
    routing: dict = field(default_factory=dict)  # the routing policy: { policy = NAME, ...its keys } (below)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FieldError("name", f"expected a non-empty string, got {self.name!r}")
        if not isinstance(self.routing, dict):
            raise FieldError("routing", f"expected a table, got {self.routing!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "routing": dict(self.routing)}


@dataclass
class PriceSpec:
    """USD per million tokens on one tier; keys left out keep the tier's default price
    (bench/tiers/pricing.py; a tier without one needs prompt and output)."""
    prompt: float | None = None  # prompt tokens
    output: float | None = None  # output tokens
    cached_prompt: float | None = None  # prompt tokens served from the prefix cache (default: the prompt price)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf")):
                raise FieldError(f.name, f"expected a number >= 0 (USD per million tokens), got {v!r}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class RunSpec:
    """The top level of a run spec."""
    name: str = "run"  # the run's name (default directory results/NAME)
    model: str = "tiny"  # a checkpoint directory, or "tiny" (built on first use)
    trace: TraceSpec = field(default_factory=TraceSpec)  # the sessions to replay
    load: LoadSpec = field(default_factory=LoadSpec)  # how they are played
    engines: list[EngineSpec] = field(default_factory=lambda: [EngineSpec("reference")])  # the engines compared
    slos: dict[str, float] = field(default_factory=dict)  # latency bounds (ms) a call must meet to count as goodput
    tiers: list[TierSpec] = field(default_factory=list)  # latency tiers: the run goes through the tier gateway
    scenarios: list[ScenarioSpec] = field(default_factory=list)  # replays through the tiers (default: one per tier)
    prices: dict[str, PriceSpec] = field(default_factory=dict)  # per-tier prices over the defaults
    sweep: dict = field(default_factory=dict)  # `tierbench sweep`'s load points and SLOs (the [sweep] table below)
    source: str = ""  # the spec file, if any (not a key)

    def tier_scenarios(self) -> list[ScenarioSpec]:
        """The scenarios to run: as given, or one per tier (every call to that tier)."""
        if self.scenarios:
            return self.scenarios
        return [ScenarioSpec(t.name, {"policy": "fixed", "tier": t.name}) for t in self.tiers]

    def price_table(self) -> PriceTable:
        """The bench.tiers.pricing.PriceTable of [prices] over the defaults; ValueError on a gap."""
        from bench.tiers.pricing import PriceTable  # local: numpy stays out of the CLI's start-up
        return PriceTable.from_spec({tier: p.to_dict() for tier, p in self.prices.items()})

    def check(self) -> None:
        """What no single table checks alone; FieldError naming the field."""
        from bench.tiers.routing import make_policy

        if self.scenarios and not self.tiers:
            raise FieldError("scenarios", "scenarios need [[tiers]]")
        engines = [e.name for e in self.engines]
        for i, t in enumerate(self.tiers):
            if t.engine not in engines:
                raise FieldError(f"tiers[{i}].engine",
                                 f"expected engine = the name of one of the [[engines]] ({', '.join(engines)})")
            if t.name in [u.name for u in self.tiers[:i]]:
                raise FieldError(f"tiers[{i}].name", f"duplicate tier name {t.name!r}")
        try:
            prices = self.price_table()
        except ValueError as e:
            raise _located(e, "prices") from None
        tiers = [t.tier("http://127.0.0.1:1") for t in self.tiers]  # a stand-in URL: the engine's is known later
        for i, sc in enumerate(self.scenarios):
            if sc.name in [s.name for s in self.scenarios[:i]]:
                raise FieldError(f"scenarios[{i}].name", f"duplicate scenario name {sc.name!r}")
            try:
                make_policy(sc.routing, tiers, prices)
            except ValueError as e:
                raise _located(e, "routing", f"scenarios[{i}].") from None

    def to_dict(self) -> dict:
        """JSON-ready (run.json's "spec"); tiers, scenarios and prices hold the keys as given."""
        d = asdict(replace(self, tiers=[], scenarios=[], prices={}))
        d.update(tiers=[t.to_dict() for t in self.tiers], scenarios=[s.to_dict() for s in self.scenarios],
                 prices={tier: p.to_dict() for tier, p in self.prices.items()},
                 engines=[{k: v for k, v in e.items() if k in ENGINE_KEYS} for e in d["engines"]])
        return d


# -- reading a spec -------------------------------------------------------------------------------

_INTS = {"sessions", "max_context", "users", "repetitions", "workers", "seed", "calls_per_session"}
_CHOICES = {("load", "mode"): MODES, ("load", "arrivals"): ARRIVALS}
_POSITIVE = {("load", "users"), ("load", "repetitions"), ("trace", "token_scale"),
             ("trace", "time_scale"), ("trace", "sessions"), ("trace", "max_context"), ("load", "timeout_s"),
             ("trace", "calls_per_session")}
_NONNEG = {("trace", "think_scale"), ("load", "session_rate"), ("load", "rate"), ("load", "duration_s"),
           ("load", "warmup_s"), ("load", "workers"), ("load", "gamma_cv"), ("load", "scrape_interval_s")}


def load_spec(path: str | Path, sweep: bool = False) -> RunSpec:
    """Parse and validate a TOML run spec; SpecError names the file, line and field. sweep: for
    `tierbench sweep`, which sets load.rate itself."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(p, f"cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise SpecError(p, f"invalid TOML: {str(e).split(' (at')[0]}", int(m.group(1)) if m else None) from None
    return spec_from_dict(data, p, text, sweep)


def spec_from_dict(data: dict, path: Path | str = "<flags>", text: str = "", sweep: bool = False) -> RunSpec:
    """A RunSpec from a parsed spec (`text`, the TOML, finds lines); SpecError on a bad one."""
    def fail(msg: str, fieldname: str):
        raise SpecError(path, msg, _line_of(text, fieldname), fieldname)

    for k in data:
        if k not in TOP_KEYS:
            fail(f"unknown key (known: {', '.join(sorted(TOP_KEYS))})", k)
    spec = RunSpec(source=str(path))
    spec.name = str(data.get("name", spec.name))
    spec.model = str(data.get("model", spec.model))
    for section, obj in (("trace", spec.trace), ("load", spec.load)):
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            fail("expected a table", section)
        for k, v in raw.items():
            if not hasattr(obj, k):
                fail(f"unknown key (known: {', '.join(sorted(vars(obj)))})", f"{section}.{k}")
            setattr(obj, k, _check(section, k, v, getattr(obj, k), fail))
    if data.get("engines") is not None:
        spec.engines = _engines(data["engines"], fail)
    slos = data.get("slos", {})
    if not isinstance(slos, dict):
        fail("expected a table", "slos")
    for k, v in slos.items():
        if k not in SLOS:
            fail(f"unknown SLO ({', '.join(SLOS)})", f"slos.{k}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            fail(f"expected a positive number, got {v!r}", f"slos.{k}")
        spec.slos[k] = float(v)
    _tier_tables(data, spec, fail)
    if not isinstance(data.get("sweep", {}), dict):
        fail("expected a table", "sweep")
    spec.sweep = dict(data.get("sweep", {}))  # its keys are checked by `tierbench sweep` (bench/sweep/config.py)
    if spec.load.mode == "open" and spec.load.arrivals != "trace" and not spec.load.rate and not sweep:
        fail("open-loop poisson/gamma arrivals need load.rate > 0", "load.rate")
    return spec


def _engines(engines, fail) -> list[EngineSpec]:
    if not isinstance(engines, list) or not engines:
        fail("expected a non-empty array of tables ([[engines]])", "engines")
    out = []
    for i, e in enumerate(engines):
        where = f"engines[{i}]"
        if not isinstance(e, dict):
            fail("expected a table", where)
        kind = e.get("kind") or ("url" if "url" in e else None)
        if kind not in KINDS:
            fail(f"expected kind = one of {', '.join(KINDS)}", f"{where}.kind")
        args = e.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            fail("expected an array of strings", f"{where}.args")
        env = e.get("env", {})
        if not isinstance(env, dict):
            fail("expected a table of strings", f"{where}.env")
        unknown = sorted(set(e) - set(ENGINE_KEYS))
        if unknown:
            fail(f"unknown key {unknown[0]!r}", f"{where}.{unknown[0]}")
        if e.get("python") is not None and not isinstance(e["python"], str):
            fail("expected the path of a Python interpreter (a string)", f"{where}.python")
        if kind == "url" and not str(e.get("url", "")).startswith(("http://", "https://")):
            fail("expected an http(s) URL", f"{where}.url")
        out.append(EngineSpec(kind, name=e.get("name", ""), model=e.get("model"), url=e.get("url"),
                              served_model=e.get("served_model"), api_key_env=e.get("api_key_env"),
                              args=list(args), env={str(k): str(v) for k, v in env.items()},
                              startup_timeout_s=float(e.get("startup_timeout_s", 0.0)), python=e.get("python")))
    names = [e.name for e in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            fail(f"duplicate engine name {n!r}: give each a name", f"engines[{i}].name")
    return out


def _tier_tables(data: dict, spec: RunSpec, fail) -> None:
    """[[tiers]], [[scenarios]] and [prices]: each table built (it checks its keys), then what spans them."""
    tiers, scenarios, prices = data.get("tiers", []), data.get("scenarios", []), data.get("prices", {})
    if not isinstance(tiers, list):
        fail("expected an array of tables ([[tiers]])", "tiers")
    if not isinstance(scenarios, list):
        fail("expected an array of tables ([[scenarios]])", "scenarios")
    if not isinstance(prices, dict):
        fail("expected a table ([prices.TIER])", "prices")
    engines = [e.name for e in spec.engines]
    for i, t in enumerate(tiers):
        tier = _table(TierSpec, t, f"tiers[{i}]", fail)
        if tier.engine is None and len(engines) == 1:
            tier.engine = engines[0]
        spec.tiers.append(tier)
    for name, p in prices.items():
        spec.prices[name] = _table(PriceSpec, p, f"prices.{name}", fail)
    for i, sc in enumerate(scenarios):
        spec.scenarios.append(_table(ScenarioSpec, sc, f"scenarios[{i}]", fail))
    try:
        spec.check()
    except FieldError as e:
        fail(e.message, e.field)


def _table(cls, raw, where: str, fail):
    """One table as its dataclass: unknown keys go to its `extra` where it has one, else fail."""
    if not isinstance(raw, dict):
        fail("expected a table", where)
    names = [f.name for f in fields(cls) if f.name != "extra"]
    known = {k: v for k, v in raw.items() if k in names}
    extra = {k: v for k, v in raw.items() if k not in names}
    if extra and "extra" not in cls.__dataclass_fields__:
        k = next(iter(extra))
        fail(f"unknown key {k!r} (known: {', '.join(names)})", f"{where}.{k}")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in known:
            fail("missing", f"{where}.{f.name}")
    try:
        return cls(**known, **({"extra": extra} if extra else {}))
    except FieldError as e:
        fail(e.message, f"{where}.{e.field}")


def _located(e: ValueError, table: str, prefix: str = "") -> FieldError:
    """A FieldError from a "table.key: message" ValueError (the pricing and routing modules' form)."""
    m = re.match(rf"({re.escape(table)}(?:\.[^\s:]+)?): (.*)", str(e), re.S)
    return FieldError(prefix + m.group(1), m.group(2)) if m else FieldError(prefix + table, str(e))


def _expect_str(obj, key: str) -> None:
    v = getattr(obj, key)
    if v is not None and not isinstance(v, str):
        raise FieldError(key, f"expected a string, got {v!r}")


def _expect_number(obj, key: str, minimum: float | None = None) -> None:
    v = getattr(obj, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise FieldError(key, f"expected a number, got {v!r}")
    if minimum is not None and v < minimum:
        raise FieldError(key, f"must be >= {minimum:g}, got {v!r}")


def _check(section: str, key: str, value, default, fail):
    fieldname = f"{section}.{key}"
    if key == "early_stop":
        from analysis.stats import EarlyStopRule
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail("expected an array of rules like \"ttft_p99<=500\"", fieldname)
        for v in value:
            try:
                EarlyStopRule.parse(v)
            except ValueError as e:
                fail(str(e), fieldname)
        return list(value)
    if key == "early_stop_confidence":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 < value < 1:
            fail(f"expected a number between 0.5 and 1, got {value!r}", fieldname)
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail(f"expected true or false, got {value!r}", fieldname)
        return value
    if (section, key) in _CHOICES:
        if value not in _CHOICES[(section, key)]:
            fail(f"expected one of {', '.join(_CHOICES[(section, key)])}, got {value!r}", fieldname)
        return value
    if isinstance(default, str) or key in ("path", "format", "master_host"):
        if value is not None and not isinstance(value, str):
            fail(f"expected a string, got {value!r}", fieldname)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"expected a number, got {value!r}", fieldname)
    if key in _INTS and not float(value).is_integer():
        fail(f"expected an integer, got {value!r}", fieldname)
    if (section, key) in _POSITIVE and value <= 0:
        fail(f"must be > 0, got {value!r}", fieldname)
    if (section, key) in _NONNEG and value < 0:
        fail(f"must be >= 0, got {value!r}", fieldname)
    if key in _INTS:
        return int(value)
    return float(value)


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")


def _line_of(text: str, fieldname: str) -> int | None:
    """The line of a field in the TOML: its key inside its own table (`tiers[1].rtt_ms`: the second
    [[tiers]]; `prices.edge.prompt`: [prices.edge]), the innermost key found first, else the table's
    header; a field in no table, the first line setting its key. None when nothing matches."""
    if not text:
        return None
    lines = text.splitlines()
    parts = [(m.group(1), int(m.group(2)) if m.group(2) else 0) for m in re.finditer(r"([^.\[\]]+)(?:\[(\d+)\])?",
                                                                                    fieldname)]
    headers = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := _HEADER.match(ln))]
    for cut in range(len(parts), 0, -1):  # the longest table name the field starts with
        table, index = ".".join(p for p, _ in parts[:cut]), parts[cut - 1][1]
        starts = [i for i, name in headers if name == table]
        if len(starts) > index:
            start = starts[index]
            end = next((i for i, _ in headers if i > start), len(lines))
            return _key_line(lines, start + 1, end, [p for p, _ in parts[cut:]]) or start + 1
    top_end = headers[0][0] if headers else len(lines)
    keys = [p for p, _ in parts]
    return _key_line(lines, 0, top_end, keys) or _key_line(lines, 0, len(lines), keys[-1:])


def _key_line(lines: list[str], start: int, end: int, keys: list[str]) -> int | None:
    """The 1-based line in lines[start:end] that sets the innermost of `keys` found."""
    for key in reversed(keys):
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start, end):
            if pattern.match(lines[i]):
                return i + 1
    return None
