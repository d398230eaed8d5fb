"""The JSON plumbing of profile files (traces/profile.py): a reader that validates an object and
names the failing field by its dotted path, and the compact writer that keeps each quantile list
on one line.
"""
from __future__ import annotations

import math
from pathlib import Path

from traces.errors import TraceError


class Reader:
    """A JSON object being validated, with the dotted path of where it sits for error messages."""

    def __init__(self, data: object, path: str | Path, where: str):
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise TraceError(path, f"expected an object, got {type(data).__name__}", None, where or None)
        self.data = data

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> TraceError:
        return TraceError(self.path, message, None, self.field(key))

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def need(self, key: str) -> object:
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def obj(self, key: str) -> Reader:
        return Reader(self.need(key), self.path, self.field(key))

    def keys(self, allowed: tuple[str, ...], required: list[str] = ()) -> list[str]:
        for k in self.data:
            if k not in allowed:
                raise self.error(k, f"unknown key (expected one of {', '.join(allowed)})")
        for k in required:
            if k not in self.data:
                raise self.error(k, "missing")
        return [k for k in allowed if k in self.data]

    def number(self, key: str) -> float:
        v = self.need(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, f"expected a finite number, got {v!r}")
        return float(v)

    def prob(self, key: str) -> float:
        v = self.number(key)
        if not 0.0 <= v <= 1.0:
            raise self.error(key, f"a probability must be in [0, 1], got {v:g}")
        return v

    def int(self, key: str, minimum: int = 0) -> int:
        v = self.need(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise self.error(key, f"expected an integer, got {v!r}")
        if v < minimum:
            raise self.error(key, f"must be >= {minimum}, got {v}")
        return int(v)

    def str(self, key: str, default: str | None = None) -> str:
        v = self.need(key) if default is None else self.get(key, default)
        if not isinstance(v, str):
            raise self.error(key, f"expected a string, got {v!r}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {v!r}")
        return v

    def floats(self, key: str) -> list[float]:
        v = self.need(key)
        if not isinstance(v, list) or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise self.error(key, "expected a list of finite numbers")
        return [float(x) for x in v]


def require_sum(r: Reader, probs: dict[str, float]) -> None:
    """Raise unless the probabilities of the object r sum to 1."""
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-4:  # stored shares are rounded to 5 digits
        raise TraceError(r.path, f"probabilities must sum to 1, got {total:g}", None, r.where)


def compact_json(d: dict) -> str:
    """Indented JSON whose quantile lists stay on one line each: small and diffable."""
    import orjson  # here, not at the top: the GPU benchmark reads profiles without orjson

    text = orjson.dumps(d, option=orjson.OPT_INDENT_2).decode()
    out, buf = [], None
    for line in text.splitlines():
        s = line.strip()
        if buf is not None:
            buf.append(s)
            if s.startswith("]"):
                out.append(buf[0] + "".join(buf[1:-1]) + s)
                buf = None
            continue
        if s.endswith("[") and ('"p": [' in s or '"q": [' in s):
            buf = [line]
            continue
        out.append(line)
    return "\n".join(out)
