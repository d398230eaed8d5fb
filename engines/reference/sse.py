"""Server-sent events: the streaming response body (sse_stream, built from a Generation's events)
and the response class that sends it (SSEResponse), which stops, and aborts the request, as soon
as the client disconnects.
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Callable

from engines.reference.api_protocol import APIError, ResponseMeta
from engines.reference.engine_loop import Generation


def sse(obj: dict) -> bytes:
    """One event: `data: ` and the compact JSON, then a blank line."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def sse_stream(gen: Generation, meta: ResponseMeta, include_usage: bool, continuous: bool,
                     want_ids: bool) -> AsyncIterator[bytes]:
    """The SSE body of a streaming response: one chunk per event of `gen`, then the usage chunk if
    asked for, then [DONE]. An error after the headers went out can only be sent as an event."""
    first = True
    try:
        async for text, ids in gen.events():
            chunk = meta.chunk(text, gen.finish_reason if gen.finished else None,
                               gen.stop_reason if gen.finished else None, first=first,
                               token_ids=ids if want_ids else None)
            if want_ids and first:
                chunk["prompt_token_ids"] = gen.prompt_ids
            if continuous:
                chunk["usage"] = gen.usage()
            first = False
            yield sse(chunk)
        if include_usage:
            yield sse(meta.usage_chunk(gen.usage()))
    except APIError as e:
        yield sse(e.body())
    finally:
        gen.close()
    yield b"data: [DONE]\n\n"


# The class is built on first use: starlette and anyio are imported only once a server streams,
# so that the CLI can import the server modules cheaply.
def _sse_response_class():
    import anyio
    from starlette.responses import StreamingResponse

    class _SSE(StreamingResponse):
        """Server-sent events that stop, and run on_close, as soon as the client disconnects,
        whichever ASGI spec version the server speaks."""

        def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.on_close = on_close

        async def __call__(self, scope, receive, send) -> None:
            try:
                async with anyio.create_task_group() as tg:
                    async def run_stream() -> None:
                        try:
                            await self.stream_response(send)
                        except OSError:
                            pass  # the client went away
                        tg.cancel_scope.cancel()

                    async def run_listen() -> None:
                        await self.listen_for_disconnect(receive)
                        tg.cancel_scope.cancel()

                    tg.start_soon(run_stream)
                    await run_listen()
            finally:
                try:
                    await self.body_iterator.aclose()
                finally:
                    self.on_close()

    return _SSE


_SSE_CLASS = None


def SSEResponse(content: AsyncIterator[bytes], on_close: Callable[[], None]):
    """A streaming response of `content` that calls on_close once it ends, however it ends."""
    global _SSE_CLASS
    if _SSE_CLASS is None:
        _SSE_CLASS = _sse_response_class()
    return _SSE_CLASS(content, on_close)
