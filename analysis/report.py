"""`tierbench report RUN... [-o report.html]`: one self-contained HTML page over one or more runs.

The page inlines plotly.js once (in <head>), so it opens without a network. It holds:

1. a summary table per run and group: TTFT/TPOT/ITL/E2EL p50/p90/p99 in ms, each with its
   session-bootstrap interval (analysis.stats.percentile_cis), throughputs, goodput, errors,
   prefix-cache hit against the trace's ideal and session makespan;
2. a comparison table (analysis.compare: the first run is the baseline and every other run a
   candidate; with a single run of several groups, its first group is the baseline), with the
   same numbers `tierbench compare` prints;
3. figures: throughput-latency curve (one point per run and group, lines per engine), CDFs of
   TTFT, TPOT and E2EL per group, the session makespan breakdown, prefix-cache hit by turn and a
   timeline of output tokens/s and client-side requests in flight;
4. provenance: run.json's name, status, commit, times, environment, command and spec.

Every figure is a <div id="fig-..."> drawn by Plotly.newPlot; <body data-figures> lists the ids
drawn, and <body data-rendered="true"> is set once every plot has resolved (tests check both).
A figure with nothing to draw is left out with a note. Every string read from a file is
HTML-escaped; JSON in <script> is escaped so no string can close the tag.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.subplots import make_subplots

from analysis.compare import DEFAULT_METRICS, CompareRow, compare_metric, compare_runs, itl_gaps, per_call
from analysis.metrics import group_key
from analysis.rundata import Run, load_run
from analysis.sessions import BREAKDOWN, measured_rows
from analysis.stats import Interval, percentile_cis

QS = (50, 90, 99)
# (metric, label, format of a value in ms)
LATENCIES = (("ttft", "TTFT", "{:.1f}"), ("tpot", "TPOT", "{:.2f}"), ("itl", "ITL", "{:.2f}"),
             ("e2el", "E2EL", "{:.1f}"))
CDF_METRICS = ("ttft", "tpot", "e2el")
CDF_MAX_POINTS = 2000
PLOT_CONFIG = {"responsive": True, "displaylogo": False}
LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 60, "r": 20, "t": 90, "b": 50}}
BREAKDOWN_LABELS = {"network_s": "network", "queue_prefill_s": "queueing + prefill", "decode_s": "decode",
                    "tool_s": "tool / think"}
NICE_BINS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
.scroll { overflow-x: auto; }
.ci { color: #777; font-size: .9em; }
.better { background: #e3f5e3; } .worse { background: #fbe4e4; }
table.provenance td, table.provenance th { text-align: left; white-space: normal; }
table.comparison td:nth-child(-n+4), table.comparison th:nth-child(-n+4),
table.comparison td:last-child, table.comparison th:last-child { text-align: left; }
.note { color: #666; font-size: .9em; }
.figure { min-height: 420px; margin-bottom: 1.5em; }
pre { background: #f7f7f7; padding: .7em; overflow-x: auto; font-size: .8em; }
nav a { margin-right: 1em; }
"""


@dataclass
class Group:
    """One engine/tier group of one run, as the report shows it."""
    run: Run
    key: str            # 'engine' or 'engine@tier'
    label: str          # unique on the page: the key, or 'run / key' with several runs
    engine: str
    summary: dict
    rows: pd.DataFrame | None  # measured rows; None for a summary-only run
    intervals: dict = field(default_factory=dict)  # confidence -> latency_intervals (computed once)


# --------------------------------------------------------------------------- entry point

def write_report(runs: list[str | Path], out: str | Path, *, title: str | None = None,
                 confidence: float = 0.95) -> Path:
    """Read every run (a run directory or a summary JSON), write the report to `out`, return its path."""
    if not runs:
        raise ValueError("report: no runs given")
    loaded = [load_run(r) for r in runs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(loaded, title=title, confidence=confidence), encoding="utf-8")
    return out


