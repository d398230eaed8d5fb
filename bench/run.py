"""The run orchestrator: trace -> materialized workload -> for each engine (started here, or a
URL) and repetition: a load generator -> per-request records -> results/<run>/.

The run directory: run.json (spec, git commit, versions, hardware, start/end, status, summary),
workload.jsonl (the exact prompts), requests.parquet (one row per call), sessions.parquet,
server_metrics.parquet (each engine's /metrics, scraped every load.scrape_interval_s), report.html,
server logs. Records are appended as requests complete (requests.<pid>.jsonl), so a run stopped
by Ctrl-C or SIGTERM keeps every finished request and its run.json says `interrupted`; one killed
outright (SIGKILL) keeps them too, its run.json still says `running`, and `tierbench report` says it
was cut (bench/rundir.py).
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from bench.load.early_stop import EarlyStopWatch
from bench.load.runner import progress_bar, record_unsent_calls, run_load
from bench.load.workload import build_workload, ideal_prefix_hit, write_workload
from bench.measure.server_metrics import ServerMetricsScraper, append_rows, read_rows, summarize_server_metrics
from bench.rundir import RunDir, write_parquet
from bench.spec import RunSpec
from bench.tiers.run import run_tiers, tier_summaries
from engines.launch import Server, counter_delta
from engines.provenance import now

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
SERVER_METRICS = "server_metrics.parquet"
SCRAPE_JOURNAL = "server_metrics.jsonl"  # scrapes appended per repetition, merged into SERVER_METRICS at the end


def execute(spec: RunSpec, out: Path, progress: bool = True, log=print, report: bool = True) -> int:
    """Run the spec into `out`; returns the exit status (0 ok, 1 failures, 130 interrupted).
    report: write report.html (a sweep's points leave it to the sweep's own report)."""
    plans, model_dir, workload = prepare_workload(spec)
    rd = RunDir(out, spec)
    for old in (out / SERVER_METRICS, out / SCRAPE_JOURNAL):  # a rerun into the same directory starts clean
        old.unlink(missing_ok=True)
    write_workload(plans, out / "workload.jsonl")
    rd.info["workload"] = workload
    rd.save()
    status, code = "completed", EXIT_OK
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends the run like Ctrl-C: results kept
    try:
        engine_defaults(spec, model_dir)
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
        finalize(out, rd, spec, status, log, report)
    return code


def prepare_workload(spec: RunSpec):
    """The spec's trace materialized for its model: (session plans, model dir, workload facts)."""
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
    workload = {"sessions": len(plans), "calls": sum(len(p.calls) for p in plans),
                "prompt_tokens": sum(len(c.prompt_ids) for p in plans for c in p.calls),
                "output_tokens": sum(c.max_tokens for p in plans for c in p.calls),
                "ideal_prefix_hit": ideal_prefix_hit(plans), "trace_meta": scaled.meta, "model_dir": str(model_dir)}
    return plans, model_dir, workload


