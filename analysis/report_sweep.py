"""The report of a sweep (sweep.json from `tierbench sweep`): one self-contained HTML page.

1. the capacity table: per engine the SLO capacity (highest load shown to hold every SLO) with the
   lowest failing load above it, the saturation point and the points measured;
2. latency against throughput per engine, one curve per metric (TTFT, TPOT, E2EL p50 and p99 in
   ms; session makespan p50/p90 in s for closed-loop sweeps), each point with its
   session-bootstrap interval as an error bar and a band, the saturated point and the capacity
   marked;
3. the Pareto plot of vLLM's plot_pareto: output tokens/s per user against output tokens/s in
   total, one line per engine (closed loop: per concurrent session);
4. the points table and the sweep's provenance.
"""
from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots

from analysis.report import CSS
from analysis.report_figures import _color, render_figure
from analysis.peers import read_json_object
from analysis.report_html import esc, html_table, section

CURVES = (("ttft", "TTFT", "ms"), ("tpot", "TPOT", "ms"), ("e2el", "E2EL", "ms"))


def load_sweep(path: str | Path) -> dict:
    """sweep.json of a sweep directory (or the file); ValueError naming the file when it is not one."""
    p = Path(path)
    f = p / "sweep.json" if p.is_dir() else p
    doc = read_json_object(f)
    if not isinstance(doc.get("engines"), dict):
        raise ValueError(f"{f}: field 'engines': expected the engines of a sweep")
    return doc


def is_sweep(path: str | Path) -> bool:
    p = Path(path)
    return (p / "sweep.json").is_file() if p.is_dir() else p.name == "sweep.json"


def _curve_points(eng: dict) -> list[dict]:
    """The points on the load axis (auto's synchronous and maximum points are other loops)."""
    return sorted((p for p in eng["points"] if p["label"] not in ("sync", "max")), key=lambda p: p["load"])


def _load_text(load: float | None, closed: bool) -> str:
    if load is None:
        return "-"
    return f"{int(load)} sessions" if closed else f"{load:.3g} calls/s"


def capacity_rows(doc: dict) -> list[list[str]]:
    closed = doc["config"]["closed"]
    rows = []
    for name, eng in doc["engines"].items():
        c = eng.get("capacity") or {}
        if not c:
            cap = "no SLOs given"
        elif c.get("problem"):
            cap = f"not bracketed: {c['problem']}"
        else:
            cap = f"{_load_text(c['lo'], closed)} (fails at {_load_text(c['hi'], closed)})"
        rows.append([esc(name), esc(cap), esc(_load_text(eng.get("saturated_at"), closed)),
                     str(len(eng["points"]))])
    return rows


