"""Results other benchmark clients wrote, read as tierbench requests tables, so that `tierbench
compare` and `tierbench report` take them beside run directories (analysis.rundata.load_run):

- vLLM: the JSON of `vllm bench serve --save-result --save-detailed` (per request, in request
  order: start_times, ttfts, itls, latencies, input_lens, output_lens, errors);
- AIPerf: the per-request export of `aiperf profile --export-level records`, profile_export.jsonl
  (one record a line: metadata with request_start_ns, and metrics such as time_to_first_token,
  request_latency, inter_chunk_latency, usage_prompt_tokens), or the artifact directory holding it.

Both map to tierbench's columns (analysis.metrics.COLUMNS) so that the same definitions apply:
sent = the client's send time, first_token = sent + its TTFT, last_token = sent + its end-to-end
latency, itl = its gaps between content chunks; prompt, output and cached tokens are the server's
usage figures where the tool kept them (as tierbench records them), else the tool's own counts.
Durations are then tierbench's (first send to last token), not each tool's own benchmark span:
the tool's own figures stay in the run's info under `workload.reported`.

Imports pandas only when a table is built, so that bench.measure.vllm_agreement can import the
vLLM mapping in vLLM's own interpreter.
"""
from __future__ import annotations

import json
from pathlib import Path

# What vLLM's --save-detailed adds per request (request order), beside the summary.
DETAILED_FIELDS = ("start_times", "ttfts", "itls", "latencies", "input_lens", "output_lens", "errors")
AIPERF_EXPORT = "profile_export.jsonl"
AIPERF_SUMMARY = "profile_export_aiperf.json"
VLLM_ENGINE, AIPERF_ENGINE = "vllm-bench", "aiperf"


def requests_from_vllm(result: dict):
    """vLLM's per-request output as a tierbench requests table (analysis.metrics.COLUMNS).

    vLLM keeps, per request: start_time (perf_counter at send), ttft, latency (last chunk with
    choices - send), itl (gaps between chunks with choices), the prompt and completion token
    counts (the server's usage figures where it sent them), and an error ('' when it succeeded).
    Times are rebuilt as tierbench records them: sent, first_token = sent + ttft, last_token =
    sent + latency. Request i is session r<i>, as tierbench names the rows of a Mooncake trace."""
    import pandas as pd
    missing = [k for k in DETAILED_FIELDS if k not in result]
    if missing:
        raise ValueError(f"vLLM result lacks {missing}: run it with --save-result --save-detailed")
    rows = []
    for i, (st, ttft, itl, lat, pin, pout, err) in enumerate(zip(*(result[k] for k in DETAILED_FIELDS))):
        ok = not err
        rows.append(_row(f"vllm-{i}", VLLM_ENGINE, f"r{i}", 0, sent=st, intended=None,
                         first=st + ttft if ok else None, last=st + lat if ok else None,
                         itl=list(itl) if ok else [], prompt=pin, output=pout if ok else None, cached=None,
                         expected_prompt=pin, error=err or None))
    return pd.DataFrame(rows)


def requests_from_aiperf(records: list[dict], path: Path):
    """AIPerf's per-request records (profile_export.jsonl) as a tierbench requests table. Times, in
    seconds from the first send: request_start_ns (wall clock) is the send, credit_issued_ns (when
    its schedule released the request) the intended start; TTFT, request latency and inter-chunk latencies are AIPerf's, in
    ms. A session is AIPerf's conversation (x_correlation_id), its call index the turn index."""
    import pandas as pd
    for i, rec in enumerate(records, 1):
        meta = rec.get("metadata")
        if not isinstance(meta, dict) or not isinstance(rec.get("metrics"), dict) or \
                not isinstance(meta.get("request_start_ns"), int):
            raise ValueError(f"{path}:{i}: not an AIPerf record (expected metadata.request_start_ns and metrics)")
    # Seconds from the first send: epoch nanoseconds as float seconds would keep only ~0.2 us.
    zero = min(rec["metadata"]["request_start_ns"] for rec in records) if records else 0
    rows = []
    for i, rec in enumerate(records, 1):
        meta, metrics = rec["metadata"], rec["metrics"]
        sent = (meta["request_start_ns"] - zero) / 1e9
        issued = meta.get("credit_issued_ns")
        val = lambda k: (metrics.get(k) or {}).get("value")  # noqa: E731
        err = rec.get("error")
        ttft, lat = val("time_to_first_token"), val("request_latency")
        ok = not err and not meta.get("was_cancelled") and lat is not None
        gaps = val("inter_chunk_latency")
        gaps = [g / 1000.0 for g in gaps] if isinstance(gaps, list) else []
        message = None if ok else _aiperf_error(err, meta)
        prompt = val("usage_prompt_tokens")
        output = val("usage_completion_tokens")
        rows.append(_row(meta.get("x_request_id") or f"aiperf-{i}", AIPERF_ENGINE,
                         str(meta.get("x_correlation_id") or meta.get("conversation_id") or f"aiperf-{i}"),
                         meta.get("turn_index") or 0, sent=sent, intended=(issued - zero) / 1e9 if issued else None,
                         first=sent + (ttft if ttft is not None else lat) / 1000.0 if ok else None,
                         last=sent + lat / 1000.0 if ok else None, itl=gaps if ok else [],
                         prompt=prompt if prompt is not None else val("input_sequence_length"),
                         output=(output if output is not None else val("output_sequence_length")) if ok else None,
                         cached=val("usage_prompt_cache_read_tokens"), expected_prompt=val("input_sequence_length"),
                         error=message, warmup=meta.get("benchmark_phase") == "warmup"))
    return pd.DataFrame(rows)


