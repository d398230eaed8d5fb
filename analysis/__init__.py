"""Analysis of run results:

- metrics.py: vLLM's metric definitions over the requests table, plus latency from the intended
  start, schedule lag, goodput and prefix hit against the ideal; sessions.py: session makespan
  and its breakdown;
- stats.py: percentile intervals (bootstrap over sessions), paired and unpaired comparisons,
  between-run t-intervals, the early-stopping rule;
- rundata.py: a run directory (or summary JSON) read back; compare.py: two runs compared;
- gate.py: the regression gate (Markdown and JUnit outputs);
- report.py: the HTML report, with its figures (report_figures.py), tables (report_tables.py),
  per-group samples (report_groups.py) and HTML helpers (report_html.py);
- records.py: the per-call record fragments a run writes as calls complete.

May import: nothing of tierbench's other packages; it reads result files only.
"""
