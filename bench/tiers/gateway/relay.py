"""One call's way through the gateway after routing: the request sent on a pooled upstream
connection, and the answer relayed to the client through the downlink, each piece RTT/2 after it
arrived. A non-streamed (or error) answer is read whole and delivered RTT/2 after it is complete;
a stream goes out piece by piece, its chunked framing included."""
from __future__ import annotations

import asyncio
import time

import orjson

from bench.tiers.gateway.delay import Downlink, Link
from bench.tiers.gateway.http1 import (HOP, REASONS, ChunkedEnd, HTTPError, error_body, error_message, parse_head,
                                       read_chunked_body)
from bench.tiers.gateway.upstream import Upstream, UpstreamConn


async def send_upstream(up: Upstream, head: bytes, body: bytes, rec: dict) -> tuple[UpstreamConn, int, bytes]:
    """Send the request on a pooled connection (a fresh one when a reused one turns out
    closed before any answer); (connection, status, header block)."""
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
            uhead = await conn.readuntil(b"\r\n\r\n")
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
            conn.close()
            if reused:
                continue
            raise HTTPError(502, f"upstream {up.url} closed the connection: {type(e).__name__}: {e}",
                            "upstream_unreachable") from None
        except asyncio.LimitOverrunError:
            conn.close()
            raise HTTPError(502, f"upstream {up.url}: response headers too large", "upstream_error") from None
        first = uhead.split(b"\r\n", 1)[0].split(b" ", 2)
        try:
            status = int(first[1])
        except (IndexError, ValueError):
            conn.close()
            raise HTTPError(502, f"upstream {up.url}: malformed status line {first!r}", "upstream_error") from None
        return conn, status, uhead
    raise AssertionError("unreachable")


async def relay(conn: UpstreamConn, up: Upstream, status: int, uhead: bytes, ours: bytes, down: Downlink,
                link: Link, rec: dict, chunks_in: list | None, keep: bool) -> bool:
    """Relay upstream's answer to the client with `ours` (the decision headers) added; whether
    the client's connection stays open."""
    rec["status"] = status
    _, hs = parse_head(uhead)
    uh = dict(hs)
    up_keep = b"close" not in uh.get(b"connection", b"").lower()
    chunked = b"chunked" in uh.get(b"transfer-encoding", b"").lower()
    length = uh.get(b"content-length")
    fwd = b"".join(k + b": " + v + b"\r\n" for k, v in hs if k not in HOP)
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Upstream").encode())
    tail = b"" if keep else b"connection: close\r\n"
    if status >= 400 or not chunked:
        # not streamed (or an error): read it all, deliver RTT/2 after the answer is complete
        try:
            if chunked:
                payload = await read_chunked_body(conn, 256 << 20)
            elif length is not None:
                payload = await conn.readexactly(int(length))
            else:
                payload = await conn.read()
                up_keep = False
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            conn.close()
            raise HTTPError(502, f"upstream {up.url} broke off its answer: {type(e).__name__}: {e}",
                            "upstream_error") from None
        arrived = time.perf_counter()
        rec["upstream_first"] = arrived
        if chunks_in is not None:
            chunks_in.append(arrived)
        _release(up, conn, up_keep)
        if status >= 400:
            payload = _error_payload(status, payload, up)
            fwd = b"".join(k + b": " + v + b"\r\n" for k, v in hs if k not in HOP and k != b"content-type")
            fwd += b"content-type: application/json\r\n"
            rec["error"] = error_message(payload)
        out = status_line + fwd + ours + b"content-length: %d\r\n" % len(payload) + tail + b"\r\n" + payload
        down.send(out, link.due(arrived, len(out)))
        await down.flush()
        return keep
    out = status_line + fwd + ours + b"transfer-encoding: chunked\r\n" + tail + b"\r\n"
    down.send(out, link.due(time.perf_counter(), len(out)), body=False)
    if not await _stream(conn, down, link, rec, chunks_in):
        conn.close()
        rec["error"] = "upstream closed the stream before its end"
        await down.flush()
        return False  # the client sees a truncated chunked body: close its connection
    _release(up, conn, up_keep)
    await down.flush()
    return keep


async def _stream(conn: UpstreamConn, down: Downlink, link: Link, rec: dict, chunks_in: list | None) -> bool:
    """Every piece of a streamed answer goes out as it came (its chunked framing included), RTT/2
    after its arrival; the connection's protocol hands it over without a task switch. True when the
    body ended, False when upstream's connection did first."""
    done = asyncio.get_running_loop().create_future()
    end = ChunkedEnd()
    client = down.writer.transport
    upstream = conn.transport

    def resume() -> None:
        async def wait():
            try:
                await down.writer.drain()
                upstream.resume_reading()
            except (ConnectionError, OSError, RuntimeError) as e:
                if not done.done():
                    done.set_exception(e)
        asyncio.get_running_loop().create_task(wait())

    def sink(data: bytes) -> None:
        try:
            if not data:  # upstream's connection ended
                if not done.done():
                    done.set_result(False)
                return
            now = time.perf_counter()
            if rec["upstream_first"] is None:
                rec["upstream_first"] = now
            if chunks_in is not None:
                chunks_in.append(now)
            stop = end.feed(data)
            if stop is None:
                down.send(data, link.due(now, len(data)), True, now)
                if client.get_write_buffer_size() > 1 << 20:  # a slow client: stop reading upstream
                    upstream.pause_reading()
                    resume()
                return
            conn.sink = None
            if stop < len(data):
                conn.buf += data[stop:]  # stray bytes: the connection is not reused
                data = data[:stop]
            down.send(data, link.due(now, len(data)))
            if not done.done():
                done.set_result(True)
        except BaseException as e:
            conn.sink = None
            if not done.done():
                done.set_exception(e)

    leftover = bytes(conn.buf)
    conn.buf.clear()
    conn.sink = sink
    if leftover:
        sink(leftover)
    elif conn.closed:
        sink(b"")
    try:
        return await done
    except BaseException:
        conn.close()
        raise


def _release(up: Upstream, conn: UpstreamConn, keep: bool) -> None:
    """Back to the pool when upstream keeps it open, else closed."""
    if keep:
        up.give_back(conn)
    else:
        conn.close()


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
