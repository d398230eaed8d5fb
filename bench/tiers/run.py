"""Runs through latency tiers: every engine a tier names is started once, then the workload is
replayed once per scenario through a tier gateway whose routing policy picks each call's tier;
afterwards each scenario gets its summary, tier shares and cost."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from bench.load.early_stop import EarlyStopWatch
from bench.load.runner import Endpoint, progress_bar, record_unsent_calls, run_load
from bench.tiers.network import FAULT_NAMES
from engines.launch import Server, counter_delta


def run_tiers(spec, plans, out: Path, rd, progress: bool, log) -> list[dict]:
    """Latency tiers: start every engine a tier names, then replay the workload once per scenario
    through a tier gateway (its own process) whose routing policy picks each call's tier and which
    injects that tier's round trip. Records are labelled engine = scenario, tier = the routed tier;
    prefix caches are reset between scenarios so each starts cold."""
    from bench.tiers.gateway import GatewayProcess, gateway_config

    by_name = {e.name: e for e in spec.engines}
    servers: dict[str, Server] = {}
    results = []
    try:
        for name in dict.fromkeys(t.engine for t in spec.tiers):
            server = Server(by_name[name], out)
            log(f"[{name}] starting server ..." if server.spec.kind != "url" else f"[{name}] using {server.spec.url}")
            t0 = time.monotonic()
            server.start()
            servers[name] = server
            rd.info["engines"][name] = {"kind": server.spec.kind, "base_url": server.base_url, "model": server.model_name,
                                        "startup_s": round(time.monotonic() - t0, 1),
                                        "log": server.log_path.name if server.spec.kind != "url" else None,
                                        "repetitions": []}
        tiers = [t.tier(servers[t.engine].base_url, servers[t.engine].model_name) for t in spec.tiers]
        rd.info["tiers"] = [{**tier.to_dict(), "engine": t.engine} for tier, t in zip(tiers, spec.tiers)]
        rd.save()
        total_calls = sum(len(p.calls) for p in plans)
        for sc in spec.tier_scenarios():
            name = sc.name
            for server in servers.values():
                server.reset_prefix_cache()
            before = {n: s.counters() for n, s in servers.items()}
            log(f"[{name}] routing {json.dumps(sc.routing)}")
            gw = GatewayProcess(gateway_config(tiers, sc.routing, spec.trace.seed), out, name=f"gateway-{name}")
            died, halt = threading.Event(), threading.Event()
            stop = threading.Event()

            def watch():
                while not stop.wait(0.5):
                    if not gw.alive() or not all(s.alive() for s in servers.values()):
                        died.set()
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            bar = progress_bar(total_calls, name, progress)
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
                           "gateway_calls": gw.call_log.name,
                           "engine_counters": {n: counter_delta(before[n], s.counters()) for n, s in servers.items()}})
            if any(t.faults.active for t in tiers):
                result["faults"] = fault_counts(gw.calls())
            if died.is_set():
                result["not_sent"] = record_unsent_calls(spec, plans, out, name, "",
                                                    "not sent: a server or the tier gateway died mid-run")
            if es.report():
                result["early_stop"] = es.report()
            info = rd.info["engines"].setdefault(name, {"kind": "scenario", "routing": sc.routing, "repetitions": []})
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


def fault_counts(calls: list[dict]) -> dict[str, int]:
    """Calls and injected faults of each kind in a gateway's call log."""
    out = {"calls": len(calls), **{k: 0 for k in FAULT_NAMES}}
    for c in calls:
        for f in c.get("faults") or ():
            out[f] = out.get(f, 0) + 1
    return out


def tier_summaries(df, st, summary: dict, rd, spec, ideal) -> None:
    """A run through tiers: per scenario (all its tiers together) the summary with its session
    makespans, the share of calls per tier, and the cost of every call at its tier's price."""
    from analysis.metrics import summarize
    from analysis.sessions import makespan_summary
    from bench.tiers.pricing import cost_of_requests

    prices = spec.price_table().add_tier_prices(rd.info.get("tiers", []))
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
