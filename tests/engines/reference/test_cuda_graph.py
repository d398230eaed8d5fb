"""The padded decode path of cuda_graph.py, on the CPU: there it runs eagerly on the same static
buffers and the same padding as the graphs a GPU captures (one code path), so these tests check
what a GPU replays: the real lanes' logits equal the unpadded step's bit for bit (float32, tiny
model), padded lanes leave every sequence's cache blocks alone, and greedy output through the
padded path equals Hugging Face transformers token for token. Also: a decode step's preparation
allocates nothing that grows with the batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engines.reference.test_engine import greedy, make_engine
from tests.engines.reference.test_engine import random_prompts as prompts

from engines.reference.bench_stages import prepare_growth
from engines.reference.cuda_graph import DecodeGraphs, capture_sizes
from engines.reference.sequence import Sequence


@pytest.fixture(scope="module")
def decoding(tiny_model_dir):
    """An engine with the padded path (enforce_eager=False on the CPU) and 24 sequences, each
    past its prefill with the block for its next token allocated: ready for a decode step."""
    engine = make_engine(tiny_model_dir, enforce_eager=False, max_num_seqs=24)
    lengths = np.random.default_rng(0).integers(1, 90, 24).tolist()
    for i, p in enumerate(prompts(1, lengths)):
        engine.add_request(str(i), p, greedy(100))
    while any(s.num_output_tokens == 0 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    seqs = list(engine.scheduler.running)
    for s in seqs:
        assert engine.kv.allocate_slots(s, 1)
    return engine, seqs


def test_capture_sizes():
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 4]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(256) == [1, 2, 4, 8] + list(range(16, 257, 8))
    g = DecodeGraphs(20, None, None)
    assert [g.padded_size(n) for n in (1, 3, 5, 8, 9, 16, 17, 24, 25)] == [1, 4, 8, 8, 16, 16, 24, 24, None]


def _blas_rows_stable(weight: torch.Tensor, n: int, P: int) -> bool:
    """Whether this machine's matmul gives row i the same bits at widths n and P. MKL does not
    for n < 4 <= P (one kernel for 2-3 rows, another from 4 on): there the padded step can only
    agree to rounding, whatever the engine does."""
    x = torch.randn(P, weight.shape[1], generator=torch.Generator().manual_seed(n))
    return torch.equal(torch.nn.functional.linear(x[:n], weight), torch.nn.functional.linear(x, weight)[:n])


def test_padded_logits_equal_unpadded(decoding):
    """Every batch size 1..24, so every capture size with and without padding lanes: the real
    lanes' logits are the unpadded step's, bit for bit wherever the BLAS itself is."""
    engine, seqs = decoding
    runner = engine.runner
    assert runner.graphs.sizes == [1, 2, 4, 8, 16, 24]
    weight = runner.model.lm_head.weight
    rng = np.random.default_rng(2)
    padded_sizes, rounding_only = set(), []
    for n in range(1, 25):
        batch = [seqs[i] for i in rng.permutation(len(seqs))[:n]]  # rows change owners between steps
        eager = runner.decode_logits(batch, padded=False)
        padded = runner.decode_logits(batch, padded=True)
        P = runner.graphs.padded_size(n)
        padded_sizes.add(P)
        assert eager.shape == (n, engine.model_config.vocab_size)
        if _blas_rows_stable(weight, n, P):
            assert torch.equal(eager, padded), f"batch of {n} padded to {P}"
        else:
            rounding_only.append(n)
            assert (eager - padded).abs().max() < 1e-5
    assert padded_sizes == set(runner.graphs.sizes)
    assert set(rounding_only) <= {1, 2, 3}  # only where the BLAS switches kernels


def test_padded_lanes_touch_no_sequence_block(decoding):
    engine, seqs = decoding
    runner = engine.runner
    scratch = runner.scratch_block
    batch = seqs[:5]  # pads to 8
    runner.decode_logits(batch, padded=False)  # the real lanes' K/V, as the padded step writes them
    runner.kv_cache[:, :, scratch].zero_()
    before = runner.kv_cache.clone()
    runner.decode_logits(batch, padded=True)
    assert torch.equal(runner.kv_cache[:, :, :scratch], before[:, :, :scratch])
    assert runner.kv_cache[:, :, scratch].abs().sum() > 0  # the padded lanes wrote there
    # and read only there: a context of one token in the scratch block
    assert (runner.np_seq_lens[5:8] == 1).all()
    assert (runner.np_block_tables[5:8, 0] == scratch).all()
    assert (runner.np_slot_mapping[5:8] == scratch * runner.block_size).all()


def test_greedy_through_padded_path_matches_hf(tiny_model_dir, hf_greedy, monkeypatch):
    """Six requests finishing one after another: decode steps of 6, 5, ... 1 sequences run at
    8, 8, 4, 4, 2, 1 lanes; the scheduler's prefill steps run eagerly."""
    engine = make_engine(tiny_model_dir, enforce_eager=False, max_num_seqs=8)
    runner = engine.runner
    steps, replays = [], []
    prepare_decode, run = runner._prepare_decode, runner.graphs.run
    monkeypatch.setattr(runner, "_prepare_decode",
                        lambda seqs, P: steps.append((len(seqs), P)) or prepare_decode(seqs, P))
    monkeypatch.setattr(runner.graphs, "run", lambda P, meta: replays.append(P) or run(P, meta))
    ps = prompts(3, [1, 7, 16, 17, 40, 100])
    params = [greedy(n) for n in (3, 6, 9, 12, 15, 18)]
    outs = engine.generate(ps, params)
    assert [o.output_token_ids for o in outs] == [hf_greedy(p, sp.max_tokens) for p, sp in zip(ps, params)]
    assert engine.stats()["decode_path"] == "padded-eager"
    assert {(6, 8), (5, 8), (3, 4), (1, 1)} <= set(steps)
    assert replays == [P for _, P in steps]  # every decode step went through the padded path ...
    assert len(steps) < engine.stats()["steps"]  # ... and the prefill steps did not


