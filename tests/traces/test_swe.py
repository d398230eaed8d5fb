"""mini-swe-agent reader and the exact chat tokenization under it (traces/swe.py, traces/text_tokens.py)."""
from __future__ import annotations

import gzip
import json
import os
import random
import time

import numpy as np
import pytest
from pathlib import Path

from traces.errors import TraceError
from traces.model import STOP_END, STOP_TOOL
from traces.swe import read_swe
from traces.text_tokens import ChatTokenizer, chained_block_hashes

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SWE_FILE = SHARED / "mini-swe-agent-gemini3-swebench" / "trajectories_raw.jsonl.gz"
BS = 4  # small blocks so the hand-made trajectory spans several


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> ChatTokenizer:
    return ChatTokenizer(tiny_model_dir)


# ----------------------------------------------------------------------------------------------
# ChatTokenizer and block hashes


def _random_conversation(rng: random.Random, turns: int) -> list[dict]:
    pieces = ["\n", "  ", "\n\n", " x", "THOUGHT:", "```bash\nls -la\n```", "é", "🙂", "日本", "\t", "<|eot_id|>",
              "def f(x):\n    return x\n", "<output>", "1234567", "'s", " ", "====", "\r\n", ""]
    msgs = [{"role": "system", "content": "".join(rng.choices(pieces, k=rng.randint(0, 8)))}]
    for _ in range(turns):
        msgs.append({"role": "user", "content": "".join(rng.choices(pieces, k=rng.randint(0, 12)))})
        msgs.append({"role": "assistant", "content": "".join(rng.choices(pieces, k=rng.randint(0, 12)))})
    return msgs


def test_prefix_counts_equal_per_prefix_encoding(tok):
    rng = random.Random(0)
    for _ in range(40):
        msgs = _random_conversation(rng, rng.randint(1, 5))
        ids, prompt_lens = tok.conversation_prefix_ids(msgs)
        assert ids == tok.encode_chat(msgs, add_generation_prompt=False)
        asst = [j for j, m in enumerate(msgs) if m["role"] == "assistant"]
        assert prompt_lens == [len(tok.encode_chat(msgs[:j])) for j in asst]
        for j, n in zip(asst, prompt_lens):
            assert ids[:n] == tok.encode_chat(msgs[:j])  # the prompt is an exact token prefix


def test_render_and_special_ids(tok):
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.render(msgs, True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    ids = tok.encode_chat(msgs)
    assert ids[0] == tok.bos_id and ids[-1] == tok.special_ids["<|end_header_id|>"]
    eot, end_header = tok.special_ids["<|eot_id|>"], tok.special_ids["<|end_header_id|>"]
    assert eot in tok.eos_ids and tok.encode("hi") == ids[ids.index(end_header) + 1 : ids.index(eot)]


def test_chained_block_hashes():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3000, 1000)
    b = a.copy()
    b[500] += 1
    ha, hb = chained_block_hashes(a, 16), chained_block_hashes(b, 16)
    assert ha.dtype == np.int64 and len(ha) == 1000 // 16
    assert (ha[:31] == hb[:31]).all() and (ha[31:] != hb[31:]).all()  # block 31 holds token 500; all after differ
    assert (chained_block_hashes(a[:100].tolist(), 16) == ha[:6]).all()
    assert len(chained_block_hashes(a[:15], 16)) == 0
    # Fixed values: the same in every process and on every platform.
    assert chained_block_hashes(list(range(32)), 16).tolist() == chained_block_hashes(np.arange(32, dtype=np.int16), 16).tolist()
    assert len(set(ha.tolist())) == len(ha)


def test_chained_block_hashes_stable_across_processes():
    import subprocess
    import sys
    code = "from traces.text_tokens import chained_block_hashes as h; print(h(list(range(64)), 16).tolist())"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONHASHSEED": "7"},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == chained_block_hashes(list(range(64)), 16).tolist()


def test_chained_block_hashes_speed():
    ids = np.random.default_rng(1).integers(0, 3072, 2_000_000)
    t0 = time.perf_counter()
    chained_block_hashes(ids, 16)
    assert time.perf_counter() - t0 < 5.0  # ~0.2 s here; 15M tokens in a few seconds


# ----------------------------------------------------------------------------------------------
# A hand-made trajectory


CREATED = [100, 104, 110, 111]
COMPLETION = [10, 20, 30, 5]


