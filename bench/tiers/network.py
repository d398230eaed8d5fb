"""Latency tiers: a network profile (round-trip time distribution, optional jitter and bandwidth)
plus the engine endpoint behind it. The tier gateway (bench/tiers/gateway/) injects the profile's
delay in front of each tier's engine.

Built-in profiles (lognormal RTTs whose 5th-95th percentiles span the range):

    device    device edge     0.2 - 1 ms
    metro     metro edge      10 - 50 ms
    regional  regional edge   50 - 150 ms
    central   central cloud   200 - 500 ms

On the command line `--tier NAME` is a built-in profile and `--tier NAME:RTT_MS` a fixed
round-trip time (`--tier lab:50`): `parse_tier`. Fault options follow after commas, each a
FaultProfile key: `--tier central,reset_rate=0.01,spike_rate=0.01,spike_ms=2000`.

A tier in a run spec or a gateway config (`Tier.from_dict`), keys:

    name              the tier's name (required)
    url               the engine's base URL, e.g. http://127.0.0.1:8000 (required; alias `upstream`)
    model             the served model name sent upstream (default: the request's own)
    price_per_m_prompt, price_per_m_output   price per million prompt / output tokens (default 0)
    api_key_env       environment variable with the upstream's API key (default: the client's
                      Authorization header is passed through)
    network profile, one of:
      profile         a built-in name or NAME:RTT_MS (`parse_tier` syntax), or a table of the keys below
      rtt_ms          a fixed round-trip time
      rtt_p5_ms, rtt_p95_ms   a lognormal round-trip time with these 5th and 95th percentiles
      (none of them: the tier's name must be a built-in profile)
    jitter_ms         extra delay per transfer, uniform in [-jitter_ms, +jitter_ms] (netem's
                      default), never reordering chunks; overrides the profile's (default 0)
    bandwidth_mbps    link rate: each transfer also takes bytes * 8 / rate (default: unlimited)
    faults            a table of FaultProfile keys (below); also accepted as options of a `profile`
                      string (`profile = "central,reset_rate=0.01"`, the `--tier` form)

Faults (FaultProfile), injected by the gateway on purpose, each call drawn on its own: a
connection reset, a stall, an HTTP 5xx answer (these three exclude one another: one draw per call
picks at most one, so their rates sum to at most 1) and an RTT spike (drawn apart: it can fall on
any call). A reset and a stall strike a stream after the first chunk of its body (a reset where the
rest would have gone out; a stall delays all the rest), a non-streamed answer in its place; the
5xx never reaches the engine; a spike adds spike_ms to the call's round trip.

Random draws come from a `random.Random` the caller owns (`rng_for`: one per gateway and tier,
seeded), so a seeded run draws the same RTT sequence per tier.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace

Z95 = 1.6448536269514722  # the standard normal's 95th percentile

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # letters, digits, _ . -


@dataclass(frozen=True)
class NetworkProfile:
    """A round-trip time, fixed (rtt_ms) or lognormal (rtt_p5_ms..rtt_p95_ms), with optional
    per-transfer jitter and a link bandwidth."""
    name: str
    rtt_ms: float | None = None
    rtt_p5_ms: float | None = None
    rtt_p95_ms: float | None = None
    jitter_ms: float = 0.0
    bandwidth_mbps: float | None = None

    def __post_init__(self) -> None:
        fixed = self.rtt_ms is not None
        logn = self.rtt_p5_ms is not None or self.rtt_p95_ms is not None
        if fixed == logn:
            raise ValueError(f"network profile {self.name!r}: give either rtt_ms or both rtt_p5_ms and rtt_p95_ms")
        if fixed and not (math.isfinite(self.rtt_ms) and self.rtt_ms >= 0):
            raise ValueError(f"network profile {self.name!r}: rtt_ms must be >= 0, got {self.rtt_ms}")
        if logn:
            lo, hi = self.rtt_p5_ms, self.rtt_p95_ms
            if lo is None or hi is None:
                raise ValueError(f"network profile {self.name!r}: a lognormal RTT needs both rtt_p5_ms and rtt_p95_ms")
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"network profile {self.name!r}: need 0 < rtt_p5_ms <= rtt_p95_ms, got {lo}, {hi}")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            raise ValueError(f"network profile {self.name!r}: jitter_ms must be >= 0, got {self.jitter_ms}")
        if self.bandwidth_mbps is not None and not (self.bandwidth_mbps > 0):
            raise ValueError(f"network profile {self.name!r}: bandwidth_mbps must be > 0, got {self.bandwidth_mbps}")

    @property
    def fixed(self) -> bool:
        return self.rtt_ms is not None

    @property
    def lognormal_params(self) -> tuple[float, float]:
        """(mu, sigma) of ln(RTT in ms)."""
        a, b = math.log(self.rtt_p5_ms), math.log(self.rtt_p95_ms)
        return (a + b) / 2, (b - a) / (2 * Z95)

    @property
    def median_rtt_ms(self) -> float:
        return self.rtt_ms if self.fixed else math.exp(self.lognormal_params[0])

    def draw_rtt_s(self, rng: random.Random) -> float:
        """One round-trip time in seconds."""
        if self.fixed:
            return self.rtt_ms / 1000.0
        mu, sigma = self.lognormal_params
        if sigma == 0:
            return math.exp(mu) / 1000.0
        return rng.lognormvariate(mu, sigma) / 1000.0

    def draw_jitter_s(self, rng: random.Random) -> float:
        """The extra one-way delay of one transfer (uniform in +-jitter_ms), in seconds."""
        if not self.jitter_ms:
            return 0.0
        return rng.uniform(-self.jitter_ms, self.jitter_ms) / 1000.0

    def transfer_s(self, nbytes: int) -> float:
        """How long nbytes take on the link (0 without a bandwidth)."""
        if not self.bandwidth_mbps:
            return 0.0
        return nbytes * 8 / (self.bandwidth_mbps * 1e6)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        rtt = f"RTT {self.rtt_ms:g} ms" if self.fixed else f"RTT lognormal p5-p95 {self.rtt_p5_ms:g}-{self.rtt_p95_ms:g} ms"
        extra = (f", jitter +-{self.jitter_ms:g} ms" if self.jitter_ms else "") + \
                (f", {self.bandwidth_mbps:g} Mbit/s" if self.bandwidth_mbps else "")
        return f"{self.name}: {rtt}{extra}"


BUILTIN: dict[str, NetworkProfile] = {
    "device": NetworkProfile("device", rtt_p5_ms=0.2, rtt_p95_ms=1.0),
    "metro": NetworkProfile("metro", rtt_p5_ms=10.0, rtt_p95_ms=50.0),
    "regional": NetworkProfile("regional", rtt_p5_ms=50.0, rtt_p95_ms=150.0),
    "central": NetworkProfile("central", rtt_p5_ms=200.0, rtt_p95_ms=500.0),
}


class FaultError(ValueError):
    """A bad fault key or value; `key` names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class FaultProfile:
    """Faults the gateway injects into a tier's calls on purpose (see the module doc)."""
    reset_rate: float = 0.0  # share of calls whose connection is reset (TCP RST) mid-answer
    stall_rate: float = 0.0  # share of calls whose answer stalls once, after its first chunk, for stall_ms
    stall_ms: float = 2000.0  # how long a stall holds the answer
    error_rate: float = 0.0  # share of calls the gateway answers with error_status itself
    error_status: int = 503  # the status of an injected error, 500-599
    spike_rate: float = 0.0  # share of calls whose round trip grows by spike_ms (drawn apart from the others)
    spike_ms: float = 2000.0  # what a spike adds to the round trip

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise FaultError(f.name, f"expected a number, got {v!r}")
            if f.name.endswith("_rate") and not 0 <= v <= 1:
                raise FaultError(f.name, f"must be in [0, 1], got {v!r}")
            if f.name.endswith("_ms") and v < 0:
                raise FaultError(f.name, f"must be >= 0, got {v!r}")
        if not (isinstance(self.error_status, int) and 500 <= self.error_status <= 599):
            raise FaultError("error_status", f"must be an integer in 500-599, got {self.error_status!r}")
        if self.reset_rate + self.stall_rate + self.error_rate > 1:
            raise FaultError("reset_rate", "reset_rate + stall_rate + error_rate must be <= 1 (one of them per call "
                             f"at most), got {self.reset_rate + self.stall_rate + self.error_rate:g}")

    @property
    def active(self) -> bool:
        return bool(self.reset_rate or self.stall_rate or self.error_rate or self.spike_rate)

    def draw(self, rng: random.Random) -> tuple[str | None, bool]:
        """One call's faults: (reset | stall | error | None, spike?). Two draws per call, always."""
        u, v = rng.random(), rng.random()
        fate = None
        if u < self.reset_rate:
            fate = "reset"
        elif u < self.reset_rate + self.stall_rate:
            fate = "stall"
        elif u < self.reset_rate + self.stall_rate + self.error_rate:
            fate = "error"
        return fate, v < self.spike_rate

    def to_dict(self) -> dict:
        """The keys that differ from the defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def describe(self) -> str:
        parts = [f"reset {self.reset_rate:g}" if self.reset_rate else "",
                 f"stall {self.stall_rate:g} x {self.stall_ms:g} ms" if self.stall_rate else "",
                 f"HTTP {self.error_status} {self.error_rate:g}" if self.error_rate else "",
                 f"spike {self.spike_rate:g} x +{self.spike_ms:g} ms" if self.spike_rate else ""]
        return "faults " + ", ".join(p for p in parts if p) if self.active else ""


FAULT_KEYS = tuple(f.name for f in fields(FaultProfile))
FAULT_NAMES = ("reset", "stall", "error", "spike")  # as FaultProfile.draw and the gateway's call log name them
NO_FAULTS = FaultProfile()


def fault_profile(d: dict) -> FaultProfile:
    """A FaultProfile from a table of its keys; FaultError names an unknown or bad key."""
    if not isinstance(d, dict):
        raise FaultError("faults", f"expected a table of {', '.join(FAULT_KEYS)}, got {d!r}")
    for k in d:
        if k not in FAULT_KEYS:
            raise FaultError(str(k), f"unknown fault key (known: {', '.join(FAULT_KEYS)})")
    return FaultProfile(**d)


def tier_faults(text: str) -> FaultProfile:
    """The fault options of a `--tier` string (`central,reset_rate=0.01,stall_ms=500`); ValueError
    naming the flag and the key."""
    opts = [o.strip() for o in (text or "").split(",")[1:] if o.strip()]
    if not opts:
        return NO_FAULTS
    table: dict = {}
    try:
        for opt in opts:
            key, sep, val = (x.strip() for x in opt.partition("="))
            if not sep:
                raise FaultError(key, "expected KEY=VALUE")
            try:
                num = float(val)
            except ValueError:
                raise FaultError(key, f"expected a number, got {val!r}") from None
            table[key] = int(num) if key == "error_status" and num.is_integer() else num
        return fault_profile(table)
    except FaultError as e:
        raise ValueError(f"--tier {text!r}: {e}") from None


def faults_from_dict(d: dict, name: str) -> FaultProfile:
    """A tier table's faults: its `faults` table and the options of a `profile` string (not both)."""
    given, prof = d.get("faults"), d.get("profile")
    opts = isinstance(prof, str) and "," in prof
    if given is not None and opts:
        raise ValueError(f"tier {name!r}: give faults in 'faults' or in the profile string, not both")
    if opts:
        return tier_faults(prof)
    if given is None:
        return NO_FAULTS
    try:
        return fault_profile(given)
    except FaultError as e:
        raise ValueError(f"tier {name!r}: faults.{e}") from None


