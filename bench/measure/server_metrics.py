"""Server-side metrics: an engine's Prometheus /metrics, scraped once per interval while a
repetition runs, as the rows of server_metrics.parquet (one per scrape).

vLLM's names are read first, the reference engine's own tierbench_* names where vLLM's are
missing (the reference engine exports both), so one table holds both engines. Counters are kept
cumulative, as scraped; `summarize_server_metrics` takes their deltas over a repetition.

The scraper sends one GET per interval on a kept-alive connection from its own daemon thread,
with a short timeout: the engine serves one small extra request a second. Its first scrape
decides whether the engine has /metrics at all: an error status, a refused connection or text
that is not Prometheus makes it `unavailable` (recorded, never an error). After that a failed
scrape (a busy server, a timeout) skips its tick and is counted; nothing here raises.
"""
from __future__ import annotations

import http.client
import json
import math
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

# column -> sample names, the first present wins: vLLM's (v1), its older names, the reference engine's own.
# The parser strips _total from a counter's family name, not from its samples: these are sample names.
SOURCES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "tierbench_running_sequences"),
    "waiting": ("vllm:num_requests_waiting", "tierbench_queue_depth"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "tierbench_kv_usage_ratio"),
    "prefix_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total",
                       "tierbench_prefix_queried_tokens_total"),
    "prefix_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total",
                    "tierbench_prefix_hit_tokens_total"),
    "preemptions": ("vllm:num_preemptions_total", "tierbench_preemptions_total"),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total", "tierbench_generation_tokens_total"),
}
COLUMNS = ("t", "engine", "tier", *SOURCES)
_MEANS = {"kv_usage"}  # a share: averaged over label sets (vLLM's data-parallel engines), the others summed
_WRITE = threading.Lock()  # engines side by side append to one journal


class Unreadable(ValueError):
    """/metrics answered, but not with Prometheus text this module can use."""


def parse_metrics(text: str) -> dict[str, float]:
    """The SOURCES columns of Prometheus text (NaN where the server has none); Unreadable when it
    is not Prometheus text or holds none of the names."""
    sums: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                sums.setdefault(s.name, []).append(float(s.value))
    except Exception as e:  # noqa: BLE001 - the parser raises ValueError, IndexError, ... on what it cannot read
        raise Unreadable(f"not Prometheus text ({type(e).__name__}: {e})") from None
    out = {}
    for col, names in SOURCES.items():
        vals = next((sums[n] for n in names if n in sums), None)
        out[col] = math.nan if vals is None else sum(vals) / (len(vals) if col in _MEANS else 1)
    if all(math.isnan(v) for v in out.values()):
        raise Unreadable("no vLLM or tierbench metric in it")
    return out


class ServerMetricsScraper:
    """One engine's /metrics every interval_s from start() to stop(): `rows` (COLUMNS),
    `failures` (scrapes that got no usable answer), `unavailable` (why there are none, or None)."""

    def __init__(self, base_url: str, engine: str, tier: str = "", interval_s: float = 1.0,
                 api_key: str | None = None, timeout_s: float = 2.0):
        u = urlsplit(base_url)
        self._conn_class = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self._netloc, self._path = u.netloc, u.path.rstrip("/") + "/metrics"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.engine, self.tier, self.interval_s, self.timeout_s = engine, tier, interval_s, timeout_s
        self.rows: list[dict] = []
        self.failures = 0
        self.unavailable: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ServerMetricsScraper":
        """The first scrape, here (before the load: the counters' starting point), then the thread."""
        try:
            self._tick()
        except TimeoutError:
            self.failures += 1  # busy, not absent: the thread keeps trying
        except (Unreadable, http.client.HTTPException, OSError) as e:
            self.unavailable = _one_line(e)
            self._close()
            return self
        self._thread = threading.Thread(target=self._loop, name=f"scrape-{self.engine}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "ServerMetricsScraper":
        """End the thread and take a last scrape (the counters' end point)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.timeout_s + 1)
            if not self._thread.is_alive():
                self._safe_tick()
        self._close()
        if not self.rows and self.unavailable is None:
            self.unavailable = f"no scrape of {self._path} answered ({self.failures} tried)"
        return self

    def _loop(self) -> None:
        due = time.monotonic()
        while True:
            due += self.interval_s
            if due <= time.monotonic():  # a slow scrape (a busy server): skip the ticks it missed, never bunch them
                due = time.monotonic() + self.interval_s
            if self._stop.wait(due - time.monotonic()):
                return
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception:  # noqa: BLE001 - a side measurement: a failed scrape skips its tick, never ends the run
            self.failures += 1
            self._close()

    def _tick(self) -> None:
        t0 = time.time()
        values = parse_metrics(self._get())
        self.rows.append({"t": (t0 + time.time()) / 2, "engine": self.engine, "tier": self.tier, **values})

    def _get(self) -> str:
        for _ in range(2):
            fresh = self._conn is None
            if fresh:
                self._conn = self._conn_class(self._netloc, timeout=self.timeout_s)
            try:
                self._conn.request("GET", self._path, headers=self._headers)
                r = self._conn.getresponse()
                body = r.read()
            except (http.client.HTTPException, OSError) as e:
                self._close()
                if fresh or isinstance(e, TimeoutError):
                    raise
                continue  # the server closed the kept-alive connection while idle: once more on a new one
            if r.will_close:
                self._close()
            if r.status != 200:
                raise Unreadable(f"HTTP {r.status} {r.reason} from {self._path}")
            return body.decode("utf-8", "replace")
        raise AssertionError("unreachable")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, Unreadable) else f"{type(e).__name__}: {text}"


def append_rows(rows: list[dict], journal: Path) -> None:
    """Rows onto the run's journal (JSON lines), merged into server_metrics.parquet at the end."""
    if rows:
        with _WRITE, open(journal, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(journal: Path):
    """The journal as a DataFrame of COLUMNS in time order (empty without one; a torn last line is skipped)."""
    import pandas as pd

    rows = []
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.sort_values(["engine", "tier", "t"], kind="stable").reset_index(drop=True)


def summarize_server_metrics(df) -> dict:
    """One repetition's scrapes: gauges' peak and mean, counters' last minus first; None where the
    server has no such metric (or no scrape)."""
    import pandas as pd

    df = df.sort_values("t", kind="stable") if "t" in df.columns else df

    def col(name):
        return pd.to_numeric(df[name], errors="coerce").dropna() if name in df.columns else pd.Series(dtype=float)

    def stat(name, how):
        s = col(name)
        return float(getattr(s, how)()) if len(s) else None

    def delta(name):
        s = col(name)
        return float(s.iloc[-1] - s.iloc[0]) if len(s) else None

    hits, queries = delta("prefix_hits"), delta("prefix_queries")
    return {"kv_usage_peak": stat("kv_usage", "max"), "kv_usage_mean": stat("kv_usage", "mean"),
            "queue_mean": stat("waiting", "mean"), "queue_peak": stat("waiting", "max"),
            "running_mean": stat("running", "mean"), "server_preemptions": delta("preemptions"),
            "server_prefix_hit_ratio": hits / queries if hits is not None and queries else None,
            "server_metrics_samples": len(df)}
