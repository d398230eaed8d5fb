"""Session-level metrics: makespan (first send to last token of a session) and its breakdown.

For each measured call k of a session, ordered by call index:
  network_k       = the request's `network_s` column where it exists (tier delay), else 0;
  queue_prefill_k = TTFT_k - network_k (a call with no first token: its whole send-to-end time);
  decode_k        = E2EL_k - TTFT_k;
  tool_k (k > 0)  = sent_k - last_token_{k-1}: think/tool time as replayed (clipped at 0 where
                    calls overlap).
For a sequential session network + queue_prefill + decode + tool == makespan exactly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BREAKDOWN = ("network_s", "queue_prefill_s", "decode_s", "tool_s")
SESSION_COLUMNS = ["engine", "tier", "session", "calls", "completed", "failed", "first_send", "last_token",
                   "makespan_s", *BREAKDOWN, "prompt_tokens", "cached_tokens", "prefix_hit_ratio"]


def measured_rows(requests: pd.DataFrame) -> pd.DataFrame:
    """The rows that count: warm-up rows dropped."""
    if "warmup" not in requests.columns or not len(requests):
        return requests
    warm = requests["warmup"].fillna(False).astype(bool)
    return requests[~warm]


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _text(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series([""] * len(df), index=df.index, dtype=object)
    return df[col].fillna("").astype(str)


def sessions_table(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per (engine, tier, session) of the measured rows; see the module doc. A request
    with no session id is a session of its own (keyed by its request id)."""
    df = measured_rows(requests)
    if not len(df):
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("engine", "tier", "session") else float)
                             for c in SESSION_COLUMNS})
    session = _text(df, "session")
    rid = _text(df, "request_id")
    session = session.where(session != "", rid)
    sent = _num(df, "sent")
    first = _num(df, "first_token")
    last = _num(df, "last_token")
    last = np.where(np.isnan(last), sent, last)
    net = np.nan_to_num(_num(df, "network_s"), nan=0.0)
    has_first = ~np.isnan(first)
    ok = (_text(df, "status") == "ok").to_numpy()
    w = pd.DataFrame({
        "engine": _text(df, "engine").to_numpy(), "tier": _text(df, "tier").to_numpy(),
        "session": session.to_numpy(), "call_index": _num(df, "call_index"),
        "sent": sent, "last": last, "ok": ok,
        "network_s": net,
        "queue_prefill_s": np.where(has_first, first, last) - sent - net,
        "decode_s": np.where(has_first, last - first, 0.0),
        "prompt": _num(df, "prompt_tokens"), "cached": _num(df, "cached_tokens"),
    })
    keys = ["engine", "tier", "session"]
    w = w.sort_values(keys + ["call_index", "sent"], kind="stable", na_position="last")
    prev_last = w.groupby(keys, sort=False)["last"].shift(1)
    w["tool_s"] = (w["sent"] - prev_last).clip(lower=0.0).fillna(0.0)
    known = ~np.isnan(w["cached"].to_numpy()) & ~np.isnan(w["prompt"].to_numpy())
    w["prompt_known"] = np.where(known, w["prompt"], 0.0)
    w["cached_known"] = np.where(known, w["cached"], 0.0)
    w["known"] = known

    g = w.groupby(keys, sort=False)
    t = g.agg(calls=("sent", "size"), completed=("ok", "sum"), first_send=("sent", "min"),
              last_token=("last", "max"), network_s=("network_s", "sum"),
              queue_prefill_s=("queue_prefill_s", "sum"), decode_s=("decode_s", "sum"),
              tool_s=("tool_s", "sum"), prompt_tokens=("prompt_known", "sum"),
              cached_tokens=("cached_known", "sum"), known=("known", "sum")).reset_index()
    t["completed"] = t["completed"].astype(int)
    t["calls"] = t["calls"].astype(int)
    t["failed"] = t["calls"] - t["completed"]
    t["makespan_s"] = t["last_token"] - t["first_send"]
    t["prefix_hit_ratio"] = np.where((t["known"] > 0) & (t["prompt_tokens"] > 0),
                                     t["cached_tokens"] / t["prompt_tokens"].where(t["prompt_tokens"] > 0, 1.0),
                                     np.nan)
    no_known = t["known"] == 0
    t.loc[no_known, ["prompt_tokens", "cached_tokens"]] = np.nan
    return t[SESSION_COLUMNS].reset_index(drop=True)


def makespan_summary(sessions_df: pd.DataFrame) -> dict:
    """Makespan p50/p90/p99/mean (s) over sessions, mean seconds of each breakdown part, and the
    mean over sessions (with makespan > 0) of each part's share of its makespan."""
    m = pd.to_numeric(sessions_df["makespan_s"], errors="coerce").to_numpy(dtype=float) if len(sessions_df) else np.zeros(0)
    m = m[~np.isnan(m)]
    out: dict = {"sessions": int(len(sessions_df)),
                 "sessions_with_errors": int((sessions_df["failed"] > 0).sum()) if len(sessions_df) else 0}
    if m.size:
        out.update({"makespan_mean_s": float(np.mean(m)), "makespan_p50_s": float(np.percentile(m, 50)),
                    "makespan_p90_s": float(np.percentile(m, 90)), "makespan_p99_s": float(np.percentile(m, 99)),
                    "makespan_max_s": float(np.max(m))})
    else:
        out.update({k: None for k in ("makespan_mean_s", "makespan_p50_s", "makespan_p90_s", "makespan_p99_s",
                                      "makespan_max_s")})
    pos = sessions_df[pd.to_numeric(sessions_df["makespan_s"], errors="coerce") > 0] if len(sessions_df) else sessions_df
    for part in BREAKDOWN:
        name = part[:-2]
        out[f"{name}_mean_s"] = float(sessions_df[part].mean()) if len(sessions_df) else None
        out[f"{name}_share"] = float((pos[part] / pos["makespan_s"]).mean()) if len(pos) else None
    return out
