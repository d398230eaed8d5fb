"""LLMEngine end to end on the tiny checkpoint: greedy output equals HF transformers' token for
token under every scheduling path (staggered arrivals, prefix caching, chunked prefill,
preemption), plus the API's contracts."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from engines.reference import EngineConfig, LLMEngine, QueueFullError, SamplingParams
from engines.reference.config import NAMED_CONFIGS, resolve_model_config

VOCAB_LO, VOCAB_HI = 5, 3000  # ordinary tokens of the tiny vocabulary (0-4 are special)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def make_engine(model_dir, **kw) -> LLMEngine:
    kw.setdefault("num_blocks", 256)
    kw.setdefault("max_model_len", 1024)
    return LLMEngine(EngineConfig(model=str(model_dir), **kw))


def random_prompts(seed: int, lengths) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(VOCAB_LO, VOCAB_HI, n).tolist() for n in lengths]


def run_staggered(engine: LLMEngine, prompts, params, arrive_at_step, sessions=None) -> dict:
    """Add request i at step arrive_at_step[i]; step until all finish. Returns per request id
    its tokens and last StepOutput."""
    results = {str(i): {"tokens": [], "last": None} for i in range(len(prompts))}
    pending = sorted(range(len(prompts)), key=lambda i: arrive_at_step[i])
    step = 0
    while pending or engine.has_unfinished():
        while pending and arrive_at_step[pending[0]] <= step:
            i = pending.pop(0)
            engine.add_request(str(i), prompts[i], params[i], session_id=sessions[i] if sessions else None)
        for out in engine.step():
            r = results[out.request_id]
            assert not (r["last"] and r["last"].finished), "output after finish"
            r["tokens"] += out.new_token_ids
            r["last"] = out
        step += 1
        assert step < 5000
    return results


def check_against_hf(results, prompts, params, hf_greedy):
    for i, (p, sp) in enumerate(zip(prompts, params)):
        r = results[str(i)]
        assert r["last"].finished and r["last"].finish_reason == "length"
        assert r["tokens"] == hf_greedy(p, sp.max_tokens), f"request {i} (prompt of {len(p)})"


def test_single_prompts_match_hf(tiny_model_dir, hf_greedy):
    engine = make_engine(tiny_model_dir)
    for prompt in random_prompts(0, [1, 7, 16, 17, 100]):
        (out,) = engine.generate([prompt], greedy(24))
        assert out.output_token_ids == hf_greedy(prompt, 24)
        assert out.finish_reason == "length" and len(out.token_times) == 24


def _mixed_workload(seed=1, n=16):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 260, n).tolist()
    prompts = random_prompts(seed, lengths)
    shared = prompts[0][:1] + random_prompts(seed + 1, [70])[0]
    for i in (3, 7, 11)[:n // 4]:  # shared 71-token prefixes, to give the prefix cache something to find
        prompts[i] = shared + prompts[i][:20]
    prompts[n - 3] = list(prompts[5])  # an exact repeat
    params = [greedy(int(m)) for m in rng.integers(1, 40, n)]
    arrivals = [i // 2 * 3 for i in range(n)]  # two requests every third step
    return prompts, params, arrivals


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_staggered_mixed_batch_matches_hf(tiny_model_dir, hf_greedy, prefix_caching):
    prompts, params, arrivals = _mixed_workload()
    engine = make_engine(tiny_model_dir, enable_prefix_caching=prefix_caching, max_num_batched_tokens=512)
    results = run_staggered(engine, prompts, params, arrivals)
    check_against_hf(results, prompts, params, hf_greedy)
    stats = engine.stats()
    if prefix_caching:
        assert stats["prefix_hit_tokens"] > 0 and 0 < stats["prefix_hit_rate"] < 1
        assert results["13"]["last"].cached_tokens > 0  # the repeat of request 5
    else:
        assert stats["prefix_hit_tokens"] == 0 and stats["num_cached_blocks"] == 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_running"] == 0


def test_chunked_prefill_matches_hf(tiny_model_dir, hf_greedy):
    prompts, params, arrivals = _mixed_workload(seed=2, n=8)
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=24, max_num_seqs=5)
    results = run_staggered(engine, prompts, params, arrivals)
    check_against_hf(results, prompts, params, hf_greedy)
    assert engine.stats()["steps"] > sum(len(p) for p in prompts) // 24


def test_preemption_matches_hf(tiny_model_dir, hf_greedy):
    prompts = random_prompts(3, [40, 55, 33, 47, 60, 38])
    params = [greedy(40)] * len(prompts)
    # each request needs 5-7 blocks of 16; 14 blocks cannot hold them all at once
    engine = make_engine(tiny_model_dir, num_blocks=14, max_num_batched_tokens=64)
    results = run_staggered(engine, prompts, params, [0] * len(prompts))
    check_against_hf(results, prompts, params, hf_greedy)
    stats = engine.stats()
    assert stats["preemptions"] > 0 and stats["recomputed_tokens"] > 0
    assert stats["num_free_blocks"] == 14
    # requests that waited for blocks, or were resumed, count once towards the hit rate
    assert stats["prefix_queried_tokens"] == sum(map(len, prompts))


def test_session_next_call_reuses_prompt_and_output(tiny_model_dir, hf_greedy):
    engine = make_engine(tiny_model_dir)
    (p1,) = random_prompts(4, [100])
    (o1,) = engine.generate([p1], greedy(30), session_ids=["s"])
    p2 = p1 + o1.output_token_ids + random_prompts(5, [21])[0]
    (o2,) = engine.generate([p2], greedy(12), session_ids=["s"])
    # every full block of call 1 whose KV was computed: all of prompt and output but the last token
    assert o2.cached_tokens == (len(p1) + 30 - 1) // 16 * 16
    assert o2.output_token_ids == hf_greedy(p2, 12)


def test_fully_cached_prompt_still_computes_its_last_token(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    (p,) = random_prompts(6, [32])
    (a,) = engine.generate([p], greedy(5))
    (b,) = engine.generate([p], greedy(5))
    assert a.cached_tokens == 0 and b.cached_tokens == 16
    assert a.output_token_ids == b.output_token_ids


def test_session_aware_eviction(tiny_model_dir):
    """With the pool full of cached blocks, the session idle longest loses its blocks first."""
    engine = make_engine(tiny_model_dir, num_blocks=20)
    pa, pb, pc = random_prompts(7, [96, 96, 160])
    engine.generate([pa], greedy(1), session_ids=["A"])
    engine.generate([pb], greedy(1), session_ids=["B"])
    engine.add_request("a-next", pa, greedy(1), session_id="A")  # A active again
    engine.abort("a-next")
    engine.generate([pc], greedy(1), session_ids=["C"])  # needs most of the pool: evicts
    assert engine.stats()["evictions"] > 0
    # A kept its whole prompt (all 5 blocks a request may hit); B lost its tail
    (a,) = engine.generate([pa], greedy(1), session_ids=["A"])
    (b,) = engine.generate([pb], greedy(1), session_ids=["B"])
    assert a.cached_tokens == 80 and b.cached_tokens < 80


def test_abort_returns_blocks(tiny_model_dir):
    engine = make_engine(tiny_model_dir, num_blocks=64, max_num_seqs=2)
    start = engine.stats()["num_free_blocks"]
    prompts = random_prompts(8, [50, 60, 70])
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, greedy(30))
    for _ in range(3):
        engine.step()
    engine.abort("r0")  # running
    engine.abort("r2")  # still waiting (max_num_seqs=2)
    engine.abort("nope")  # unknown: ignored
    outs = engine.step()
    aborted = {o.request_id: o for o in outs if o.finish_reason == "abort"}
    assert set(aborted) == {"r0", "r2"} and all(o.finished for o in aborted.values())
    while engine.has_unfinished():
        engine.step()
    assert engine.stats()["num_free_blocks"] == start


def test_add_and_abort_from_another_thread(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    stop = threading.Event()
    outputs = []

    def loop():
        while not stop.is_set():
            if engine.has_unfinished():
                outputs.extend(engine.step())
            else:
                time.sleep(0.001)

    t = threading.Thread(target=loop)
    t.start()
    try:
        prompts = random_prompts(9, [20] * 12)
        for i, p in enumerate(prompts):
            engine.add_request(f"t{i}", p, greedy(20))
            if i % 3 == 2:
                engine.abort(f"t{i - 1}")
        deadline = time.time() + 60
        while (engine.has_unfinished() or len({o.request_id for o in outputs if o.finished}) < 12) \
                and time.time() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    finished = {o.request_id: o.finish_reason for o in outputs if o.finished}
    assert len(finished) == 12
    assert sum(r == "abort" for r in finished.values()) <= 4
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


def test_queue_full(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_waiting=2, max_num_seqs=1)
    engine.add_request("a", [10, 11], greedy(3))
    engine.add_request("b", [10, 12], greedy(3))
    with pytest.raises(QueueFullError):
        engine.add_request("c", [10, 13], greedy(3))
    engine.step()  # "a" starts running: one place free
    engine.add_request("c", [10, 13], greedy(3))
    with pytest.raises(ValueError):
        engine.add_request("c", [1], greedy(3))  # duplicate id


def test_invalid_requests(tiny_model_dir):
    engine = make_engine(tiny_model_dir, num_blocks=4, max_model_len=256)
    with pytest.raises(ValueError):
        engine.add_request("empty", [], greedy(1))
    with pytest.raises(ValueError):
        engine.add_request("vocab", [5, 99999], greedy(1))
    with pytest.raises(ValueError):
        engine.add_request("too-long", [5] * 256, greedy(1))
    with pytest.raises(ValueError):
        engine.add_request("too-big-for-cache", [5] * 60, greedy(10))  # 70 tokens > 4 blocks of 16
    assert not engine.has_unfinished()


def test_sampling_controls(tiny_model_dir, hf_greedy):
    engine = make_engine(tiny_model_dir)
    (p,) = random_prompts(10, [30])
    ref = hf_greedy(p, 12)
    # top_k=1 and a tiny top_p are greedy whatever the temperature
    outs = engine.generate([p, p], [SamplingParams(max_tokens=12, temperature=1.5, top_k=1, ignore_eos=True),
                                    SamplingParams(max_tokens=12, temperature=0.8, top_p=1e-6, ignore_eos=True)])
    assert [o.output_token_ids for o in outs] == [ref, ref]
    # seeded sampling is reproducible whatever else is in the batch; different seeds differ
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    (alone,) = engine.generate([p], seeded)
    crowd = engine.generate(random_prompts(11, [5, 40, 9]) + [p],
                            [SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True)] * 3 + [seeded])
    other = engine.generate([p], SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True))
    assert crowd[-1].output_token_ids == alone.output_token_ids
    assert other[0].output_token_ids != alone.output_token_ids
    # stop token ids end the request (token included), min_tokens holds them off
    stop = ref[3]
    (o,) = engine.generate([p], greedy(12, stop_token_ids=[stop]))
    first = ref.index(stop)
    assert o.output_token_ids == ref[:first + 1] and o.finish_reason == "stop" and o.stop_reason == stop
    (o,) = engine.generate([p], greedy(12, stop_token_ids=[stop], min_tokens=first + 2))
    assert o.output_token_ids[first] != stop and len(o.output_token_ids) >= first + 2


def test_eos_and_ignore_eos(tiny_model_dir, hf_greedy):
    engine = make_engine(tiny_model_dir)
    (p,) = random_prompts(12, [25])
    ref = hf_greedy(p, 10)
    engine.eos_token_ids = frozenset({ref[2]})  # pretend the model's EOS is the third token
    engine.runner.eos_token_ids = [ref[2]]
    (o,) = engine.generate([p], SamplingParams(max_tokens=10, temperature=0))
    assert o.output_token_ids == ref[:3] and o.finish_reason == "stop" and o.stop_reason is None
    (o,) = engine.generate([p], greedy(10))
    assert o.output_token_ids == ref and o.finish_reason == "length"
    (o,) = engine.generate([p], SamplingParams(max_tokens=10, temperature=0, min_tokens=4))
    assert len(o.output_token_ids) >= 4 and ref[2] not in o.output_token_ids[:4]


def test_step_delay(tiny_model_dir):
    engine = make_engine(tiny_model_dir, step_delay_ms=30)
    engine.add_request("a", [10, 11, 12], greedy(3))
    t = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    assert time.perf_counter() - t >= 0.09


def test_outputs_and_stats(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    prompts = random_prompts(13, [10, 20])
    outs = engine.generate(prompts, greedy(5))
    for o, p in zip(outs, prompts):
        assert o.prompt_token_ids == p and len(o.output_token_ids) == 5
        assert o.arrival_time <= o.first_scheduled_time <= o.token_times[0]
        assert all(a <= b for a, b in zip(o.token_times, o.token_times[1:]))
        assert o.ttft >= 0
    stats = engine.stats()
    for key in ("num_waiting", "num_running", "kv_usage", "num_free_blocks", "num_total_blocks", "prefix_hit_rate",
                "prefix_hit_tokens", "prefix_hit_blocks", "prefix_miss_blocks", "evictions", "preemptions",
                "recomputed_tokens", "generation_tokens"):
        assert key in stats
    assert stats["generation_tokens"] == 10 and stats["kv_usage"] == 0.0


def test_step_outputs_stream(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    engine.add_request("x", [7, 8, 9], greedy(4), session_id="sess")
    seen = []
    while engine.has_unfinished():
        for out in engine.step():
            seen.append(out)
    assert [len(o.new_token_ids) for o in seen] == [1, 1, 1, 1]
    assert [o.finished for o in seen] == [False, False, False, True]
    assert seen[-1].num_output_tokens == 4 and seen[-1].num_prompt_tokens == 3
    assert seen[-1].session_id == "sess" and len(seen[-1].token_times) == 1


def test_bfloat16(tiny_model_dir, hf_greedy):
    engine = make_engine(tiny_model_dir, dtype="bfloat16")
    prompts = random_prompts(14, [12, 40])
    outs = engine.generate(prompts, greedy(8))
    assert engine.runner.kv_cache.dtype == torch.bfloat16
    # bf16 rounding may change later tokens of a random model; the first one should agree
    assert sum(o.output_token_ids[0] == hf_greedy(p, 8)[0] for o, p in zip(outs, prompts)) >= 1


def test_sharded_checkpoint(tiny_model_dir, tmp_path, hf_greedy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / file), metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    engine = make_engine(tmp_path)
    (p,) = random_prompts(15, [33])
    assert engine.generate([p], greedy(10))[0].output_token_ids == hf_greedy(p, 10)


def test_missing_weights_are_an_error(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="v_proj|qkv_proj"):
        make_engine(tmp_path)


def test_dummy_weights(tiny_model_dir):
    # a named shape ...
    engine = LLMEngine(EngineConfig(model="tiny-llama", load_format="dummy", num_blocks=32, max_model_len=512))
    (o,) = engine.generate([[5, 6, 7]], greedy(4))
    assert len(o.output_token_ids) == 4
    # ... or the shape from a config.json, same seed same weights
    e1 = make_engine(tiny_model_dir, load_format="dummy", seed=3)
    e2 = make_engine(tiny_model_dir, load_format="dummy", seed=3)
    assert e1.generate([[5, 6, 7]], greedy(6))[0].output_token_ids == \
        e2.generate([[5, 6, 7]], greedy(6))[0].output_token_ids
    with pytest.raises(ValueError):
        LLMEngine(EngineConfig(model="llama-3.1-8b"))  # a shape without weights needs load_format="dummy"


def test_named_configs():
    cfg = resolve_model_config("llama-3.1-8b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.head_dim) == (4096, 32, 32, 8, 14336, 128256, 128)
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0
    assert "llama-3.2-1b" in NAMED_CONFIGS and resolve_model_config("llama-3.2-1b").tie_word_embeddings


def test_rope_matches_hf(tiny_model_dir):
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from engines.reference.model import rope_inv_freq

    hf = LlamaRotaryEmbedding(AutoConfig.from_pretrained(tiny_model_dir))
    assert torch.equal(rope_inv_freq(resolve_model_config(str(tiny_model_dir))), hf.inv_freq)


def test_reset_prefix_cache(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    (p,) = random_prompts(16, [40])
    engine.generate([p], greedy(2))
    assert engine.reset_prefix_cache() == 2
    (o,) = engine.generate([p], greedy(2))
    assert o.cached_tokens == 0


def test_decodes_get_the_budget_before_prefill_chunks(tiny_model_dir, hf_greedy):
    """A running decode gets its token in every step even when an older prefill could use the
    whole budget; the prefill gets what is left. (A decode newer than a running prefill is what a
    preemption leaves: the resumed sequence is appended last. Reordering the running list sets
    that up without the block pressure.) Outputs still equal HF's."""
    prompts = random_prompts(11, [20, 300])
    params = [greedy(12), greedy(4)]
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=32)
    engine.add_request("0", prompts[0], params[0])
    engine.add_request("1", prompts[1], params[1])
    results = {"0": [], "1": []}
    for out in engine.step():  # "0" whole (20 tokens), "1" its first 12
        results[out.request_id] += out.new_token_ids
    run = engine.scheduler.running
    assert [s.request_id for s in run] == ["0", "1"]
    run.reverse()  # the prefill is now the older one
    steps_with_prefill = 0
    while engine.has_unfinished():
        prefilling = run[0].request_id == "1" and run[0].num_tokens - run[0].num_computed_tokens > 1
        outs = {o.request_id: o for o in engine.step()}
        for rid, o in outs.items():
            results[rid] += o.new_token_ids
        if prefilling and len(results["0"]) < 12:
            steps_with_prefill += 1
            assert "0" in outs, "the decode waited for the prefill chunk"
    assert steps_with_prefill >= 5  # 288 prompt tokens in chunks of 31
    for i, (p, sp) in enumerate(zip(prompts, params)):
        assert results[str(i)] == hf_greedy(p, sp.max_tokens)


