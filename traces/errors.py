"""The one error type for bad input: it names the file, line and field so a user can fix it."""
from __future__ import annotations


class TraceError(Exception):
    """Bad input in a trace, profile or spec file. `str()` is the one-line message the CLI prints."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


def require_int(value: object, path: object, line: int | None, field: str, minimum: int = 0) -> int:
    """A token count or similar: an integer (an integral float such as 12.0 is accepted), >= minimum."""
    if isinstance(value, bool) or value is None:
        raise TraceError(path, f"expected an integer, got {value!r}", line, field)
    if isinstance(value, float):
        if not value.is_integer():
            raise TraceError(path, f"expected an integer, got {value!r}", line, field)
        value = int(value)
    if not isinstance(value, int):
        raise TraceError(path, f"expected an integer, got {value!r}", line, field)
    if value < minimum:
        raise TraceError(path, f"must be >= {minimum}, got {value}", line, field)
    return value


def require_number(value: object, path: object, line: int | None, field: str, minimum: float | None = 0.0) -> float:
    """A time or rate: a finite number, >= minimum when one is given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceError(path, f"expected a number, got {value!r}", line, field)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise TraceError(path, f"expected a finite number, got {value!r}", line, field)
    if minimum is not None and value < minimum:
        raise TraceError(path, f"must be >= {minimum:g}, got {value:g}", line, field)
    return value