def curve_figure(doc: dict) -> go.Figure | None:
    closed = doc["config"]["closed"]
    metrics = [(f"{m}_p{q}_ms", f"{label} p{q} (ms)") for m, label, _ in CURVES for q in (50, 99)]
    if closed:
        metrics += [("makespan_p50_s", "makespan p50 (s)"), ("makespan_p90_s", "makespan p90 (s)")]
    cols = 2
    rows = (len(metrics) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for _, t in metrics], vertical_spacing=0.08)
    drawn = False
    for i, (name, eng) in enumerate(doc["engines"].items()):
        pts = [p for p in _curve_points(eng) if p.get("output_throughput") is not None]
        for j, (key, _) in enumerate(metrics):
            xs, ys, lo, hi, text = [], [], [], [], []
            for p in pts:
                iv = p.get(key) or {}
                if iv.get("estimate") is None:
                    continue
                xs.append(p["output_throughput"])
                ys.append(iv["estimate"])
                lo.append(iv["estimate"] - iv["lo"] if iv.get("lo") is not None else 0)
                hi.append(iv["hi"] - iv["estimate"] if iv.get("hi") is not None else 0)
                text.append(f"{p['label']} ({p.get('verdict') or 'no SLOs'})")
            if not xs:
                continue
            drawn = True
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=j == 0, line={"color": _color(i)}, text=text,
                                     error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}),
                          row=j // cols + 1, col=j % cols + 1)
            sat = [(p["output_throughput"], (p.get(key) or {}).get("estimate")) for p in pts
                   if p["load"] == eng.get("saturated_at")]
            if sat and sat[0][1] is not None:
                fig.add_trace(go.Scatter(x=[sat[0][0]], y=[sat[0][1]], mode="markers", legendgroup=name,
                                         showlegend=False, name=f"{name} saturated",
                                         marker={"symbol": "x", "size": 14, "color": _color(i)}),
                              row=j // cols + 1, col=j % cols + 1)
    if not drawn:
        return None
    fig.update_xaxes(title_text="output tokens/s")
    fig.update_layout(height=320 * rows, title="Latency against throughput (error bars: intervals; x: saturated)")
    return fig


def pareto_figure(doc: dict) -> go.Figure | None:
    fig = go.Figure()
    for i, (name, eng) in enumerate(doc["engines"].items()):
        pts = [p for p in _curve_points(eng) if p.get("output_throughput_per_user") is not None]
        if not pts:
            continue
        fig.add_trace(go.Scatter(x=[p["output_throughput_per_user"] for p in pts],
                                 y=[p["output_throughput"] for p in pts], mode="lines+markers", name=name,
                                 text=[p["label"] for p in pts], line={"color": _color(i)}))
    if not fig.data:
        return None
    fig.update_layout(title="Pareto: total against per-user output throughput",
                      xaxis_title="output tokens/s per user", yaxis_title="output tokens/s in total")
    return fig


def _iv(iv: dict | None, fmt: str = ".1f") -> str:
    if not iv or iv.get("estimate") is None:
        return "-"
    if iv.get("lo") is None:
        return format(iv["estimate"], fmt)
    return f'{format(iv["estimate"], fmt)} <span class="ci">[{format(iv["lo"], fmt)}, {format(iv["hi"], fmt)}]</span>'


def points_rows(doc: dict) -> list[list[str]]:
    closed = doc["config"]["closed"]
    rows = []
    for name, eng in doc["engines"].items():
        for p in sorted(eng["points"], key=lambda p: (p["label"] in ("sync", "max"), p["load"])):
            sat = (p.get("saturation") or {}).get("saturated")
            rows.append([esc(name), esc(p["label"]), esc(_load_text(p["load"], p.get("closed", closed))),
                         f"{p.get('request_throughput') or 0:.2f}", f"{p.get('output_throughput') or 0:.1f}",
                         _iv(p.get("ttft_p50_ms")), _iv(p.get("ttft_p99_ms")), _iv(p.get("tpot_p50_ms"), ".2f"),
                         _iv(p.get("e2el_p99_ms")), _iv(p.get("makespan_p90_s"), ".2f"),
                         esc(p.get("verdict") or "-"), "yes" if sat else "no" if sat is not None else "-",
                         esc(p["dir"])])
    return rows


def build_sweep_report(doc: dict, title: str | None = None) -> str:
    title = title or f"tierbench sweep: {doc.get('spec', {}).get('name', '')}"
    figs, parts = [], []
    for div, fig, note in (("fig-sweep-curves", curve_figure(doc), "No point has a throughput and a latency."),
                           ("fig-pareto", pareto_figure(doc), "No point has a per-user throughput.")):
        if fig is None:
            parts.append(f'<p class="note">{esc(note)}</p>')
        else:
            figs.append(div)
            parts.append(render_figure(fig, div))
    cfg = doc["config"]
    slos = ", ".join(cfg.get("slos") or []) or "none"
    prov = doc.get("provenance", {})
    sections = [
        section("capacity", "SLO capacity",
                f'<p class="note">SLOs: {esc(slos)}, each decided at {cfg["confidence"]:.0%} confidence; '
                f'bisection to {esc(_resolution(doc))}. Saturation test: see each point.</p>'
                + html_table(["engine", "capacity", "saturated at", "points"], capacity_rows(doc))),
        section("curves", "Latency against throughput", parts[0]),
        section("pareto", "Pareto", parts[1]),
        section("points", "Points", html_table(
            ["engine", "point", "load", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
             "E2EL p99 ms", "makespan p90 s", "SLOs", "saturated", "run directory"], points_rows(doc))),
        section("provenance", "Provenance", f"<pre>{esc(json.dumps({'command': doc.get('command'), **prov}, indent=1))}</pre>"),
    ]
    return "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'}; window.tierbenchPlots = [];</script>\n",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n</head>\n',
        f"<body data-figures=\"{esc(json.dumps(figs))}\">\n<h1>{esc(title)}</h1>\n", *sections,
        "<script>Promise.all(window.tierbenchPlots).then(function () {"
        " document.body.setAttribute('data-rendered', 'true'); },"
        " function (e) { console.error('plot failed', e); });</script>\n</body>\n</html>\n",
    ])


def _resolution(doc: dict) -> str:
    c = doc["config"]
    return "1 session" if c["closed"] else f"hi/lo - 1 <= {c['resolution']:g}"


def write_sweep_report(path: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    doc = load_sweep(path)
    p = Path(path)
    out = Path(out) if out else (p if p.is_dir() else p.parent) / "report.html"
    out.write_text(build_sweep_report(doc, title), encoding="utf-8")
    return out