def _first_token_steps(engine, arrivals) -> dict[str, int]:
    """Add (request id, prompt, arrival time) requests at once, step to the end; the step in which
    each got its first token."""
    for rid, prompt, t in arrivals:
        engine.add_request(rid, prompt, greedy(2), arrival_time=t)
    first, step = {}, 0
    while engine.has_unfinished():
        step += 1
        for o in engine.step():
            first.setdefault(o.request_id, step)
    return first


def test_shortest_prefill_first_in_a_burst(tiny_model_dir, hf_greedy):
    """A long prompt arrives first, three short ones just after, all in one burst: shortest-first
    gives the short ones their first token before the long one's (FCFS makes them all wait for
    it), and outputs still equal HF's."""
    prompts = random_prompts(21, [600, 40, 60, 30])
    now = time.monotonic()
    arrivals = [(str(i), p, now + 0.001 * i) for i, p in enumerate(prompts)]
    first = _first_token_steps(make_engine(tiny_model_dir, max_num_batched_tokens=128, prefill_order="shortest"),
                               arrivals)
    assert max(first["1"], first["2"], first["3"]) < first["0"]
    assert first["3"] <= first["1"] <= first["2"]  # fewest tokens first
    fcfs = _first_token_steps(make_engine(tiny_model_dir, max_num_batched_tokens=128), arrivals)  # the default
    assert min(fcfs["1"], fcfs["2"], fcfs["3"]) >= fcfs["0"]
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=128, prefill_order="shortest")
    outs = engine.generate(prompts, greedy(5))
    assert [o.output_token_ids for o in outs] == [hf_greedy(p, 5) for p in prompts]