def build_report(runs: list[Run], *, title: str | None = None, confidence: float = 0.95) -> str:
    """The report page for loaded runs, as an HTML string."""
    groups = collect_groups(runs)
    title = title or "tierbench report: " + ", ".join(r.name for r in runs)
    figures: list[str] = []
    sections = [
        _section("summary", "Summary", summary_html(groups, confidence)),
        _section("comparison", "Comparison", comparison_html(runs, confidence)),
        _section("curve", "Throughput and latency",
                 _figure_or_note("fig-curve", curve_figure(groups, confidence), figures,
                                 "No group has both a throughput and a latency.")),
        _section("cdf", "Latency distributions", "".join(
            _figure_or_note(f"fig-cdf-{m}", cdf_figure(groups, m), figures, f"No {m.upper()} values: no completed call gives one.")
            for m in CDF_METRICS)),
        _section("makespan", "Session makespan breakdown",
                 _figure_or_note("fig-makespan", makespan_figure(groups), figures, "No sessions table.")
                 + '<p class="note">Mean seconds per session; for a sequential session the parts sum to '
                   "its makespan (analysis/sessions.py).</p>"),
        _section("prefix", "Prefix-cache hit by turn",
                 _figure_or_note("fig-prefix", prefix_figure(groups), figures,
                                 "No completed call reports cached tokens.")),
        _section("timeline", "Timeline",
                 _figure_or_note("fig-timeline", timeline_figure(groups), figures, "No sent requests.")
                 + '<p class="note">Time from each group\'s first send. Output tokens are counted when their '
                   "call completes; in-flight requests are the client's view (sent to last token).</p>"),
        _section("provenance", "Provenance", "".join(provenance_html(r) for r in runs)),
    ]
    claims = "".join(claims_html(r) for r in runs)
    if claims:  # runs through latency tiers: the seed article's claims, checked
        sections.insert(2, _section("claims", "Tiers: scenarios and the article's claims", claims))
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in (
        ("summary", "Summary"), ("comparison", "Comparison"), *((("claims", "Tiers"),) if claims else ()),
        ("curve", "Throughput-latency"),
        ("cdf", "CDFs"), ("makespan", "Makespan"), ("prefix", "Prefix hit"), ("timeline", "Timeline"),
        ("provenance", "Provenance")))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'}; window.tierbenchPlots = [];</script>\n",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n</head>\n',
        f"<body data-figures=\"{_e(json.dumps(figures))}\">\n<h1>{_e(title)}</h1>\n",
        f'<p class="note">Generated {generated} from {len(runs)} run(s): '
        f'{", ".join(_e(str(r.path)) for r in runs)}. Intervals: {confidence:.0%}, '
        "bootstrap over sessions.</p>\n",
        f"<nav>{nav}</nav>\n", *sections,
        "<script>Promise.all(window.tierbenchPlots).then(function () {"
        " document.body.setAttribute('data-rendered', 'true'); },"
        " function (e) { console.error('plot failed', e); });</script>\n</body>\n</html>\n",
    ])


def collect_groups(runs: list[Run]) -> list[Group]:
    """Every group of every run, in order, with labels unique on the page."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    out = []
    for run, name in zip(runs, names):
        keys = run.groups()
        if run.tiered:  # each scenario, then its calls per tier
            keys = [k for sc in keys for k in [sc, *(g for g in run.summary if g.startswith(f"{sc}@"))]]
        for key in keys:
            summary = run.summary.get(key, {})
            engine = str(summary.get("engine") or key.split("@", 1)[0])
            label = key if len(runs) == 1 else f"{name} / {key}"
            out.append(Group(run, key, label, engine, summary, run.group_rows(key) if run.has_rows else None))
    return out


# --------------------------------------------------------------------------- small helpers

def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _script_json(obj) -> str:
    """JSON safe inside a <script> element (no '<', '>' or '&' survive)."""
    s = json.dumps(_finite(obj), default=str)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(obj):
    """NaN and infinities as None, recursively (JSON.parse rejects them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _num(x) -> float | None:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(v, fmt: str) -> str:
    v = _num(v)
    return "-" if v is None else fmt.format(v)


def _section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(heading)}</h2>\n{body}\n</section>\n'


