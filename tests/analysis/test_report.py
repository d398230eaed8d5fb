"""analysis.report: the HTML report of the committed CPU runs (content, the comparison numbers
against analysis.compare) and the page opened in real headless Chromium (Debian's chromium),
driven over the DevTools protocol: no console errors, no network request, every figure drawn."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import plotly.offline
import pytest

from analysis.compare import compare_runs, format_compare
from analysis.report import CDF_METRICS, write_report
from analysis.rundata import load_run

ROOT = Path(__file__).resolve().parents[2]
RUNS = [ROOT / "results" / "cpu-agentic", ROOT / "results" / "cpu-azure"]
ALL_FIGURES = ["fig-curve", *(f"fig-cdf-{m}" for m in CDF_METRICS), "fig-makespan", "fig-prefix", "fig-timeline"]
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 60.0
HOSTILE = "a</script><script>alert(1)</script>"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, str]:
    for r in RUNS:
        if not (r / "run.json").exists():
            pytest.skip(f"{r} is not present")
    out = write_report(RUNS, tmp_path_factory.mktemp("report") / "report.html")
    return out, out.read_text(encoding="utf-8")


def _failed_only_run(run_dir: Path) -> Path:
    """A run directory holding only a requests fragment (no run.json, no parquet) whose calls all
    failed, in two groups whose names are markup."""
    run_dir.mkdir(parents=True)
    rows = []
    for engine in (HOSTILE, "b"):
        for s in range(3):
            for c in range(2):
                t = 1000.0 + s + c * 0.5
                rows.append({"request_id": f"{engine}-{s}-{c}", "engine": engine, "tier": "<b>t</b>",
                             "session": f"s{s}", "call_index": c, "intended_start": t, "sent": t,
                             "first_token": None, "last_token": None if c else t + 0.1, "itl": [], "chunks": 0,
                             "prompt_tokens": None, "output_tokens": None, "cached_tokens": None,
                             "expected_prompt_tokens": 100, "expected_output_tokens": 10, "status": "error",
                             "http_status": 500, "error": "HTTP 500: <boom>", "finish_reason": None,
                             "warmup": False})
    (run_dir / "requests.0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run_dir


def _figures(page: str) -> list[str]:
    m = re.search(r'<body data-figures="([^"]*)"', page)
    assert m, "no data-figures on <body>"
    return json.loads(m.group(1).replace("&quot;", '"'))


class _Rows(HTMLParser):
    """Cell texts of every <tr class="cmp ..."> row, with the row's data-* attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, list[str]]] = []
        self._in_row = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "cmp" in (a.get("class") or "").split():
            self.rows.append((a, []))
            self._in_row = True
        elif tag == "td" and self._in_row:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._in_row = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


# --------------------------------------------------------------------------- content

def test_two_run_report_is_self_contained_with_every_section(two_runs):
    path, page = two_runs
    assert path.stat().st_size > 1_000_000  # plotly.js is inlined
    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle[:200]) == 1  # its banner: the bundle is in the page exactly once
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched, from a CDN or elsewhere
    assert not re.search(r"<link[^>]*\bhref=\"https?://", page)
    assert _figures(page) == ALL_FIGURES
    for fig in ALL_FIGURES:
        assert page.count(f'<div id="{fig}" class="figure">') == 1
    for section in ("summary", "comparison", "curve", "cdf", "makespan", "prefix", "timeline", "provenance"):
        assert f'<section id="{section}">' in page
    # the summary: one column per run and group, percentiles with intervals
    for label in ("cpu-agentic / reference", "cpu-agentic / vllm", "cpu-azure / reference", "cpu-azure / vllm"):
        assert f"<th>{label}</th>" in page
    vllm = load_run(RUNS[0]).summary["vllm"]
    assert "<td>TTFT p99 ms</td>" in page and f"{vllm['ttft_p99']:.1f} <span class=\"ci\"" in page
    assert "client-side" in page
    # provenance: commit, command and the spec, escaped JSON
    info = json.loads((RUNS[0] / "run.json").read_text())
    assert info["git_commit"] in page and info["environment"]["command"] in page
    assert "&quot;name&quot;: &quot;cpu-agentic&quot;" in page


def test_comparison_shows_the_numbers_of_tierbench_compare(two_runs):
    _, page = two_runs
    a, b = load_run(RUNS[0]), load_run(RUNS[1])
    rows = compare_runs(a, b)
    assert rows
    m = re.search(r'<script type="application/json" id="comparison-data">(.*?)</script>', page, re.S)
    data = json.loads(m.group(1))
    assert [{k: v for k, v in d.items() if k not in ("baseline_run", "candidate_run")} for d in data] == \
        [json.loads(json.dumps(r.to_dict())) for r in rows]
    assert {(d["baseline_run"], d["candidate_run"]) for d in data} == {("cpu-agentic", "cpu-azure")}
    # the table's cells read as `tierbench compare` prints them
    parser = _Rows()
    parser.feed(page)
    assert len(parser.rows) == len(rows)
    printed = format_compare(rows, a.name, b.name).splitlines()[2:]
    for (attrs, cells), r, line in zip(parser.rows, rows, printed):
        assert (attrs["data-group"], attrs["data-metric"]) == (r.baseline_group, r.metric)
        base, cand, group, metric, bv, cv, ratio, ci, test = cells
        assert (base, cand, group, metric) == ("cpu-agentic", "cpu-azure", r.baseline_group, r.metric)
        assert line.split()[:5] == [group, metric, bv, cv, ratio]
        assert ci in line and test in line