def _aiperf_error(err, meta: dict) -> str:
    if isinstance(err, dict):
        code = err.get("code")
        head = f"HTTP {code}" if isinstance(code, int) else str(err.get("type") or "error")
        return f"{head}: {err.get('message') or ''}".strip()
    if meta.get("was_cancelled"):
        return "cancelled: AIPerf cancelled the request"
    return f"error: {err}" if err else "incomplete: AIPerf's record has no request_latency"


def _row(rid: str, engine: str, session: str, index: int, *, sent, intended, first, last, itl, prompt, output,
         cached, expected_prompt, error, warmup: bool = False) -> dict:
    ok = error is None
    return {"request_id": rid, "engine": engine, "tier": "", "session": session, "call_index": index,
            "intended_start": intended, "sent": sent, "first_token": first, "last_token": last, "itl": itl,
            "chunks": len(itl) + 1 if ok else 0, "prompt_tokens": prompt, "output_tokens": output,
            "cached_tokens": cached, "expected_prompt_tokens": expected_prompt, "expected_output_tokens": None,
            "status": "ok" if ok else "error", "http_status": 200 if ok else None, "error": error,
            "finish_reason": None, "warmup": warmup}


# --------------------------------------------------------------------------- files

def peer_kind(path: Path) -> str | None:
    """'vllm', 'aiperf' or None (not a peer's result: a tierbench run or summary)."""
    path = Path(path)
    if path.is_dir():
        return "aiperf" if aiperf_export(path) is not None else None
    if path.name.endswith(".jsonl"):
        return "aiperf" if _first_record_is_aiperf(path) else None
    if path.name == AIPERF_SUMMARY:
        return "aiperf"
    if path.suffix == ".json":
        data = path.read_bytes() if path.is_file() else b""
        return "vllm" if b'"start_times"' in data or (b'"ttfts"' in data and b'"backend"' in data) else None
    return None


def aiperf_export(path: Path) -> Path | None:
    """The profile_export.jsonl of an AIPerf artifact directory (directly in it, or one level down)."""
    found = [path / AIPERF_EXPORT] + sorted(path.glob(f"*/{AIPERF_EXPORT}"))
    return next((p for p in found if p.is_file()), None)


def _first_record_is_aiperf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.readline()
    except OSError:
        return False
    return b'"metadata"' in head and b'"metrics"' in head and b'"request_start_ns"' in head


def load_peer(path: Path, kind: str):
    """(info, requests table) of a peer's result file. The info has run.json's fields a report
    shows (name, status, start, end, environment, engines) and the tool's own figures under
    workload.reported. ValueError naming the file on anything unreadable."""
    path = Path(path)
    if kind == "vllm":
        result = read_json_object(path)
        reported = {k: v for k, v in result.items() if k not in DETAILED_FIELDS and not isinstance(v, (list, dict))}
        info = _info(path.stem, "vllm bench serve", path, reported, model=result.get("model_id"),
                     base_url=None, start=result.get("date"), version=None)
        return info, requests_from_vllm(result)
    export = aiperf_export(path) if path.is_dir() else path.parent / AIPERF_EXPORT if path.name == AIPERF_SUMMARY else path
    if export is None or not export.is_file():
        raise ValueError(f"{path}: no {AIPERF_EXPORT}: run aiperf profile with --export-level records")
    from analysis.records import read_jsonl
    records = read_jsonl(export)
    if not records:
        raise ValueError(f"{export}: no records")
    summary_path = export.parent / AIPERF_SUMMARY
    summary = read_json_object(summary_path) if summary_path.is_file() else {}
    cfg = summary.get("input_config") or {}
    endpoint = cfg.get("endpoint") or {}
    models = [m.get("name") for m in (cfg.get("models") or {}).get("items", []) if isinstance(m, dict)]
    reported = {k: summary[k] for k in ("benchmark_duration", "request_throughput", "time_to_first_token",
                                        "inter_token_latency", "request_latency", "request_count") if k in summary}
    name = export.parent.name if export.name == AIPERF_EXPORT else export.stem
    info = _info(name, "aiperf profile", export, reported, model=models[0] if models else None,
                 base_url=(endpoint.get("urls") or [None])[0], start=summary.get("start_time"),
                 end=summary.get("end_time"), version=summary.get("aiperf_version"))
    return info, requests_from_aiperf(records, export)


def _info(name: str, tool: str, path: Path, reported: dict, *, model, base_url, start, version, end=None) -> dict:
    engine = VLLM_ENGINE if tool.startswith("vllm") else AIPERF_ENGINE
    return {"name": name, "status": "finished", "start": start, "end": end,
            "environment": {"command": tool, "versions": {tool.split()[0]: version} if version else {}},
            "engines": {engine: {"kind": f"{tool} (a peer's client)", "model": model, "base_url": base_url}},
            "workload": {"peer": tool, "file": str(path), "reported": reported,
                         "note": "figures recomputed from the per-request records under tierbench's definitions; "
                                 "the tool's own are under 'reported'"}}


def read_json_object(path: Path) -> dict:
    """A file holding one JSON object; ValueError naming the file (and line) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a JSON object")
    return data
