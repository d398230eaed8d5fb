"""The model runner: owns the model, the KV cache tensors and the batch buffers; turns a
scheduled batch into flat model inputs, runs the model, samples.

Batch metadata goes into buffers allocated once, at their maximum size (max_num_batched_tokens
tokens, max_num_seqs sequences): a step fills a prefix of each through numpy views, and on CUDA
copies that prefix to device buffers that never move. Fixed addresses are what CUDA graph capture
of decode at padded batch sizes needs; on the CPU they save allocations.
"""
from __future__ import annotations

import numpy as np
import torch

from engines.reference.attention import resolve_backend
from engines.reference.attention_metadata import AttentionMetadata
from engines.reference.config import EngineConfig, ModelConfig
from engines.reference.sampler import sample
from engines.reference.sequence import Sequence
from engines.reference.weights import build_model, init_dummy, load_safetensors


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, max_model_len: int) -> None:
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)

        self.model = build_model(model_config, max_model_len, self.dtype, self.device)
        if config.load_format == "dummy":
            init_dummy(self.model, config.seed)
        else:
            load_safetensors(self.model, config.model)
        self.backend = resolve_backend(self.device, config.attention_backend)

        self.num_blocks = self._kv_cache_blocks()
        cfg = model_config
        # one tensor for all layers: [layers, k/v, blocks, block_size, kv_heads, head_dim]
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, self.num_blocks, self.block_size,
                                    cfg.num_key_value_heads, cfg.head_dim, dtype=self.dtype, device=self.device)
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
            attn.backend = self.backend

        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.eos_token_ids = list(model_config.eos_token_ids)
        self._alloc_buffers(config.max_num_batched_tokens, config.max_num_seqs,
                            -(-max_model_len // self.block_size))

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
        n = budget // self.kv_bytes_per_block()
        if n < 1:
            raise ValueError(f"KV cache budget of {budget} bytes holds no block "
                             f"({self.kv_bytes_per_block()} bytes per block)")
        return int(n)

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

    # -- a step --------------------------------------------------------------------------------
    def prepare(self, seqs: list[Sequence], num_new: list[int]) -> tuple[AttentionMetadata, int, np.ndarray]:
        """Fill the buffers for seqs (decodes first, as the attention op expects). Returns the
        metadata, the number of tokens, and the indices of the sequences that sample this step
        (those whose last token is computed; the logits indices buffer holds their rows)."""
        S = len(seqs)
        starts = np.fromiter((s.num_computed_tokens for s in seqs), dtype=np.int64, count=S)
        q_lens = np.fromiter(num_new, dtype=np.int64, count=S)
        qsl = self.np_query_start_loc
        qsl[0] = 0
        np.cumsum(q_lens, out=qsl[1:S + 1])
        T = int(qsl[S])
        seq_lens = starts + q_lens
        self.np_seq_lens[:S] = seq_lens

        # token ids: decodes are one token each; prefill chunks are slices
        ids = self.np_input_ids
        if T == S:
            ids[:T] = [s.token_ids[s.num_computed_tokens] for s in seqs]
        else:
            pos = 0
            for s, n in zip(seqs, num_new):
                ids[pos:pos + n] = s.token_ids[s.num_computed_tokens:s.num_computed_tokens + n]
                pos += n

        bt = self.np_block_tables
        for i, s in enumerate(seqs):
            bt[i, :len(s.block_table)] = s.block_table

        # positions and slots, vectorized: token t of sequence i sits at starts[i] + t - qsl[i]
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
        max_blocks = -(-int(seq_lens.max()) // bs)
        if self.device.type != "cpu":
            for h, d, n in ((self.h_input_ids, self.d_input_ids, T), (self.h_positions, self.d_positions, T),
                            (self.h_slot_mapping, self.d_slot_mapping, T),
                            (self.h_query_start_loc, self.d_query_start_loc, S + 1),
                            (self.h_seq_lens, self.d_seq_lens, S), (self.h_block_tables, self.d_block_tables, S),
                            (self.h_logits_indices, self.d_logits_indices, n_sample)):
                d[:n].copy_(h[:n], non_blocking=True)
        meta = AttentionMetadata(
            slot_mapping=self.d_slot_mapping[:T],
            query_start_loc=self.d_query_start_loc[:S + 1],
            seq_lens=self.d_seq_lens[:S],
            block_tables=self.d_block_tables[:S, :max_blocks],
            num_decodes=num_decodes,
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
            query_start_loc_cpu=qsl[:S + 1],
            seq_lens_cpu=self.np_seq_lens[:S],
        )
        return meta, T, sample_idx

    @torch.inference_mode()
    def execute(self, seqs: list[Sequence], num_new: list[int]) -> list[int | None]:
        """Run one step. Returns, per sequence in the given order, the sampled token, or None for
        a sequence that is still in the middle of its prefill."""
        # decodes first: the attention op batches them
        order = sorted(range(len(seqs)), key=lambda i: num_new[i] != 1)
        seqs_o = [seqs[i] for i in order]
        meta, T, sample_idx = self.prepare(seqs_o, [num_new[i] for i in order])
        hidden = self.model(self.d_input_ids[:T], self.d_positions[:T], meta)
        result: list[int | None] = [None] * len(seqs)
        if not len(sample_idx):
            return result
        logits = self.model.compute_logits(hidden[self.d_logits_indices[:len(sample_idx)]])
        sampling = [seqs_o[i] for i in sample_idx]
        self._mask_stop_tokens(logits, sampling)
        tokens = sample(logits, [s.params for s in sampling], [s.generator for s in sampling],
                        self.generator).tolist()
        for i, tok in zip(sample_idx, tokens):
            result[order[i]] = tok
        return result

    def _mask_stop_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """min_tokens: EOS (unless ignore_eos) and stop ids cannot be sampled before it is reached."""
        for i, s in enumerate(seqs):
            p = s.params
            if p.min_tokens and s.num_output_tokens < p.min_tokens:
                ids = list(p.stop_token_ids) + ([] if p.ignore_eos else self.eos_token_ids)
                if ids:
                    logits[i, ids] = float("-inf")
