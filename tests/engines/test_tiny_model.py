"""The tiny checkpoint: deterministic, standard Hugging Face Llama format, template agrees with ChatTokenizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.tiny_model import EOT, SPECIAL_TOKENS, build_tiny_model, ensure_tiny_model
from traces.text_tokens import ChatTokenizer

REPO = Path(__file__).resolve().parents[2]
FILES = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json"]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant.\n"},
    {"role": "user", "content": "  Fix the bug in   utils.py\n\n"},
    {"role": "assistant", "content": "\nTHOUGHT: look first.\n\n```bash\nls -la\n```"},
    {"role": "user", "content": "<returncode>0</returncode>\n<output>\nRésumé 🙂 日本語\n</output>"},
]


def test_writes_standard_files(tiny_model_dir):
    assert sorted(p.name for p in Path(tiny_model_dir).iterdir()) == sorted(FILES)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"]) == (128, 2, 4, 2, 384)
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_scaling"]["original_max_position_embeddings"] == 1024
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "float32"
    tok = ChatTokenizer(tiny_model_dir)
    assert cfg["vocab_size"] == tok.vocab_size and 2048 <= tok.vocab_size <= 4096
    assert set(SPECIAL_TOKENS) <= set(tok.special_ids)
    assert tok.eos_ids == sorted(cfg["eos_token_id"]) and tok.special_ids[EOT] in tok.eos_ids
    assert sum((tiny_model_dir / f).stat().st_size for f in FILES) < 10 * 2**20


def test_same_seed_is_byte_identical_across_processes(tiny_model_dir, tmp_path):
    # A separate process with another hash seed: training and serialization must not depend on it.
    code = f"from engines.tiny_model import build_tiny_model; build_tiny_model({str(tmp_path / 'again')!r}, 0)"
    env = {**os.environ, "PYTHONHASHSEED": "123", "RAYON_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    for f in FILES:
        assert (tmp_path / "again" / f).read_bytes() == (tiny_model_dir / f).read_bytes(), f


def test_other_seed_changes_only_weights(tiny_model_dir, tmp_path):
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_ensure_builds_once_into_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    d = ensure_tiny_model()
    assert d == tmp_path / "tiny-seed0" and (d / "model.safetensors").is_file()
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model() == d and (d / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-seed0"]  # no temporary build left behind


def test_loads_and_runs_in_transformers(tiny_model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or cfg.rope_scaling
    assert type(model).__name__ == "LlamaForCausalLM" and rope["rope_type"] == "llama3"
    # Past the 1024 original positions, where Llama-3 scaling changes the low frequencies.
    ids = torch.randint(0, cfg.vocab_size, (1, 1100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 1100, cfg.vocab_size) and torch.isfinite(logits).all()
    out = model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_transformers_chat_template_matches_chat_tokenizer(tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    tok = ChatTokenizer(tiny_model_dir)
    assert hf.eos_token == EOT and len(hf) == tok.vocab_size
    for n in range(1, len(MESSAGES) + 1):  # transformers refuses an empty conversation
        for gen in (False, True):
            text = hf.apply_chat_template(MESSAGES[:n], add_generation_prompt=gen, tokenize=False)
            assert text == tok.render(MESSAGES[:n], gen)
            ids = hf.apply_chat_template(MESSAGES[:n], add_generation_prompt=gen, tokenize=True, return_dict=False)
            assert list(ids) == tok.encode_chat(MESSAGES[:n], gen)
    text = MESSAGES[3]["content"]
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text
