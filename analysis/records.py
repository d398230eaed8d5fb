"""The request records a run writes as calls complete: one JSON object a line, in
run_dir/requests.<pid>.<engine>.jsonl fragments (bench/load/recorder.py writes them; the run's end
merges them into requests.parquet). The one reader of those fragments, for the analysis, the
recorder itself and the measurement scripts."""
from __future__ import annotations

import json
from pathlib import Path


def read_records(run_dir: str | Path, pattern: str = "requests.*.jsonl") -> list[dict]:
    """Every record row of the fragments in run_dir, fragment by fragment in name order. A last
    line with no newline (a write cut short by an interruption) is skipped; any other corrupt
    line raises ValueError naming the file and line."""
    rows: list[dict] = []
    for path in sorted(Path(run_dir).glob(pattern)):
        rows.extend(read_jsonl(path))
    return rows


def read_jsonl(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    lines = data.split(b"\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines):  # no newline after it: a write cut short by the interruption
                continue
            raise ValueError(f"{path}:{i}: corrupt record: {e}") from None
        rows.append(row)
    return rows