def test_eager_above_the_largest_size(tiny_model_dir, hf_greedy, monkeypatch):
    engine = make_engine(tiny_model_dir, enforce_eager=False, cuda_graph_max_batch=4)
    runner = engine.runner
    assert runner.graphs.sizes == [1, 2, 4]
    steps = []
    prepare_decode = runner._prepare_decode
    monkeypatch.setattr(runner, "_prepare_decode",
                        lambda seqs, P: steps.append((len(seqs), P)) or prepare_decode(seqs, P))
    ps = prompts(4, [5, 9, 13, 21, 30, 33])
    outs = engine.generate(ps, [greedy(n) for n in (2, 3, 4, 5, 6, 7)])
    assert [o.output_token_ids for o in outs] == [hf_greedy(p, n) for p, n in zip(ps, (2, 3, 4, 5, 6, 7))]
    assert (6, 6) in steps and (5, 5) in steps and (3, 4) in steps


def test_eager_by_default_on_cpu_and_when_enforced(tiny_model_dir):
    assert make_engine(tiny_model_dir).stats()["decode_path"] == "eager"
    engine = make_engine(tiny_model_dir, enforce_eager=True)
    assert engine.runner.graphs is None and engine.stats()["decode_path"] == "eager"


def test_block_table_rows_follow_their_sequences(decoding):
    """A row is rewritten when another sequence takes it, and only appended to while its own
    sequence grows."""
    engine, seqs = decoding
    runner = engine.runner
    a, b = seqs[0], seqs[1]
    runner.prepare([a, b], [1, 1])
    assert list(runner.np_block_tables[0, :len(a.block_table)]) == a.block_table
    runner.prepare([b, a], [1, 1])
    assert list(runner.np_block_tables[0, :len(b.block_table)]) == b.block_table
    assert list(runner.np_block_tables[1, :len(a.block_table)]) == a.block_table


def test_decode_prepare_allocates_nothing_that_grows_with_the_batch(tiny_model_dir):
    """A decode step's preparation at 256 sequences holds no more memory at its peak than at 8
    (the metadata object and views are the same), while the general path's temporary arrays
    show up: the measure can fail."""
    engine = make_engine(tiny_model_dir, max_num_seqs=256, num_blocks=256 * 5)
    runner = engine.runner
    seqs = []
    for i in range(256):
        s = Sequence(str(i), list(range(5, 70)), greedy(10), None, 0.0)
        s.block_table = list(range(i * 5, i * 5 + 5))
        s.num_computed_tokens = s.num_tokens - 1
        seqs.append(s)
    assert prepare_growth(runner, seqs) < 512
    assert prepare_growth(runner, seqs, runner._prepare_mixed) > 256 * 8  # one int64 per sequence would show
