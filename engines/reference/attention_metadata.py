"""AttentionMetadata: the batch layout that both attention implementations read (attention.py,
torch; triton_attention.py, Triton). A leaf module (torch and numpy only), so that
triton_attention.py need not import attention.py, which imports it, lazily, to dispatch.

The batch is flat ("varlen"): the new tokens of every scheduled sequence are concatenated, and
  query_start_loc[i]:query_start_loc[i+1]  are sequence i's new tokens,
  seq_lens[i]   its KV length once they are stored (cached context + new tokens),
  block_tables[i, j]  the physical block holding its tokens j*block_size ... (j+1)*block_size-1,
  slot_mapping[t]  where token t's K and V go: block_id * block_size + offset.
The model runner orders decodes (q_len == 1) first; `num_decodes` says how many.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, >= max blocks per seq] int32
    num_decodes: int  # leading sequences with one new token each
    max_query_len: int
    max_seq_len: int
    # host copies of query_start_loc and seq_lens: planning on the host needs no device sync
    query_start_loc_cpu: np.ndarray
    seq_lens_cpu: np.ndarray
    torch_plan: list | None = None  # the torch implementation's grouping, built by the first layer

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)
