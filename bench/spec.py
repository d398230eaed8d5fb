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
    source: str = ""  # the spec file, if any

    def to_dict(self) -> dict:
        return asdict(self)


_INTS = {"sessions", "max_context", "users", "repetitions", "workers", "seed"}
_CHOICES = {("load", "mode"): ("closed", "open"), ("load", "arrivals"): ("trace", "poisson", "gamma")}
_POSITIVE = {("load", "users"), ("load", "repetitions"), ("trace", "token_scale"),
             ("trace", "time_scale"), ("trace", "sessions"), ("trace", "max_context"), ("load", "timeout_s")}
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

    known_top = {"name", "model", "trace", "load", "engines", "slos"}
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
    if spec.load.mode == "open" and spec.load.arrivals != "trace" and not spec.load.rate:
        fail("open-loop poisson/gamma arrivals need load.rate > 0", "load.rate", "rate")
    return spec


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