def test_a_run_whose_calls_all_failed_still_gives_a_report(tmp_path):
    run = _failed_only_run(tmp_path / "failed")
    page = write_report([run], tmp_path / "r.html", title="all <failed>").read_text(encoding="utf-8")
    assert "<title>all &lt;failed&gt;</title>" in page
    assert HOSTILE not in page and "<b>t</b>" not in page
    assert "<tr><td>errors</td><td>HTTP 500: 6</td><td>HTTP 500: 6</td></tr>" in page
    # nothing to measure: those figures are notes; sessions and the timeline still draw
    assert _figures(page) == ["fig-makespan", "fig-timeline"]
    for fig in ("fig-curve", "fig-cdf-ttft", "fig-prefix"):
        assert f'id="{fig}-missing"' in page
    assert 'class="cmp"' in page  # two groups in one run: the first is the baseline
    assert "No run.json" in page


# --------------------------------------------------------------------------- in a browser

class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol (CDP)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0"]

    def __init__(self, binary: Path, timeout: float = TIMEOUT_S):
        self.binary, self.timeout = binary, timeout
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.events: list[dict] = []
        self._id = 0

    def __enter__(self) -> "Chromium":
        from websockets.sync.client import connect
        self.stack = contextlib.ExitStack()
        self.dir = Path(tempfile.mkdtemp(prefix="tierbench-chromium-"))
        self.log = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen([str(self.binary), *self.FLAGS, f"--user-data-dir={self.dir / 'profile'}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        try:
            port = self._port()
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()  # the websocket
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group: chromium and its children
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _port(self) -> int:
        active = self.dir / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: "
                                   + (self.dir / "stderr.log").read_text(errors="replace")[-2000:])
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError("chromium wrote no DevToolsActivePort")

    def _recv(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from chromium")
        return json.loads(self.ws.recv(timeout=left))

    def call(self, method: str, **params) -> dict:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._recv(deadline))

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate, wait for the load event and for every plot to resolve (body[data-rendered])."""
        self.events.clear()
        r = self.call("Page.navigate", url=url)
        assert not r.get("errorText"), r
        self.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + self.timeout
        while self.evaluate("document.body.getAttribute('data-rendered')") != "true":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: the plots never resolved")
            time.sleep(0.1)

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error log entries since open()."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                     for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


DRAWN_JS = """
JSON.parse(document.body.dataset.figures).map(function (id) {
  var el = document.getElementById(id);
  return {id: id, plot: !!el && el.classList.contains('js-plotly-plot'),
          svg: el ? el.querySelectorAll('svg.main-svg').length : 0,
          traces: el ? el.querySelectorAll('.trace').length : 0,
          data: el && el.data ? el.data.length : 0};
})
"""


def _check_page(browser: Chromium, path: Path) -> list[dict]:
    browser.open(path.resolve().as_uri())
    assert browser.errors() == []
    offline = [u for u in browser.requests() if not u.startswith(("file:", "data:", "about:", "blob:"))]
    assert offline == [], "the page asked the network for something"
    drawn = browser.evaluate(DRAWN_JS)
    for fig in drawn:
        assert fig["plot"] and fig["svg"] >= 1 and fig["data"] >= 1 and fig["traces"] >= 1, fig
    assert browser.evaluate("window.alerted === undefined && !document.querySelector('script:not([type])[src]')")
    return drawn


def test_report_loads_in_headless_chromium_and_draws_every_figure(browser, two_runs):
    drawn = _check_page(browser, two_runs[0])
    assert [d["id"] for d in drawn] == ALL_FIGURES
    # four groups: one CDF line each
    assert all(d["data"] == 4 for d in drawn if d["id"].startswith("fig-cdf-"))


def test_failed_only_report_loads_in_headless_chromium(browser, tmp_path):
    run = _failed_only_run(tmp_path / "failed")
    drawn = _check_page(browser, write_report([run], tmp_path / "r.html"))
    assert [d["id"] for d in drawn] == ["fig-makespan", "fig-timeline"]
    # the markup in the group names stayed text
    assert browser.evaluate("document.querySelectorAll('script').length") == \
        (tmp_path / "r.html").read_text().count("<script")
    assert HOSTILE in browser.evaluate("document.querySelector('table.summary thead').textContent")
