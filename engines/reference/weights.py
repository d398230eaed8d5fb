"""Building the model and filling its weights: from HF safetensors checkpoints (one file, or
shards listed in model.safetensors.index.json), or random ("dummy", vLLM's name for it)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engines.reference.config import ModelConfig
from engines.reference.model import LlamaForCausalLM

# HF projection -> (our fused parameter, which part of it). Parts are laid out in this order.
PACKED = {
    "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up"),
}


def build_model(cfg: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device | str) -> LlamaForCausalLM:
    """The model with uninitialized weights on `device` (built on the meta device first, so no
    time goes into an initialization that the checkpoint overwrites) and its RoPE table filled."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg, max_len)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty makes new tensors per module; tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    fresh = type(model.rope)(cfg, max_len)
    model.rope.cos.copy_(fresh.cos)
    model.rope.sin.copy_(fresh.sin)
    return model.eval().requires_grad_(False)


def _part_slices(cfg: ModelConfig) -> dict[str, slice]:
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    return {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv),
            "gate": slice(0, inter), "up": slice(inter, 2 * inter)}


def checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    return files


@torch.no_grad()
def load_safetensors(model: LlamaForCausalLM, path: str | Path) -> None:
    """Copy an HF Llama checkpoint into `model`, converting dtype; q/k/v and gate/up go into
    their fused parameters. Raises if any parameter is left without a value."""
    path = Path(path)
    cfg = model.config
    params = dict(model.named_parameters())
    parts = _part_slices(cfg)
    missing = {(n, p) for n in params for p in
               ((("q", "k", "v") if n.endswith("qkv_proj.weight") else ("gate", "up")
                 if n.endswith("gate_up_proj.weight") else (None,)))}
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if "rotary_emb" in name:
                    continue
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # tied: the embedding provides it
                target, part = name, None
                for hf, (ours, p) in PACKED.items():
                    if f".{hf}." in name:
                        target, part = name.replace(f".{hf}.", f".{ours}."), p
                        break
                if target not in params:
                    raise KeyError(f"checkpoint tensor {name!r} has no place in the model")
                dst = params[target] if part is None else params[target][parts[part]]
                src = f.get_tensor(name)
                if src.shape != dst.shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != model {tuple(dst.shape)}")
                dst.copy_(src)
                missing.discard((target, part))
    if cfg.tie_word_embeddings:
        missing.discard(("lm_head.weight", None))
    if missing:
        raise ValueError(f"checkpoint {path} lacks: {sorted(n if p is None else f'{n}[{p}]' for n, p in missing)}")


def hf_parameter_views(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM parameter name -> our tensor, the fused projections cut back into
    q/k/v and gate/up views: an HF model built on these shares our weights (no copy)."""
    parts = _part_slices(model.config)
    out = {}
    for name, p in model.named_parameters():
        for hf, (ours, part) in PACKED.items():
            if f".{ours}." in name:
                out[name.replace(f".{ours}.", f".{hf}.")] = p[parts[part]]
        if ".qkv_proj." not in name and ".gate_up_proj." not in name:
            out[name] = p
    if model.config.tie_word_embeddings:
        out["lm_head.weight"] = model.model.embed_tokens.weight
    return out


@torch.no_grad()
def init_dummy(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Random weights: N(0, 0.02) matrices (HF's initializer_range), unit norm weights."""
    gen = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
