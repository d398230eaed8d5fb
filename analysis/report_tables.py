"""The report's tables, as HTML: the summary per run and group, the comparison (the numbers
`tierbench compare` prints), the tier study's scenarios and claims, and each run's provenance.
"""
from __future__ import annotations

import json
import os
import socket

from analysis.compare import DEFAULT_METRICS, CompareRow, compare_metric, compare_runs
from analysis.report_groups import LATENCIES, QS, Group, group_sessions, latency_intervals, makespan_intervals
from analysis.report_html import esc, fmt_num, html_table, num, script_json
from analysis.rundata import Run
from analysis.stats import Interval


def _ci_cell(iv: Interval, fmt: str) -> str:
    """The estimate with its interval in a grey span (hover: method, calls, sessions)."""
    if iv.estimate is None:
        return "-"
    cell = esc(fmt.format(iv.estimate))
    if iv.lo is not None and iv.hi is not None:
        flag = " &dagger;" if "unreliable" in iv.method else ""
        cell += (f' <span class="ci" title="{esc(iv.method)}; n={iv.n}, sessions={iv.clusters}">'
                 f"[{esc(fmt.format(iv.lo))}, {esc(fmt.format(iv.hi))}]{flag}</span>")
    return cell


# --------------------------------------------------------------------------- summary

def summary_html(groups: list[Group], confidence: float) -> str:
    """Metrics as rows, one column per run/group."""
    if not groups:
        return '<p class="note">No groups: the runs hold no measured requests.</p>'
    lat = [latency_intervals(g, confidence) for g in groups]
    mks = [makespan_intervals(g, confidence) for g in groups]
    rows: list[list[str]] = []

    def add(label: str, cells: list[str]) -> None:
        rows.append([esc(label)] + cells)

    add("completed", [fmt_num(g.summary.get("completed"), "{:.0f}") for g in groups])
    add("failed", [fmt_num(g.summary.get("failed"), "{:.0f}") for g in groups])
    add("errors", [esc("; ".join(f"{k}: {v}" for k, v in (g.summary.get("errors") or {}).items())) or "-"
                   for g in groups])
    add("requests/s", [fmt_num(g.summary.get("request_throughput"), "{:.2f}") for g in groups])
    add("output tok/s", [fmt_num(g.summary.get("output_throughput"), "{:.1f}") for g in groups])
    if any(num(g.summary.get("goodput")) is not None for g in groups):
        add("goodput req/s", [fmt_num(g.summary.get("goodput"), "{:.2f}") for g in groups])
    for metric, label, fmt in LATENCIES:
        for q in QS:
            add(f"{label} p{q} ms", [_ci_cell(lat[i][metric][float(q)], fmt) for i in range(len(groups))])
    add("prefix-cache hit", [fmt_num(g.summary.get("prefix_cache_hit_ratio"), "{:.1%}") for g in groups])
    add("ideal prefix hit", [fmt_num(g.summary.get("ideal_prefix_hit"), "{:.1%}") for g in groups])
    add("hit / ideal", [fmt_num(g.summary.get("prefix_hit_vs_ideal"), "{:.3f}") for g in groups])
    add("sessions", [fmt_num((len(s) if (s := group_sessions(g)) is not None else None), "{:.0f}") for g in groups])
    add("makespan p50 s", [_ci_cell(m[50.0], "{:.2f}") for m in mks])
    add("makespan p99 s", [_ci_cell(m[99.0], "{:.2f}") for m in mks])
    table = html_table(["metric"] + [esc(g.label) for g in groups], rows, cls="summary")
    return table + (f'<p class="note">Latency percentiles with their {confidence:.0%} interval (Woodruff, '
                    "standard error from a bootstrap over sessions); &dagger;: fewer than 10 calls in the tail, "
                    "unreliable. Makespan intervals resample sessions.</p>")


# --------------------------------------------------------------------------- comparison

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
        cells.append([esc(base), esc(cand), esc(group), esc(r.metric), esc(fmt_num(r.baseline, "{:.2f}")),
                      esc(fmt_num(r.candidate, "{:.2f}")), esc(fmt_num(r.ratio.estimate, "{:.3f}")), esc(ci),
                      esc(test)])
        attrs.append(f' class="{("cmp " + _verdict(r)).strip()}" data-group="{esc(group)}"'
                     f' data-metric="{esc(r.metric)}"')
    data = [{"baseline_run": b, "candidate_run": c, **r.to_dict()} for b, c, r in rows]
    base_label = "the first group" if len(runs) == 1 else f"run {esc(runs[0].name)}"
    return (html_table(["baseline run", "candidate run", "group", "metric", "baseline", "candidate", "ratio",
                        f"{pct}% CI", "test"], cells, row_attrs=attrs, cls="comparison")
            + f'<p class="note">Baseline: {base_label}. Ratio = candidate / baseline (latencies in ms, '
              "throughputs per second); green: the interval excludes 1 on the better side, red: on the worse "
              "side.</p>\n"
            + f'<script type="application/json" id="comparison-data">{script_json(data)}</script>\n')


def _verdict(r: CompareRow) -> str:
    lo, hi = r.ratio.lo, r.ratio.hi
    if lo is None or hi is None:
        return ""
    if lo > 1:
        return "better" if r.higher_is_better else "worse"
    if hi < 1:
        return "worse" if r.higher_is_better else "better"
    return ""


# --------------------------------------------------------------------------- tiers' claims and provenance

