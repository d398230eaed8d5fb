"""Interleaved A/B runs (`tierbench ab`): two variants of an engine, one workload, alternating
short rounds, so that the machine's drift hits both alike and a comparison can be gated.

- `variants.py`: what a side is (the spec's engine, a git ref in a worktree, a vLLM interpreter,
  a running URL) and its worktree.
- `rounds.py`: one round (every call of the workload, closed or open loop) and the warm-up.
- `runner.py`: both servers, the round order A B B A ..., death of a variant, ab.json.

The comparison itself is analysis/ab.py (it reads the files written here).
"""
