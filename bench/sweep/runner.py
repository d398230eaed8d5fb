"""A sweep: for each engine of the spec, its server started once and kept up, then one full run
per load point into OUT/points/<engine>-<load>/ (a normal run directory, prefix cache reset
before each), in increasing load; saturation ends it early; then, with SLOs, a bisection between
the highest passing and the lowest failing load. Each point also gets vllm-result.json (the
`vllm bench serve --save-result` format, analysis/vllm_result.py). OUT/sweep.json holds the curve, the capacity and
the provenance, rewritten after every point; a point whose directory already holds a completed
run of the same spec is reused (resume).

Each point's spec is the sweep's spec with the load set, one repetition, no early stop, and the
engine as a URL: the server kept up. A point runs its whole workload (or load.duration_s) and its
SLOs are decided at its end on every call: an early stop would decide 'met' after the first 64
calls, before an overloaded open loop's queue has built up. The load: closed loop, load.users; open loop with Poisson or gamma arrivals, load.rate;
open loop with the trace's own arrivals, trace.time_scale chosen so that the trace's mean rate
(calls over the span of their arrival times) is the point's rate: the trace's burstiness kept.
"""
from __future__ import annotations

import copy
import json
import math
import time
from functools import cached_property
from pathlib import Path

from bench.spec import RunSpec
from bench.sweep.axis import auto_rates, auto_sessions
from bench.sweep.config import SweepConfig
from engines.launch import EngineSpec, Server
from engines.provenance import provenance

EXIT_OK, EXIT_FAILED = 0, 1
BURST_RATE = 1e6  # calls/s of auto's maximum-throughput point: the whole workload sent at once


def point_spec(spec: RunSpec, engine: EngineSpec, server: Server, load: float, closed: bool, cfg: SweepConfig,
               label: str, trace_rate: float | None = None) -> RunSpec:
    """trace_rate: the spec's workload's mean arrival rate (calls/s), for trace arrivals."""
    p = copy.deepcopy(spec)
    p.name = f"{spec.name}-{label}"
    p.engines = [EngineSpec("url", name=engine.name, url=server.base_url, served_model=server.model_name,
                            api_key_env=engine.api_key_env)]
    p.load.repetitions = 1
    if closed:
        p.load.mode, p.load.users = "closed", int(load)
    else:
        p.load.mode = "open"
        if p.load.arrivals == "trace" and trace_rate:
            p.trace.time_scale = spec.trace.time_scale * trace_rate / load  # the trace's times, compressed
        else:
            p.load.arrivals = "poisson" if p.load.arrivals == "trace" else p.load.arrivals
            p.load.rate = float(load)
    p.load.early_stop = []  # decided at the end (module doc)
    return p


def _comparable(spec_dict: dict) -> dict:
    """A point's spec without what changes between sweeps of the same thing (the server's URL)."""
    d = copy.deepcopy(spec_dict)
    d.pop("source", None)
    for e in d.get("engines", []):
        e.pop("url", None)
    return d


def load_label(load: float, closed: bool) -> str:
    return f"sessions-{int(load)}" if closed else f"rate-{load:.4g}"


