"""One point of a tierbench run (an engine, or engine@tier) as the JSON that
`vllm bench serve --save-result --save-detailed` writes (vllm/benchmarks/serve.py: main_async's
result_json, benchmark's result, calculate_metrics), with the same keys, types and units, so that
dashboards built for vLLM's benchmark results read tierbench's.

What comes from where:

- header: date (the run's start, vLLM's "%Y%m%d-%H%M%S"), endpoint_type = backend ("vllm" for a
  vLLM engine, else "openai": tierbench sends /v1/completions, which both name), label (the run
  and the point, where vLLM writes its --label, None by default), model_id (the model name the
  requests carried), tokenizer_id (the run's model directory), num_prompts (the point's measured
  calls), request_rate (load.rate for Poisson or gamma arrivals, else "inf" as vLLM writes for
  all-at-once or its own trace timing), burstiness (vLLM's gamma shape = 1 / gamma_cv**2; 1.0 for
  Poisson and where the rate is "inf", vLLM's default), max_concurrency (closed loop: the users;
  open loop: None).
- per request (request order = send order): start_times (send, seconds), ttfts, itls and latencies
  in seconds, input_lens and output_lens in tokens, queue_times (send - intended start: the
  schedule lag, which is what vLLM's client_queue_time measures), generated_texts and errors.
- summary: duration (tierbench's: first send to last token, as analysis.metrics.summarize), counts,
  throughputs per second, and per selected metric mean/median/std/pN in ms, computed as vLLM's
  calculate_metrics does: numpy in seconds, times 1000, 0 where a list is empty.

Definitions (calculate_metrics): TTFT = first chunk - send; latency (E2EL) = last chunk - send;
TPOT = (latency - TTFT) / (output_len - 1) over requests with output_len > 1 (for goodput a shorter
output counts as TPOT 0); ITL = every gap between chunks, pooled over requests; all over completed
requests only. A failed request keeps vLLM's defaults (ttft 0, itls [], latency 0, output_len 0)
beside its send time, prompt length and error message.

Only warm-up rows are left out (vLLM's warm-up requests are not in its result either).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.metrics import _output_tokens, _prompt_tokens, error_reason, group_key, load_requests
from analysis.peers import read_json_object
from analysis.sessions import measured_rows

# vLLM's --percentile-metrics: the names it allows, and its default for generative backends.
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el", "client_queue_time", "e2el_including_client_queue")
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl")
# vLLM's --metric-percentiles default ("99").
DEFAULT_METRIC_PERCENTILES = (99.0,)
# tierbench's [slos] keys -> vLLM's --goodput keys (both in ms)
SLO_KEYS = {"ttft_ms": "ttft", "tpot_ms": "tpot", "e2el_ms": "e2el"}


@dataclass
class Output:
    """One request as vLLM's client records it (RequestFuncOutput): seconds and tokens."""
    success: bool
    start_time: float
    prompt_len: int
    output_len: int = 0  # vLLM's actual_output_lens: 0 for a failure
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    queue_time: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------- the run's points