def parse_tier(text: str) -> NetworkProfile:
    """`NAME` (a built-in profile) or `NAME:RTT_MS` (a fixed round-trip time), as `--tier` takes;
    fault options after commas are checked here (ValueError naming them) and read by tier_faults."""
    tier_faults(text)
    s = (text or "").split(",", 1)[0].strip()
    usage = f"--tier {text!r}: expected a built-in profile ({', '.join(BUILTIN)}) or NAME:RTT_MS (e.g. lab:50)"
    if not s:
        raise ValueError(usage)
    name, sep, rtt = s.partition(":")
    name = name.strip()
    if not TIER_NAME.match(name):
        raise ValueError(f"{usage}; {name!r} is not a valid tier name (letters, digits, _ . -)")
    if not sep:
        if name not in BUILTIN:
            raise ValueError(f"{usage}; {name!r} is not a built-in profile")
        return BUILTIN[name]
    try:
        ms = float(rtt)
    except ValueError:
        raise ValueError(f"{usage}; RTT_MS {rtt.strip()!r} is not a number") from None
    if not (math.isfinite(ms) and ms >= 0):
        raise ValueError(f"{usage}; RTT_MS must be a finite number >= 0, got {rtt.strip()}")
    return NetworkProfile(name, rtt_ms=ms)


