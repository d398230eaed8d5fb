"""The model runner: owns the model, the KV cache tensors and the batch buffers; turns a
scheduled batch into flat model inputs, runs the model (decode steps through the padded CUDA-graph
path of cuda_graph.py where it applies), samples.

Batch metadata goes into buffers allocated once, at their maximum size: a step fills a prefix of
each through numpy views, and on CUDA copies that prefix to device buffers that never move
(pinned host memory, asynchronous copies). Fixed addresses are what graph capture needs; on the
CPU the host buffers are the device buffers.

A decode step's preparation allocates no array and synchronizes nothing: one pass over the
sequences writes scalars into the buffers, and a block-table row is rewritten only where its
sequence changed (a row remembers the block list it holds and how much of it). Steps with
prefills take the general, vectorized path.

The KV cache has one block more than the pool hands out: the scratch block that padded decode
lanes write to and read from.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import torch

from engines.reference.attention_metadata import AttentionMetadata
from engines.reference.backend import load_kernels, resolve_backend
from engines.reference.config import EngineConfig, ModelConfig
from engines.reference.cpu_linear import pack_linears
from engines.reference.cuda_graph import DecodeGraphs
from engines.reference.sampler import sample
from engines.reference.sequence import Sequence
from engines.reference.weights import build_model, init_dummy, load_safetensors


def keep_freed_memory() -> bool:
    """Keep memory that torch frees in this process for its next tensors (glibc's mallopt). By
    default glibc serves a large allocation from fresh pages of the kernel and gives them back when
    freed, so every step's activations page-fault anew: a prefill step of 3,625 tokens on the tiny
    model took ~100 ms under glibc's defaults and ~80 ms with this setting. The cost: the heap
    keeps its peak (up to 1 GiB untrimmed). False where the C library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        # 32 MiB is the largest mmap threshold glibc accepts on 64-bit machines
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError, TypeError):
        return False


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, max_model_len: int) -> None:
        self.config = config
        self.model_config = model_config
        self.max_model_len = max_model_len
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        if self.device.type == "cpu":
            keep_freed_memory()

        self.model = build_model(model_config, max_model_len, self.dtype, self.device)
        if config.load_format == "dummy":
            init_dummy(self.model, config.seed)
        else:
            load_safetensors(self.model, config.model)
        self.backend = resolve_backend(self.device, config.attention_backend)
        if self.backend == "cpp" and self.device.type != "cpu":
            raise ValueError("the cpp attention backend runs on the CPU (on CUDA: triton or torch)")
        self.model.use_kernels(load_kernels(self.backend))
        if self.backend == "cpp":  # the CPU's fast path: projections through oneDNN (cpu_linear.py)
            pack_linears(self.model, config.max_num_batched_tokens)

        self.num_blocks = self._kv_cache_blocks()  # what the block pool hands out
        self.scratch_block = self.num_blocks  # one more, for padded lanes
        cfg = model_config
        # one tensor for all layers: [layers, k/v, blocks, block_size, kv_heads, head_dim]
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, self.num_blocks + 1, self.block_size,
                                    cfg.num_key_value_heads, cfg.head_dim, dtype=self.dtype, device=self.device)
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]

        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.eos_token_ids = list(model_config.eos_token_ids)
        self.graphs = self._decode_graphs()
        max_seqs = max(config.max_num_seqs, self.graphs.max_size if self.graphs else 0)
        self._alloc_buffers(max(config.max_num_batched_tokens, max_seqs), max_seqs,
                            -(-max_model_len // self.block_size))
        self.use_graphs = self.graphs is not None  # benchmarks switch it to compare on the same weights
        if self.graphs is not None and self.device.type == "cuda":
            self.graphs.capture()

    @property
    def decode_path(self) -> str:
        """cuda-graphs, padded-eager (the graphs' path without capture: the CPU) or eager."""
        if self.graphs is None or not self.use_graphs:
            return "eager"
        return "cuda-graphs" if self.graphs.graphs else "padded-eager"

    # -- setup ---------------------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        cfg = self.model_config
        return (cfg.num_hidden_layers * 2 * self.block_size * cfg.num_key_value_heads * cfg.head_dim
                * torch.empty((), dtype=self.dtype).element_size())

    def _kv_cache_blocks(self) -> int:
        c = self.config
        if c.num_blocks is not None:
            return c.num_blocks
        budget = c.kv_cache_memory_bytes
        if budget is None:
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                budget = int(free - (1 - c.gpu_memory_utilization) * total)
            else:
                budget = 1 << 30
        n = budget // self.kv_bytes_per_block() - 1  # less the scratch block
        if n < 1:
            raise ValueError(f"KV cache budget of {budget} bytes holds no block "
                             f"({self.kv_bytes_per_block()} bytes per block)")
        return int(n)

    def _decode_graphs(self) -> DecodeGraphs | None:
        c = self.config
        eager = c.enforce_eager
        if eager is None:
            eager = not (self.device.type == "cuda" and self.backend == "triton")
        if eager:
            return None
        if self.device.type == "cuda" and self.backend != "triton":
            raise ValueError("CUDA graphs need the triton attention backend (or enforce_eager=True)")
        max_batch = min(c.cuda_graph_max_batch, c.max_num_seqs, c.max_num_batched_tokens)
        return DecodeGraphs(max_batch, self._forward_lanes, self._padding_meta)

    def _alloc_buffers(self, max_tokens: int, max_seqs: int, max_blocks: int) -> None:
        pin = self.device.type == "cuda"

        def host(*shape, dtype):
            return torch.zeros(*shape, dtype=dtype, pin_memory=pin)

        self.h_input_ids = host(max_tokens, dtype=torch.int64)
        self.h_positions = host(max_tokens, dtype=torch.int64)
        self.h_slot_mapping = host(max_tokens, dtype=torch.int64)
        self.h_query_start_loc = host(max_seqs + 1, dtype=torch.int32)
        self.h_seq_lens = host(max_seqs, dtype=torch.int32)
        self.h_block_tables = host(max_seqs, max_blocks, dtype=torch.int32)
        self.h_logits_indices = host(max_seqs, dtype=torch.int64)
        # numpy views share memory with the host tensors
        self.np_input_ids = self.h_input_ids.numpy()
        self.np_positions = self.h_positions.numpy()
        self.np_slot_mapping = self.h_slot_mapping.numpy()
        self.np_query_start_loc = self.h_query_start_loc.numpy()
        self.np_seq_lens = self.h_seq_lens.numpy()
        self.np_block_tables = self.h_block_tables.numpy()
        self.np_logits_indices = self.h_logits_indices.numpy()
        if self.device.type == "cpu":  # the host buffers are the device buffers
            self.d_input_ids, self.d_positions, self.d_slot_mapping = self.h_input_ids, self.h_positions, self.h_slot_mapping
            self.d_query_start_loc, self.d_seq_lens = self.h_query_start_loc, self.h_seq_lens
            self.d_block_tables, self.d_logits_indices = self.h_block_tables, self.h_logits_indices
        else:
            dev = lambda t: torch.zeros_like(t, device=self.device)  # noqa: E731
            self.d_input_ids, self.d_positions = dev(self.h_input_ids), dev(self.h_positions)
            self.d_slot_mapping = dev(self.h_slot_mapping)
            self.d_query_start_loc, self.d_seq_lens = dev(self.h_query_start_loc), dev(self.h_seq_lens)
            self.d_block_tables, self.d_logits_indices = dev(self.h_block_tables), dev(self.h_logits_indices)
        self._seq_index = np.arange(max_seqs)
        self._token_index = np.arange(max_tokens)
        self._lanes = np.arange(max_seqs + 1, dtype=np.int32)  # query_start_loc of a decode step
        # which block list each block-table row holds, and how many of its entries
        self._row_table: list[list[int] | None] = [None] * max_seqs
        self._row_len = [0] * max_seqs

    # -- a step's inputs -----------------------------------------------------------------------
    @staticmethod
    def is_decode_step(seqs: list[Sequence], num_new: list[int]) -> bool:
        """Every sequence computes one token, its last: it samples."""
        for s, n in zip(seqs, num_new):
            if n != 1 or s.num_computed_tokens + 1 != len(s.token_ids):
                return False
        return True

    def prepare(self, seqs: list[Sequence], num_new: list[int], pad_to: int | None = None
                ) -> tuple[AttentionMetadata, int, np.ndarray]:
        """Fill the buffers for seqs (decodes first, as the attention op expects). Returns the
        metadata, the number of tokens, and the indices of the sequences that sample this step
        (those whose last token is computed; for a mixed step the logits indices buffer holds
        their rows). A decode step may be padded to `pad_to` lanes (see cuda_graph.py)."""
        if self.is_decode_step(seqs, num_new):
            return self._prepare_decode(seqs, pad_to or len(seqs))
        if pad_to is not None and pad_to != len(seqs):
            raise ValueError("only decode steps are padded")
        return self._prepare_mixed(seqs, num_new)

    def _sync_row(self, i: int, table: list[int]) -> None:
        """Block-table row i holds `table`: append what is new, or rewrite the row when it held
        another sequence's blocks (block lists only grow; a freed sequence gets a new list)."""
        n = len(table)
        if self._row_table[i] is table:
            row = self.np_block_tables[i]
            for j in range(self._row_len[i], n):
                row[j] = table[j]
        else:
            self.np_block_tables[i, :n] = table
            self._row_table[i] = table
        self._row_len[i] = n

    def _prepare_decode(self, seqs: list[Sequence], P: int) -> tuple[AttentionMetadata, int, np.ndarray]:
        S = len(seqs)
        ids, pos, slots, lens = self.np_input_ids, self.np_positions, self.np_slot_mapping, self.np_seq_lens
        row_table, row_len = self._row_table, self._row_len
        bs = self.block_size
        max_len = 1
        for i, s in enumerate(seqs):
            p = s.num_computed_tokens
            table = s.block_table
            ids[i] = s.token_ids[p]
            pos[i] = p
            lens[i] = p + 1
            slots[i] = table[p // bs] * bs + p % bs
            if row_table[i] is not table or row_len[i] != len(table):
                self._sync_row(i, table)
            if p >= max_len:
                max_len = p + 1
        max_blocks = -(-max_len // bs)
        if P > S:
            self._pad_lanes(S, P, max_blocks)
        np.copyto(self.np_query_start_loc[:P + 1], self._lanes[:P + 1])
        self._copy_to_device(P, P, 0)
        meta = self._metadata(P, P, 1, max_len, max_blocks)
        return meta, P, self._seq_index[:S]

    def _pad_lanes(self, S: int, P: int, max_blocks: int) -> None:
        """Lanes S..P-1: token 0 at position 0 in the scratch block's first slot, context 1."""
        self.np_input_ids[S:P] = 0
        self.np_positions[S:P] = 0
        self.np_seq_lens[S:P] = 1
        self.np_slot_mapping[S:P] = self.scratch_block * self.block_size
        self.np_block_tables[S:P, :max_blocks] = self.scratch_block
        for i in range(S, P):
            self._row_table[i] = None

    def _padding_meta(self, P: int) -> AttentionMetadata:
        """P padded lanes with the metadata of the largest context: what graphs are captured on
        (the decode kernel's grid and partials are sized for max_model_len)."""
        max_blocks = self.np_block_tables.shape[1]
        self._pad_lanes(0, P, max_blocks)
        np.copyto(self.np_query_start_loc[:P + 1], self._lanes[:P + 1])
        self._copy_to_device(P, P, 0)
        return self._metadata(P, P, 1, self.max_model_len, max_blocks)

    def _prepare_mixed(self, seqs: list[Sequence], num_new: list[int]) -> tuple[AttentionMetadata, int, np.ndarray]:
        S = len(seqs)
        starts = np.fromiter((s.num_computed_tokens for s in seqs), dtype=np.int64, count=S)
        q_lens = np.fromiter(num_new, dtype=np.int64, count=S)
        qsl = self.np_query_start_loc
        qsl[0] = 0
        np.cumsum(q_lens, out=qsl[1:S + 1])
        T = int(qsl[S])
        seq_lens = starts + q_lens
        self.np_seq_lens[:S] = seq_lens

        ids = self.np_input_ids
        pos = 0
        for i, (s, n) in enumerate(zip(seqs, num_new)):
            ids[pos:pos + n] = s.token_ids[s.num_computed_tokens:s.num_computed_tokens + n]
            pos += n
            self._sync_row(i, s.block_table)

        # positions and slots, vectorized: token t of sequence i sits at starts[i] + t - qsl[i]
        bt = self.np_block_tables
        req = np.repeat(self._seq_index[:S], q_lens)
        positions = self.np_positions[:T]
        np.subtract(self._token_index[:T], np.repeat(qsl[:S] - starts, q_lens), out=positions)
        bs = self.block_size
        self.np_slot_mapping[:T] = bt[req, positions // bs] * bs + positions % bs

        # sequences that reach their last token this step sample from its logits
        samples = seq_lens == np.fromiter((s.num_tokens for s in seqs), dtype=np.int64, count=S)
        sample_idx = np.flatnonzero(samples)
        n_sample = len(sample_idx)
        self.np_logits_indices[:n_sample] = qsl[sample_idx + 1] - 1

        num_decodes = int(np.argmax(q_lens != 1)) if (q_lens != 1).any() else S
        max_len = int(seq_lens.max())
        self._copy_to_device(T, S, n_sample)
        meta = self._metadata(T, S, int(q_lens.max()), max_len, -(-max_len // bs), num_decodes)
        return meta, T, sample_idx

    def _copy_to_device(self, T: int, S: int, n_sample: int) -> None:
        """Asynchronous copies of the filled prefixes (pinned memory: no synchronization). The
        host buffers are rewritten only after the step's sampled tokens came back, which waits
        for these copies too."""
        if self.device.type == "cpu":
            return
        for h, d, n in ((self.h_input_ids, self.d_input_ids, T), (self.h_positions, self.d_positions, T),
                        (self.h_slot_mapping, self.d_slot_mapping, T),
                        (self.h_query_start_loc, self.d_query_start_loc, S + 1),
                        (self.h_seq_lens, self.d_seq_lens, S), (self.h_block_tables, self.d_block_tables, S),
                        (self.h_logits_indices, self.d_logits_indices, n_sample)):
            if n:
                d[:n].copy_(h[:n], non_blocking=True)

    def _metadata(self, T: int, S: int, max_q: int, max_len: int, max_blocks: int,
                  num_decodes: int | None = None) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.d_slot_mapping[:T], query_start_loc=self.d_query_start_loc[:S + 1],
            seq_lens=self.d_seq_lens[:S], block_tables=self.d_block_tables[:S, :max_blocks],
            num_decodes=S if num_decodes is None else num_decodes, max_query_len=max_q, max_seq_len=max_len,
            query_start_loc_cpu=self.np_query_start_loc[:S + 1], seq_lens_cpu=self.np_seq_lens[:S])

    # -- running -------------------------------------------------------------------------------
    def _forward_lanes(self, P: int, meta: AttentionMetadata) -> torch.Tensor:
        """The model over the first P tokens of the buffers: the body a decode graph captures."""
        return self.model(self.d_input_ids[:P], self.d_positions[:P], meta)

    @torch.inference_mode()
    def decode_logits(self, seqs: list[Sequence], padded: bool | None = None) -> torch.Tensor:
        """Logits [len(seqs), vocab] (float32) of a decode step over seqs (each computing its last
        token). padded: through the padded (graph) path, or not; None: the runner's choice,
        padded when graphs are on and the batch is within the largest capture size."""
        S = len(seqs)
        P = None
        if self.graphs is not None and (self.use_graphs if padded is None else padded):
            P = self.graphs.padded_size(S)
        meta, _, _ = self._prepare_decode(seqs, P or S)
        hidden = self._forward_lanes(S, meta) if P is None else self.graphs.run(P, meta)
        return self.model.compute_logits(hidden[:S])

    @torch.inference_mode()
    def execute(self, seqs: list[Sequence], num_new: list[int]) -> list[int | None]:
        """Run one step. Returns, per sequence in the given order, the sampled token, or None for
        a sequence that is still in the middle of its prefill."""
        if self.is_decode_step(seqs, num_new):
            logits = self.decode_logits(seqs)
            return self._sample(logits, seqs)
        # decodes first: the attention op batches them
        order = sorted(range(len(seqs)), key=lambda i: num_new[i] != 1)
        seqs_o = [seqs[i] for i in order]
        meta, T, sample_idx = self._prepare_mixed(seqs_o, [num_new[i] for i in order])
        hidden = self.model(self.d_input_ids[:T], self.d_positions[:T], meta)
        result: list[int | None] = [None] * len(seqs)
        if not len(sample_idx):
            return result
        logits = self.model.compute_logits(hidden[self.d_logits_indices[:len(sample_idx)]])
        tokens = self._sample(logits, [seqs_o[i] for i in sample_idx])
        for i, tok in zip(sample_idx, tokens):
            result[order[i]] = tok
        return result

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        self._mask_stop_tokens(logits, seqs)
        return sample(logits, [s.params for s in seqs], [s.generator for s in seqs], self.generator).tolist()

    def _mask_stop_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """min_tokens: EOS (unless ignore_eos) and stop ids cannot be sampled before it is reached."""
        for i, s in enumerate(seqs):
            p = s.params
            if p.min_tokens and s.num_output_tokens < p.min_tokens:
                ids = list(p.stop_token_ids) + ([] if p.ignore_eos else self.eos_token_ids)
                if ids:
                    logits[i, ids] = float("-inf")