def points(run_dir: str | Path) -> list[tuple[str, str | None]]:
    """Every point of a run as (engine, tier), in first-seen order, as to_vllm_result takes them:
    (engine, "") for a run without tiers or repetitions; (engine, tier) per repetition (rep<i>);
    (scenario, None) for a run through tiers, whose scenario's calls span its tiers (as
    analysis.rundata.Run.groups)."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    df = measured_rows(load_requests(run_dir))
    if bool(info.get("tiers")):
        return [(e, None) for e in dict.fromkeys(df["engine"].astype(str))]
    return list(dict.fromkeys(zip(df["engine"].astype(str), df["tier"].astype(str))))


def _run_info(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not run_dir.is_dir() or not path.is_file():
        raise ValueError(f"{run_dir}: not a run directory (no run.json)")
    return read_json_object(path)


def _select(run_dir: Path, info: dict, engine: str | None, tier: str | None) -> tuple[pd.DataFrame, str, str]:
    """The measured rows of one point, with its engine and tier ("" for all of a scenario's tiers)."""
    df = measured_rows(load_requests(run_dir))
    where = run_dir / "requests.parquet"
    if not len(df):
        raise ValueError(f"{where}: no measured requests")
    engines = list(dict.fromkeys(df["engine"].astype(str)))
    if engine is None:
        if len(engines) > 1:
            raise ValueError(f"{where}: field 'engine': the run has several ({', '.join(engines)}); pick one")
        engine = engines[0]
    elif engine not in engines:
        raise ValueError(f"{where}: field 'engine': no engine {engine!r} (the run has {', '.join(engines)})")
    df = df[df["engine"].astype(str) == engine]
    tiers = list(dict.fromkeys(df["tier"].astype(str)))
    if tier is not None:
        if tier not in tiers:
            raise ValueError(f"{where}: field 'tier': engine {engine!r} has no tier {tier!r} "
                             f"(it has {', '.join(repr(t) for t in tiers)})")
        df = df[df["tier"].astype(str) == tier]
    elif len(tiers) > 1 and not info.get("tiers"):  # repetitions: each is a point of its own
        raise ValueError(f"{where}: field 'tier': engine {engine!r} has several ({', '.join(tiers)}); pick one")
    else:
        tier = tiers[0] if len(tiers) == 1 and not info.get("tiers") else ""
    return df, engine, tier or ""


# --------------------------------------------------------------------------- requests

def outputs_from_rows(rows: pd.DataFrame) -> list[Output]:
    """The rows (one point, send order) as vLLM's per-request outputs."""
    sent, intended = _num(rows["sent"]), _num(rows["intended_start"])
    first, last = _num(rows["first_token"]), _num(rows["last_token"])
    prompt = _prompt_tokens(rows)
    out_tok = _output_tokens(rows)  # the server's usage, else the chunk count
    outs = []
    for i, (status, itl, msg, reason) in enumerate(zip(rows["status"], rows["itl"], rows["error"], rows["error_reason"])):
        start = sent[i] if math.isfinite(sent[i]) else _finite(intended[i])  # a call never sent: its intended time
        o = Output(success=status == "ok", start_time=start, prompt_len=int(_finite(prompt[i])),
                   queue_time=_finite(sent[i] - intended[i]))
        if o.success:
            o.ttft = float(first[i] - sent[i])
            o.latency = float(last[i] - sent[i])
            o.itl = [float(g) for g in itl]
            o.output_len = int(_finite(out_tok[i]))
        else:
            o.error = msg if isinstance(msg, str) and msg else error_reason(reason, msg)
        outs.append(o)
    return outs


def _num(series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else 0.0


# --------------------------------------------------------------------------- vLLM's figures

def benchmark_result(outputs: list[Output], duration: float, *, percentile_metrics=DEFAULT_PERCENTILE_METRICS,
                     percentiles=DEFAULT_METRIC_PERCENTILES, goodput: dict[str, float] | None = None,
                     max_concurrency: int | None = None, request_rate: float = math.inf) -> dict:
    """What vLLM's `benchmark` returns for these outputs (calculate_metrics and process_one_metric),
    with the per-request lists of --save-detailed. `goodput` is vLLM's --goodput ({ttft|tpot|e2el: ms})."""
    ok = [o for o in outputs if o.success]
    ttfts = [o.ttft for o in ok]
    e2els = [o.latency for o in ok]
    tpots = [(o.latency - o.ttft) / (o.output_len - 1) for o in ok if o.output_len > 1]
    itls = [g for o in ok for g in o.itl]
    total_input = sum(o.prompt_len for o in ok)
    total_output = sum(o.output_len for o in outputs)
    good = None
    if goodput:  # a request is good when every given metric is within its SLO; TPOT 0 for <= 1 token
        per = {"ttft": ttfts, "tpot": [(o.latency - o.ttft) / (o.output_len - 1) if o.output_len > 1 else 0.0
                                       for o in ok], "e2el": e2els}
        good = sum(all(per[k][i] <= v / 1000.0 for k, v in goodput.items()) for i in range(len(ok))) / duration
    peak_tokens, peak_requests = _peaks(ok)
    result = {
        "duration": float(duration),
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration,
        "request_goodput": good,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": [o.output_len for o in outputs],
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "latencies": [o.latency for o in outputs],
        "start_times": [o.start_time for o in outputs],
        "queue_times": [o.queue_time for o in outputs],
        # tierbench does not keep the generated text (prompts and outputs are token counts): ""
        "generated_texts": ["" for _ in outputs],
        "errors": [o.error for o in outputs],
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_requests,
        "rtfx": 0.0,  # vLLM's inverse real-time factor of audio input: none here
    }
    values = {"ttft": ttfts, "tpot": tpots, "itl": itls, "e2el": e2els}
    if max_concurrency is not None:  # vLLM adds these two only under a concurrency cap
        values["client_queue_time"] = [o.queue_time for o in ok]
        if not math.isinf(request_rate):
            values["e2el_including_client_queue"] = [o.latency + o.queue_time for o in ok]
    for name in ("ttft", "tpot", "itl", "e2el", "client_queue_time", "e2el_including_client_queue"):
        if name in percentile_metrics and name in values:
            result.update(metric_stats(name, values[name], percentiles))
    return result


def metric_stats(name: str, values_s: list[float], percentiles) -> dict:
    """mean_/median_/std_/p<N>_<name>_ms as vLLM computes them: numpy over seconds (population std,
    linear-interpolated percentiles), times 1000; an empty list counts as [0]."""
    a = np.asarray(values_s if len(values_s) else [0.0], dtype=float)
    out = {f"mean_{name}_ms": float(np.mean(a) * 1000), f"median_{name}_ms": float(np.median(a) * 1000),
           f"std_{name}_ms": float(np.std(a) * 1000)}
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = float(np.percentile(a, p) * 1000)
    return out


def _peaks(ok: list[Output]) -> tuple[float, int]:
    """vLLM's max_output_tokens_per_s and max_concurrent_requests: chunks (first, then one per ITL
    gap) counted in whole-second buckets from the first send, and the requests active in each."""
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    n = int(np.ceil(max(o.start_time + o.latency for o in ok) - t0)) + 1
    tokens, active = np.zeros(n), np.zeros(n)
    for o in ok:
        t = o.start_time + o.ttft
        times = [t]
        for gap in o.itl:
            t += gap
            times.append(t)
        for t in times:
            b = int(t - t0)
            if 0 <= b < n:
                tokens[b] += 1
        for s in range(int(o.start_time - t0), int(o.start_time + o.latency - t0) + 1):
            active[s] += 1
    return float(tokens.max()), int(active.max())


# --------------------------------------------------------------------------- the whole file

def to_vllm_result(run_dir: Path, engine: str | None = None, tier: str | None = None, *,
                   percentile_metrics=DEFAULT_PERCENTILE_METRICS, percentiles=DEFAULT_METRIC_PERCENTILES) -> dict:
    """The vLLM result JSON (as a dict) of one point of a run: `engine` may be left out where the
    run has one engine (or scenario), `tier` where that engine has one tier (a scenario of a run
    through tiers: all its tiers; give a tier for the calls it routed there). ValueError naming the
    file and field on bad input: not a run directory, no such engine or tier, no measured requests."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    rows, engine, tier = _select(run_dir, info, engine, tier)
    outputs = outputs_from_rows(rows)
    duration = _duration(rows)
    if duration is None:
        raise ValueError(f"{run_dir / 'requests.parquet'}: field 'sent': no send times to measure a duration from")
    spec = info.get("spec") or {}
    load = spec.get("load") or {}
    closed = load.get("mode", "closed") == "closed"
    rate = float(load.get("rate") or 0.0)
    arrivals = load.get("arrivals", "trace")
    timed = not closed and arrivals in ("poisson", "gamma") and rate > 0
    burstiness = 1.0 / float(load.get("gamma_cv") or 2.0) ** 2 if timed and arrivals == "gamma" else 1.0
    max_concurrency = int(load["users"]) if closed and load.get("users") else None
    slos = spec.get("slos") or {}
    goodput = {SLO_KEYS[k]: float(v) for k, v in slos.items() if k in SLO_KEYS}
    eng = (info.get("engines") or {}).get(engine) or {}
    backend = "vllm" if eng.get("kind") == "vllm" else "openai"
    model_id = _model_id(info, eng, rows, tier)
    header = {
        "date": _date(info.get("start")),
        "endpoint_type": backend,
        "backend": backend,
        "label": f"{info.get('name') or run_dir.name}/{group_key(engine, tier)}",
        "model_id": model_id,
        "tokenizer_id": str((info.get("workload") or {}).get("model_dir") or model_id),
        "num_prompts": len(outputs),
        "request_rate": rate if timed else "inf",
        "burstiness": burstiness,
        "max_concurrency": max_concurrency,
    }
    return {**header, **benchmark_result(outputs, duration, percentile_metrics=percentile_metrics,
                                         percentiles=percentiles, goodput=goodput or None,
                                         max_concurrency=max_concurrency, request_rate=rate if timed else math.inf)}


def _duration(rows: pd.DataFrame) -> float | None:
    """First send to last token (a failed call's send where it has no last token): the duration of
    tierbench's own summary, so throughputs agree with it."""
    sent, last = _num(rows["sent"]), _num(rows["last_token"])
    last = np.where(np.isnan(last), sent, last)
    if not np.isfinite(sent).any():
        return None
    d = float(np.nanmax(last) - np.nanmin(sent))
    return d if d > 0 else None


def _model_id(info: dict, eng: dict, rows: pd.DataFrame, tier: str) -> str:
    """The model the requests named: the engine's; for a scenario of a run through tiers, its tier's
    (the tiers' models joined by ',' where a scenario spans several)."""
    if eng.get("model"):
        return str(eng["model"])
    tiers = {t.get("name"): t.get("model") for t in info.get("tiers") or [] if isinstance(t, dict)}
    used = [tier] if tier else list(dict.fromkeys(rows["tier"].astype(str)))
    models = list(dict.fromkeys(str(tiers[t]) for t in used if tiers.get(t)))
    return ",".join(models) if models else str((info.get("spec") or {}).get("model") or "")


def _date(start) -> str:
    """vLLM's date format from run.json's ISO start (UTC); now where the run has none."""
    try:
        return datetime.fromisoformat(str(start)).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        return datetime.now().strftime("%Y%m%d-%H%M%S")


def write_vllm_result(result: dict, path: Path) -> Path:
    """Write one result as vLLM does (one JSON object, no indentation)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, allow_nan=False), encoding="utf-8")
    return path