def profile_from_dict(d: dict, name: str) -> NetworkProfile:
    """A network profile from a tier table's keys (see the module docstring)."""
    prof = d.get("profile")
    if isinstance(prof, dict):
        merged = {**prof, **{k: d[k] for k in ("jitter_ms", "bandwidth_mbps") if d.get(k) is not None}}
        merged.pop("name", None)
        pname = prof.get("name") or name
        if not isinstance(pname, str):
            raise ValueError(f"tier {name!r}: the profile's name must be a string")
        return profile_from_dict(merged, pname)
    if prof is not None and not isinstance(prof, str):
        raise ValueError(f"tier {name!r}: 'profile' must be a string or a table, got {prof!r}")
    keys = [k for k in ("rtt_ms", "rtt_p5_ms", "rtt_p95_ms") if d.get(k) is not None]
    if prof is not None and keys:
        raise ValueError(f"tier {name!r}: give 'profile' or {'/'.join(keys)}, not both")
    try:
        if prof is not None:
            base = parse_tier(prof)
        elif keys:
            base = NetworkProfile(name, rtt_ms=_num(d, "rtt_ms", name), rtt_p5_ms=_num(d, "rtt_p5_ms", name),
                                  rtt_p95_ms=_num(d, "rtt_p95_ms", name))
        elif name in BUILTIN:
            base = BUILTIN[name]
        else:
            raise ValueError(f"tier {name!r}: no network profile: give 'profile' (one of {', '.join(BUILTIN)}, "
                             "or NAME:RTT_MS), 'rtt_ms', or 'rtt_p5_ms' and 'rtt_p95_ms'")
        over = {}
        if d.get("jitter_ms") is not None:
            over["jitter_ms"] = _num(d, "jitter_ms", name)
        if d.get("bandwidth_mbps") is not None:
            over["bandwidth_mbps"] = _num(d, "bandwidth_mbps", name)
        return replace(base, **over) if over else base
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("tier ") else f"tier {name!r}: {msg}") from None


