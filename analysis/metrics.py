"""Metric definitions over the requests table (docs/metrics.md).

Every latency metric matches `vllm bench serve` (vllm/benchmarks/serve.py, calculate_metrics):

- TTFT = first chunk with choices - send;  E2EL = last such chunk - send;
- TPOT = (E2EL - TTFT) / (output_tokens - 1), only for outputs longer than one token (for goodput
  a 1-token output counts as TPOT 0, as vLLM does);
- ITL  = every gap between consecutive chunks with choices, pooled over all requests;
- mean, std (population, numpy default), median and percentiles by linear interpolation
  (numpy's default), computed in seconds and reported in milliseconds;
- throughput = completed requests, output tokens and prompt+output tokens over the duration;
- goodput = completed requests per second whose TTFT, TPOT and E2EL meet every given SLO
  (metric <= SLO, in ms; vLLM's `--goodput ttft:500,tpot:50`).

Only measured rows count: warm-up rows are dropped, failed rows are counted (by their
`error_reason`: timeout:ttft, reset, http:503, ...; the error's prefix in runs recorded before
reasons existed) but never measured. Where vLLM reports 0 for an empty list, this module reports None.

Beside them: latency from the intended start (open loop; exposes coordinated omission), schedule
lag, session makespan (analysis.sessions) and prefix-cache hit ratio against the trace's ideal.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.records import read_records
from analysis.sessions import makespan_summary, measured_rows, sessions_table

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")

# The requests-table columns of bench/load/recorder.py record_row (an empty table gets these).
COLUMNS = [
    "request_id", "engine", "tier", "session", "call_index", "intended_start", "sent", "first_token",
    "last_token", "itl", "chunks", "prompt_tokens", "output_tokens", "cached_tokens",
    "expected_prompt_tokens", "expected_output_tokens", "status", "http_status", "error", "error_reason",
    "retries", "finish_reason", "warmup", "network_s", "route_reason",
]


# --------------------------------------------------------------------------- loading

def load_requests(run_dir: str | Path) -> pd.DataFrame:
    """The requests table of a run: run_dir/requests.parquet, or, when a run was interrupted
    before the merge, every run_dir/requests.*.jsonl fragment concatenated.

    Rows are sorted by (sent, request_id) so both sources give the same frame; `itl` is a list of
    floats in every row. A missing or corrupt file raises ValueError naming the path (a truncated
    last line of a fragment, the mark of an interrupted write, is skipped). A run directory with a
    run.json and no record yet (a run cut before its first call finished) has an empty table."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a run directory")
    pq = run_dir / "requests.parquet"
    if pq.exists():
        try:
            df = pd.read_parquet(pq)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ValueError(f"{pq}: cannot read parquet: {e}") from None
    else:
        if not any(run_dir.glob("requests.*.jsonl")) and not (run_dir / "run.json").exists():
            raise ValueError(f"{run_dir}: no requests.parquet or requests.*.jsonl")
        df = pd.DataFrame(read_records(run_dir))
    return normalize_requests(df)


