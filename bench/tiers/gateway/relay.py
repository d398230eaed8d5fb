"""One call's way through the gateway after routing: the request sent on a pooled upstream
connection, and the answer relayed to the client through the downlink, each piece RTT/2 after it
arrived. A non-streamed (or error) answer is read whole and delivered RTT/2 after it is complete;
a stream goes out piece by piece as it came, re-framed in chunks. An injected reset or stall
(`strike`) falls on a stream after the first chunk of its body, on a whole answer in its place."""
from __future__ import annotations

import asyncio
import time

import orjson

from bench.tiers.gateway.delay import Downlink, Link
from bench.tiers.gateway.http1 import HOP, LAST_CHUNK, REASONS, HTTPError, error_body, error_message, frame
from bench.tiers.gateway.upstream import Upstream, UpstreamConn, UpstreamError

RESET = "injected fault: connection reset"


async def send_upstream(up: Upstream, head: bytes, body: bytes, rec: dict) -> UpstreamConn:
    """Send the request on a pooled connection (a fresh one when a reused one turns out closed
    before any answer); the connection, with the answer's status and header fields read."""
    for attempt in (0, 1):
        conn = up.take_idle() if attempt == 0 else None
        reused = conn is not None
        if conn is None:
            try:
                conn = await up.connect()
            except (OSError, asyncio.TimeoutError) as e:
                raise HTTPError(502, f"upstream {up.url} unreachable: {type(e).__name__}: {e}",
                                "upstream_unreachable") from None
        try:
            rec["upstream_sent"] = time.perf_counter()
            conn.write(head + body)
            await conn.head()
        except (OSError, RuntimeError, UpstreamError) as e:
            conn.close()
            if conn.failure is not None:
                raise HTTPError(502, f"upstream {up.url}: {conn.failure}", "upstream_error") from None
            if reused:
                continue
            raise HTTPError(502, f"upstream {up.url} closed the connection: {type(e).__name__}: {e}",
                            "upstream_unreachable") from None
        return conn
    raise AssertionError("unreachable")


async def relay(conn: UpstreamConn, up: Upstream, ours: bytes, down: Downlink, link: Link, rec: dict,
                chunks_in: list | None, keep: bool, strike: str | None = None, stall_s: float = 0.0) -> bool:
    """Relay upstream's answer to the client with `ours` (the decision headers) added; whether
    the client's connection stays open. strike: "reset" or "stall" (stall_s long), or None."""
    status = conn.status
    rec["status"] = status
    fwd = b"".join(k + b": " + v + b"\r\n" for k, v in conn.headers if k not in HOP)
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Upstream").encode())
    tail = b"" if keep else b"connection: close\r\n"
    if status >= 400 or b"chunked" not in conn.header(b"transfer-encoding").lower():
        # not streamed (or an error): read it all, deliver RTT/2 after the answer is complete
        try:
            payload = await conn.whole()
        except UpstreamError as e:
            conn.close()
            raise HTTPError(502, f"upstream {up.url} broke off its answer: {e}", "upstream_error") from None
        arrived = time.perf_counter()
        rec["upstream_first"] = rec["upstream_last"] = arrived
        if chunks_in is not None:
            chunks_in.append(arrived)
        up.give_back(conn)
        if status >= 400:
            payload = _error_payload(status, payload, up)
            fwd = b"".join(k + b": " + v + b"\r\n" for k, v in conn.headers if k not in HOP and k != b"content-type")
            fwd += b"content-type: application/json\r\n"
            rec["error"] = error_message(payload)
        out = status_line + fwd + ours + b"content-length: %d\r\n" % len(payload) + tail + b"\r\n" + payload
        if strike == "stall":
            link.half += stall_s
        if strike == "reset":
            down.reset(link.due(arrived, 0))
            rec["error"] = RESET
            await down.flush()
            return False
        down.send(out, link.due(arrived, len(out)))
        await down.flush()
        return keep
    out = status_line + fwd + ours + b"transfer-encoding: chunked\r\n" + tail + b"\r\n"
    down.send(out, link.due(time.perf_counter(), len(out)), body=False)
    how = await _stream(conn, down, link, rec, chunks_in, strike, stall_s)
    if how == "end":
        up.give_back(conn)
        await down.flush()
        return keep
    conn.close()  # the engine sees the disconnect and aborts the request
    rec["error"] = RESET if how == "reset" else "upstream closed the stream before its end"
    await down.flush()
    return False  # the client saw a truncated chunked body: its connection closes


async def _stream(conn: UpstreamConn, down: Downlink, link: Link, rec: dict, chunks_in: list | None,
                  strike: str | None, stall_s: float) -> str:
    """Every read's body pieces go out, framed as chunks, RTT/2 after their arrival. "end" when the
    body ended, "lost" when upstream's connection did first, "reset" when an injected reset cut it."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    client = down.writer.transport
    upstream = conn.transport
    first = True  # no chunk of body out yet (tracked for a strike)

    def resume() -> None:
        async def wait():
            try:
                await down.writer.drain()
                upstream.resume_reading()
            except (ConnectionError, OSError, RuntimeError) as e:
                if not done.done():
                    done.set_exception(e)
        loop.create_task(wait())

    def sink(pieces: list[bytes] | None, complete: bool) -> None:
        nonlocal first
        if done.done():
            return
        try:
            if pieces is None:  # upstream's connection ended first
                done.set_result("lost")
                return
            now = time.perf_counter()
            if rec["upstream_first"] is None:
                rec["upstream_first"] = now
            rec["upstream_last"] = now
            if chunks_in is not None:
                chunks_in.append(now)
            if strike is not None:
                if first and pieces:  # the first chunk goes out as it came; the strike falls on what follows
                    one = frame(pieces[:1])
                    down.send(one, link.due(now, len(one)), True, now)
                    first, pieces = False, pieces[1:]
                    if strike == "stall":
                        link.half += stall_s
                if strike == "reset" and (pieces or complete):
                    down.reset(link.due(now, 0))
                    done.set_result("reset")
                    return
            data = frame(pieces)
            out = data + LAST_CHUNK if complete else data
            if out:
                down.send(out, link.due(now, len(out)), True, now)
            if complete:
                done.set_result("end")
            elif client.get_write_buffer_size() > 1 << 20:  # a slow client: stop reading upstream
                upstream.pause_reading()
                resume()
        except BaseException as e:
            if not done.done():
                done.set_exception(e)

    conn.stream(sink)
    try:
        return await done
    except BaseException:
        conn.close()
        raise


def _error_payload(status: int, payload: bytes, up: Upstream) -> bytes:
    """Upstream's own JSON error body as it is; anything else wrapped in an OpenAI-style one."""
    try:
        obj = orjson.loads(payload)
        if isinstance(obj, dict) and isinstance(obj.get("error"), (dict, str)):
            return payload
    except ValueError:
        obj = None
    detail = obj.get("detail") if isinstance(obj, dict) else None
    message = str(detail) if detail is not None else payload.decode("utf-8", "replace").strip()[:2000]
    return error_body(status, f"upstream {up.url}: HTTP {status}: {message}",
                      "upstream_error" if status >= 500 else "invalid_request_error")