def engine_defaults(spec: RunSpec, model_dir) -> None:
    """Fill in each started engine's model, and a random-weight reference engine's tokenizer."""
    for engine in spec.engines:
        if engine.kind != "url" and not engine.model:
            engine.model = str(model_dir)
        dummy = "--load-format=dummy" in engine.args or any(
            a == "--load-format" and b == "dummy" for a, b in zip(engine.args, engine.args[1:]))
        if engine.kind == "reference" and dummy and not any(a.startswith("--tokenizer") for a in engine.args):
            # a named random-weight shape (e.g. mini-llama) speaks the run model's tokens
            engine.args = [*engine.args, "--tokenizer", str(model_dir)]


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
            bar = progress_bar(total_calls, f"{engine.name}" + (f" rep {rep + 1}" if tier else ""), progress, position)
            t_rep = time.monotonic()
            before = server.counters()
            # halt ends the load generator: the server died, or every early-stop rule is decided
            halt = threading.Event()
            watch = EarlyStopWatch(spec.load.early_stop_rules(), out, engine.name, tier, died, halt).start()
            scraper = ServerMetricsScraper(server.base_url, engine.name, tier, spec.load.scrape_interval_s,
                                           server.api_key).start() if spec.load.scrape_interval_s > 0 else None
            try:
                result = run_load(spec, plans, server, out, engine.name, tier, bar, halt)
            finally:
                watch.stop()
                bar.close()
                scraped = _stop_scraper(scraper, out, info)
            if scraped is not None:
                result["server_metrics"] = scraped
            if died.is_set():
                result["not_sent"] = record_unsent_calls(spec, plans, out, engine.name, tier,
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


def _stop_scraper(scraper: ServerMetricsScraper | None, out: Path, info: dict) -> dict | None:
    """Stop a repetition's scraper, journal its rows; the engine's run.json entry says whether it has
    /metrics (`server_metrics`: "ok" or "unavailable: why") and counts failed scrapes."""
    if scraper is None:
        return None
    scraper.stop()
    append_rows(scraper.rows, out / SCRAPE_JOURNAL)
    info["server_metrics"] = f"unavailable: {scraper.unavailable}" if scraper.unavailable else "ok"
    info["scrape_failures"] = info.get("scrape_failures", 0) + scraper.failures
    return {"samples": len(scraper.rows), "scrape_failures": scraper.failures}


def finalize(out: Path, rd: RunDir, spec: RunSpec, status: str, log, report: bool = True) -> None:
    """Merge the per-process records into requests.parquet, build sessions.parquet and the summary."""
    import pandas as pd

    from analysis.metrics import load_requests, summarize_run
    from analysis.sessions import makespan_summary, sessions_table

    rd.info["status"] = status
    rd.info["end"] = now()
    scrapes = read_rows(out / SCRAPE_JOURNAL)
    if len(scrapes):
        write_parquet(scrapes, out / SERVER_METRICS)
    (out / SCRAPE_JOURNAL).unlink(missing_ok=True)
    try:
        df = load_requests(out)
    except ValueError:
        df = pd.DataFrame()
    if len(df):
        df.insert(0, "run", spec.name)
        write_parquet(df, out / "requests.parquet")  # renamed into place: the journal goes only after
        for f in out.glob("requests.*.jsonl"):
            f.unlink()
        tiered = bool(rd.info.get("tiers"))
        # through tiers a session's calls go to several tiers: its makespan spans them all
        st = sessions_table(df.assign(tier="") if tiered else df)
        write_parquet(st, out / "sessions.parquet")
        ideal = rd.info.get("workload", {}).get("ideal_prefix_hit")
        summary = summarize_run(df, slos={k.removesuffix("_ms"): v for k, v in spec.slos.items()} or None,
                                ideal_prefix_hit=ideal)
        for key, s in summary.items():
            eng, _, tier = key.partition("@")
            sub = st[(st["engine"] == eng) & ((st["tier"] == tier) if "tier" in st else True)]
            s.update(makespan_summary(sub))
            reps = rd.info["engines"].get(eng, {}).get("repetitions", [])
            s["engine_counters"] = next((r.get("engine_counters") for r in reps if r.get("tier", "") == tier), None)
            # the server's own view of the repetition, beside the client's (prefix_cache_hit_ratio from cached_tokens)
            s.update(summarize_server_metrics(scrapes[(scrapes["engine"] == eng) & (scrapes["tier"] == tier)]))
        if tiered:
            tier_summaries(df, st, summary, rd, spec, ideal)
            try:
                from bench.tiers.study import write_claims
                write_claims(out, df, st, rd.info)
            except Exception as e:  # noqa: BLE001 - a view of the results: a failure loses nothing
                log(f"claims.json not written ({type(e).__name__}: {e})")
        rd.info["summary"] = summary
    rd.save()
    if len(df) and report:
        try:  # the report is a view of the files above: a failure here loses nothing
            from analysis.report import write_report
            write_report([out], out / "report.html")
        except Exception as e:  # noqa: BLE001
            log(f"report.html not written ({type(e).__name__}: {e}); `tierbench report {out}` retries")