def _table(header: list[str], rows: list[list[str]], *, row_attrs: list[str] | None = None,
           cls: str = "") -> str:
    """An HTML table of cells that are already HTML (escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r, a in zip(rows, attrs))
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>'


def _figure_or_note(div_id: str, fig: go.Figure | None, drawn: list[str], note: str) -> str:
    if fig is None:
        return f'<p class="note" id="{div_id}-missing">{_e(note)}</p>'
    drawn.append(div_id)
    return render_figure(fig, div_id)


def render_figure(fig: go.Figure, div_id: str) -> str:
    """A div and the script that draws the figure into it (plotly.js is in <head>)."""
    fig.update_layout(**{**LAYOUT, "height": fig.layout.height or LAYOUT["height"]})
    return (f'<div id="{div_id}" class="figure"></div>\n<script>(function () {{ var f = {_script_json_fig(fig)}; '
            f'window.tierbenchPlots.push(Plotly.newPlot("{div_id}", f.data, f.layout, {json.dumps(PLOT_CONFIG)})); '
            "})();</script>\n")


def _script_json_fig(fig: go.Figure) -> str:
    s = pio.to_json(fig, validate=False)  # plotly escapes '<', '>' and '/' already; be sure
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- samples and intervals

def latency_samples(rows: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(values in seconds, session of each) of one latency over completed calls, as
    analysis.compare samples it (ITL: every gap; the others: one value per call)."""
    if metric == "itl":
        return itl_gaps(rows)
    pc = per_call(rows, metric)
    return pc["value"].to_numpy(dtype=float), pc["session"].to_numpy()


def latency_intervals(group: Group, confidence: float) -> dict[str, dict[float, Interval]]:
    """Per latency metric, p50/p90/p99 in ms with their session-bootstrap intervals; for a
    summary-only group the summary's point values without intervals."""
    if confidence in group.intervals:
        return group.intervals[confidence]
    out: dict[str, dict[float, Interval]] = group.intervals.setdefault(confidence, {})
    for metric, _, _ in LATENCIES:
        if group.rows is None:
            out[metric] = {float(q): Interval(_num(group.summary.get(f"{metric}_p{q}")), None, None, confidence,
                                              method="summary only") for q in QS}
            continue
        values, sessions = latency_samples(group.rows, metric)
        cis = percentile_cis(values, sessions, QS, confidence=confidence)
        out[metric] = {q: _scaled(iv, 1000.0) for q, iv in cis.items()}
    return out


def makespan_intervals(group: Group, confidence: float) -> dict[float, Interval]:
    """Session makespan p50/p99 (s), each session its own resampling unit."""
    s = _group_sessions(group)
    if s is None or not len(s):
        return {float(q): Interval(_num(group.summary.get(f"makespan_p{q}_s")), None, None, confidence,
                                   method="summary only") for q in (50, 99)}
    m = pd.to_numeric(s["makespan_s"], errors="coerce").to_numpy(dtype=float)
    return percentile_cis(m, None, (50, 99), confidence=confidence)


def _scaled(iv: Interval, k: float) -> Interval:
    f = lambda v: None if v is None else v * k  # noqa: E731
    return Interval(f(iv.estimate), f(iv.lo), f(iv.hi), iv.confidence, iv.n, iv.clusters, iv.method)


def _group_sessions(group: Group) -> pd.DataFrame | None:
    s = group.run.sessions
    if s is None or not len(s):
        return None
    keys = [group_key(e, t) for e, t in zip(s["engine"], s["tier"])]
    return s[[k == group.key for k in keys]]


def _ci_cell(iv: Interval, fmt: str) -> str:
    if iv.estimate is None:
        return "-"
    cell = _e(fmt.format(iv.estimate))
    if iv.lo is not None and iv.hi is not None:
        flag = " &dagger;" if "unreliable" in iv.method else ""
        cell += (f' <span class="ci" title="{_e(iv.method)}; n={iv.n}, sessions={iv.clusters}">'
                 f"[{_e(fmt.format(iv.lo))}, {_e(fmt.format(iv.hi))}]{flag}</span>")
    return cell


# --------------------------------------------------------------------------- 1. summary

