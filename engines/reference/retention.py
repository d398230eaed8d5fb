"""Which free cached KV block the pool evicts next: the `--kv-retention` policies.

A free cached block is one no running sequence references but whose contents the prefix cache
still serves. When the pool needs a block and none is free and empty, it evicts one of these:
  agent-aware  session by session, the session idle longest first (a session's activity is a
               request arriving for it or releasing its blocks), and within a session the block
               released longest ago first. The default.
  lru          plain least recently used over all blocks by release time, sessions ignored. A
               block taken by a prefix hit and released again goes to the back.
  next-call    session by session, the session whose next call is predicted furthest in the
               future first; within a session as agent-aware. A session's next call is predicted
               at its last release plus its think time: an exponentially weighted mean (alpha 0.3)
               of the gaps between a release and that session's next request arrival. A session
               with no gap of its own yet uses the mean of every session's estimate; until some
               session has a gap, the order is agent-aware's, which also breaks ties. A session
               with a request that arrived after its last release is calling now, before any
               prediction, so it loses its blocks last; so is a session whose sequence was
               preempted, since its request waits to run again. Requests without a session share
               one anonymous session, whose arrivals count for nothing here (they are unrelated
               requests): it is predicted with the mean gap.
A sequence releases its blocks tail first, so under every policy a session (or the LRU order)
loses its newest context before the prefix it shares with others. reset_prefix_cache forgets
the think times too: it marks a fresh start, as between benchmark runs.

Each allocate costs O(1) per evicted block, plus for next-call O(sessions) per session drained.
No torch here: serve_args imports POLICIES.
"""
from __future__ import annotations

from collections import OrderedDict

POLICIES = ("agent-aware", "lru", "next-call")
THINK_ALPHA = 0.3  # weight of the newest gap in a session's think-time estimate

Session = str | None


class GlobalLRU:
    """lru: one order over every free cached block, oldest release first."""

    def __init__(self) -> None:
        self._free: OrderedDict[int, None] = OrderedDict()

    def arrive(self, session: Session, now: float) -> None:
        pass  # sessions play no part

    def release(self, block_ids: list[int], session: Session, call_ended: bool, now: float) -> None:
        for bid in block_ids:
            self._free[bid] = None

    def remove(self, bid: int) -> None:
        del self._free[bid]

    def evict(self, n: int) -> list[int]:
        return [self._free.popitem(last=False)[0] for _ in range(n)]

    def order(self) -> list[int]:
        return list(self._free)

    def clear(self) -> list[int]:
        out = list(self._free)
        self._free.clear()
        return out


class ThinkTimes:
    """Per session: last release, whether a request arrived since, and the mean gap between the two."""

    def __init__(self) -> None:
        self._released: dict[Session, float] = {}  # last release
        self._calling: set[Session] = set()  # sessions with a request arrived since their last release
        self._gap: dict[Session, float] = {}  # EWMA of release -> next arrival
        self._gap_sum = 0.0  # sum of _gap's values, for the mean over sessions

    def arrive(self, session: Session, now: float) -> None:
        if session is None or session in self._calling:
            return  # unrelated requests, or a second request of a call under way (parallel tool calls)
        self._calling.add(session)
        released = self._released.get(session)
        if released is None:
            return
        gap = now - released
        old = self._gap.get(session)
        new = gap if old is None else THINK_ALPHA * gap + (1 - THINK_ALPHA) * old
        self._gap[session] = new
        self._gap_sum += new - (old or 0.0)

    def release(self, session: Session, call_ended: bool, now: float) -> None:
        if call_ended:
            self._released[session] = now
            self._calling.discard(session)
        else:  # preempted: the request still waits, so the session is calling now
            self._calling.add(session)

    def any_gap(self) -> bool:
        return bool(self._gap)

    def next_call(self, session: Session) -> float:
        """Predicted time of the session's next request (only once some session has a gap)."""
        if session in self._calling:
            return float("-inf")  # calling now: sooner than any prediction, even an overdue one
        gap = self._gap.get(session)
        if gap is None:
            gap = self._gap_sum / len(self._gap)
        return self._released[session] + gap

    def clear(self) -> None:
        self._released.clear()
        self._calling.clear()
        self._gap.clear()
        self._gap_sum = 0.0


class SessionBuckets:
    """agent-aware and next-call: free cached blocks grouped by session, sessions in order of last
    activity, blocks in each in release order. next-call picks the victim session by prediction."""

    def __init__(self, predict: bool) -> None:
        self._buckets: OrderedDict[Session, OrderedDict[int, None]] = OrderedDict()
        self._session_of: dict[int, Session] = {}
        self.think = ThinkTimes() if predict else None

    def arrive(self, session: Session, now: float) -> None:
        if session in self._buckets:
            self._buckets.move_to_end(session)
        if self.think is not None:
            self.think.arrive(session, now)

    def release(self, block_ids: list[int], session: Session, call_ended: bool, now: float) -> None:
        if block_ids:
            bucket = self._buckets.setdefault(session, OrderedDict())
            for bid in block_ids:
                bucket[bid] = None
                self._session_of[bid] = session
        if session in self._buckets:
            self._buckets.move_to_end(session)
        if self.think is not None:
            self.think.release(session, call_ended, now)

    def remove(self, bid: int) -> None:
        session = self._session_of.pop(bid)
        bucket = self._buckets[session]
        del bucket[bid]
        if not bucket:
            del self._buckets[session]

    def evict(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            session = self._victim()
            bucket = self._buckets[session]
            while bucket and len(out) < n:
                bid = bucket.popitem(last=False)[0]
                del self._session_of[bid]
                out.append(bid)
            if not bucket:
                del self._buckets[session]
        return out

    def _victim(self) -> Session:
        if self.think is None or not self.think.any_gap():
            return next(iter(self._buckets))
        return max(self._buckets, key=self.think.next_call)  # the first of equals: agent-aware order

    def _sessions_in_order(self) -> list[Session]:
        if self.think is None or not self.think.any_gap():
            return list(self._buckets)
        return sorted(self._buckets, key=lambda s: -self.think.next_call(s))  # stable: ties as _victim

    def order(self) -> list[int]:
        return [bid for s in self._sessions_in_order() for bid in self._buckets[s]]

    def clear(self) -> list[int]:
        out = [bid for bucket in self._buckets.values() for bid in bucket]
        self._buckets.clear()
        self._session_of.clear()
        if self.think is not None:
            self.think.clear()
        return out


def make_retention(policy: str) -> GlobalLRU | SessionBuckets:
    if policy == "lru":
        return GlobalLRU()
    if policy in ("agent-aware", "next-call"):
        return SessionBuckets(predict=policy == "next-call")
    raise ValueError(f"unknown KV retention policy {policy!r} (one of {', '.join(POLICIES)})")