def normalize_requests(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of the requests table present, with one dtype per column, whatever wrote the rows."""
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series([None] * len(df), dtype=object)
    df["itl"] = [_as_list(v) for v in df["itl"]]
    df["tier"] = df["tier"].fillna("").astype(str)
    df["warmup"] = df["warmup"].fillna(False).astype(bool)
    for c in ("intended_start", "sent", "first_token", "last_token"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if len(df):
        df = df.sort_values(["sent", "request_id"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


def _as_list(v) -> list[float]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return [float(x) for x in v]


# --------------------------------------------------------------------------- helpers

def _num(series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _f(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def distribution_ms(values_s) -> dict:
    """{n, mean, std, median, p50, p90, p99} in ms of values in seconds (NaN dropped), computed
    like vLLM: numpy in seconds, times 1000. Values are None when there is nothing to measure."""
    a = np.asarray(values_s, dtype=float)
    a = a[~np.isnan(a)]
    out: dict = {"n": int(a.size)}
    if a.size == 0:
        out.update({"mean": None, "std": None, "median": None, **{f"p{p}": None for p in PERCENTILES}})
        return out
    out["mean"] = float(np.mean(a) * 1000)
    out["std"] = float(np.std(a) * 1000)
    out["median"] = float(np.median(a) * 1000)
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p) * 1000)
    return out


def _output_tokens(df: pd.DataFrame) -> np.ndarray:
    """Server-reported completion tokens; the content-chunk count where the server gave none
    (vLLM falls back to re-tokenizing the text, which tierbench does not keep)."""
    out = _num(df["output_tokens"])
    chunks = _num(df["chunks"])
    return np.where(np.isnan(out), chunks, out)


def _prompt_tokens(df: pd.DataFrame) -> np.ndarray:
    """Server-reported prompt tokens; what the workload sent where the server gave none."""
    p = _num(df["prompt_tokens"])
    return np.where(np.isnan(p), _num(df["expected_prompt_tokens"]), p)


def error_reason(reason, message) -> str:
    """A failed row's reason: its error_reason, or for rows recorded before reasons existed the
    prefix of its error message."""
    if isinstance(reason, str) and reason:
        return reason
    return error_prefix(message)


def error_prefix(message) -> str:
    """The class of an error message: the text before its first ':' ('HTTP 500',
    'disconnected', 'timeout after 600 s', 'malformed stream', 'no choices in the stream')."""
    if message is None or (isinstance(message, float) and math.isnan(message)):
        return "unknown"
    s = str(message).strip()
    head = s.split(":", 1)[0].strip()
    return (head or s or "unknown")[:60]


def _check_slos(slos: dict | None) -> dict:
    if not slos:
        return {}
    bad = [k for k in slos if k not in SLO_METRICS]
    if bad:
        raise ValueError(f"unknown SLO metric(s) {bad}; expected some of {list(SLO_METRICS)} (ms)")
    for k, v in slos.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"SLO {k}={v!r}: expected a positive number of milliseconds")
    return dict(slos)


# --------------------------------------------------------------------------- summary

def summarize(requests: pd.DataFrame, *, slos: dict | None = None, ideal_prefix_hit: float | None = None,
              duration_s: float | None = None) -> dict:
    """The summary of ONE engine/tier group's measured (non-warmup) rows; see the module doc.
    Latencies in ms, throughputs per second, durations and makespans in seconds."""
    slos = _check_slos(slos)
    df = measured_rows(requests)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:  # a hand-built or older table: absent columns are unknown values
        df = df.assign(**{c: None for c in missing})
    ok_mask = (df["status"] == "ok").to_numpy(dtype=bool) if len(df) else np.zeros(0, dtype=bool)
    ok, bad = df[ok_mask], df[~ok_mask]

    # duration: first send to last token among measured rows (vLLM times the whole benchmark,
    # failures included)
    if duration_s is None and len(df):
        sent, last = _num(df["sent"]), _num(df["last_token"])
        last = np.where(np.isnan(last), sent, last)
        if np.isfinite(sent).any():
            duration_s = float(np.nanmax(last) - np.nanmin(sent))
    dur = duration_s if duration_s is not None and duration_s > 0 else None

    sent_ok = _num(ok["sent"])
    ttft = _num(ok["first_token"]) - sent_ok
    e2el = _num(ok["last_token"]) - sent_ok
    out_tok = _output_tokens(ok)
    in_tok = _prompt_tokens(ok)
    multi = out_tok > 1
    tpot = np.where(multi, (e2el - ttft) / np.where(multi, out_tok - 1, 1), np.nan)
    itl = np.fromiter((g for gaps in ok["itl"] if gaps is not None and not isinstance(gaps, float)
                       for g in gaps), dtype=float)

    completed, failed = int(len(ok)), int(len(bad))
    total_output = float(np.nansum(out_tok))
    total_input = float(np.nansum(in_tok))

    s: dict = {
        "measured": int(len(df)), "warmup_excluded": int(len(requests) - len(df)) if len(requests) else 0,
        "completed": completed, "failed": failed,
        "error_rate": failed / len(df) if len(df) else None,
        "duration_s": _f(duration_s),
        "total_input_tokens": int(total_input), "total_output_tokens": int(total_output),
        "request_throughput": completed / dur if dur else None,
        "output_throughput": total_output / dur if dur else None,
        "total_token_throughput": (total_input + total_output) / dur if dur else None,
    }
    dists = {"ttft": distribution_ms(ttft), "tpot": distribution_ms(tpot),
             "itl": distribution_ms(itl), "e2el": distribution_ms(e2el)}
    s.update(dists)
    for name, d in dists.items():
        s[f"{name}_mean"], s[f"{name}_std"] = d["mean"], d["std"]
        for p in PERCENTILES:
            s[f"{name}_p{p}"] = d[f"p{p}"]

    # goodput (vLLM --goodput): TPOT counts as 0 for outputs of <= 1 token
    if slos:
        vals = {"ttft": ttft, "tpot": np.where(multi, tpot, 0.0), "e2el": e2el}
        good = np.ones(len(ok), dtype=bool)
        for k, slo_ms in slos.items():
            good &= vals[k] <= slo_ms / 1000.0  # NaN compares False: not good
        s["slos_ms"] = slos
        s["good_completed"] = int(good.sum())
        s["goodput"] = int(good.sum()) / dur if dur else None
    else:
        s["slos_ms"], s["good_completed"], s["goodput"] = None, None, None

    # latency from the intended start (open loop) and schedule lag
    intended_ok = _num(ok["intended_start"])
    lat = {"ttft": _num(ok["first_token"]) - intended_ok, "e2el": _num(ok["last_token"]) - intended_ok}
    lfi = {k: distribution_ms(v) for k, v in lat.items()}
    s["latency_from_intended"] = lfi
    for k, d in lfi.items():
        s[f"{k}_intended_p50"], s[f"{k}_intended_p99"] = d["p50"], d["p99"]
    lag = (_num(df["sent"]) - _num(df["intended_start"])) if len(df) else np.zeros(0)
    lag_d = distribution_ms(lag)
    lag_max = float(np.nanmax(lag) * 1000) if lag_d["n"] else None
    s["schedule_lag"] = {**lag_d, "max": lag_max}
    s["schedule_lag_p50"], s["schedule_lag_p99"], s["schedule_lag_max"] = lag_d["p50"], lag_d["p99"], lag_max

    # prefix cache: over completed rows where the server reported cached tokens
    cached = _num(ok["cached_tokens"])
    prompt = _num(ok["prompt_tokens"])
    known = ~np.isnan(cached) & ~np.isnan(prompt)
    hit = float(cached[known].sum() / prompt[known].sum()) if known.any() and prompt[known].sum() > 0 else None
    s["prefix_cache_hit_ratio"] = hit
    s["ideal_prefix_hit"] = _f(ideal_prefix_hit)
    s["prefix_hit_vs_ideal"] = hit / ideal_prefix_hit if hit is not None and ideal_prefix_hit else None

    # sessions
    ms = makespan_summary(sessions_table(df))
    s["sessions"] = ms
    s["makespan_p50_s"], s["makespan_p99_s"], s["makespan_mean_s"] = ms["makespan_p50_s"], ms["makespan_p99_s"], ms["makespan_mean_s"]

    errors: dict[str, int] = {}
    for reason, msg in zip(bad["error_reason"], bad["error"]):
        k = error_reason(reason, msg)
        errors[k] = errors.get(k, 0) + 1
    s["errors"] = dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])))
    s["retried_calls"] = int((_num(df["retries"]) > 0).sum()) if len(df) else 0
    return s


def group_key(engine, tier) -> str:
    engine = "" if engine is None or (isinstance(engine, float) and math.isnan(engine)) else str(engine)
    tier = "" if tier is None or (isinstance(tier, float) and math.isnan(tier)) else str(tier)
    return f"{engine}@{tier}" if tier else engine


def summarize_run(run_dir_or_df: str | Path | pd.DataFrame, *, slos: dict | None = None,
                  ideal_prefix_hit: float | None = None, duration_s: float | None = None) -> dict[str, dict]:
    """One summary per (engine, tier) group, keyed 'engine' or 'engine@tier'; in first-seen order."""
    df = run_dir_or_df if isinstance(run_dir_or_df, pd.DataFrame) else load_requests(run_dir_or_df)
    if "engine" not in df.columns:
        raise ValueError("requests table has no 'engine' column")
    tiers = df["tier"].fillna("").astype(str) if "tier" in df.columns else pd.Series([""] * len(df), index=df.index)
    engines = df["engine"].fillna("").astype(str)
    out: dict[str, dict] = {}
    for (engine, tier), g in df.groupby([engines, tiers], sort=False):
        s = summarize(g, slos=slos, ideal_prefix_hit=ideal_prefix_hit, duration_s=duration_s)
        out[group_key(engine, tier)] = {"engine": engine, "tier": tier, **s}
    return out


# --------------------------------------------------------------------------- text table

_ROWS = [
    ("requests/s", "request_throughput", "{:.2f}"),
    ("output tok/s", "output_throughput", "{:.1f}"),
    ("TTFT p50 ms", "ttft_p50", "{:.1f}"), ("TTFT p99 ms", "ttft_p99", "{:.1f}"),
    ("TPOT p50 ms", "tpot_p50", "{:.2f}"), ("TPOT p99 ms", "tpot_p99", "{:.2f}"),
    ("ITL p50 ms", "itl_p50", "{:.2f}"), ("ITL p99 ms", "itl_p99", "{:.2f}"),
    ("E2EL p50 ms", "e2el_p50", "{:.1f}"), ("E2EL p99 ms", "e2el_p99", "{:.1f}"),
    ("makespan p50 s", "makespan_p50_s", "{:.2f}"), ("makespan p99 s", "makespan_p99_s", "{:.2f}"),
    ("prefix hit", "prefix_cache_hit_ratio", "{:.1%}"),
    ("completed", "completed", "{:d}"), ("failed", "failed", "{:d}"),
]


def format_summary_table(summaries: dict[str, dict]) -> str:
    """A fixed-width text table: one column per engine (or engine@tier), one row per metric:
    throughput, TTFT/TPOT/ITL/E2EL p50 and p99, session makespan p50/p99, prefix-cache hit."""
    if not summaries:
        return "(no results)"
    names = list(summaries)
    cells = [[label] + [_fmt(summaries[n].get(key), fmt) for n in names] for label, key, fmt in _ROWS]
    header = ["metric"] + names
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]
    line = lambda r: "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])  # noqa: E731
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(header), rule] + [line(r) for r in cells])


def _fmt(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return fmt.format(int(v) if fmt == "{:d}" else v)
    except (ValueError, TypeError):
        return str(v)
