"""Shared fixtures for the reference engine's tests: the tiny checkpoint, the HF transformers model
built from it, and HF greedy generation as the reference output."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these tests run tiny shapes, where a second OpenMP thread only adds
    synchronization, and on a busy machine its spin-waiting makes small ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight HF Llama checkpoint (float32, GQA, llama3 RoPE scaling, tokenizer)."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    try:
        from engines.tiny_model import build_tiny_model
    except ImportError:  # builder not available: a random HF model with the same shape (no tokenizer)
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=384, vocab_size=3072, max_position_embeddings=8192,
                          rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=[1, 4],
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024})
        LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out)
        return out
    return build_tiny_model(out, seed=0)


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_greedy(hf_model):
    """hf_greedy(prompt_ids, n) -> the n tokens HF transformers' greedy generate() gives (EOS
    disabled, like ignore_eos), one prompt at a time, no padding. Memoized."""
    cache: dict[tuple, list[int]] = {}

    def run(prompt: list[int], n: int) -> list[int]:
        key = (tuple(prompt), n)
        if key not in cache:
            ids = torch.tensor([prompt])
            with torch.inference_mode():
                out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                        do_sample=False, eos_token_id=None, pad_token_id=0)
            cache[key] = out[0, len(prompt):].tolist()
        return cache[key]

    return run