def _num(d: dict, key: str, name: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"tier {name!r}: {key!r} must be a number, got {v!r}")
    return float(v)


TIER_KEYS = {"name", "url", "upstream", "model", "price_per_m_prompt", "price_per_m_output", "api_key_env",
             "profile", "rtt_ms", "rtt_p5_ms", "rtt_p95_ms", "jitter_ms", "bandwidth_mbps", "faults"}


@dataclass
class Tier:
    """A network profile in front of an engine endpoint."""
    name: str
    network: NetworkProfile
    url: str
    model: str | None = None
    price_per_m_prompt: float = 0.0
    price_per_m_output: float = 0.0
    api_key_env: str | None = None
    faults: FaultProfile = NO_FAULTS  # what the gateway injects on purpose
    extra: dict = field(default_factory=dict)  # unknown keys of the table, kept for policies

    def __post_init__(self) -> None:
        if not TIER_NAME.match(self.name or ""):
            raise ValueError(f"tier name {self.name!r}: letters, digits, _ . - only")
        if not str(self.url).startswith(("http://", "https://")):
            raise ValueError(f"tier {self.name!r}: url must be an http(s) URL, got {self.url!r}")
        self.url = str(self.url).rstrip("/")

    @classmethod
    def from_dict(cls, d: dict) -> "Tier":
        if not isinstance(d, dict):
            raise ValueError(f"a tier must be a table, got {d!r}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tier needs a 'name', got {d!r}")
        url = d.get("url", d.get("upstream"))
        if not isinstance(url, str):
            raise ValueError(f"tier {name!r}: 'url' (the engine's base URL) is required")
        prices = {k: _num(d, k, name) or 0.0 for k in ("price_per_m_prompt", "price_per_m_output")}
        if any(v < 0 for v in prices.values()):
            raise ValueError(f"tier {name!r}: prices must be >= 0")
        model = d.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError(f"tier {name!r}: 'model' must be a string")
        return cls(name, profile_from_dict(d, name), url, model, api_key_env=d.get("api_key_env"),
                   faults=faults_from_dict(d, name), extra={k: v for k, v in d.items() if k not in TIER_KEYS},
                   **prices)

    def to_dict(self) -> dict:
        net = self.network.to_dict()
        net.pop("name", None)
        out = {"name": self.name, "url": self.url, "profile": {"name": self.network.name, **net}}
        if self.model is not None:
            out["model"] = self.model
        out["price_per_m_prompt"] = self.price_per_m_prompt
        out["price_per_m_output"] = self.price_per_m_output
        if self.api_key_env:
            out["api_key_env"] = self.api_key_env
        if self.faults.active:
            out["faults"] = self.faults.to_dict()
        out.update(self.extra)
        return out


def rng_for(seed: int, tier: str) -> random.Random:
    """The RNG of one tier in a gateway seeded with `seed` (independent of the other tiers)."""
    return random.Random(f"tierbench:{seed}:{tier}")
