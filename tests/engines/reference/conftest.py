"""Shared fixtures for the reference engine's tests: the HF transformers model built from the tiny
checkpoint (tests/conftest.py builds it), and HF greedy generation as the reference output."""
from __future__ import annotations


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
