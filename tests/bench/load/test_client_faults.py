"""The streaming client against real servers that misbehave on purpose (FaultServer below: asyncio
on loopback, real TCP): idle keep-alive closes and dead reused connections are resent, never failures;
stalls, time-outs, resets, rejections and malformed streams each fail the one call with its own
reason, and the run goes on. The bars run through locust (bench.load.closed_loop), as real runs do."""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from analysis.records import read_records
from bench.cli import main
from bench.load.client import ClientConfig, Record, StreamingClient
from bench.load.closed_loop import run_closed_loop
from bench.load.workload import CallPlan, SessionPlan, write_workload


# -- the misbehaving server ------------------------------------------------------------------------
#
# A real HTTP/1.1 server on loopback that streams OpenAI-shaped completions and misbehaves on
# purpose, for the client's fault tests: asyncio streams on a thread of the test process, a real
# listening socket, real TCP (FIN and RST included).
#
# `behave(req)` picks what to do with each request (a Req: its number n from 1, how many requests
# its connection served before, how long the connection sat idle, its headers) and returns an
# action:
#
# - ("ok",): stream `chunks` tokens `itl_s` apart, a usage event and [DONE];
# - ("drop",) / ("rst",): close without answering, with a FIN / a reset;
# - ("stall", k): send k tokens, then nothing until the client goes;
# - ("reset", k): send k tokens, then reset the connection;
# - ("silent",): answer nothing at all until the client goes;
# - ("status", code, headers, body): an error response;
# - ("events", [data, ...][, False]): a 200 event stream of these `data:` payloads, then the chunked
#   end (with False: no end, the connection left open until the client goes);
# - ("raw", bytes): these bytes, then close;
# - ("json", bytes): a 200 application/json body.
#
# With idle_close_s, a connection idle that long is closed (as uvicorn's keep-alive time-out).


@dataclass
class Req:
    n: int
    served: int
    idle_s: float
    headers: dict


def token(i: int, last: bool) -> bytes:
    return json.dumps({"id": "cmpl-f", "object": "text_completion", "model": "fault",
                       "choices": [{"index": 0, "text": f" t{i}", "finish_reason": "length" if last else None}]}
                      ).encode()