def summary_html(groups: list[Group], confidence: float) -> str:
    """Metrics as rows, one column per run/group."""
    if not groups:
        return '<p class="note">No groups: the runs hold no measured requests.</p>'
    lat = [latency_intervals(g, confidence) for g in groups]
    mks = [makespan_intervals(g, confidence) for g in groups]
    rows: list[list[str]] = []

    def add(label: str, cells: list[str]) -> None:
        rows.append([_e(label)] + cells)

    add("completed", [_fmt(g.summary.get("completed"), "{:.0f}") for g in groups])
    add("failed", [_fmt(g.summary.get("failed"), "{:.0f}") for g in groups])
    add("errors", [_e("; ".join(f"{k}: {v}" for k, v in (g.summary.get("errors") or {}).items())) or "-"
                   for g in groups])
    add("requests/s", [_fmt(g.summary.get("request_throughput"), "{:.2f}") for g in groups])
    add("output tok/s", [_fmt(g.summary.get("output_throughput"), "{:.1f}") for g in groups])
    if any(_num(g.summary.get("goodput")) is not None for g in groups):
        add("goodput req/s", [_fmt(g.summary.get("goodput"), "{:.2f}") for g in groups])
    for metric, label, fmt in LATENCIES:
        for q in QS:
            add(f"{label} p{q} ms", [_ci_cell(lat[i][metric][float(q)], fmt) for i in range(len(groups))])
    add("prefix-cache hit", [_fmt(g.summary.get("prefix_cache_hit_ratio"), "{:.1%}") for g in groups])
    add("ideal prefix hit", [_fmt(g.summary.get("ideal_prefix_hit"), "{:.1%}") for g in groups])
    add("hit / ideal", [_fmt(g.summary.get("prefix_hit_vs_ideal"), "{:.3f}") for g in groups])
    add("sessions", [_fmt((len(s) if (s := _group_sessions(g)) is not None else None), "{:.0f}") for g in groups])
    add("makespan p50 s", [_ci_cell(m[50.0], "{:.2f}") for m in mks])
    add("makespan p99 s", [_ci_cell(m[99.0], "{:.2f}") for m in mks])
    table = _table(["metric"] + [_e(g.label) for g in groups], rows, cls="summary")
    return table + (f'<p class="note">Latency percentiles with their {confidence:.0%} interval (Woodruff, '
                    "standard error from a bootstrap over sessions); &dagger;: fewer than 10 calls in the tail, "
                    "unreliable. Makespan intervals resample sessions.</p>")


# --------------------------------------------------------------------------- 2. comparison

def comparison_rows(runs: list[Run], confidence: float = 0.95) -> list[tuple[str, str, CompareRow]]:
    """(baseline run name, candidate run name, row): the first run against each other run, as
    `tierbench compare` computes it; with one run, its first group against each other group."""
    if len(runs) >= 2:
        base = runs[0]
        return [(base.name, r.name, row) for r in runs[1:] for row in compare_runs(base, r, confidence=confidence)]
    run = runs[0]
    gs = run.groups()
    return [(run.name, run.name, compare_metric(run, gs[0], run, g, m, confidence=confidence))
            for g in gs[1:] for m in DEFAULT_METRICS]


def comparison_html(runs: list[Run], confidence: float) -> str:
    if len(runs) < 2 and len(runs[0].groups()) < 2:
        return '<p class="note">One run with one group: nothing to compare.</p>'
    rows = comparison_rows(runs, confidence)
    if not rows:
        return '<p class="note">No groups in common to compare.</p>'
    pct = int(round(confidence * 100))
    cells, attrs = [], []
    for base, cand, r in rows:
        group = r.baseline_group if r.baseline_group == r.candidate_group else f"{r.baseline_group}->{r.candidate_group}"
        ci = "-" if r.ratio.lo is None else f"[{r.ratio.lo:.3f}, {r.ratio.hi:.3f}]"
        test = (f"paired n={r.n_pairs}" if r.paired else
                f"MWU p={r.mann_whitney_p:.3g}" if r.mann_whitney_p is not None else r.ratio.method or "-")
        cells.append([_e(base), _e(cand), _e(group), _e(r.metric), _e(_fmt(r.baseline, "{:.2f}")),
                      _e(_fmt(r.candidate, "{:.2f}")), _e(_fmt(r.ratio.estimate, "{:.3f}")), _e(ci), _e(test)])
        attrs.append(f' class="{("cmp " + _verdict(r)).strip()}" data-group="{_e(group)}" data-metric="{_e(r.metric)}"')
    data = [{"baseline_run": b, "candidate_run": c, **r.to_dict()} for b, c, r in rows]
    base_label = "the first group" if len(runs) == 1 else f"run {_e(runs[0].name)}"
    return (_table(["baseline run", "candidate run", "group", "metric", "baseline", "candidate", "ratio",
                    f"{pct}% CI", "test"], cells, row_attrs=attrs, cls="comparison")
            + f'<p class="note">Baseline: {base_label}. Ratio = candidate / baseline (latencies in ms, '
              "throughputs per second); green: the interval excludes 1 on the better side, red: on the worse "
              "side.</p>\n"
            + f'<script type="application/json" id="comparison-data">{_script_json(data)}</script>\n')


