"""What a run's progress bar shows besides the call count: sessions finished out of those planned,
failed calls, and live output-token throughput over the last few seconds (a cumulative average
would hide a server slowing down)."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class LiveStats:
    planned: dict[str, int]  # session id -> its number of calls
    window_s: float = 10.0
    calls: int = 0
    errors: int = 0
    sessions_done: int = 0
    _recorded: dict[str, int] = field(default_factory=dict)
    _recent: deque = field(default_factory=deque)  # (monotonic time, output tokens) per finished call
    _start: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_plans(cls, plans) -> "LiveStats":
        return cls({p.id: len(p.calls) for p in plans if p.calls})

    def add(self, session: str, ok: bool, output_tokens: int, now: float | None = None) -> None:
        """One recorded call (ok or failed) of `session` that produced `output_tokens`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.calls += 1
            self.errors += not ok
            n = self._recorded.get(session, 0) + 1
            self._recorded[session] = n
            if n == self.planned.get(session):
                self.sessions_done += 1
            self._recent.append((now, output_tokens))

    def add_row(self, row: dict, now: float | None = None) -> None:
        """A requests-table row (bench.load.recorder.record_row)."""
        ok = row.get("status") == "ok"
        tokens = (row.get("output_tokens") or row.get("chunks") or 0) if ok else 0
        self.add(row.get("session") or "", ok, int(tokens), now)

    def tokens_per_s(self, now: float | None = None) -> float:
        """Output tokens per second over the last window_s seconds (or since the start, if shorter)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            span = min(self.window_s, now - self._start)
            return sum(t for _, t in self._recent) / span if span > 0 else 0.0

    def postfix(self, now: float | None = None) -> str:
        s = f"sessions {self.sessions_done}/{len(self.planned)}, {self.tokens_per_s(now):.0f} tok/s"
        return s + (f", errors {self.errors}" if self.errors else "")
