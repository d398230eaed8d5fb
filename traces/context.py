"""The context model of a workload profile (traces/profile.py): what makes prompt sizes and
prefix reuse come out right.

For call k >= 1 of a session, given the previous call's prompt of P tokens, one of three
transitions happens:
  - full keep (the common case: an agent appends to its history): every complete block of the
    previous prompt is kept as the prefix, then `appended_tokens` new tokens follow (the previous
    output plus the tool observation, or the user's next message);
  - edit (a partial keep after which the prompt keeps about its size: the harness rewrote or
    dropped part of the history, e.g. old reasoning on a new user turn): the kept prefix is
    `kept_fraction` x P and the new prompt `size_ratio` x P;
  - compact (a partial keep after which the prompt shrinks: context compaction into a summary):
    the same two quantities from their own distributions.
Edits depend on what just happened (their chance is per previous stop reason). Compactions
happen when a session's context is full: each session has a context limit, drawn from the
distribution of sessions' largest prompts among sessions of about its length (`limit_tokens`,
one per bin of calls per session), and a call whose prompt would exceed it is compacted instead;
`p_compact` adds compactions at any size (a user's manual /compact). The appended tokens depend
on how full the context is (one distribution per bin of the previous prompt size): agents read
the most files early. A per-session limit tied to session length, not a per-size chance, is
what makes prompt sizes plateau the way real sessions do: in a trace that mixes 200k- and
1M-token context windows, long sessions that compact near 160k and shorter ones that grow to
800k are different sessions, and a chance per size would let every session drift past the
plateau.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traces.quantiles import Quantiles


@dataclass
class PartialKeep:
    """A partial keep: the kept prefix and the new prompt, both relative to the previous prompt
    (appended tokens = new prompt - kept prefix). Relative, because a rewritten or compacted
    context scales with the context it replaces."""
    kept_fraction: Quantiles
    size_ratio: Quantiles


@dataclass
class Context:
    """The per-call context transition (see the module docstring)."""
    max_context_tokens: int  # no prompt exceeds it
    limit_edges: list[float]  # calls-per-session bin edges; len(limit_edges) + 1 bins
    limit_tokens: list[Quantiles]  # per bin: the session's context limit (a prompt that would exceed it is compacted)
    p_compact: float  # compactions at any size, per call
    p_edit: dict[str, float]  # by the previous call's stop reason
    edit: PartialKeep | None
    compact: PartialKeep | None
    size_edges: list[float]  # previous-prompt-size bin edges (tokens); len(size_edges) + 1 bins
    appended_tokens: list[Quantiles]  # after a full keep, per size bin

    def bin_of(self, prev_prompt: float) -> int:
        return int(np.searchsorted(self.size_edges, prev_prompt, side="right"))

    def draw_limit(self, u: float, calls: int, at_least: float) -> float:
        """A session's context limit for a uniform draw `u`, given the session's length and that
        its first prompt fits under it."""
        q = self.limit_tokens[int(np.searchsorted(self.limit_edges, calls, side="right"))]
        lo = float(q.cdf(at_least))
        u = lo + (1.0 - lo) * u
        return min(max(float(q.quantile(u)), at_least), float(self.max_context_tokens))