def usage(n: int) -> bytes:
    return json.dumps({"id": "cmpl-f", "object": "text_completion", "choices": [],
                       "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}}).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(data: bytes) -> bytes:
    return chunk(b"data: " + data + b"\n\n")


HEAD_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class FaultServer:
    def __init__(self, behave=lambda req: ("ok",), *, chunks: int = 4, itl_s: float = 0.0,
                 idle_close_s: float | None = None):
        self.behave, self.chunks, self.itl_s, self.idle_close_s = behave, chunks, itl_s, idle_close_s
        self.n = 0
        self.connections = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultServer:
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=256))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        """Stop listening and end every connection's handler before the loop stops."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served, last_end = 0, time.monotonic()
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close_s)
                except asyncio.TimeoutError:
                    return  # idle too long: close (the finally)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                await reader.readexactly(int(headers.get("content-length", 0)))
                self.n += 1
                req = Req(self.n, served, time.monotonic() - last_end, headers)
                if not await self._act(self.behave(req), reader, writer):
                    return
                served += 1
                last_end = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the server is shutting down
        finally:
            writer.close()

    async def _act(self, action: tuple, reader, writer) -> bool:
        """Carry the action out; False when the connection is to be closed."""
        kind = action[0]
        if kind == "ok":
            writer.write(HEAD_SSE)
            for i in range(self.chunks):
                if i and self.itl_s:
                    await asyncio.sleep(self.itl_s)
                writer.write(event(token(i, i == self.chunks - 1)))
                await writer.drain()
            writer.write(event(usage(self.chunks)) + event(b"[DONE]") + b"0\r\n\r\n")
            await writer.drain()
            return True
        if kind in ("drop", "rst"):
            if kind == "rst":
                _reset(writer)
            return False
        if kind in ("stall", "reset"):
            writer.write(HEAD_SSE + b"".join(event(token(i, False)) for i in range(action[1])))
            await writer.drain()
            if kind == "reset":
                await asyncio.sleep(0.01)
                _reset(writer)
            else:
                await reader.read()  # until the client gives up and closes
            return False
        if kind == "silent":
            await reader.read()
            return False
        if kind == "status":
            code, headers, body = action[1:]
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                         f"{extra}\r\n".encode() + body)
            await writer.drain()
            return True
        if kind == "events":  # ("events", datas[, False]): False leaves the body unfinished, open
            end = len(action) < 3 or action[2]
            writer.write(HEAD_SSE + b"".join(event(d) for d in action[1]) + (b"0\r\n\r\n" if end else b""))
            await writer.drain()
            if not end:
                await reader.read()
            return end
        if kind == "json":
            body = action[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            return True
        if kind == "raw":
            writer.write(action[1])
            await writer.drain()
            return False
        raise ValueError(f"unknown action {action!r}")


def _reset(writer) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- helpers --------------------------------------------------------------------------------------

def sessions(n: int, calls: int, think_s: float, start_gap: float = 0.05) -> list[SessionPlan]:
    return [SessionPlan(f"s{i}", i * start_gap, [CallPlan(k, [5, 6, 7], 4, think_s=think_s if k else 0.0)
                                                 for k in range(calls)]) for i in range(n)]


def replay(tmp_path, url: str, plans: list[SessionPlan], client: ClientConfig | None = None) -> tuple[dict, list[dict]]:
    """The sessions through locust (10 users, one process) against url; (result, rows)."""
    wl = tmp_path / "workload.jsonl"
    write_workload(plans, wl)
    res = run_closed_loop(wl, url, "fault", tmp_path / "run", "fault", users=len(plans), client=client)
    return res, read_records(tmp_path / "run")


def call(url: str, config: ClientConfig | None = None, client: StreamingClient | None = None) -> Record:
    client = client or StreamingClient(url, config=config)
    return client.stream("/v1/completions", {"model": "fault", "prompt": [1, 2], "max_tokens": 4}, Record("r"))


# -- the bars -------------------------------------------------------------------------------------

def test_idle_keepalive_close_costs_no_call(tmp_path):
    """The server closes connections idle 1 s; sessions think 2 s between calls."""
    with FaultServer(idle_close_s=1.0) as srv:
        res, rows = replay(tmp_path, srv.url, sessions(10, 10, think_s=2.0))
    assert len(rows) == 100 and res["errors"] == 0, Counter(r["error"] for r in rows)
    assert all(r["status"] == "ok" and r["output_tokens"] == 4 for r in rows)
    assert srv.connections >= 100  # each call after a think opened a fresh connection


def test_reused_connection_dropped_unanswered_is_resent(tmp_path):
    """The server drops a reused connection without answering when a request comes after 1 s idle
    (a request crossing an idle close); sessions think 1.5 s. Half the drops are FINs, half resets."""
    with FaultServer(lambda r: (("rst",) if r.n % 2 else ("drop",)) if r.served and r.idle_s >= 1.0 else ("ok",)) as srv:
        res, rows = replay(tmp_path, srv.url, sessions(10, 10, think_s=1.5))
    assert len(rows) == 100 and res["errors"] == 0, Counter(r["error"] for r in rows)
    assert all(r["status"] == "ok" for r in rows)
    by_call = Counter(r["call_index"] > 0 for r in rows if r["retries"] == 1)
    assert by_call[True] == 90 and by_call[False] == 0  # every call after a think was resent, once
    for r in rows:  # latency from the first attempt: sent is never after the intended start's think
        assert r["intended_start"] <= r["sent"] < r["first_token"]


def test_stalled_stream_fails_at_the_stall_limit_and_the_run_goes_on(tmp_path):
    stalled = {7, 23, 41}
    with FaultServer(lambda r: ("stall", 2) if r.n in stalled else ("ok",)) as srv:
        res, rows = replay(tmp_path, srv.url, sessions(10, 5, think_s=0.0), ClientConfig(stall_timeout_s=1.0))
    assert len(rows) == 50 and res["errors"] == 3
    bad = [r for r in rows if r["status"] != "ok"]
    assert {r["error_reason"] for r in bad} == {"timeout:stall"}
    for r in bad:
        assert r["chunks"] == 2 and r["retries"] == 0
        waited = r["last_token"] - (r["first_token"] + sum(r["itl"]))  # from the last chunk to the failure
        assert 0.9 <= waited <= 1.1, waited
    assert sum(r["status"] == "ok" for r in rows) == 47


def test_mid_stream_resets_fail_exactly_those_calls(tmp_path):
    """5% of the connections are reset mid-stream, after 2 tokens."""
    with FaultServer(lambda r: ("reset", 2) if r.n % 20 == 0 else ("ok",)) as srv:
        res, rows = replay(tmp_path, srv.url, sessions(10, 10, think_s=0.0))
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 100 and res["calls"] == 100 and len(bad) == res["errors"] == 5
    assert {r["error_reason"] for r in bad} == {"reset"} and all(r["retries"] == 0 for r in bad)
    assert all(r["chunks"] == 2 for r in bad)  # what arrived before the reset is kept
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 95 and all(r["output_tokens"] == 4 and r["chunks"] == 4 for r in ok)


# -- each failure its reason ----------------------------------------------------------------------

ERROR_BODY = b'{"error": {"message": "the engine is overloaded", "type": "x"}}'
CASES = {
    "http 500": (("status", 500, {}, ERROR_BODY), "http:500", "HTTP 500: the engine is overloaded"),
    "503 no Retry-After": (("status", 503, {}, b"busy"), "http:503", "HTTP 503: busy"),
    "503 Retry-After": (("status", 503, {"Retry-After": "2"}, b"busy"), "rejected:503", "(Retry-After 2 s)"),
    "429": (("status", 429, {"Retry-After": "1"}, ERROR_BODY), "rejected:429", "overloaded"),
    "not JSON": (("events", [b"{not json"]), "malformed", "an event is not JSON"),
    "not OpenAI": (("events", [b'{"choices": "x"}']), "malformed", "'choices' is not a list of objects"),
    "no choices": (("events", [b'{"id": 1}', b"[DONE]"]), "malformed", "neither 'choices' nor 'usage'"),
    "bad usage": (("events", [token(0, True), b'{"choices": [], "usage": {"prompt_tokens": "3"}}', b"[DONE]"]),
                  "malformed", "usage prompt_tokens is not a count"),
    "no [DONE]": (("events", [token(0, True)]), "malformed", "ended before data: [DONE]"),
    "no token": (("events", [usage(0), b"[DONE]"]), "malformed", "no token"),
    "error event": (("events", [token(0, False), b'{"error": {"message": "KV cache full"}}']), "stream-error",
                    "KV cache full"),
    "not HTTP": (("raw", b"SSH-2.0-OpenSSH\r\n"), "malformed", "not an HTTP response"),
    "closed before answering": (("drop",), "reset", "closed the connection"),
    "reset mid-stream": (("reset", 1), "reset", "disconnected"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_failure_has_its_reason_and_never_raises(name):
    action, reason, text = CASES[name]
    with FaultServer(lambda r: action) as srv:
        rec = call(srv.url)
    assert (rec.status, rec.error_reason, rec.retries) == ("error", reason, 0)
    assert text in rec.error and rec.last_token is not None


def test_a_fresh_connection_is_never_resent():
    """EOF before any byte on a connection just opened is the server's answer, not a stale keep-alive."""
    with FaultServer(lambda r: ("drop",)) as srv:
        rec = call(srv.url)
        assert srv.n == 1
    assert rec.error_reason == "reset" and rec.retries == 0


