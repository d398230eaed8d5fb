"""Characterization plots: one self-contained HTML file of Plotly figures (plotly.js inlined, so
it opens without a network)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from traces.stats import CallSeries, reuse_by_call_index


def _cdf(values: np.ndarray, name: str) -> go.Scatter:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size > 4000:  # thin the curve, keep its shape and both ends
        idx = np.unique(np.linspace(0, v.size - 1, 4000).astype(int))
        v, y = v[idx], (idx + 1) / v.size
    else:
        y = np.arange(1, v.size + 1) / max(v.size, 1)
    return go.Scatter(x=v, y=y, mode="lines", name=name)


def figures(series: list[tuple[str, CallSeries, np.ndarray]]) -> list[go.Figure]:
    """series: (label, per-call series, calls per top-level session) for one or more traces."""
    specs = [
        ("Prompt tokens per call", "prompt tokens", lambda cs, cps: cs.prompt, "log"),
        ("Output tokens per call", "output tokens", lambda cs, cps: cs.output, "log"),
        ("Think time after a tool call (s)", "seconds", lambda cs, cps: cs.think[(cs.prev_stop == "tool_call") & ~np.isnan(cs.think)]
         if (cs.prev_stop == "tool_call").any() else cs.think[~np.isnan(cs.think)], "log"),
        ("Calls per session", "calls", lambda cs, cps: cps, "linear"),
    ]
    figs = []
    for title, xlabel, pick, xtype in specs:
        fig = go.Figure()
        for label, cs, cps in series:
            v = pick(cs, cps)
            if xtype == "log":
                v = v[v > 0]
            if len(v):
                fig.add_trace(_cdf(v, label))
        fig.update_layout(title=f"CDF: {title}", xaxis_title=xlabel, yaxis_title="fraction", xaxis_type=xtype,
                          template="plotly_white", height=380)
        figs.append(fig)
    fig = go.Figure()
    for label, cs, _ in series:
        ks, means, counts = reuse_by_call_index(cs)
        fig.add_trace(go.Scatter(x=ks, y=means, mode="lines+markers", name=label,
                                 customdata=counts, hovertemplate="call %{x}: %{y:.3f} (%{customdata} calls)"))
    fig.update_layout(title="Prefix reuse as a session goes on (infinite cache)", xaxis_title="call index in session",
                      yaxis_title="prompt tokens served from cache / prompt tokens", yaxis_range=[0, 1.02],
                      template="plotly_white", height=380)
    figs.append(fig)
    return figs


def write_html(figs: list[go.Figure], out: Path, title: str, summary: str = "") -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
             f"<body style='font-family:sans-serif;max-width:1000px;margin:auto'><h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append(f"<pre>{html.escape(summary)}</pre>")
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
    parts.append("</body></html>")
    Path(out).write_text("\n".join(parts), encoding="utf-8")