def claims_html(run: Run) -> str:
    """The claims.json of a run through tiers (bench/tiers/study.py): per scenario the share of
    calls per tier, network / inference / tool time per session, makespan and cost; then each
    claim with its stated, measured and real-shape values and the verdict. '' without one."""
    path = run.path / "claims.json" if run.path.is_dir() else None
    if path is None or not path.exists():
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f'<p class="note">{esc(path)}: unreadable ({esc(e)})</p>'
    rows = []
    scenarios = data.get("scenarios") or {}
    faulty = any(sc.get("faults") for sc in scenarios.values())
    for name, sc in scenarios.items():
        share = ", ".join(f"{esc(t)} {v:.0%}" for t, v in (sc.get("tier_share") or {}).items())
        p50, p99 = sc.get("makespan_p50_s") or {}, sc.get("makespan_p99_s") or {}
        cost = (run.summary.get(name) or {}).get("cost_usd")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            esc(name), share, f"{sc.get('network_per_session_s', 0):.2f}",
            f"{sc.get('inference_per_session_s', 0):.2f}", f"{sc.get('tool_per_session_s', 0):.2f}",
            _ci_text(p50), _ci_text(p99), "-" if cost is None else f"${cost:.4f}",
            *((_faults_text(sc.get("faults")),) if faulty else ()))) + "</tr>")
    head = ("<tr><th>scenario</th><th>calls per tier</th><th>network s/session</th><th>inference s/session</th>"
            "<th>tool s/session</th><th>makespan p50 s</th><th>makespan p99 s</th><th>cost</th>"
            + ("<th>injected faults: effect on makespan</th>" if faulty else "") + "</tr>")
    claims = []
    for c in data.get("claims") or []:
        claims.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
            esc(c.get("claim")), esc(json.dumps(c.get("stated"))),
            esc(json.dumps(c.get("measured"), default=str)[:400]),
            f"<b>{esc(c.get('verdict'))}</b>", esc(c.get("reason")))) + "</tr>")
    return (f"<h3>{esc(run.name)}</h3><table>{head}{''.join(rows)}</table>"
            f'<p class="note">{esc(data.get("note", ""))} Makespan intervals: each session its own unit.</p>'
            "<table><tr><th>claim</th><th>stated assumptions</th><th>measured here</th><th>verdict</th>"
            f"<th>why</th></tr>{''.join(claims)}</table>")


def _faults_text(f: dict | None) -> str:
    """A scenario's injected faults (bench/tiers/study.py fault_effect) in a line."""
    if not f:
        return "-"
    kinds = ", ".join(f"{f[k]} {k}" for k in ("reset", "stall", "error", "spike") if f.get(k))
    p50 = (f"; makespan p50 {f['makespan_p50_hit_s']:.2f} s hit, "
           + ("-" if f.get("makespan_p50_clean_s") is None else f"{f['makespan_p50_clean_s']:.2f} s") + " clean"
           if f.get("makespan_p50_hit_s") is not None else "")
    share = f.get("lost_share_of_makespan")
    return esc(f"{kinds} in {f['calls']} calls; {f['sessions_hit']}/{f['sessions']} sessions hit, "
               f"{f.get('lost_per_session_s') or 0:.2f} s lost per session"
               + (f" ({share:.1%} of makespan)" if share is not None else "") + p50)


def _ci_text(iv: dict) -> str:
    est, lo, hi = iv.get("estimate"), iv.get("lo"), iv.get("hi")
    if est is None:
        return "-"
    return f"{est:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


def cut_note(run: Run) -> str:
    """'' for a run that ended; else what its run.json and process say: it was cut (killed before
    its end: the figures cover the calls it recorded), or it may still be running."""
    info = run.info or {}
    if info.get("status") != "running":
        return ""
    calls = len(run.requests) if run.requests is not None else 0
    pid = info.get("pid")
    alive = None
    if isinstance(pid, int) and info.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    if alive is False:
        return (f"Run {run.name} was cut: its run.json still says 'running' and its process (pid {pid}) is gone; "
                f"the figures cover the {calls} calls it recorded before it stopped.")
    return (f"Run {run.name} has not ended: its run.json says 'running' (it was cut, or is still running); "
            f"the figures cover the {calls} calls recorded so far.")


def provenance_html(run: Run) -> str:
    info = run.info or {}
    env = info.get("environment") or {}
    mem = num(env.get("memory_bytes"))
    status = info.get("status")
    if cut_note(run):
        status = f"{status} (cut: {'process gone' if 'was cut' in cut_note(run) else 'or still running'})"
    fields = [
        ("name", run.name), ("path", str(run.path)), ("status", status),
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
    rows = [[esc(k), esc("-" if v is None or v == "" else v)] for k, v in fields]
    table = html_table(["field", "value"], rows, cls="provenance")
    spec = json.dumps(info.get("spec"), indent=2, default=str) if info.get("spec") is not None else None
    workload = json.dumps(info.get("workload"), indent=2, default=str) if info.get("workload") is not None else None
    parts = [f"<h3>{esc(run.name)}</h3>\n", table]
    if not info:
        parts.append('<p class="note">No run.json: a run directory with request rows only.</p>')
    if spec is not None:
        parts.append(f"<details><summary>spec</summary><pre>{esc(spec)}</pre></details>\n")
    if workload is not None:
        parts.append(f"<details><summary>workload</summary><pre>{esc(workload)}</pre></details>\n")
    return "".join(parts)