def _verdict(r: CompareRow) -> str:
    lo, hi = r.ratio.lo, r.ratio.hi
    if lo is None or hi is None:
        return ""
    if lo > 1:
        return "better" if r.higher_is_better else "worse"
    if hi < 1:
        return "worse" if r.higher_is_better else "better"
    return ""


# --------------------------------------------------------------------------- 3. throughput-latency curve

def curve_figure(groups: list[Group], confidence: float) -> go.Figure | None:
    """Latency against request throughput, one point per run/group, one line per engine, with
    the percentile intervals as error bars."""
    panels = (("ttft", 99.0, "TTFT p99 (ms)"), ("e2el", 50.0, "E2EL p50 (ms)"))
    points: dict[str, list[tuple[float, list[Interval], str]]] = {}
    for g in groups:
        x = _num(g.summary.get("request_throughput"))
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


# --------------------------------------------------------------------------- 4. CDFs

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
                                 hovertemplate="%{x:.2f} ms: %{y:.1%}<extra>" + _e(g.label) + "</extra>"))
    if not fig.data:
        return None
    name = metric.upper()
    fig.update_layout(title=f"{name} CDF per engine and tier", xaxis={"title": f"{name} (ms, log scale)", "type": "log"},
                      yaxis={"title": "share of calls", "range": [0, 1.02]})
    return fig


# --------------------------------------------------------------------------- 5. makespan breakdown

def makespan_figure(groups: list[Group]) -> go.Figure | None:
    """Stacked bars per group: mean network, queueing+prefill, decode and tool time per session."""
    labels, means = [], []
    for g in groups:
        s = _group_sessions(g)
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
    return _num(pd.to_numeric(df[col], errors="coerce").mean()) or 0.0


# --------------------------------------------------------------------------- 6. prefix hit by turn

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
                                 + _e(g.label) + "</extra>"))
    if not fig.data:
        return None
    fig.update_layout(title="Prefix-cache hit by turn (cached / prompt tokens, completed calls)",
                      xaxis={"title": "call index in the session"}, yaxis={"title": "hit ratio", "range": [0, 1.02]})
    return fig


# --------------------------------------------------------------------------- 7. timeline

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


