"""The OpenAI-compatible server, end to end: real servers in subprocesses on loopback ports, driven
by the official openai client and by raw HTTP (httpx)."""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from pathlib import Path

import pytest

from engines.process import free_port
from tests.conftest import RefServer, serving

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[3]
NAME = "tiny"
KEY = "sekrit-key"
MAX_MODEL_LEN = 1024



class Server(RefServer):
    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        super().__init__(model_dir, log, *extra, max_model_len=MAX_MODEL_LEN)

    def metrics(self) -> dict[str, float]:
        return parse_prometheus(httpx.get(self.url + "/metrics", timeout=5).text)[0]


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server-logs")
    # main: roomy; limited: one running sequence, one waiting, slow steps, an API key
    with serving(Server(tiny_model_dir, logs / "main.log", "--num-blocks", "512", "--max-num-seqs", "8"),
                 Server(tiny_model_dir, logs / "limited.log", "--num-blocks", "128", "--max-num-seqs", "1",
                        "--max-waiting", "1", "--step-delay-ms", "40", "--api-key", KEY)) as pair:
        yield pair


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def limited(servers):
    return servers[1]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from engines.reference.tokenizer import ServerTokenizer
    return ServerTokenizer(tiny_model_dir)


# -- Prometheus text -----------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """Strict enough for the exposition format: every sample's family has a TYPE line before it.
    Returns {name{labels-but-model_name}: value} and {family: type}."""
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, kind = line.split(" ")
            assert kind in ("gauge", "counter", "histogram", "summary", "untyped")
            assert fam not in types, f"duplicate TYPE for {fam}"
            types[fam] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        fam = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert fam in types, f"{name} has no TYPE line"
        lab = {k: v for k, v in _LABEL.findall(labels) if k != "model_name"}
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(lab.items())) + "}" if lab else "")
        samples[key] = float(value)
    return samples, types


# -- helpers -------------------------------------------------------------------------------------

def post(server: Server, path: str, body, headers: dict | None = None, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=content,
                      headers={"Content-Type": "application/json", **(headers or {})}, timeout=60, **kw)


def sse_events(lines) -> list[dict | str]:
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(r: httpx.Response, status: int | tuple[int, ...] = 400) -> dict:
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


def wait_until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- unit: detokenization, options ---------------------------------------------------------------

def test_incremental_detokenizer_never_emits_partial_utf8(tokenizer):
    from engines.reference.tokenizer import IncrementalDetokenizer
    text = "Grüße, 世界! naïve café — 🙂🚀 done.\n\tdef f(x): return x ** 2"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 4
    prompt = tokenizer.encode("Prompt:", add_special_tokens=True)
    det = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [det.add([t], final=(i == len(ids) - 1)) for i, t in enumerate(ids)]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert any(d == "" for d in deltas)  # multi-byte characters split over tokens were held back


def test_cli_options_map_to_engine_config():
    import argparse

    from engines.reference.config import EngineConfig
    from engines.reference.serve_args import add_serve_arguments, engine_overrides_from_args, parse_size

    p = add_serve_arguments(argparse.ArgumentParser())
    a = p.parse_args(["--model", "m", "--block-size", "32", "--kv-cache-memory", "512MiB", "--max-num-seqs", "4",
                      "--max-num-batched-tokens", "256", "--max-waiting", "3", "--no-prefix-caching",
                      "--step-delay-ms", "5", "--dtype", "bfloat16", "--load-format", "dummy", "--seed", "7"])
    ov = engine_overrides_from_args(a)
    assert ov == {"block_size": 32, "kv_cache_memory_bytes": 512 << 20, "max_num_seqs": 4,
                  "max_num_batched_tokens": 256, "max_waiting": 3, "enable_prefix_caching": False,
                  "step_delay_ms": 5.0, "dtype": "bfloat16", "load_format": "dummy", "seed": 7}
    EngineConfig(model="m", **ov)  # every key is a field
    assert a.host == "127.0.0.1" and a.port == 8000
    assert engine_overrides_from_args(p.parse_args(["--model", "m"])) == {}
    assert parse_size("2GiB") == 2 << 30 and parse_size("1.5k") == 1536 and parse_size("100") == 100
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--num-blocks", "4", "--kv-cache-memory", "1GiB"])


# -- end to end ----------------------------------------------------------------------------------

def test_health_models_and_metrics_parse(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    assert [m.id for m in client.models.list().data] == [NAME]
    samples, types = parse_prometheus(httpx.get(server.url + "/metrics").text)
    for fam in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "tierbench_queue_depth", "tierbench_running_sequences", "tierbench_kv_usage_ratio",
                "tierbench_kv_free_blocks", "tierbench_prefix_hit_rate"):
        assert types[fam] == "gauge", fam
    for fam in ("vllm:num_preemptions_total", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
                "tierbench_preemptions_total", "vllm:generation_tokens_total"):
        assert types[fam] == "counter", fam
    assert types["vllm:time_to_first_token_seconds"] == "histogram"
    assert samples["tierbench_kv_total_blocks"] == 512
    assert 'vllm:time_to_first_token_seconds_bucket{le="+Inf"}' in samples


def test_openai_streaming_completion_exact_tokens(client):
    stream = client.completions.create(
        model=NAME, prompt="The agent opened the file and", max_tokens=24, temperature=0.8, seed=1, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, "return_token_ids": True})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert all(c.object == "text_completion" and c.model == NAME and c.id == chunks[0].id for c in chunks)
    assert sum(len(c.choices[0].token_ids) for c in token_chunks) == 24
    assert all(c.choices[0].index == 0 and isinstance(c.choices[0].text, str) for c in token_chunks)
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * (len(token_chunks) - 1) + ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 24
    assert last.usage.total_tokens == last.usage.prompt_tokens + 24
    assert last.usage.prompt_tokens_details.cached_tokens == 0


def test_openai_streaming_chat_exact_tokens(client):
    stream = client.chat.completions.create(
        model=NAME, messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "ls -la"}],
        max_completion_tokens=20, stream=True, stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}],
        extra_body={"ignore_eos": True, "session_id": "sess-chat"})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert token_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert token_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert len(token_chunks) <= 20


def test_non_streaming_text_matches_token_ids(client, tokenizer):
    r = client.completions.create(model=NAME, prompt="import os\n", max_tokens=12, extra_body={
        "ignore_eos": True, "return_token_ids": True})
    ch = r.choices[0]
    assert r.object == "text_completion" and ch.finish_reason == "length"
    assert len(ch.token_ids) == 12 == r.usage.completion_tokens
    assert ch.text == tokenizer.decode(ch.token_ids)
    assert r.prompt_token_ids == tokenizer.encode("import os\n")  # BOS added, as vLLM
    c = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                       extra_body={"ignore_eos": True, "return_token_ids": True})
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert c.usage.completion_tokens == 8
    templ = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=True)
    assert c.prompt_token_ids == templ
    assert c.choices[0].message.content == tokenizer.decode(c.choices[0].token_ids)


def test_streamed_text_equals_non_streamed_greedy(client):
    kw = dict(model=NAME, prompt="Streaming and non-streaming agree:", max_tokens=40, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == full


def test_cached_tokens_on_repeated_prompt(client):
    prompt = "A unique long prompt for the prefix cache test. " * 12  # well over several 16-token blocks
    first = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, extra_body={"ignore_eos": True})
    second = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, extra_body={"ignore_eos": True})
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached >= first.usage.prompt_tokens - 16
    # and through a streamed chat with usage
    msgs = [{"role": "user", "content": prompt}]
    for expect_hit in (False, True):
        chunks = list(client.chat.completions.create(model=NAME, messages=msgs, max_tokens=3, stream=True,
                                                     stream_options={"include_usage": True}))
        assert (chunks[-1].usage.prompt_tokens_details.cached_tokens > 0) == expect_hit


def test_greedy_http_equals_offline_engine(server, tiny_model_dir, tokenizer):
    from engines.reference import EngineConfig, LLMEngine, SamplingParams

    ids = tokenizer.encode("def fibonacci(n):\n    \"\"\"Greedy equality check.\"\"\"\n")
    r = post(server, "/v1/completions", {"model": NAME, "prompt": ids, "max_tokens": 32, "temperature": 0,
                                         "ignore_eos": True, "return_token_ids": True}).json()
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_blocks=64, max_model_len=MAX_MODEL_LEN))
    out = engine.generate([ids], SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))[0]
    assert r["choices"][0]["token_ids"] == out.output_token_ids
    assert r["choices"][0]["text"] == tokenizer.decode(out.output_token_ids)


def test_token_id_prompts(server, client):
    ids = [0, 17, 230, 1500, 99, 42, 7, 3000]
    for prompt in (ids, [ids]):
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True})
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 5
    ev = sse_events(post(server, "/v1/completions", {"prompt": ids, "max_tokens": 3, "stream": True,
                                                     "ignore_eos": True}).text.splitlines())
    assert ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] == "length"


def test_model_aliases(server, tiny_model_dir):
    for model in (str(tiny_model_dir), None):
        body = {"prompt": "x", "max_tokens": 1}
        if model:
            body["model"] = model
        r = post(server, "/v1/completions", body)
        assert r.status_code == 200 and r.json()["model"] == NAME


def test_stop_strings_and_stop_token_ids(server, client, tokenizer):
    base = dict(model=NAME, prompt="Stop string test: the quick brown fox", max_tokens=40, temperature=0,
                extra_body={"ignore_eos": True, "return_token_ids": True})
    ref = client.completions.create(**base).choices[0]
    text, ids = ref.text, ref.token_ids
    # a stop string that ends well inside the text and starts after a few tokens
    start = len(tokenizer.decode(ids[:6]))
    stop = next(text[i:i + 3] for i in range(start, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    expect = text[:text.index(stop)]
    r = client.completions.create(**{**base, "stop": [stop, "never-appears-xyz"]}).choices[0]
    assert (r.text, r.finish_reason, r.stop_reason) == (expect, "stop", stop)
    streamed = [c for c in client.completions.create(**{**base, "stop": stop}, stream=True) if c.choices]
    assert "".join(c.choices[0].text for c in streamed) == expect
    assert streamed[-1].choices[0].finish_reason == "stop"
    kept = client.completions.create(**{**base, "stop": stop, "extra_body": {
        **base["extra_body"], "include_stop_str_in_output": True}}).choices[0]
    assert kept.text == expect + stop
    # stop_token_ids: the first occurrence of the 5th token ends it there
    tid = ids[4]
    r = post(server, "/v1/completions", {"model": NAME, "prompt": base["prompt"], "max_tokens": 40, "temperature": 0,
                                         "ignore_eos": True, "stop_token_ids": [tid], "return_token_ids": True}).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["stop_reason"] == tid
    assert r["choices"][0]["token_ids"] == ids[:ids.index(tid) + 1]
    assert r["usage"]["completion_tokens"] == ids.index(tid) + 1


BAD_REQUESTS = [
    ("/v1/completions", b'{"model": "tiny", "prompt": "x",', 400, None),  # malformed JSON
    ("/v1/completions", b'[1, 2, 3]', 400, None),  # not an object
    ("/v1/completions", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"prompt": [5] * MAX_MODEL_LEN, "max_tokens": 1}, 400, "prompt"),  # over the context
    ("/v1/completions", {"prompt": [5] * 1000, "max_tokens": 100}, 400, "max_tokens"),  # prompt + output over it
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "min_tokens": 9, "max_tokens": 4}, 400, None),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": [1, 999999]}, 400, "prompt"),  # id out of the vocabulary
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),  # batched prompts
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),  # no prompt
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
]


def test_bad_requests_get_4xx_and_do_not_disturb_a_stream(server):
    result: dict = {}
    started = threading.Event()

    def lines(r):
        for line in r.iter_lines():
            started.set()
            yield line

    def run_stream():
        # long enough to be running while the bad requests go in (a token takes well under 1 ms)
        with httpx.stream("POST", server.url + "/v1/completions", timeout=60, json={
                "model": NAME, "prompt": "A stream that must survive bad neighbours.", "max_tokens": 900,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}) as r:
            result["status"] = r.status_code
            result["events"] = sse_events(lines(r))

    t = threading.Thread(target=run_stream)
    t.start()
    assert started.wait(30), "the stream did not start"
    for path, body, status, param in BAD_REQUESTS:
        err = assert_error(post(server, path, body), status)
        if param is not None:
            assert err["param"] == param, (body, err)
    t.join(60)
    assert result["status"] == 200
    ev = result["events"]
    assert ev[-1] == "[DONE]" and ev[-2]["usage"]["completion_tokens"] == 900
    assert ev[-3]["choices"][0]["finish_reason"] == "length"
    # agents' extra fields are accepted: tools, tool_choice, user, neutral penalties, logprobs null
    ok = post(server, "/v1/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                    {"role": "assistant", "content": None, "tool_calls": []},
                                    {"role": "tool", "content": "ok", "tool_call_id": "1"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto", "user": "u",
        "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "max_tokens": 2, "some_future_field": 1})
    assert ok.status_code == 200, ok.text
    # what vLLM's benchmark client sends
    ok = post(server, "/v1/completions", {"model": NAME, "prompt": "bench", "repetition_penalty": 1.0,
                                          "max_tokens": 4, "logprobs": None, "stream": True, "ignore_eos": True,
                                          "stream_options": {"include_usage": True}})
    ev = sse_events(ok.text.splitlines())
    assert ev[-2]["usage"]["completion_tokens"] == 4 and "".join(e["choices"][0]["text"] for e in ev[:-2]) != ""


def _free_blocks_back(server: Server, total: float):
    m = server.metrics()
    return m["tierbench_running_sequences"] == 0 and m["tierbench_kv_free_blocks"] == total and m


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    before = server.metrics()
    total = before["tierbench_kv_total_blocks"]
    assert before["tierbench_kv_free_blocks"] == total
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json={
            "model": NAME, "prompt": "Abandon me. " * 20, "max_tokens": 900, "ignore_eos": True,
            "stream": True}) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            got += line.startswith("data: ")
            if got >= 3:
                break
        assert server.metrics()["tierbench_kv_free_blocks"] < total  # it holds blocks now
    after = wait_until(lambda: _free_blocks_back(server, total), what="blocks to come back")
    assert after["tierbench_requests_aborted_total"] == before["tierbench_requests_aborted_total"] + 1
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] < 900
    # a non-streaming request whose client gives up is aborted too (900 tokens take about 0.5 s on
    # the tiny model at its fastest: the client gives up well before that)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", timeout=httpx.Timeout(5, read=0.1), json={
            "model": NAME, "prompt": "Impatient. " * 20, "max_tokens": 900, "ignore_eos": True})
    after2 = wait_until(lambda: _free_blocks_back(server, total), what="blocks to come back")
    assert after2["tierbench_requests_aborted_total"] == before["tierbench_requests_aborted_total"] + 2
    assert after2["vllm:generation_tokens_total"] - after["vllm:generation_tokens_total"] < 900


def test_concurrent_streams(server):
    async def one(c, i):
        n = 0
        last = None
        async for chunk in await c.completions.create(model=NAME, prompt=f"Request {i}:", max_tokens=10 + i,
                                                      stream=True, stream_options={"include_usage": True},
                                                      extra_body={"ignore_eos": True, "session_id": f"s{i % 2}"}):
            if chunk.choices:
                n += 1
            last = chunk
        return n, last.usage.completion_tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(6)))

    for i, (n, tokens) in enumerate(asyncio.run(main())):
        assert tokens == 10 + i and 1 <= n <= tokens


def test_api_key_enforced(limited):
    h = {"Authorization": f"Bearer {KEY}"}
    assert_error(httpx.get(limited.url + "/v1/models"), 401)
    assert_error(httpx.get(limited.url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(post(limited, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 401)
    assert httpx.get(limited.url + "/v1/models", headers=h).status_code == 200
    assert httpx.get(limited.url + "/health").status_code == 200  # health and metrics stay open
    assert httpx.get(limited.url + "/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=limited.url + "/v1", api_key="wrong", max_retries=0).models.list()
    c = openai.OpenAI(base_url=limited.url + "/v1", api_key=KEY, max_retries=0)
    assert c.completions.create(model=NAME, prompt="x", max_tokens=2).usage.completion_tokens >= 1


def test_queue_full_gets_503_with_retry_after(limited):
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": NAME, "prompt": "Occupy the only slot.", "max_tokens": 60, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=limited.url, headers=h, timeout=30) as c1, httpx.Client(
            base_url=limited.url, headers=h, timeout=30) as c2:
        with c1.stream("POST", "/v1/completions", json=body) as running:
            lines = running.iter_lines()  # kept referenced: a closed iterator closes the connection
            for line in lines:
                if line.startswith("data: "):
                    break  # it runs
            with c2.stream("POST", "/v1/completions", json=body) as waiting:
                assert waiting.status_code == 200
                wait_until(lambda: limited.metrics()["tierbench_queue_depth"] == 1, what="one waiting request")
                r = post(limited, "/v1/completions", {**body, "stream": False}, headers=h)
                err = assert_error(r, 503)
                assert int(r.headers["Retry-After"]) >= 1 and err["code"] == 503
                r = post(limited, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                           "max_tokens": 2}, headers=h)
                assert_error(r, 503)
    total = limited.metrics()["tierbench_kv_total_blocks"]
    m = wait_until(lambda: _free_blocks_back(limited, total) and limited.metrics()["tierbench_queue_depth"] == 0
                   and limited.metrics(), what="both streams to be aborted")
    assert m['tierbench_requests_rejected_total{reason="queue_full"}'] == 2
    assert not math.isnan(m["tierbench_prefix_hit_rate"])


# -- in-process, with a stand-in engine ----------------------------------------------------------

class FakeEngine:
    """Just enough of LLMEngine's API: every step emits one token (or raises, when told to)."""

    def __init__(self) -> None:
        from types import SimpleNamespace
        self.config = SimpleNamespace(block_size=16, max_model_len=256)
        self.max_model_len = 256
        self.model_config = SimpleNamespace(vocab_size=3072)
        self.pool = SimpleNamespace(num_blocks=64)
        self.lock = threading.Lock()
        self.live: dict[str, list] = {}  # request id -> [params, tokens out]
        self.added: list[tuple[str, str | None, float | None]] = []
        self.fail = False

    def add_request(self, request_id, prompt_token_ids, sampling_params, session_id=None, arrival_time=None):
        with self.lock:
            self.live[request_id] = [sampling_params, 0, len(prompt_token_ids)]
            self.added.append((request_id, session_id, arrival_time))

    def abort(self, request_id):
        with self.lock:
            self.live.pop(request_id, None)

    def has_unfinished(self):
        return bool(self.live)

    def step(self):
        from engines.reference.sequence import StepOutput
        time.sleep(0.005)
        if self.fail:
            raise RuntimeError("simulated kernel failure")
        outs = []
        with self.lock:
            for rid, st in list(self.live.items()):
                st[1] += 1
                done = st[1] >= st[0].max_tokens
                if done:
                    del self.live[rid]
                outs.append(StepOutput(rid, [72], done, "length" if done else None, 0, st[2], st[1],
                                       [time.monotonic()], 0.0, 0.0, 0.0))
        return outs

    def stats(self):
        keys = ("num_waiting", "num_running", "kv_usage", "num_free_blocks", "num_total_blocks",
                "num_cached_blocks", "block_size", "prefix_hit_rate", "prefix_queried_tokens",
                "prefix_hit_tokens", "prefix_hit_blocks", "prefix_miss_blocks", "prefix_lost_blocks", "evictions",
                "preemptions", "recomputed_tokens", "prompt_tokens_computed", "generation_tokens", "steps")
        return dict.fromkeys(keys, 0)


