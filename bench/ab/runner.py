"""`tierbench ab`: two variants of an engine, one materialized workload, alternating rounds.

Both servers are started first and stay up (an idle server costs the other nothing but memory),
each is warmed up and checked to see the workload as planned, then rounds go A B, B A, A B, ...:
pair k is rounds 2k and 2k+1, A first in even pairs and B first in odd ones, so a linear drift in
the machine's speed cancels within every two pairs. Before each round the variant's prefix cache
is reset (where the server allows it: recorded per round), so every round does the same work.

The directory: run.json (spec, provenance, status), workload.jsonl, requests.parquet (engine A or
B, tier `roundNN`), server-A.log and server-B.log, and ab.json (variants, rounds with their figures
and engine counters, the comparison of analysis/ab.py). A variant that dies mid-run ends the A/B:
its partial round is kept and marked, the comparison uses the complete pairs, and the exit status
is 1.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ab.rounds import play_round, warm_up
from bench.ab.variants import Variant, VariantError, check_out, remove_worktree
from bench.load.recorder import Recorder
from bench.load.workload import write_workload
from bench.rundir import RunDir, write_parquet
from engines.launch import Server, ServerDied, counter_delta
from engines.provenance import now

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class ABConfig:
    pairs: int = 8             # round pairs (each variant plays `pairs` rounds)
    warmup_calls: int = 8      # unrecorded calls per variant before the first round
    confidence: float = 0.95
    server_cpus: list[int] | None = None  # both servers pinned here (None: not pinned)
    client_cpus: list[int] | None = None  # this process pinned here
    command: str = ""          # the command line, for provenance
    scrape_s: dict[str, float] | None = None  # per variant: scrape its /metrics every S s during its rounds (0: not)


def order(pairs: int) -> list[tuple[int, str]]:
    """(pair, variant) of each round: A B, B A, A B, ..."""
    return [(k, v) for k in range(pairs) for v in (("A", "B") if k % 2 == 0 else ("B", "A"))]


def run_ab(spec, variants: tuple[Variant, Variant], plans, workload: dict, out: Path, cfg: ABConfig,
           progress: bool = True, log=print) -> int:
    """Run the A/B into `out`; returns the exit status. VariantError before any round is bad input."""
    rd = RunDir(out, spec)
    for old in (out / "ab.json", *out.glob("server-*.log")):
        old.unlink(missing_ok=True)
    write_workload(plans, out / "workload.jsonl")
    rd.info["workload"] = workload
    ab = {"kind": "tierbench-ab", "name": spec.name, "status": "running", "confidence": cfg.confidence,
          "pairs": 0, "variants": {v.name: v.to_dict() for v in variants}, "rounds": [], "comparison": {},
          "pinning": {"server_cpus": cfg.server_cpus, "client_cpus": cfg.client_cpus}, "scrape_s": cfg.scrape_s,
          "provenance": {"git_commit": rd.info["git_commit"], "environment": rd.info["environment"],
                         "date": rd.info["start"], "command": cfg.command}}
    rd.info["ab"] = {"variants": ab["variants"]}
    rd.save()
    servers: dict[str, Server] = {}
    code = EXIT_OK
    try:
        _start_both(variants, servers, out, log)
        for v in variants:
            ab["variants"][v.name]["startup_s"] = round(servers[v.name].started_s or 0.0, 1)
        for v in variants:
            warm_up(v.name, plans, servers[v.name], spec.load, cfg.warmup_calls)
        code = _rounds(spec, plans, servers, out, ab, cfg, progress, log)
    except KeyboardInterrupt:
        ab["status"] = "interrupted"
        code = EXIT_INTERRUPTED
        log("interrupted: keeping every finished round")
    finally:
        for s in servers.values():
            s.stop()
        for v in variants:
            remove_worktree(v)
        if ab["status"] == "running":  # an exception on its way out
            ab["status"] = (f"failed in round {len(ab['rounds'])}" if ab["rounds"] else "failed before the first round")
        _finalize(out, rd, ab, cfg)
    return code


def _start_both(variants, servers: dict[str, Server], out: Path, log) -> None:
    """Both servers start at once (an A/B's start-up costs one server's), spawned from this thread,
    which outlives them: a child dies with the thread that started it."""
    for v in variants:
        if v.source == "A":  # B is A's own server (variants.py)
            log(f"[{v.name}] A's server")
            continue
        check_out(v)
        log(f"[{v.name}] {v.label}: " + ("starting server ..." if v.engine.kind != "url" else f"using {v.engine.url}"))
        servers[v.name] = Server(v.engine, out)
        try:
            servers[v.name].spawn()
        except (OSError, ValueError) as e:
            raise VariantError(f"variant {v.name} ({v.label}) failed to start: {e}") from None
    for v in variants:
        if v.source == "A":
            servers[v.name] = servers["A"]
            continue
        server = servers[v.name]
        try:
            server.ready()
        except (ServerDied, TimeoutError, OSError, ValueError) as e:
            tail = server.log_tail(3) if v.engine.kind != "url" else ""
            raise VariantError(f"variant {v.name} ({v.label}) failed to start: {e}" + (f" | log: {tail}" if tail else "")) from None


def _rounds(spec, plans, servers: dict[str, Server], out: Path, ab: dict, cfg: ABConfig, progress: bool, log) -> int:
    from tqdm import tqdm
    rounds = order(cfg.pairs)
    bar = tqdm(total=len(rounds), desc="A/B rounds", unit=" round", disable=not progress, dynamic_ncols=True,
               leave=False)
    try:
        for index, (pair, name) in enumerate(rounds):
            server = servers[name]
            label = f"round{index:02d}"
            cache_reset = server.reset_prefix_cache()
            before = server.counters()
            died = threading.Event()
            watch = threading.Thread(target=_watch, args=(server, died), daemon=True)
            watch.start()
            recorder = Recorder(out, name, label)
            scraper = _scraper(server, name, label, (cfg.scrape_s or {}).get(name, 0.0))
            t0 = time.time()
            try:
                result = play_round(plans, server, recorder, spec.load, died)
            finally:
                recorder.close()
                if scraper is not None:
                    scraper.stop()
            alive = server.alive()
            died.set()
            r = {"index": index, "pair": pair, "variant": name, "label": label, "start": t0,
                 "wall_s": round(result["wall_s"], 3), "calls": result["calls"], "errors": result["errors"],
                 "cache_reset": cache_reset, "status": "ok" if alive else "died",
                 "counters": counter_delta(before, server.counters()) if alive else None,
                 "scrapes": len(scraper.rows) if scraper is not None else 0}
            ab["rounds"].append(r)
            bar.update(1)
            if not alive:
                ab["status"] = f"incomplete: variant {name} died in round {index} (pair {pair})"
                log(f"[{name}] server died in round {index}; keeping the {index} rounds before it. "
                    f"Log: {server.log_path}")
                return EXIT_FAILED
        ab["status"] = "completed"
        return EXIT_FAILED if any(r["errors"] for r in ab["rounds"]) else EXIT_OK
    finally:
        bar.close()


def _scraper(server: Server, name: str, label: str, interval_s: float):
    """The scraper of one round (`tierbench ab --b-scrape 1`: what scraping costs the engine), or None."""
    if not interval_s:
        return None
    from bench.measure.server_metrics import ServerMetricsScraper
    return ServerMetricsScraper(server.base_url, name, label, interval_s, server.api_key).start()


def _watch(server: Server, done: threading.Event) -> None:
    """Sets `done` (which stops the round's clients) when the server dies mid-round."""
    while not done.wait(0.5):
        if not server.alive():
            done.set()
            return


def _finalize(out: Path, rd: RunDir, ab: dict, cfg: ABConfig) -> None:
    """requests.parquet from the records, each round's figures, the comparison, ab.json, run.json."""
    import pandas as pd

    from analysis.ab import compare_ab, complete_pairs, round_values
    from analysis.metrics import load_requests

    try:
        df = load_requests(out)
    except ValueError:
        df = pd.DataFrame()
    if len(df):
        df.insert(0, "run", ab["name"])
        write_parquet(df, out / "requests.parquet")
        for f in out.glob("requests.*.jsonl"):
            f.unlink()
        for r in ab["rounds"]:
            r["values"] = round_values(df, r["label"])
        ab["pairs"] = len(complete_pairs(ab["rounds"]))
        ab["comparison"] = compare_ab(df, ab["rounds"], cfg.confidence)
    ab["end"] = now()
    tmp = out / "ab.json.tmp"
    tmp.write_text(json.dumps(ab, indent=2, default=str), encoding="utf-8")
    tmp.replace(out / "ab.json")
    rd.info["status"] = "completed" if ab["status"] == "completed" else ab["status"]
    rd.info["end"] = ab["end"]
    rd.info["ab"]["status"] = ab["status"]
    rd.save()