def test_a_reused_connection_reset_mid_stream_is_not_resent():
    with FaultServer(lambda r: ("reset", 2) if r.served else ("ok",)) as srv:
        client = StreamingClient(srv.url)
        first, second = call(srv.url, client=client), call(srv.url, client=client)
        assert srv.n == 2 and srv.connections == 1
    assert first.status == "ok" and (second.error_reason, second.retries, len(second.chunk_times)) == ("reset", 0, 2)


def test_rejected_call_resent_after_retry_after_when_asked():
    with FaultServer(lambda r: ("status", 429, {"Retry-After": "0.3"}, b"{}") if r.n == 1 else ("ok",)) as srv:
        rec = call(srv.url, ClientConfig(retry_rejected=1))
    assert (rec.status, rec.retries, rec.http_status, len(rec.chunk_times)) == ("ok", 1, 200, 4)
    assert rec.first_token - rec.sent >= 0.3  # the wait counts: latency from the first send
    with FaultServer(lambda r: ("status", 429, {"Retry-After": "0.1"}, b"{}")) as srv:
        rec = call(srv.url, ClientConfig(retry_rejected=2))
        assert srv.n == 3
    assert (rec.error_reason, rec.retries) == ("rejected:429", 2)


@pytest.mark.parametrize("kind,config,limit", [
    ("ttft", ClientConfig(ttft_timeout_s=0.5), 0.5),
    ("total", ClientConfig(timeout_s=0.8), 0.8),
])
def test_timeouts(kind, config, limit):
    behave = (lambda r: ("silent",)) if kind == "ttft" else (lambda r: ("ok",))
    with FaultServer(behave, chunks=20, itl_s=0.1) as srv:
        rec = call(srv.url, config)
    assert rec.error_reason == f"timeout:{kind}", rec.error
    assert limit * 0.95 <= rec.last_token - rec.sent <= limit * 1.1


