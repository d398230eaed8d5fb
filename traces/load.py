"""One entry point for every trace: format detection and dispatch to the readers.

A path may be a single file, a directory of files, or a gzipped bundle; `profile:NAME` (or
`profile:FILE.json`) draws a synthetic trace from a workload profile instead. The dataset files
that AIPerf and vLLM replay are traces here too: Mooncake-style JSONL (AIPerf's mooncake_trace,
with or without session_id/delay, and vLLM's timed_trace) and the WEKA trace JSON that AIPerf's
weka loader reads.
"""
from __future__ import annotations

from pathlib import Path

import orjson

from traces.errors import TraceError
from traces.fileio import first_line
from traces.model import Trace

FORMATS = ("weka", "swe", "mooncake", "azure", "tracelab", "native")
# When a directory mixes formats (a SOURCE.txt, a derived CSV), the agentic one wins.
_PRIORITY = ("native", "weka", "swe", "tracelab", "mooncake", "azure")
_SUFFIXES = (".json", ".jsonl", ".gz", ".csv", ".traj")
# Mooncake rows beside input_length: the release's timestamp and hash_ids, AIPerf's multi-turn
# session_id and delay (its mooncake_trace), vLLM's timed_trace labels (the release's names).
_MOONCAKE_KEYS = {"timestamp", "hash_ids", "session_id", "delay", "output_length"}


def sniff(path: Path) -> str | None:
    """The format of one file from its first line, or None."""
    head = first_line(path)
    if not head:
        return None
    text = head.lstrip()
    if text.startswith(b"{"):
        if b'"tierbench_trace"' in text[:200] or (b'"session"' in text and b'"prompt_tokens"' in text):
            return "native"
        try:
            rec = orjson.loads(head)
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            keys = rec.keys()
            if "requests" in keys and ("block_size" in keys or "hash_id_scope" in keys):
                return "weka"
            if "messages" in keys and ("instance_id" in keys or "info" in keys or "trajectory_format" in keys):
                return "swe"
            if "input_length" in keys and keys & _MOONCAKE_KEYS:
                return "mooncake"
            if "session" in keys and "prompt_tokens" in keys:
                return "native"
            if "round_index" in keys and "input_tokens_total" in keys:
                return "tracelab"
        else:  # a pretty-printed single JSON document: look for telltale keys near the top
            if b'"requests"' in text or b'"block_size"' in text:
                return "weka"
            if b'"messages"' in text or b'"trajectory_format"' in text or b'"info"' in text:
                return "swe"
        return None
    if b"ContextTokens" in text and b"TIMESTAMP" in text:
        return "azure"
    return None


def files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_SUFFIXES))
    return [path]


def detect(path: Path) -> tuple[str, list[Path]]:
    """(format, the files of that format) for a file or directory; TraceError when unknown."""
    if not path.exists():
        raise TraceError(path, "no such file or directory")
    candidates = files_of(path)
    if path.is_file() and path.stat().st_size == 0:
        raise TraceError(path, "empty file", 1)
    found: dict[str, list[Path]] = {}
    for p in candidates:
        fmt = sniff(p)
        if fmt:
            found.setdefault(fmt, []).append(p)
    for fmt in _PRIORITY:
        if fmt in found:
            return fmt, found[fmt]
    raise TraceError(path, f"unknown trace format; name one with --format ({'|'.join(FORMATS)})", None, "format")


def load_trace(spec: str | Path, fmt: str | None = None, *, tokenizer_dir: str | Path | None = None,
               progress: bool = False, sessions: int | None = None, seed: int = 0) -> Trace:
    """Read a trace file or directory (format auto-detected unless `fmt` is given), or draw one
    from `profile:NAME` with `sessions` sessions and `seed`."""
    s = str(spec)
    if s.startswith("profile:"):
        from traces.synth import load_profile, synthesize  # local: keeps plain reads light
        return synthesize(load_profile(s[len("profile:"):]), sessions=sessions or 32, seed=seed)
    path = Path(s)
    if fmt is None:
        fmt, files = detect(path)
    else:
        if fmt not in FORMATS:
            raise TraceError(path, f"unknown format '{fmt}' (one of {', '.join(FORMATS)})", None, "format")
        if not path.exists():
            raise TraceError(path, "no such file or directory")
        files = files_of(path)
        if not files:
            raise TraceError(path, "no trace files in this directory")
        if path.is_file() and path.stat().st_size == 0:
            raise TraceError(path, "empty file", 1)
    if fmt == "weka":
        from traces.weka import read_weka
        return read_weka(files, str(path), progress=progress)
    if fmt == "mooncake":
        from traces.mooncake import read_mooncake
        return read_mooncake(files, str(path))
    if fmt == "azure":
        from traces.azure import read_azure
        return read_azure(files, str(path))
    if fmt == "tracelab":
        from traces.tracelab import read_tracelab
        return read_tracelab(files, str(path))
    if fmt == "native":
        from traces.native import read_native
        return read_native(files, str(path))
    from traces.swe import read_swe
    from traces.text_tokens import ChatTokenizer
    if tokenizer_dir is None:
        raise TraceError(path, "text traces need a tokenizer (--tokenizer MODEL_DIR)", None, "tokenizer")
    tok = ChatTokenizer(tokenizer_dir)
    if len(files) == 1:
        return read_swe(files[0], tok, progress=progress)
    return read_swe(path, tok, progress=progress)
