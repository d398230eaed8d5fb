"""The report's Plotly figures: the throughput-latency curve, latency CDFs, the session makespan
breakdown, prefix-cache hit by turn and the timeline (with the server's own KV usage and queue from
server_metrics.parquet where the run has it), and how a figure is drawn into the page
(plotly.js itself is inlined once, in <head>, by analysis/report.py).

A builder returns None when it has nothing to draw; the page then shows a note instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from analysis.report_groups import Group, group_sessions, latency_intervals, latency_samples
from analysis.report_html import esc, num
from analysis.sessions import BREAKDOWN, measured_rows
from analysis.stats import Interval

CDF_METRICS = ("ttft", "tpot", "e2el")
CDF_MAX_POINTS = 2000
PLOT_CONFIG = {"responsive": True, "displaylogo": False}
LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 60, "r": 20, "t": 90, "b": 50}}
BREAKDOWN_LABELS = {"network_s": "network", "queue_prefill_s": "queueing + prefill", "decode_s": "decode",
                    "tool_s": "tool / think"}
NICE_BINS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def render_figure(fig: go.Figure, div_id: str) -> str:
    """A div and the script that draws the figure into it (plotly.js is in <head>)."""
    fig.update_layout(**{**LAYOUT, "height": fig.layout.height or LAYOUT["height"]})
    return (f'<div id="{div_id}" class="figure"></div>\n<script>(function () {{ var f = {_script_json_fig(fig)}; '
            f'window.tierbenchPlots.push(Plotly.newPlot("{div_id}", f.data, f.layout, {json.dumps(PLOT_CONFIG)})); '
            "})();</script>\n")


def _script_json_fig(fig: go.Figure) -> str:
    s = pio.to_json(fig, validate=False)  # plotly escapes '<', '>' and '/' already; be sure
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- throughput-latency curve

def curve_figure(groups: list[Group], confidence: float) -> go.Figure | None:
    """Latency against request throughput, one point per run/group, one line per engine, with
    the percentile intervals as error bars."""
    panels = (("ttft", 99.0, "TTFT p99 (ms)"), ("e2el", 50.0, "E2EL p50 (ms)"))
    points: dict[str, list[tuple[float, list[Interval], str]]] = {}
    for g in groups:
        x = num(g.summary.get("request_throughput"))
        if x is None:
            continue
        ivs = latency_intervals(g, confidence)
        ys = [ivs[metric][q] for metric, q, _ in panels]
        points.setdefault(g.engine, []).append((x, ys, g.label))
    if not any(iv.estimate is not None for pts in points.values() for _, ys, _ in pts for iv in ys):
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=[p[2] for p in panels])
    for i, engine in enumerate(points):
        pts = sorted(points[engine], key=lambda p: p[0])
        for j, (_, _, ylabel) in enumerate(panels):
            y = [p[1][j].estimate for p in pts]
            up = [(p[1][j].hi - p[1][j].estimate) if p[1][j].hi is not None else 0 for p in pts]
            down = [(p[1][j].estimate - p[1][j].lo) if p[1][j].lo is not None else 0 for p in pts]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=y, text=[p[2] for p in pts], mode="lines+markers", name=engine,
                legendgroup=engine, showlegend=j == 0, marker={"color": _color(i)}, line={"color": _color(i)},
                error_y={"type": "data", "array": up, "arrayminus": down, "visible": True},
                hovertemplate="%{text}<br>%{x:.2f} req/s<br>%{y:.1f} ms<extra></extra>"), row=1, col=j + 1)
            fig.update_yaxes(title_text=ylabel, row=1, col=j + 1)
            fig.update_xaxes(title_text="request throughput (req/s)", row=1, col=j + 1)
    fig.update_layout(title="Throughput vs latency (one point per run and group)")
    return fig


def _color(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
    return palette[i % len(palette)]


# --------------------------------------------------------------------------- CDFs

def ecdf(values: np.ndarray, max_points: int = CDF_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, cumulative share) of the non-NaN values, thinned to at most max_points
    (always keeping the last)."""
    v = np.sort(values[~np.isnan(values)])
    y = np.arange(1, v.size + 1) / v.size if v.size else np.zeros(0)
    if v.size > max_points:
        idx = np.unique(np.linspace(0, v.size - 1, max_points).round().astype(int))
        v, y = v[idx], y[idx]
    return v, y


