"""Sequential early stopping for `tierbench run --early-stop ttft_p99<=500`.

A watcher thread reads the records this repetition appends (requests.<pid>.<engine>.jsonl, any
load generator), and at each look (analysis.stats.EarlyStopRule: 64, 128, 256, ... measured calls)
asks every rule whether its percentile target is decided at the rule's confidence. Once every
rule is decided it sets `halt`, which ends the load generator; the run keeps every finished call
and run.json records each rule's decision, the calls it rested on and how many were over the bound.
"""
from __future__ import annotations

import threading
from pathlib import Path

import orjson

from analysis.stats import EarlyStopRule
from bench.load.recorder import read_new_rows, records_path

POLL_S = 0.5


def _values_ms(row: dict, metric: str) -> list[float]:
    if row.get("status") != "ok" or row.get("warmup"):
        return []
    sent, first, last = row.get("sent"), row.get("first_token"), row.get("last_token")
    if sent is None or first is None or last is None:
        return []
    if metric == "ttft":
        return [(first - sent) * 1000]
    if metric == "e2el":
        return [(last - sent) * 1000]
    if metric == "itl":
        return [g * 1000 for g in row.get("itl") or []]
    out = row.get("output_tokens") or row.get("chunks") or 0
    return [(last - first) / (out - 1) * 1000] if out > 1 else []


class EarlyStopWatch:
    """Sets `halt` when every rule is decided, or when `died` is set (the server is gone)."""

    def __init__(self, rules: list[EarlyStopRule], run_dir: Path, engine: str, tier: str | None,
                 died: threading.Event, halt: threading.Event):
        """tier: the repetition's label its rows carry; None for every row of the engine (a
        scenario through tiers, whose rows carry the tier each call was routed to)."""
        self.rules, self.run_dir, self.engine, self.tier = rules, Path(run_dir), engine, tier
        self.died, self.halt = died, halt
        self.values: dict[str, list[float]] = {r.metric: [] for r in rules}
        self.decisions: dict[int, dict] = {}
        self._offsets: dict[Path, int] = {}
        self._looked = {i: 0 for i in range(len(rules))}  # looks taken per rule
        self._done = threading.Event()
        # records before this repetition belong to earlier ones: start reading at today's ends
        for p in self._files():
            self._offsets[p] = p.stat().st_size
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _files(self) -> list[Path]:
        suffix = records_path(self.run_dir, 0, self.engine).name.split(".", 2)[2]  # '<engine>.jsonl'
        return sorted(self.run_dir.glob(f"requests.*.{suffix}"))

    def start(self) -> "EarlyStopWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        if self.rules:
            self.poll()  # the last rows

    def _loop(self) -> None:
        while not self._done.wait(POLL_S):
            if self.died.is_set():
                self.halt.set()
                return
            if not self.rules:
                continue
            self.poll()
            if len(self.decisions) == len(self.rules):
                self.halt.set()
                return

    def poll(self) -> None:
        for p in self._files():
            for line in read_new_rows(p, self._offsets).splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if self.tier is not None and str(row.get("tier") or "") != self.tier:
                    continue
                for metric, vals in self.values.items():
                    vals.extend(_values_ms(row, metric))
        for i, rule in enumerate(self.rules):
            if i in self.decisions:
                continue
            vals = self.values[rule.metric]
            looks = rule.looks
            while self._looked[i] < len(looks) and len(vals) >= looks[self._looked[i]]:
                n = looks[self._looked[i]]
                self._looked[i] += 1
                decision = rule.decide(vals[:n])
                if decision or self._looked[i] == len(looks):
                    k = sum(v > rule.bound_ms for v in vals[:n])
                    self.decisions[i] = {"rule": f"{rule.metric}_p{rule.percentile:g}<={rule.bound_ms:g}",
                                         "decision": decision or "undecided after the last look", "calls": n,
                                         "over_bound": int(k), "confidence": rule.confidence}
                    break

    def report(self) -> dict | None:
        if not self.rules:
            return None
        return {"stopped_early": self.halt.is_set() and not self.died.is_set(),
                "rules": [self.decisions.get(i, {"rule": f"{r.metric}_p{r.percentile:g}<={r.bound_ms:g}",
                                                 "decision": "undecided", "calls": len(self.values[r.metric])})
                          for i, r in enumerate(self.rules)]}