class EngineSweep:
    """One engine's points, saturation and capacity."""

    def __init__(self, spec: RunSpec, engine: EngineSpec, cfg: SweepConfig, out: Path, progress: bool, log):
        self.spec, self.engine, self.cfg, self.out = spec, engine, cfg, out
        self.progress, self.log = progress, log
        self.closed = cfg.closed
        self.server: Server | None = None
        self.points: list[dict] = []
        self.saturated_at: float | None = None
        self.capacity: dict | None = None
        self.wall_s: float | None = None  # server start to stop
        self.last_requests = None  # the requests table of the point measured last (saturation tests)

    # -- one point ------------------------------------------------------------------------------
    def measure(self, load: float, label: str | None = None, closed: bool | None = None) -> dict:
        from analysis.metrics import load_requests
        from analysis.sweep import point_figures, verdict
        from bench.run import execute

        closed = self.closed if closed is None else closed
        label = label or load_label(load, closed)
        run_dir = self.out / "points" / f"{self.engine.name}-{label}"
        pspec = point_spec(self.spec, self.engine, self.server, load, closed, self.cfg, label, self.trace_rate)
        reused = _reusable(run_dir, pspec)
        if not reused:
            self.server.reset_prefix_cache()
            code = execute(pspec, run_dir, progress=self.progress, log=self.log, report=False)
            if code not in (0, 1):
                raise KeyboardInterrupt
            _export_vllm(run_dir, self.log)
        info = json.loads((run_dir / "run.json").read_text())
        self.last_requests = requests = load_requests(run_dir)
        decisions = self._decisions(run_dir, info, requests)
        rec = {"load": load, "label": label, "closed": closed, "dir": str(run_dir.relative_to(self.out)),
               "reused": reused, "status": info.get("status"),
               **point_figures(run_dir, requests, self.cfg.confidence),
               "slos": decisions, "verdict": verdict(decisions) if decisions else None}
        self.points.append(rec)
        self._say(rec)
        return rec

    def _decisions(self, run_dir: Path, info: dict, requests) -> list[dict]:
        """Each SLO at this point (analysis.sweep.decide), on its calls and sessions."""
        import pandas as pd

        from analysis.sweep import decide, rule_name

        rules = self.cfg.rules()
        if not rules:
            return []
        sp = run_dir / "sessions.parquet"
        sessions = pd.read_parquet(sp) if sp.exists() else pd.DataFrame({"makespan_s": []})
        reps = next(iter(info.get("engines", {}).values()), {}).get("repetitions") or [{}]
        early = {r["rule"]: r for r in (reps[-1].get("early_stop") or {}).get("rules", [])}
        return [decide(r, requests, sessions, early.get(rule_name(r))) for r in rules]

    @cached_property
    def trace_rate(self) -> float | None:
        """The workload's mean arrival rate at the spec's time_scale (None: no arrival times)."""
        if self.closed or self.spec.load.arrivals != "trace":
            return None
        from bench.run import prepare_workload
        plans, _, _ = prepare_workload(self.spec)
        t = sorted(c.arrival_s for p in plans for c in p.calls if c.arrival_s is not None)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None

    def _say(self, rec: dict) -> None:
        what = f"{int(rec['load'])} sessions" if rec["closed"] else f"{rec['load']:.3g} calls/s"
        ttft = rec.get("ttft_p99_ms", {}).get("estimate")
        tput = rec.get("output_throughput")
        slo = f", SLOs {rec['verdict']}" if rec["verdict"] else ""
        self.log(f"[{self.engine.name}] {rec['label']} ({what}): {tput or 0:.1f} output tok/s, "
                 f"TTFT p99 {ttft or float('nan'):.0f} ms{slo}{' (reused)' if rec['reused'] else ''}")

    # -- the sweep ------------------------------------------------------------------------------
    def loads(self) -> list[float]:
        """The axis's loads; for auto rates, the synchronous and maximum points are measured here."""
        axis = self.cfg.axis
        if not axis.is_auto:
            return list(axis.values)
        if self.closed:
            return [float(n) for n in auto_sessions(axis.auto_n)]
        sync = self.measure(1, "sync", closed=True)
        top = self.measure(BURST_RATE, "max", closed=False)  # every call at once: what the engine can do
        return auto_rates(sync["request_throughput"] or 0.0, top["request_throughput"] or 0.0, axis.auto_n)

    def run(self, write) -> None:
        from analysis.sweep import closed_loop_saturated, open_loop_saturated

        t0 = time.monotonic()
        self.server = Server(self.engine, self.out)
        self.log(f"[{self.engine.name}] starting server ..." if self.engine.kind != "url" else
                 f"[{self.engine.name}] using {self.engine.url}")
        self.server.start()
        try:
            prev = prev_req = None
            loads = self.loads()
            if self.closed and loads and self.spec.trace.sessions and max(loads) > self.spec.trace.sessions:
                self.log(f"[{self.engine.name}] note: the workload has {self.spec.trace.sessions} sessions; points "
                         f"above that many concurrent sessions leave users idle (raise trace.sessions)")
            for load in loads:
                rec = self.measure(load)
                if not self.server.alive():
                    self.log(f"[{self.engine.name}] the server died at {rec['label']}: the sweep of this engine ends")
                    write()
                    return
                req = self.last_requests
                if self.closed:
                    if prev is not None:
                        rec["saturation"] = closed_loop_saturated(
                            prev_req, int(prev["load"]), prev["request_throughput"],
                            req, int(load), rec["request_throughput"], self.cfg.confidence)
                else:
                    rec["saturation"] = open_loop_saturated(req, load, rec.get("duration_s"), self.cfg.confidence)
                write()
                prev, prev_req = rec, req
                if rec.get("saturation", {}).get("saturated"):
                    self.saturated_at = load
                    self.log(f"[{self.engine.name}] saturated at {rec['label']}: {rec['saturation']['test']}")
                    if self.cfg.stop_at_saturation:
                        break
            if self.cfg.slos:
                self.search(write)
        finally:
            self.server.stop()
            self.wall_s = round(time.monotonic() - t0, 1)

    def search(self, write) -> None:
        """Bisect between the highest passing and the lowest failing load (module doc). Loads left
        undecided inside the bracket cut it into gaps; the widest gap is halved next, so the
        bracket still narrows around a load that too few calls could decide."""
        from analysis.sweep import capacity

        done = 0
        while True:
            c = capacity([(p["load"], p["verdict"]) for p in self.points if p["label"] not in ("sync", "max")])
            nxt = self._next_load(c)
            if nxt is None or done >= self.cfg.max_search_points:
                break
            self.measure(nxt)
            write()
            done += 1
        lo, hi = c["lo"], c["hi"]
        c["resolution"] = "hi - lo <= 1 session" if self.closed else f"hi / lo - 1 <= {self.cfg.resolution:g}"
        c["resolved"] = lo is not None and hi is not None and self._fine(lo, hi)
        c["search_points"] = done
        c["unit"] = "sessions" if self.closed else "calls/s"
        self.capacity = c

    def _next_load(self, c: dict) -> float | None:
        lo, hi = c["lo"], c["hi"]
        if lo is None or hi is None:
            return None
        cuts = [lo, *sorted(u for u in c["undecided"] if lo < u < hi), hi]
        gaps = [(a, b) for a, b in zip(cuts, cuts[1:]) if not self._fine(a, b)]
        if not gaps:
            return None
        a, b = max(gaps, key=lambda g: g[1] - g[0] if self.closed else g[1] / g[0])
        return float((int(a) + int(b)) // 2) if self.closed else math.sqrt(a * b)

    def _fine(self, lo: float, hi: float) -> bool:
        return hi - lo <= 1 if self.closed else hi / lo - 1 <= self.cfg.resolution

    def to_dict(self) -> dict:
        return {"engine": {"kind": self.engine.kind, "args": self.engine.args},
                "points": self.points, "saturated_at": self.saturated_at, "capacity": self.capacity,
                "wall_s": self.wall_s, "trace_rate": self.trace_rate}


def _export_vllm(run_dir: Path, log) -> None:
    """The point in `vllm bench serve --save-result` format (run_dir/vllm-result.json)."""
    from analysis.vllm_result import to_vllm_result, write_vllm_result
    try:
        write_vllm_result(to_vllm_result(run_dir), run_dir / "vllm-result.json")
    except ValueError as e:  # a point with no completed call: nothing to export
        log(f"{run_dir.name}: vllm-result.json not written ({e})")


def _reusable(run_dir: Path, pspec: RunSpec) -> bool:
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("status") == "completed" and _comparable(info.get("spec", {})) == _comparable(pspec.to_dict())


def run_sweep(spec: RunSpec, cfg: SweepConfig, out: Path, command: str, progress: bool = True, log=print) -> int:
    """Every engine of the spec swept into out/; returns the exit status (1: a capacity not bracketed)."""
    from bench.run import engine_defaults, resolve_model

    out.mkdir(parents=True, exist_ok=True)
    engine_defaults(spec, resolve_model(spec.model))  # each started engine's model, as `tierbench run` fills it
    sweeps = [EngineSweep(spec, e, cfg, out, progress, log) for e in spec.engines]
    doc = {"what": "a load sweep (tierbench sweep)", "command": command, "spec": spec.to_dict(),
           "config": cfg.to_dict(), "engines": {}, "provenance": provenance(command)}

    def write() -> None:
        doc["engines"] = {s.engine.name: s.to_dict() for s in sweeps if s.points}
        tmp = out / "sweep.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(out / "sweep.json")

    code = EXIT_OK
    t0 = time.monotonic()
    for s in sweeps:
        s.run(write)
        write()
        c = s.capacity
        if c and c.get("problem"):
            loads = sorted(p["load"] for p in s.points if p["label"] not in ("sync", "max"))
            log(f"[{s.engine.name}] capacity not bracketed: {c['problem']} (measured {loads[0]:g} to {loads[-1]:g} "
                f"{c['unit']})")
            code = EXIT_FAILED
        elif c:
            log(f"[{s.engine.name}] SLO capacity: {c['lo']:g} {c['unit']} (fails at {c['hi']:g})")
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    write()
    try:  # a view of sweep.json: a failure here loses nothing
        from analysis.report_sweep import write_sweep_report
        write_sweep_report(out)
    except Exception as e:  # noqa: BLE001
        log(f"report.html not written ({type(e).__name__}: {e}); `tierbench report {out}` retries")
    return code