def cdf_figure(groups: list[Group], metric: str) -> go.Figure | None:
    """The CDF of one per-call latency (ms, log x) per group."""
    fig = go.Figure()
    for i, g in enumerate(groups):
        if g.rows is None:
            continue
        values, _ = latency_samples(g.rows, metric)
        x, y = ecdf(values * 1000.0)
        if not x.size:
            continue
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=g.label, line={"shape": "hv", "color": _color(i)},
                                 hovertemplate="%{x:.2f} ms: %{y:.1%}<extra>" + esc(g.label) + "</extra>"))
    if not fig.data:
        return None
    name = metric.upper()
    fig.update_layout(title=f"{name} CDF per engine and tier", xaxis={"title": f"{name} (ms, log scale)", "type": "log"},
                      yaxis={"title": "share of calls", "range": [0, 1.02]})
    return fig


# --------------------------------------------------------------------------- makespan breakdown

def makespan_figure(groups: list[Group]) -> go.Figure | None:
    """Stacked bars per group: mean network, queueing+prefill, decode and tool time per session."""
    labels, means = [], []
    for g in groups:
        s = group_sessions(g)
        if s is None or not len(s):
            continue
        labels.append(g.label)
        means.append([_column_mean(s, c) for c in BREAKDOWN])
    if not labels:
        return None
    fig = go.Figure()
    for j, part in enumerate(BREAKDOWN):
        fig.add_trace(go.Bar(x=labels, y=[m[j] for m in means], name=BREAKDOWN_LABELS[part],
                             marker={"color": _color(j)}, hovertemplate="%{x}: %{y:.3f} s<extra>"
                             + BREAKDOWN_LABELS[part] + "</extra>"))
    fig.update_layout(barmode="stack", title="Session makespan breakdown (mean per session)",
                      yaxis={"title": "seconds per session"})
    return fig


def _column_mean(df: pd.DataFrame, col: str) -> float:
    if col not in df.columns:
        return 0.0
    return num(pd.to_numeric(df[col], errors="coerce").mean()) or 0.0


# --------------------------------------------------------------------------- prefix hit by turn

def prefix_by_turn(rows: pd.DataFrame) -> pd.DataFrame:
    """Per call index: completed calls with known cached tokens, and sum(cached) / sum(prompt)."""
    ok = rows[rows["status"] == "ok"]
    d = pd.DataFrame({"turn": pd.to_numeric(ok["call_index"], errors="coerce"),
                      "cached": pd.to_numeric(ok["cached_tokens"], errors="coerce"),
                      "prompt": pd.to_numeric(ok["prompt_tokens"], errors="coerce")}).dropna()
    d = d[d["prompt"] > 0]
    if not len(d):
        return pd.DataFrame({"turn": [], "calls": [], "hit": []})
    t = d.groupby("turn").agg(calls=("cached", "size"), cached=("cached", "sum"), prompt=("prompt", "sum"))
    t["hit"] = t["cached"] / t["prompt"]
    return t.reset_index()[["turn", "calls", "hit"]]


def prefix_figure(groups: list[Group]) -> go.Figure | None:
    fig = go.Figure()
    for i, g in enumerate(groups):
        if g.rows is None:
            continue
        t = prefix_by_turn(g.rows)
        if not len(t):
            continue
        fig.add_trace(go.Scatter(x=t["turn"].to_numpy(), y=t["hit"].to_numpy(), customdata=t["calls"].to_numpy(),
                                 mode="lines+markers", name=g.label, line={"color": _color(i)},
                                 hovertemplate="turn %{x}: %{y:.1%} (%{customdata} calls)<extra>"
                                 + esc(g.label) + "</extra>"))
    if not fig.data:
        return None
    fig.update_layout(title="Prefix-cache hit by turn (cached / prompt tokens, completed calls)",
                      xaxis={"title": "call index in the session"}, yaxis={"title": "hit ratio", "range": [0, 1.02]})
    return fig


# --------------------------------------------------------------------------- timeline

def bin_width(span_s: float, target_bins: int = 150) -> float:
    """A round bin width giving about target_bins bins (at most) over span_s."""
    want = span_s / target_bins
    return next((b for b in NICE_BINS if b >= want), NICE_BINS[-1])


