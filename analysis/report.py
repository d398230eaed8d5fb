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
   timeline of output tokens/s and client-side requests in flight, with the server's KV-cache usage
   and waiting and running requests under them where the run has server_metrics.parquet;
4. provenance: run.json's name, status, commit, times, environment, command and spec.

A run whose run.json still says `running` gets a note at the top: cut (its process is gone: it
was killed before its end, and the figures cover the calls it recorded) or not ended.

Every figure is a <div id="fig-..."> drawn by Plotly.newPlot; <body data-figures> lists the ids
drawn, and <body data-rendered="true"> is set once every plot has resolved (tests check both).
A figure with nothing to draw is left out with a note. Every string read from a file is
HTML-escaped; JSON in <script> is escaped so no string can close the tag.

This module assembles the page; its parts live beside it: report_groups.py (the groups shown and
their percentile intervals), report_tables.py (summary, comparison, claims and provenance
tables), report_figures.py (the Plotly figures) and report_html.py (escaping and small HTML
helpers).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline

from analysis.report_figures import (CDF_METRICS, cdf_figure, curve_figure, makespan_figure, prefix_figure,
                                     render_figure, timeline_figure)
from analysis.report_groups import collect_groups
from analysis.report_html import esc, section
from analysis.report_tables import claims_html, comparison_html, cut_note, provenance_html, summary_html
from analysis.rundata import Run, load_run

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
        section("summary", "Summary", summary_html(groups, confidence)),
        section("comparison", "Comparison", comparison_html(runs, confidence)),
        section("curve", "Throughput and latency",
                _figure_or_note("fig-curve", curve_figure(groups, confidence), figures,
                                "No group has both a throughput and a latency.")),
        section("cdf", "Latency distributions", "".join(
            _figure_or_note(f"fig-cdf-{m}", cdf_figure(groups, m), figures,
                            f"No {m.upper()} values: no completed call gives one.")
            for m in CDF_METRICS)),
        section("makespan", "Session makespan breakdown",
                _figure_or_note("fig-makespan", makespan_figure(groups), figures, "No sessions table.")
                + '<p class="note">Mean seconds per session; for a sequential session the parts sum to '
                  "its makespan (analysis/sessions.py).</p>"),
        section("prefix", "Prefix-cache hit by turn",
                _figure_or_note("fig-prefix", prefix_figure(groups), figures,
                                "No completed call reports cached tokens.")),
        section("timeline", "Timeline",
                _figure_or_note("fig-timeline", timeline_figure(groups), figures, "No sent requests.")
                + '<p class="note">Time from each group\'s first send. Output tokens are counted when their '
                  "call completes; in-flight requests are the client's view (sent to last token). KV usage and "
                  "waiting and running requests, where shown, are the engine's own, scraped from its /metrics "
                  "(server_metrics.parquet).</p>"),
        section("provenance", "Provenance", "".join(provenance_html(r) for r in runs)),
    ]
    claims = "".join(claims_html(r) for r in runs)
    if claims:  # runs through latency tiers: the seed article's claims, checked
        sections.insert(2, section("claims", "Tiers: scenarios and the article's claims", claims))
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in (
        ("summary", "Summary"), ("comparison", "Comparison"), *((("claims", "Tiers"),) if claims else ()),
        ("curve", "Throughput-latency"),
        ("cdf", "CDFs"), ("makespan", "Makespan"), ("prefix", "Prefix hit"), ("timeline", "Timeline"),
        ("provenance", "Provenance")))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'}; window.tierbenchPlots = [];</script>\n",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n</head>\n',
        f"<body data-figures=\"{esc(json.dumps(figures))}\">\n<h1>{esc(title)}</h1>\n",
        f'<p class="note">Generated {generated} from {len(runs)} run(s): '
        f'{", ".join(esc(str(r.path)) for r in runs)}. Intervals: {confidence:.0%}, '
        "bootstrap over sessions.</p>\n",
        "".join(f'<p class="note cut">{esc(n)}</p>\n' for n in map(cut_note, runs) if n),
        f"<nav>{nav}</nav>\n", *sections,
        "<script>Promise.all(window.tierbenchPlots).then(function () {"
        " document.body.setAttribute('data-rendered', 'true'); },"
        " function (e) { console.error('plot failed', e); });</script>\n</body>\n</html>\n",
    ])


def _figure_or_note(div_id: str, fig: go.Figure | None, drawn: list[str], note: str) -> str:
    """The figure drawn into div_id (recorded in `drawn`), or the note when there is nothing to draw."""
    if fig is None:
        return f'<p class="note" id="{div_id}-missing">{esc(note)}</p>'
    drawn.append(div_id)
    return render_figure(fig, div_id)