def _traj(instance_id: str | None = "repo__proj-1", str_extra: bool = False) -> dict:
    msgs = [
        {"role": "system", "content": "You are a helpful assistant that can run shell commands."},
        {"role": "user", "content": "<pr_description>\nFix the parser.\n</pr_description>"},
    ]
    replies = ["THOUGHT: list.\n\n```bash\nls\n```", "THOUGHT: read.\n\n```bash\ncat a.py\n```",
               "THOUGHT: edit.\n\n```bash\nsed -i 's/x/y/' a.py\n```",
               "```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached\n```"]
    outputs = ["<returncode>0</returncode>\n<output>\na.py\nb.py\n</output>", "<returncode>0</returncode>\n<output>\nx = 1\n</output>",
               "<returncode>0</returncode>\n<output>\n</output>", "diff --git a/a.py b/a.py\n-x = 1\n+y = 1\n"]
    for k, (reply, out) in enumerate(zip(replies, outputs)):
        extra = {"response": {"id": f"gen-{k}", "created": CREATED[k], "model": "m",
                              "choices": [{"message": {"role": "assistant", "content": reply}}],
                              "usage": {"prompt_tokens": 1000 + k, "completion_tokens": COMPLETION[k], "total_tokens": 0}}}
        msgs.append({"role": "assistant", "content": reply, "extra": str(extra) if str_extra else extra})
        msgs.append({"role": "user", "content": out})
    t = {"info": {"exit_status": "Submitted", "config": {"model": {"model_name": "vendor/model-x"}}},
         "messages": msgs, "trajectory_format": "mini-swe-agent-1"}
    if instance_id is not None:
        t["instance_id"] = instance_id
    return t


def _write_jsonl(path: Path, trajs: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(t) + "\n" for t in trajs)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_hand_made_trajectory_exact(tok, tmp_path):
    traj = _traj()
    trace = read_swe(_write_jsonl(tmp_path / "t.jsonl", [traj]), tok, block_size=BS)
    assert trace.format == "swe" and trace.block_size == BS and trace.hash_scope == "global"
    assert [s.id for s in trace.sessions] == ["repo__proj-1"]
    calls = trace.sessions[0].calls
    msgs = [{"role": m["role"], "content": m["content"]} for m in traj["messages"]]
    asst = [2, 4, 6, 8]
    assert len(calls) == 4 and [c.index for c in calls] == [0, 1, 2, 3]
    for k, (c, j) in enumerate(zip(calls, asst)):
        prompt = tok.encode_chat(msgs[:j])
        assert c.prompt_tokens == len(prompt)
        assert c.output_tokens == len(tok.encode(msgs[j]["content"])) + 1  # + <|eot_id|>
        assert c.hash_ids.tolist() == chained_block_hashes(prompt, BS).tolist()
        assert c.messages == (msgs[:2] if k == 0 else msgs[j - 2 : j])
        assert c.model == "vendor/model-x" and c.session_id == "repo__proj-1"
    assert [c.stop for c in calls] == [STOP_TOOL] * 3 + [STOP_END]
    for a, b in zip(calls, calls[1:]):  # each prompt's blocks are a prefix of the next one's
        assert b.hash_ids[: len(a.hash_ids)].tolist() == a.hash_ids.tolist() and len(b.hash_ids) > len(a.hash_ids)
    # Replaying the stored messages rebuilds each prompt exactly.
    so_far = []
    for c in calls:
        so_far += c.messages
        assert len(tok.encode_chat(so_far)) == c.prompt_tokens

    # Think time: gap minus the previous reply's generation at the file's fast-end speed.
    spt = float(np.percentile([(CREATED[k] - CREATED[k - 1]) / COMPLETION[k - 1] for k in (1, 2, 3)], 5))
    want = [None] + [max(0.0, CREATED[k] - CREATED[k - 1] - COMPLETION[k - 1] * spt) for k in (1, 2, 3)]
    assert [c.think_s for c in calls] == pytest.approx(want)
    assert want[3] == 0.0  # 1 s gap after a 30-token reply: clipped
    m = trace.meta
    assert m["think_time_estimated"] is True and m["seconds_per_token"] == pytest.approx(spt)
    assert m["think_clipped_fraction"] == pytest.approx(1 / 3) and m["tokenizer"] == str(tok.path)