@pytest.fixture
def fake_server(tokenizer):
    import uvicorn

    from engines.reference.server import build_app
    engine = FakeEngine()
    app = build_app(engine, tokenizer, NAME)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    wait_until(lambda: srv.started, what="uvicorn to start")
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)


def test_session_ids_reach_the_engine(fake_server, tokenizer):
    engine, url = fake_server
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3, "session_id": "from-body"})
    assert r.json()["choices"][0]["text"] == tokenizer.decode([72] * 3)
    httpx.post(url + "/v1/chat/completions", headers={"X-Session-Id": "from-header"},
               json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert [s for _, s, _ in engine.added] == ["from-body", "from-header", None]
    assert all(isinstance(a, float) for _, _, a in engine.added)


def test_engine_failure_is_reported_and_the_server_survives(fake_server):
    engine, url = fake_server
    engine.fail = True
    err = assert_error(httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 5}, timeout=10), 500)
    assert "simulated kernel failure" in err["message"]
    ev = sse_events(httpx.post(url + "/v1/completions", timeout=10, json={
        "prompt": "x", "max_tokens": 5, "stream": True}).text.splitlines())
    assert "simulated kernel failure" in ev[0]["error"]["message"] and ev[-1] == "[DONE]"
    assert not engine.live  # failed requests were aborted
    engine.fail = False
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 4}, timeout=10)
    assert r.json()["usage"]["completion_tokens"] == 4


def test_warm_up_before_listening_leaves_no_trace(tiny_model_dir, tmp_path):
    """The server warms its engine and its HTTP stack (a streamed chat request and a completion,
    in process, with the API key) before /health answers, and none of it shows: /metrics counts
    no request, no prompt token, no step; the prefix cache is empty. --no-warmup skips it."""
    log = tmp_path / "warm.log"
    with serving(Server(tiny_model_dir, log, "--api-key", KEY, "--log-level", "info")) as (s,):
        m = s.metrics()
        text = s.log.read_text()
        assert "warm-up took" in text and "HTTP warm-up took" in text
        assert m["vllm:prompt_tokens_total"] == 0 and m["tierbench_engine_steps_total"] == 0
        assert sum(v for k, v in m.items() if k.startswith("vllm:request_success_total")) == 0
        assert m["tierbench_kv_cached_blocks"] == 0
        r = httpx.post(s.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                       json={"model": NAME, "prompt": "after the warm-up", "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cold = tmp_path / "cold.log"
    with serving(Server(tiny_model_dir, cold, "--no-warmup", "--log-level", "info")) as (c,):
        pass
    assert "warm-up took" not in c.log.read_text()
