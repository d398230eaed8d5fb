"""Small helpers of the HTML report (analysis/report.py): escaping, JSON safe inside <script>,
numbers read from summaries and their formatting, tables and sections.

Every string read from a file goes through `esc`; every JSON put in a <script> through
`script_json`, so no string can close the tag.
"""
from __future__ import annotations

import html
import json
import math

import numpy as np


def esc(x) -> str:
    """x as HTML text, quotes included (None: '')."""
    return html.escape("" if x is None else str(x), quote=True)


def script_json(obj) -> str:
    """JSON safe inside a <script> element (no '<', '>' or '&' survive)."""
    s = json.dumps(finite(obj), default=str)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def finite(obj):
    """NaN and infinities as None, recursively (JSON.parse rejects them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def num(x) -> float | None:
    """x as a finite float; None for anything else (missing, NaN, a string, a bool)."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def fmt_num(v, fmt: str) -> str:
    """v formatted with fmt, or '-' when it is not a finite number."""
    v = num(v)
    return "-" if v is None else fmt.format(v)


def section(sid: str, heading: str, body: str) -> str:
    """A page section with its heading (the nav links to sid)."""
    return f'<section id="{sid}">\n<h2>{esc(heading)}</h2>\n{body}\n</section>\n'


def html_table(header: list[str], rows: list[list[str]], *, row_attrs: list[str] | None = None,
               cls: str = "") -> str:
    """An HTML table of cells that are already HTML (escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r, a in zip(rows, attrs))
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}</tbody></table></div>")
