"""A tiny random-weight Llama checkpoint in standard Hugging Face format, built offline.

Tests and CPU demos need a model with a real model's structure (GQA, RoPE with Llama-3 frequency
scaling, a byte-level BPE tokenizer, a chat template) but not its quality: outputs are noise, while
shapes, cache behaviour and token counts are real. Everything is generated here from a seed and the
text in tiny_corpus/, so nothing is downloaded and the same seed gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CORPUS_DIR = Path(__file__).parent / "tiny_corpus"

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT]  # ids 0..4, in this order

VOCAB_SIZE = 3072  # including the special tokens; the corpus yields this many merges at min_frequency 2
HIDDEN = 128  # head_dim 32: the smallest head size vLLM's CPU attention supports
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 384
MAX_POSITIONS = 8192
INIT_STD = 0.02

# Llama 3's pre-tokenizer split: words, 1-3 digit groups, punctuation runs, whitespace runs.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Every message and the generation prompt end at a special token and the template adds no whitespace,
# so the tokens of a conversation are the concatenation of its messages' tokens: a prompt's tokens are
# an exact prefix of the next call's prompt, and per-message token counts add up.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>' }}{% endif %}"
)


def _train_tokenizer():
    """Byte-level BPE on the corpus. Inputs are read in sorted order so training is deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt"))]
    if not texts:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # As Llama 3: untrimmed offsets (callers map character offsets to tokens), and BOS added only when
    # a caller asks for special tokens; chat prompts carry BOS in the template instead.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def _weights(vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights with the names and shapes of transformers' LlamaForCausalLM."""
    shapes = {"model.embed_tokens.weight": (vocab, HIDDEN), "lm_head.weight": (vocab, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):  # fixed draw order: the same seed gives the same tensors
        if name.endswith("norm.weight"):
            out[name] = np.ones(shapes[name], dtype=np.float32)
        else:
            out[name] = (rng.standard_normal(shapes[name]) * INIT_STD).astype(np.float32)
    return out


def _config(vocab: int, ids: dict[str, int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 500000.0,
        # Llama 3.1's scaling, with a short original context so that the frequency bands it rescales
        # matter at the lengths tests use.
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": INIT_STD,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": [ids[EOS], ids[EOT]],
    }


def _tokenizer_config(ids: dict[str, int]) -> dict:
    return {
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for t in SPECIAL_TOKENS
        },
        "bos_token": BOS,
        "eos_token": EOT,  # chat turns end with eot, as in Llama 3 instruct models
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITIONS,
        # Explicit, so that transformers uses tokenizer.json as is instead of a Llama class's defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint (config, safetensors weights, tokenizer, chat template) to out_dir."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}

    tok.save(str(out / "tokenizer.json"), pretty=True)
    save_file(_weights(vocab, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", _config(vocab, ids))
    _write_json(out / "tokenizer_config.json", _tokenizer_config(ids))
    _write_json(out / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOT})
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids[EOT]], "do_sample": False},
    )
    return out


def _fingerprint(seed: int) -> str:
    """Changes whenever the builder or the corpus does, so a stale cached model gets rebuilt."""
    h = hashlib.sha256(f"seed={seed}\n".encode())
    for p in [Path(__file__), *sorted(CORPUS_DIR.glob("*.txt"))]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def ensure_tiny_model(seed: int = 0) -> Path:
    """The tiny model for `seed` in the cache ($TIERBENCH_CACHE, else ~/.cache/tierbench), built if missing."""
    root = Path(os.environ.get("TIERBENCH_CACHE") or Path.home() / ".cache" / "tierbench")
    final = root / f"tiny-seed{seed}"
    stamp = "tierbench_stamp.txt"
    want = _fingerprint(seed)
    if (final / stamp).is_file() and (final / stamp).read_text().strip() == want:
        return final
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a concurrent or interrupted build never
    # leaves a half-written model that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-seed{seed}-", dir=root))
    try:
        build_tiny_model(tmp, seed)
        (tmp / stamp).write_text(want + "\n")
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process renamed its build into place first; it is identical.
            if not ((final / stamp).is_file() and (final / stamp).read_text().strip() == want):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
