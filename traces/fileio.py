"""Reading trace files: plain or gzipped, line by line, with errors that name the line."""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from traces.errors import TraceError


def open_binary(path: Path):
    """Open a file for reading bytes, decompressing gzip by its magic number (not its name)."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes) for non-blank lines; a corrupt or truncated gzip
    becomes a TraceError naming the line where the data stopped."""
    lineno = 0
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    yield lineno, raw
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise TraceError(path, f"truncated or corrupt gzip data ({e})", lineno + 1) from None


def iter_json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON) per non-blank line; raise TraceError on an empty file or bad JSON."""
    seen = False
    for lineno, raw in iter_lines(path):
        seen = True
        try:
            yield lineno, orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise TraceError(path, f"invalid JSON ({e})", lineno) from None
    if not seen:
        raise TraceError(path, "empty file", 1)


def read_json(path: Path) -> object:
    """A whole file holding one JSON document (for example one upstream WEKA or SWE file)."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TraceError(path, f"truncated or corrupt gzip data ({e})") from None
    if not data.strip():
        raise TraceError(path, "empty file", 1)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise TraceError(path, f"invalid JSON ({e})", _line_of(data, e)) from None


def _line_of(data: bytes, e: orjson.JSONDecodeError) -> int | None:
    pos = getattr(e, "pos", None)
    return data.count(b"\n", 0, pos) + 1 if isinstance(pos, int) else None


def get(d: object, key: str, path: Path, line: int | None, where: str = ""):
    """d[key], or a TraceError naming the missing field."""
    name = f"{where}{key}"
    if not isinstance(d, dict):
        raise TraceError(path, f"expected a JSON object at '{where.rstrip('.') or 'top level'}'", line, where.rstrip(".") or None)
    if key not in d:
        raise TraceError(path, "missing key", line, name)
    return d[key]


def first_line(path: Path, limit: int = 1 << 24) -> bytes:
    """The first non-blank line (at most `limit` bytes), for format sniffing. b'' when empty."""
    try:
        with open_binary(path) as f:
            for raw in f:
                if raw.strip():
                    return raw[:limit]
                if f.tell() > limit:
                    break
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TraceError(path, f"truncated or corrupt gzip data ({e})", 1) from None
    return b""
