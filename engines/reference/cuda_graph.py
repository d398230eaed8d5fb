"""Decode steps through CUDA graphs, captured at padded batch sizes.

At batch 1 an 8B model's decode step is ~5 ms of weight reads and, run eagerly, as much again of
kernel launches from Python (on an H100: 14-18 ms eager against 7.26 ms graphed). A graph
replays the whole forward pass with one launch.

A decode step of n sequences runs at the smallest capture size P >= n (1, 2, 4, 8, then every 8
up to the largest batch); above the largest size, and for prefill or mixed steps, the step runs
eagerly. The model runner fills lanes 0..n-1 of its persistent input buffers and pads lanes
n..P-1: token 0 at position 0, its K/V written to the reserved scratch block, a context of one
token (that block's first slot). So a padded lane writes and reads nothing of any sequence.

On CUDA every size is run once eagerly (Triton compiles its kernels, cuBLAS settles its
workspaces) and then captured, largest first, into one shared memory pool; the graphs' outputs
are the final hidden states, and the logits of the real lanes are computed outside (the padded
lanes' would be thrown away). Elsewhere (the CPU) nothing is captured and the same padded
buffers run eagerly: the padded path is one code path with the captured one, so the CPU tests of
padding (logits, cache contents, greedy output against HF) test what the GPU replays.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable

import torch

from engines.reference.attention_metadata import AttentionMetadata


def capture_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8, up to the first size that holds max_batch."""
    sizes = []
    for s in [1, 2, 4, 8] + list(range(16, max_batch + 8, 8)):
        sizes.append(s)
        if s >= max_batch:
            break
    return sizes


class DecodeGraphs:
    """The padded decode path. `forward(P, meta)` is the step's model call over the first P lanes
    of the runner's buffers, returning hidden states [P, hidden]; `padding_meta(P)` the metadata
    of P padded lanes (what capture runs on)."""

    def __init__(self, max_batch: int, forward: Callable[[int, AttentionMetadata], torch.Tensor],
                 padding_meta: Callable[[int], AttentionMetadata]) -> None:
        self.sizes = capture_sizes(max_batch)
        self.max_size = self.sizes[-1]
        self.forward = forward
        self.padding_meta = padding_meta
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's hidden states, persistent
        self.capture_s: float | None = None  # seconds the capture took (CUDA)

    def padded_size(self, n: int) -> int | None:
        """The capture size a batch of n runs at, or None above the largest (eager)."""
        if n > self.max_size:
            return None
        return self.sizes[bisect.bisect_left(self.sizes, n)]

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and capture every size (CUDA only), largest first so smaller graphs reuse the
        pool's blocks."""
        t = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for P in reversed(self.sizes):
            meta = self.padding_meta(P)
            for _ in range(2):
                self.forward(P, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[P] = self.forward(P, meta)
            self.graphs[P] = graph
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - t

    def run(self, P: int, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states of the P lanes, from the graph when captured, else eagerly on the same
        buffers (meta is what the eager call reads; a graph reads the buffers it was captured on)."""
        graph = self.graphs.get(P)
        if graph is None:
            return self.forward(P, meta)
        graph.replay()
        return self.outputs[P]