def test_all_input_forms_agree(tok, tmp_path):
    def summary(trace, think=True):
        return [(s.id, [(c.prompt_tokens, c.output_tokens, c.think_s if think else None, c.hash_ids.tolist())
                        for c in s.calls]) for s in trace.sessions]

    want = summary(read_swe(_write_jsonl(tmp_path / "a.jsonl", [_traj("i-1"), _traj("i-2")]), tok, block_size=BS))
    assert summary(read_swe(_write_jsonl(tmp_path / "a.jsonl.gz", [_traj("i-1"), _traj("i-2")], gz=True), tok, block_size=BS)) == want
    tree = tmp_path / "trajs"
    for iid in ("i-1", "i-2"):
        (tree / iid).mkdir(parents=True)
        (tree / iid / f"{iid}.traj.json").write_text(json.dumps(_traj(None if iid == "i-2" else iid)))  # name as id
    assert summary(read_swe(tree, tok, block_size=BS)) == want
    # (think time differs: its speed estimate is over the input, here one trajectory)
    one = read_swe(tree / "i-1" / "i-1.traj.json", tok, block_size=BS)
    assert summary(one, think=False) == summary(read_swe(tree, tok, block_size=BS), think=False)[:1]
    # extra stored as str(dict) by some versions
    assert summary(read_swe(_write_jsonl(tmp_path / "s.jsonl", [_traj("i-1", str_extra=True), _traj("i-2", str_extra=True)]),
                            tok, block_size=BS)) == want


def test_missing_timing_leaves_think_unknown(tok, tmp_path):
    t = _traj()
    for m in t["messages"]:
        m.pop("extra", None)
    trace = read_swe(_write_jsonl(tmp_path / "t.jsonl", [t]), tok)
    assert [c.think_s for c in trace.sessions[0].calls] == [None] * 4
    assert trace.meta["calls_without_timing"] == 3 and trace.meta["seconds_per_token"] == 0.0


# ----------------------------------------------------------------------------------------------
# Bad input: TraceError naming the line and field, never a traceback


def _bad(tok, path: Path, line, field, match: str = ""):
    with pytest.raises(TraceError, match=match) as e:
        read_swe(path, tok)
    assert (e.value.line, e.value.field) == (line, field), str(e.value)
    assert e.value.path == str(path) or Path(e.value.path).parent == path or path in Path(e.value.path).parents
    return e.value


def _lines(tmp_path: Path, *objs_or_text) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs_or_text))
    return p


def test_bad_json_line(tok, tmp_path):
    _bad(tok, _lines(tmp_path, _traj("a"), '{"messages": [', _traj("c")), 2, None, "not valid JSON")


def test_bad_missing_keys(tok, tmp_path):
    t = _traj("b")
    del t["messages"]
    _bad(tok, _lines(tmp_path, _traj("a"), t), 2, "messages", "missing")
    t = _traj("b")
    del t["messages"][1]["role"]
    _bad(tok, _lines(tmp_path, t), 1, "messages[1].role", "missing")
    t = _traj("b")
    del t["messages"][3]["content"]
    _bad(tok, _lines(tmp_path, t), 1, "messages[3].content", "missing")
    t = _traj("b")
    t["messages"][3]["content"] = 5
    _bad(tok, _lines(tmp_path, t), 1, "messages[3].content", "expected a string")
    t = _traj("b")
    t["messages"][0]["role"] = "robot"
    _bad(tok, _lines(tmp_path, t), 1, "messages[0].role", "expected one of")
    t = _traj(None)
    _bad(tok, _lines(tmp_path, t), 1, "instance_id", "missing")
    t = _traj("b")
    t["messages"] = t["messages"][:2]
    _bad(tok, _lines(tmp_path, t), 1, "messages", "no assistant")
    _bad(tok, _lines(tmp_path, _traj("a"), [1, 2]), 2, None, "JSON object")
    _bad(tok, _lines(tmp_path, _traj("a"), _traj("a")), 2, "instance_id", "duplicate")


def test_bad_single_file(tok, tmp_path):
    p = tmp_path / "x.traj.json"
    p.write_text('{"messages": [}')
    _bad(tok, p, None, None, "not valid JSON")
    t = _traj("x")
    t["messages"][2]["content"] = None
    p.write_text(json.dumps(t))
    _bad(tok, p, None, "messages[2].content", "missing")