def test_a_prefill_waiting_past_the_bound_goes_first(tiny_model_dir):
    """A long prompt that has waited longer than max_prefill_wait goes before shorter, newer ones
    (no starvation), also when it is already part-way through its prefill."""
    prompts = random_prompts(22, [600, 200, 250])
    now = time.monotonic()
    old = [("0", prompts[0], now - 1.0), ("1", prompts[1], now), ("2", prompts[2], now)]
    first = _first_token_steps(make_engine(tiny_model_dir, max_num_batched_tokens=128, prefill_order="shortest"), old)
    assert first["0"] < min(first["1"], first["2"])
    # part-way: the long prompt's first chunk ran, then short ones arrive; the bound passes
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=128, prefill_order="shortest",
                         max_prefill_wait_ms=50)
    engine.add_request("0", prompts[0], greedy(2))
    engine.step()
    time.sleep(0.06)
    first = _first_token_steps(engine, [("1", prompts[1], time.monotonic()), ("2", prompts[2], time.monotonic())])
    assert first["0"] < min(first["1"], first["2"])


def test_prefill_order_config_errors():
    from engines.reference.config import EngineConfig

    with pytest.raises(ValueError, match="prefill_order"):
        EngineConfig(model="tiny", prefill_order="longest")
    with pytest.raises(ValueError, match="max_prefill_wait_ms"):
        EngineConfig(model="tiny", max_prefill_wait_ms=-1)