def in_flight(sent: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A step function (times, requests in flight from that time on) of the intervals
    sent..end (an interval ending at a time counts as gone before one starting then)."""
    t = np.concatenate([sent, end])
    d = np.concatenate([np.ones(sent.size), -np.ones(end.size)])
    order = np.lexsort((d, t))
    return t[order], np.cumsum(d[order])


def server_scrapes(g: Group, cache: dict) -> pd.DataFrame | None:
    """The group's rows of its run's server_metrics.parquet (the engine's /metrics, one row per scrape),
    or None; `cache` holds each run's file read once."""
    path = Path(g.run.path) / "server_metrics.parquet"
    if path not in cache:
        try:
            cache[path] = pd.read_parquet(path) if path.is_file() else None
        except Exception:  # noqa: BLE001 - pyarrow raises several types; a bad file leaves its panels out
            cache[path] = None
    df = cache[path]
    if df is None or not {"engine", "tier", "t"} <= set(df.columns):
        return None
    engine, _, tier = g.key.partition("@")
    rows = df[(df["engine"].astype(str) == engine) & (df["tier"].fillna("").astype(str) == tier)]
    return rows.sort_values("t") if len(rows) else None


def timeline_figure(groups: list[Group]) -> go.Figure | None:
    """Panels over time since each group's first send: completed output tokens per second, the
    client-side count of requests in flight and, where the run scraped the server's /metrics, the
    server's KV-cache usage and its waiting and running requests."""
    series, scrapes, cache = [], [], {}
    for i, g in enumerate(groups):
        if g.rows is None or not len(g.rows):
            continue
        rows = measured_rows(g.rows)
        sent = pd.to_numeric(rows["sent"], errors="coerce").to_numpy(dtype=float)
        last = pd.to_numeric(rows["last_token"], errors="coerce").to_numpy(dtype=float)
        keep = ~np.isnan(sent)
        if not keep.any():
            continue
        t0 = float(np.nanmin(sent))
        end = np.where(np.isnan(last), sent, np.maximum(last, sent))
        ok = (rows["status"] == "ok").to_numpy(dtype=bool) & ~np.isnan(last)
        out = pd.to_numeric(rows["output_tokens"], errors="coerce").fillna(
            pd.to_numeric(rows["chunks"], errors="coerce")).fillna(0).to_numpy(dtype=float)
        series.append((i, g.label, t0, sent[keep] - t0, end[keep] - t0, last[ok] - t0, out[ok]))
        server = server_scrapes(g, cache)
        if server is not None:
            scrapes.append((i, g.label, t0, server))
    if not series:
        return None
    span = max(float(np.max(s[4])) if s[4].size else 0.0 for s in series)
    w = bin_width(max(span, 1e-3))
    edges = np.arange(0.0, span + w, w) if span > 0 else np.array([0.0, w])
    if edges.size < 2:
        edges = np.array([0.0, w])
    titles = [f"completed output tokens/s ({w:g} s bins)", "requests in flight (client-side: sent to last token)"]
    if scrapes:
        titles += ["KV-cache usage (server /metrics)", "requests waiting (dashed) and running (server /metrics)"]
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.2 / len(titles),
                        subplot_titles=titles)
    for i, label, _, s, e, done, tokens in series:
        hist, _ = np.histogram(done, bins=edges, weights=tokens)
        fig.add_trace(go.Scatter(x=edges[:-1], y=hist / w, mode="lines", name=label, legendgroup=label,
                                 line={"shape": "hv", "color": _color(i)},
                                 hovertemplate="%{x:.1f} s: %{y:.1f} tok/s<extra>" + esc(label) + "</extra>"),
                      row=1, col=1)
        t, n = in_flight(s, e)
        fig.add_trace(go.Scatter(x=t, y=n, mode="lines", name=label, legendgroup=label, showlegend=False,
                                 line={"shape": "hv", "color": _color(i)},
                                 hovertemplate="%{x:.2f} s: %{y} in flight<extra>" + esc(label) + "</extra>"),
                      row=2, col=1)
    _server_panels(fig, scrapes)
    fig.update_xaxes(title_text="seconds since the group's first send", row=len(titles), col=1)
    fig.update_yaxes(title_text="tok/s", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_layout(title="Timeline", height=300 * len(titles))
    return fig


def _server_panels(fig: go.Figure, scrapes: list) -> None:
    """Rows 3 and 4 of the timeline: per group, the scraped KV usage, and waiting (dashed) and running."""
    for i, label, t0, df in scrapes:
        x = pd.to_numeric(df["t"], errors="coerce").to_numpy(dtype=float) - t0
        for row, col, dash, what in ((3, "kv_usage", "solid", "KV usage"), (4, "waiting", "dash", "waiting"),
                                     (4, "running", "solid", "running")):
            if col not in df.columns:
                continue
            y = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            fmt = "%{y:.1%}" if col == "kv_usage" else "%{y}"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, legendgroup=label, showlegend=False,
                                     line={"shape": "hv", "color": _color(i), "dash": dash},
                                     hovertemplate=f"%{{x:.1f}} s: {fmt} {what}<extra>{esc(label)}</extra>"),
                          row=row, col=1)
    if scrapes:
        fig.update_yaxes(title_text="KV usage", range=[0, 1.02], tickformat=".0%", row=3, col=1)
        fig.update_yaxes(title_text="requests", row=4, col=1)
