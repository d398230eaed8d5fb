"""Projections through oneDNN with packed weights (engines/reference/cpu_linear.py): the same
answer as F.linear to float32 rounding, the checkpoint's parameter names kept, and used by an
engine on the cpp backend."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engines.reference import cpu_linear
from engines.reference.cpu_linear import MIN_ROWS, PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this PyTorch has no oneDNN packed linear")


@pytest.mark.parametrize("rows", [1, MIN_ROWS - 1, MIN_ROWS, 64, 1000])
@pytest.mark.parametrize("shape", [(128, 256), (384, 128), (128, 3072)])
def test_packed_linear_matches_f_linear(rows, shape):
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(*shape, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.05)
    x = torch.randn(rows, 2 * shape[0], generator=g)[:, :shape[0]]  # a strided view, as the model passes
    with torch.inference_mode():
        ref, out = F.linear(x, lin.weight), PackedLinear(lin, 1024)(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_pack_linears_keeps_names_and_ties():
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 8, bias=True), nn.Embedding(8, 16))
    model[0].weight = model[2].weight  # tied, as an LM head to its embeddings
    names = set(model.state_dict())
    assert pack_linears(model, 64) == 1  # the one with a bias is left alone
    assert isinstance(model[0], PackedLinear) and type(model[1]) is nn.Linear
    assert set(model.state_dict()) == names
    assert model[0].weight is model[2].weight


def test_engine_on_cpp_runs_packed_projections(tiny_model_dir):
    from engines.reference import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=64, max_model_len=256))
    if engine.runner.backend != "cpp":
        pytest.skip("the C++ kernels did not build")
    layer = engine.runner.model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, PackedLinear) and isinstance(engine.runner.model.lm_head, PackedLinear)
    torch_engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=64, max_model_len=256,
                                          attention_backend="torch"))
    assert type(torch_engine.runner.model.lm_head) is nn.Linear  # the readable path stays plain