def timeline_figure(groups: list[Group]) -> go.Figure | None:
    """Two panels over time since each group's first send: completed output tokens per second,
    and the client-side count of requests in flight."""
    series = []
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
    if not series:
        return None
    span = max(float(np.max(s[4])) if s[4].size else 0.0 for s in series)
    w = bin_width(max(span, 1e-3))
    edges = np.arange(0.0, span + w, w) if span > 0 else np.array([0.0, w])
    if edges.size < 2:
        edges = np.array([0.0, w])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[f"completed output tokens/s ({w:g} s bins)",
                                        "requests in flight (client-side: sent to last token)"])
    for i, label, _, s, e, done, tokens in series:
        hist, _ = np.histogram(done, bins=edges, weights=tokens)
        fig.add_trace(go.Scatter(x=edges[:-1], y=hist / w, mode="lines", name=label, legendgroup=label,
                                 line={"shape": "hv", "color": _color(i)},
                                 hovertemplate="%{x:.1f} s: %{y:.1f} tok/s<extra>" + _e(label) + "</extra>"),
                      row=1, col=1)
        t, n = in_flight(s, e)
        fig.add_trace(go.Scatter(x=t, y=n, mode="lines", name=label, legendgroup=label, showlegend=False,
                                 line={"shape": "hv", "color": _color(i)},
                                 hovertemplate="%{x:.2f} s: %{y} in flight<extra>" + _e(label) + "</extra>"),
                      row=2, col=1)
    fig.update_xaxes(title_text="seconds since the group's first send", row=2, col=1)
    fig.update_yaxes(title_text="tok/s", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_layout(title="Timeline", height=600)
    return fig


# --------------------------------------------------------------------------- 8. provenance

def claims_html(run: Run) -> str:
    """The claims.json of a run through tiers (bench/tier_study.py): per scenario the share of
    calls per tier, network / inference / tool time per session, makespan and cost; then each
    claim with its stated, measured and real-shape values and the verdict. '' without one."""
    path = run.path / "claims.json" if run.path.is_dir() else None
    if path is None or not path.exists():
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f'<p class="note">{_e(path)}: unreadable ({_e(e)})</p>'
    rows = []
    for name, sc in (data.get("scenarios") or {}).items():
        share = ", ".join(f"{_e(t)} {v:.0%}" for t, v in (sc.get("tier_share") or {}).items())
        p50, p99 = sc.get("makespan_p50_s") or {}, sc.get("makespan_p99_s") or {}
        cost = (run.summary.get(name) or {}).get("cost_usd")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            _e(name), share, f"{sc.get('network_per_session_s', 0):.2f}", f"{sc.get('inference_per_session_s', 0):.2f}",
            f"{sc.get('tool_per_session_s', 0):.2f}", _ci_text(p50), _ci_text(p99),
            "-" if cost is None else f"${cost:.4f}")) + "</tr>")
    head = ("<tr><th>scenario</th><th>calls per tier</th><th>network s/session</th><th>inference s/session</th>"
            "<th>tool s/session</th><th>makespan p50 s</th><th>makespan p99 s</th><th>cost</th></tr>")
    claims = []
    for c in data.get("claims") or []:
        claims.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
            _e(c.get("claim")), _e(json.dumps(c.get("stated"))), _e(json.dumps(c.get("measured"), default=str)[:400]),
            f"<b>{_e(c.get('verdict'))}</b>", _e(c.get("reason")))) + "</tr>")
    return (f"<h3>{_e(run.name)}</h3><table>{head}{''.join(rows)}</table>"
            f'<p class="note">{_e(data.get("note", ""))} Makespan intervals: each session its own unit.</p>'
            "<table><tr><th>claim</th><th>stated assumptions</th><th>measured here</th><th>verdict</th>"
            f"<th>why</th></tr>{''.join(claims)}</table>")


def _ci_text(iv: dict) -> str:
    est, lo, hi = iv.get("estimate"), iv.get("lo"), iv.get("hi")
    if est is None:
        return "-"
    return f"{est:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


def provenance_html(run: Run) -> str:
    info = run.info or {}
    env = info.get("environment") or {}
    mem = _num(env.get("memory_bytes"))
    fields = [
        ("name", run.name), ("path", str(run.path)), ("status", info.get("status")),
        ("git commit", info.get("git_commit")), ("start", info.get("start")), ("end", info.get("end")),
        ("command", env.get("command")), ("python", env.get("python")), ("platform", env.get("platform")),
        ("cpu", env.get("cpu")), ("cores", env.get("cores")),
        ("memory", f"{mem / 2 ** 30:.1f} GiB" if mem is not None else None),
        ("gpu", json.dumps(env.get("gpu")) if env.get("gpu") is not None else "none"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())),
    ]
    engines = info.get("engines") or {}
    for name, e in engines.items():
        if isinstance(e, dict):
            fields.append((f"engine {name}", ", ".join(f"{k}={e[k]}" for k in ("kind", "model", "base_url", "startup_s")
                                                       if e.get(k) is not None)))
    rows = [[_e(k), _e("-" if v is None or v == "" else v)] for k, v in fields]
    table = _table(["field", "value"], rows, cls="provenance")
    spec = json.dumps(info.get("spec"), indent=2, default=str) if info.get("spec") is not None else None
    workload = json.dumps(info.get("workload"), indent=2, default=str) if info.get("workload") is not None else None
    parts = [f"<h3>{_e(run.name)}</h3>\n", table]
    if not info:
        parts.append('<p class="note">No run.json: a run directory with request rows only.</p>')
    if spec is not None:
        parts.append(f"<details><summary>spec</summary><pre>{_e(spec)}</pre></details>\n")
    if workload is not None:
        parts.append(f"<details><summary>workload</summary><pre>{_e(workload)}</pre></details>\n")
    return "".join(parts)
