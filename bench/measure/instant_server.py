"""An instant OpenAI-compatible streaming server for self-calibration: no model, no tokenizer.
It answers POST /v1/completions (and /v1/chat/completions) with `max_tokens` SSE chunks, the
first after `--ttft-ms`, then one every `--itl-ms`, a usage chunk and [DONE]; /health and
/v1/models too. For each request it logs (keyed by the X-Request-Id header) when the request was
complete (`received`: when this process read it; `arrived`: when its last bytes reached the
socket, the kernel's stamp, where bench/load/wire.py can get one) and when each chunk was written,
on time.perf_counter, which on Linux is the system-wide monotonic clock: the client's timestamps
of the same request are directly comparable. A busy server reads a request late; `arrived` keeps
that lateness out of what calibration charges to the client.

    python -m bench.measure.instant_server --port 8000 --log server-times.jsonl

Plain asyncio on non-blocking sockets (recvmsg, for the stamps), so the server's own overhead
stays far below what it calibrates.
`InstantServer` starts it in its own process for tests and measurements.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from pathlib import Path

from bench.load.wire import arrival, enable_stamps
from engines.process import ChildProcess, free_port, start_logged, stop_group, wait_http_ok

CHUNK = ('data: {"id":"cmpl-i","object":"text_completion","created":0,"model":"instant",'
         '"choices":[{"index":0,"text":" x","finish_reason":null}]}\n\n')


class Instant:
    def __init__(self, ttft_s: float, itl_s: float, log_path: str | None, max_output: int = 0):
        self.ttft_s, self.itl_s, self.max_output = ttft_s, itl_s, max_output
        self.log = open(log_path, "a") if log_path else None

    async def handle(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        try:
            while True:
                arrived = None
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    if (arrived := await _recv(loop, sock, buf)) is None:
                        return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                need = end + 4 + int(headers.get("content-length", 0))
                while len(buf) < need:
                    if (arrived := await _recv(loop, sock, buf)) is None:
                        return
                body = bytes(buf[end + 4:need])
                del buf[:need]
                received = time.perf_counter()
                if method == "GET":
                    payload = b'{"object":"list","data":[{"id":"instant","object":"model"}]}' if path == "/v1/models" else b"{}"
                    await loop.sock_sendall(sock, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                  b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
                    continue
                req = json.loads(body or b"{}")
                await self.stream(loop, sock, req, headers.get("x-request-id", ""), received,
                                  received if arrived is None else arrived)
        except (ConnectionError, OSError):
            pass
        finally:
            sock.close()

    async def stream(self, loop, sock, req: dict, request_id: str, received: float, arrived: float) -> None:
        n = max(1, int(req.get("max_tokens") or 16))
        n = min(n, self.max_output) if self.max_output > 0 else n
        prompt = req.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) else 1
        await loop.sock_sendall(sock, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n")
        writes = []
        start = received + self.ttft_s
        for i in range(n):
            delay = start + i * self.itl_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            data = CHUNK.encode()
            # stamped before the send: on 2 cores the send can wake the client onto this core before a
            # stamp taken after it, and the server's delay would then be charged to the client. Before
            # the send, the send's own cost is charged to the client: the conservative side.
            writes.append(time.perf_counter())
            await loop.sock_sendall(sock, b"%x\r\n%s\r\n" % (len(data), data))
        usage = ('data: {"id":"cmpl-i","object":"text_completion","created":0,"model":"instant","choices":[],'
                 f'"usage":{{"prompt_tokens":{n_prompt},"completion_tokens":{n},"total_tokens":{n_prompt + n},'
                 '"prompt_tokens_details":{"cached_tokens":0}}}\n\ndata: [DONE]\n\n').encode()
        await loop.sock_sendall(sock, b"%x\r\n%s\r\n0\r\n\r\n" % (len(usage), usage))
        if self.log:
            self.log.write(json.dumps({"request_id": request_id, "received": received, "arrived": arrived,
                                       "writes": writes}) + "\n")
            self.log.flush()


async def _recv(loop, sock: socket.socket, buf: bytearray) -> float | None:
    """Append what sock has (waiting for it) to buf: when it arrived (bench.load.wire.arrival), None at EOF."""
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(65536, 64)
            break
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
    if not data:
        return None
    buf += data
    return arrival(anc, time.perf_counter())


async def serve(host: str, port: int, inst: Instant) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server((host, port), backlog=1024)
    listener.setblocking(False)
    handlers: set[asyncio.Task] = set()  # referenced until done: the loop keeps only weak ones
    while True:
        sock, _ = await loop.sock_accept(listener)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_stamps(sock)
        task = loop.create_task(inst.handle(sock))
        handlers.add(task)
        task.add_done_callback(handlers.discard)


class InstantServer(ChildProcess):
    """The instant server in its own process on a free loopback port, as a context manager: its
    output goes to log_dir/instant-server.log and its per-request timestamps to `times_log`."""

    def __init__(self, log_dir: Path, ttft_ms: float = 20.0, itl_ms: float = 10.0, times_log: Path | None = None,
                 max_output: int = 0):
        self.log_path = Path(log_dir) / "instant-server.log"
        self.ttft_ms, self.itl_ms, self.times_log, self.max_output = ttft_ms, itl_ms, times_log, max_output
        self.proc = None
        self.port = 0
        self.url = ""

    def start(self) -> "InstantServer":
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.measure.instant_server", "--port", str(self.port),
               "--ttft-ms", str(self.ttft_ms), "--itl-ms", str(self.itl_ms)]
        if self.times_log:
            cmd += ["--log", str(self.times_log)]
        if self.max_output:
            cmd += ["--max-output", str(self.max_output)]
        self.proc = start_logged(cmd, self.log_path)
        try:
            wait_http_ok(self.url + "/health", 30.0, self.proc, "the instant server", self.log_path, poll_s=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_group(self.proc, ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)))



if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.measure.instant_server", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--log", default=None, help="JSONL of per-request server timestamps")
    ap.add_argument("--max-output", type=int, default=0, metavar="N",
                    help="answer at most N chunks whatever max_tokens asks (a server that does not honour "
                         "max_tokens, for tests of clients; default 0: no cap)")
    a = ap.parse_args()
    try:
        asyncio.run(serve(a.host, a.port, Instant(a.ttft_ms / 1000, a.itl_ms / 1000, a.log, a.max_output)))
    except KeyboardInterrupt:
        pass