def test_cpu_token_budget_default():
    from engines.reference.config import CPU_TOKEN_BUDGET, EngineConfig

    assert EngineConfig(model="tiny").max_num_batched_tokens == CPU_TOKEN_BUDGET
    assert EngineConfig(model="tiny", device="cuda").max_num_batched_tokens == 8192
    assert EngineConfig(model="tiny", max_num_batched_tokens=64).max_num_batched_tokens == 64
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(model="tiny", max_num_batched_tokens=0)


def test_warm_up_leaves_no_trace(tiny_model_dir, hf_greedy):
    """The warm-up runs real steps, then puts back every counter and empties the prefix cache:
    a benchmark's first call sees the engine as if nothing had run."""
    engine = make_engine(tiny_model_dir)
    before = engine.stats()
    assert engine.warm_up() > 0
    assert engine.stats() == before
    assert engine.pool.num_free_blocks == engine.pool.num_blocks and not engine.pool.cached
    p = random_prompts(12, [40])[0]
    out = engine.generate([p], greedy(8))[0]
    assert out.output_token_ids == hf_greedy(p, 8) and out.cached_tokens == 0



def test_cpu_token_budget_is_the_measured_one():
    """The default follows the committed measurement's rule (tools/token_budget.py)."""
    from pathlib import Path

    from engines.reference.config import CPU_TOKEN_BUDGET
    doc = json.loads((Path(__file__).parents[3] / "results/reference-cpu/token-budget.json").read_text())
    assert doc["chosen"] == CPU_TOKEN_BUDGET