def test_bad_empty(tok, tmp_path):
    for name, data in (("e.jsonl", b""), ("b.jsonl", b"\n  \n"), ("e.jsonl.gz", gzip.compress(b"")), ("e.traj.json", b"")):
        p = tmp_path / name
        p.write_bytes(data)
        _bad(tok, p, None, None, "empty")
    (tmp_path / "emptydir").mkdir()
    _bad(tok, tmp_path / "emptydir", None, None, "no .*traj.json")
    _bad(tok, tmp_path / "nope.jsonl", None, None, "no such file")


def test_bad_truncated_gzip(tok, tmp_path):
    # Two complete gzip members (lines 1-2), then a member cut in half: line 3 cannot be read.
    good = "".join(json.dumps(_traj(f"i-{k}")) + "\n" for k in (1, 2)).encode()
    big = _traj("i-3")
    big["messages"][1]["content"] = os.urandom(30000).hex()  # incompressible: the cut lands inside line 3
    last = gzip.compress((json.dumps(big) + "\n").encode())
    p = tmp_path / "trunc.jsonl.gz"
    p.write_bytes(gzip.compress(good) + last[: len(last) // 2])
    _bad(tok, p, 3, None, "truncated or corrupt")
    p.write_bytes(b"this is not gzip data at all\n")
    _bad(tok, p, 1, None, "truncated or corrupt")


# ----------------------------------------------------------------------------------------------
# The shared real trace


@pytest.fixture(scope="module")
def swe_trace(tok):
    if not SWE_FILE.exists():
        pytest.skip(f"{SWE_FILE} not present")
    t0 = time.perf_counter()
    trace = read_swe(SWE_FILE, tok)
    trace.meta["_test_load_s"] = time.perf_counter() - t0
    return trace


@pytest.mark.slow
def test_shared_swe_trace(swe_trace, tok):
    trace = swe_trace
    n = [len(s.calls) for s in trace.sessions]
    assert len(n) == 400 and 30 <= np.percentile(n, 50) <= 42  # SOURCE.txt: p50 36
    assert len({s.id for s in trace.sessions}) == len(n)
    assert trace.block_size == 16 and trace.meta["think_time_estimated"] is True
    assert 0 < trace.meta["seconds_per_token"] < 0.1 and 0 <= trace.meta["think_clipped_fraction"] < 0.5
    for s in trace.sessions:
        assert [c.stop for c in s.calls][-1] == STOP_END and all(c.stop == STOP_TOOL for c in s.calls[:-1])
        assert s.calls[0].think_s is None and all(c.think_s is not None and c.think_s >= 0 for c in s.calls[1:])
        assert all(b.prompt_tokens > a.prompt_tokens for a, b in zip(s.calls, s.calls[1:]))
        assert all(len(c.hash_ids) == c.prompt_tokens // 16 for c in s.calls)
    assert trace.sessions[0].calls[0].model == "google/gemini-3-pro-preview"
    # Exact against per-prefix tokenization, for a few calls of one session.
    s = trace.sessions[7]
    msgs = []
    for c in s.calls[:5]:
        msgs += c.messages
        assert len(tok.encode_chat(msgs)) == c.prompt_tokens
    assert trace.meta["_test_load_s"] < 120  # ~30 s on a 2-core machine


@pytest.mark.slow
def test_shared_swe_truncated(tok, tmp_path):
    if not SWE_FILE.exists():
        pytest.skip(f"{SWE_FILE} not present")
    p = tmp_path / "cut.jsonl.gz"
    with open(SWE_FILE, "rb") as f:
        p.write_bytes(f.read(200_000))
    with pytest.raises(TraceError, match="truncated") as e:
        read_swe(p, tok)
    assert e.value.line is not None and e.value.line >= 1


def test_prefix_counts_with_a_non_additive_template(tiny_model_dir, tmp_path):
    # A template that treats the first message specially takes the exact per-prefix fallback.
    import shutil
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (
        "{{ bos_token }}{% for m in messages %}{% if loop.first %}<|start_header_id|>first<|end_header_id|>"
        "{% else %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}{% endif %}{{ m['content'] + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = ChatTokenizer(tmp_path)
    msgs = _random_conversation(random.Random(1), 4)
    ids, prompt_lens = tok.conversation_prefix_ids(msgs)
    assert prompt_lens == [len(tok.encode_chat(msgs[:j])) for j in (2, 4, 6, 8)]
    assert ids == tok.encode_chat(msgs, add_generation_prompt=False)