def test_connect_timeout_and_refused():
    with socket.socket() as full:  # a listener whose accept queue is full drops new SYNs: connect hangs
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(3):  # the first fills the queue; the others' SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        t = time.perf_counter()
        rec = call(f"http://127.0.0.1:{port}", ClientConfig(connect_timeout_s=0.5))
        assert rec.error_reason == "timeout:connect", rec.error
        assert 0.45 <= time.perf_counter() - t <= 1.0
        for s in fillers:
            s.close()
    rec = call(f"http://127.0.0.1:{port}")  # nothing listens there now
    assert rec.error_reason == "connect" and "cannot connect" in rec.error


def test_done_without_the_body_end_keeps_the_call():
    """[DONE] arrived but the chunked body never ends: the call is whole; the connection is not kept."""
    with FaultServer(lambda r: ("events", [token(0, True), usage(1), b"[DONE]"], False)) as srv:
        t = time.perf_counter()
        rec = call(srv.url, ClientConfig(stall_timeout_s=5.0))
    assert (rec.status, len(rec.chunk_times), rec.output_tokens) == ("ok", 1, 1), rec.error
    assert time.perf_counter() - t < 2.0


def test_a_json_completion_counts_as_one_chunk():
    body = b'{"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}'
    with FaultServer(lambda r: ("json", body)) as srv:
        rec = call(srv.url)
    assert (rec.status, len(rec.chunk_times), rec.output_tokens, rec.finish_reason) == ("ok", 1, 1, "stop")


def test_config_is_validated():
    for bad in ({"stall_timeout_s": -1}, {"timeout_s": 0}, {"retry_rejected": 1.5}, {"ttft_timeout_s": "1"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ClientConfig(**bad)


@pytest.mark.parametrize("flag,value", [("--stall-timeout", "-1"), ("--ttft-timeout", "x"), ("--timeout", "0"),
                                        ("--connect-timeout", "-0.5"), ("--retry-rejected", "1.5")])
def test_bad_flags_exit_2_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--trace", "profile:demo", flag, value])
    assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("key,value", [("stall_timeout_s", "-1"), ("retry_rejected", "2.5"), ("ttft_timeout_s", "-3")])
def test_bad_spec_fields_exit_2_naming_the_field(tmp_path, key, value, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[trace]\npath = "profile:demo"\n\n[load]\n{key} = {value}\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"field 'load.{key}'" in err[0] and str(spec) in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything ran
