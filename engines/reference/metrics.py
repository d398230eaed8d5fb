"""The server's Prometheus metrics: its own counters and latency histograms (ServerMetrics), and
the /metrics text (render_metrics), which adds the engine's gauges and counters read from
engine.stats() at scrape time. Names follow vLLM's where vLLM has the metric, so dashboards and
scrapers written for vLLM work unchanged; everything else is under `tierbench_`.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict


class Histogram:
    """A Prometheus histogram: counts per bucket (the last is +Inf), sum and count."""

    def __init__(self, buckets: list[float]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1


_LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]


class ServerMetrics:
    """Server-side counters; engine gauges and counters are read from engine.stats() at scrape."""

    def __init__(self) -> None:
        self.finished: dict[str, int] = defaultdict(int)  # finish reason -> requests
        self.rejected: dict[str, int] = defaultdict(int)  # queue_full | bad_request | unauthorized
        self.aborted = 0  # client disconnects
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.in_flight = 0
        self.ttft = Histogram(_LATENCY_BUCKETS)
        self.e2e = Histogram(_LATENCY_BUCKETS)
        self.itl = Histogram(_ITL_BUCKETS)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(stats: dict, m: ServerMetrics, model_name: str, engine_alive: bool) -> str:
    lines: list[str] = []
    base = f'model_name="{_esc(model_name)}"'

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, v in samples:
            lab = base + ("," + labels if labels else "")
            lines.append(f"{name}{{{lab}}} {_num(v)}")

    def one(name: str, kind: str, help_: str, v: float) -> None:
        metric(name, kind, help_, [("", v)])

    def hist(name: str, help_: str, h: Histogram) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} histogram")
        acc = 0
        for le, c in zip([*map(_num, h.buckets), "+Inf"], h.counts):
            acc += c
            lines.append(f'{name}_bucket{{{base},le="{le}"}} {acc}')
        lines.append(f"{name}_sum{{{base}}} {_num(h.sum)}")
        lines.append(f"{name}_count{{{base}}} {h.count}")

    s = defaultdict(int, stats)  # a key the engine stops reporting reads 0 rather than breaking scrapes
    g = "gauge"
    c = "counter"
    # vLLM's names (v1 engine), so dashboards and scrapers written for vLLM work unchanged
    one("vllm:num_requests_running", g, "Requests in the running batch.", s["num_running"])
    one("vllm:num_requests_waiting", g, "Requests waiting to be scheduled.", s["num_waiting"])
    one("vllm:kv_cache_usage_perc", g, "KV-cache usage, 0 to 1 (1 = every block in use).", s["kv_usage"])
    one("vllm:gpu_cache_usage_perc", g, "KV-cache usage, 0 to 1 (legacy name).", s["kv_usage"])
    one("vllm:num_preemptions_total", c, "Preemptions.", s["preemptions"])
    one("vllm:prefix_cache_queries_total", c, "Prompt tokens looked up in the prefix cache.",
        s["prefix_queried_tokens"])
    one("vllm:prefix_cache_hits_total", c, "Prompt tokens found in the prefix cache.", s["prefix_hit_tokens"])
    one("vllm:prompt_tokens_total", c, "Prompt tokens of admitted requests.", m.prompt_tokens)
    one("vllm:generation_tokens_total", c, "Generated tokens.", s["generation_tokens"])
    metric("vllm:request_success_total", c, "Finished requests by finish reason.",
           [(f'finished_reason="{_esc(k)}"', v) for k, v in sorted(m.finished.items())] or
           [('finished_reason="stop"', 0)])
    hist("vllm:time_to_first_token_seconds", "Time to first token (from arrival).", m.ttft)
    hist("vllm:e2e_request_latency_seconds", "End-to-end request latency.", m.e2e)
    hist("vllm:inter_token_latency_seconds", "Time between consecutive output tokens.", m.itl)
    # tierbench's names: everything the engine reports
    one("tierbench_engine_alive", g, "1 while the engine thread runs.", 1 if engine_alive else 0)
    one("tierbench_queue_depth", g, "Requests waiting to be scheduled.", s["num_waiting"])
    one("tierbench_running_sequences", g, "Sequences in the running batch.", s["num_running"])
    one("tierbench_requests_in_flight", g, "HTTP generation requests being served.", m.in_flight)
    one("tierbench_kv_usage_ratio", g, "Fraction of KV blocks referenced by a sequence.", s["kv_usage"])
    one("tierbench_kv_free_blocks", g, "KV blocks no sequence references (cached ones included).",
        s["num_free_blocks"])
    one("tierbench_kv_total_blocks", g, "KV blocks in the pool.", s["num_total_blocks"])
    one("tierbench_kv_cached_blocks", g, "KV blocks registered in the prefix cache.", s["num_cached_blocks"])
    one("tierbench_kv_block_size", g, "Tokens per KV block.", s["block_size"])
    metric("tierbench_kv_retention_info", g, "The KV retention policy (--kv-retention), as a label; always 1.",
           [(f'policy="{_esc(str(stats.get("kv_retention", "")))}"', 1)])
    one("tierbench_prefix_hit_rate", g, "Prefix-cache hit rate over prompt tokens since start.",
        s["prefix_hit_rate"])
    for key, help_ in (("prefix_queried_tokens", "Prompt tokens looked up in the prefix cache."),
                       ("prefix_hit_tokens", "Prompt tokens served by the prefix cache."),
                       ("prefix_hit_blocks", "Prompt blocks served by the prefix cache."),
                       ("prefix_miss_blocks", "Full prompt blocks not found in the prefix cache."),
                       ("prefix_lost_blocks", "Missed prompt blocks that had been cached and were evicted."),
                       ("evictions", "Cached KV blocks evicted."),
                       ("preemptions", "Preemptions."),
                       ("recomputed_tokens", "Tokens computed again after preemption."),
                       ("prompt_tokens_computed", "Prompt tokens run through the model."),
                       ("generation_tokens", "Generated tokens."),
                       ("steps", "Engine steps.")):
        one("tierbench_engine_steps_total" if key == "steps" else f"tierbench_{key}_total", c, help_, s[key])
    one("tierbench_cached_prompt_tokens_total", c, "Prompt tokens reported as cached to clients.", m.cached_tokens)
    one("tierbench_requests_aborted_total", c, "Requests aborted because the client went away.", m.aborted)
    metric("tierbench_requests_rejected_total", c, "Requests refused, by reason.",
           [(f'reason="{r}"', m.rejected.get(r, 0)) for r in ("bad_request", "queue_full", "unauthorized")])
    return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    return repr(float(v))
