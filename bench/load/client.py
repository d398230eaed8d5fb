"""The one streaming HTTP client of every load generator.

It timestamps the send, every SSE chunk and the end with one monotonic clock
(time.perf_counter), reads usage (prompt, completion and cached tokens) from the final usage
chunk, and turns every failure (HTTP status, timeout, disconnect, malformed stream) into a
recorded error instead of an exception, so a run never stops for one bad request.

It is plain blocking I/O on http.client: under locust, gevent makes it cooperative; the open-loop
scheduler runs it on threads.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Record:
    """One call as the client saw it. Times are perf_counter seconds; analysis subtracts them."""
    request_id: str
    session: str = ""
    call_index: int = 0
    intended: float | None = None  # when the schedule wanted it sent (open loop), or the think end
    sent: float = 0.0
    first_token: float | None = None  # first chunk with choices (vLLM's TTFT)
    last_token: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every chunk with choices, in order
    prompt_tokens: int | None = None  # as the server reports them
    output_tokens: int | None = None
    cached_tokens: int | None = None
    expected_prompt_tokens: int = 0  # what we sent / asked for
    expected_output_tokens: int = 0
    status: str = "ok"  # ok | error
    http_status: int | None = None
    error: str | None = None
    finish_reason: str | None = None
    text: str = ""  # the response text (kept for text traces; empty for token-id prompts)
    warmup: bool = False  # sent during warm-up: recorded, excluded from measurement
    # set by a tier gateway (bench/tiers/gateway/) in its response headers
    routed_tier: str | None = None  # the tier the routing policy picked
    network_s: float | None = None  # the round trip it injected (uplink + downlink)
    route_reason: str | None = None


class StreamingClient:
    """One keep-alive connection to an OpenAI-compatible server (one per user or worker)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0, keep_text: bool = False):
        u = urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path  # e.g. "" or "/v1"-less proxies mounted under a path
        self.timeout_s = timeout_s
        self.keep_text = keep_text
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn.sock is not None:
            # An idle keep-alive connection that is readable has been closed by the server
            # (uvicorn does so after 5 s idle: any longer think time): reconnect, as urllib3 does.
            try:
                readable = select.select([self._conn.sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = True
            if readable:
                self.close()
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stream(self, path: str, payload: dict, rec: Record, extra_headers: dict | None = None) -> Record:
        """POST payload (stream=True is forced) and fill rec as chunks arrive."""
        payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        body = json.dumps(payload).encode()
        headers = {**self.headers, **(extra_headers or {})}
        text_parts: list[str] = []
        try:
            conn = self._connection()
            rec.sent = time.perf_counter()
            conn.request("POST", self.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            rec.http_status = resp.status
            tier = resp.getheader("x-tierbench-tier")
            if tier is not None:
                rec.routed_tier = tier
                rec.route_reason = resp.getheader("x-tierbench-route-reason")
                rtt = resp.getheader("x-tierbench-rtt-ms")
                rec.network_s = float(rtt) / 1000.0 if rtt else None
            if resp.status != 200:
                detail = resp.read(2000).decode("utf-8", "replace")
                return self._fail(rec, f"HTTP {resp.status}: {_error_message(detail)}")
            done = False
            while True:
                line = resp.readline()
                if not line:
                    break
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    return self._fail(rec, f"stream error: {_error_message(json.dumps(chunk))}")
                choices = chunk.get("choices") or []
                if choices:
                    c0 = choices[0]
                    piece = c0.get("text")
                    if piece is None:
                        piece = (c0.get("delta") or {}).get("content")
                    # As vLLM's benchmark client: every chunk with choices is timed, even when
                    # its text is empty (a special token, or bytes of a partial character).
                    if rec.first_token is None:
                        rec.first_token = now
                    rec.chunk_times.append(now)
                    rec.last_token = now
                    if piece and self.keep_text:
                        text_parts.append(piece)
                    if c0.get("finish_reason"):
                        rec.finish_reason = c0["finish_reason"]
                u = chunk.get("usage")
                if u:
                    rec.prompt_tokens = u.get("prompt_tokens")
                    rec.output_tokens = u.get("completion_tokens")
                    details = u.get("prompt_tokens_details") or {}
                    rec.cached_tokens = details.get("cached_tokens")
            if not done:
                return self._fail(rec, "disconnected: stream ended before [DONE]")
            resp.read()  # the chunked body's terminator: the connection is reusable only after it
            if rec.first_token is None:
                return self._fail(rec, "no choices in the stream")
        except (socket.timeout, TimeoutError):
            return self._fail(rec, f"timeout after {self.timeout_s:g} s")
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            return self._fail(rec, f"disconnected: {type(e).__name__}: {e}")
        except (ValueError, KeyError) as e:
            return self._fail(rec, f"malformed stream: {e}")
        rec.text = "".join(text_parts)
        return rec

    def _fail(self, rec: Record, message: str) -> Record:
        rec.status = "error"
        rec.error = message
        if rec.last_token is None:
            rec.last_token = time.perf_counter()
        self.close()  # the connection's state is unknown after an error: start clean
        return rec


def _error_message(body: str) -> str:
    try:
        return str(json.loads(body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body.strip().replace("\n", " ")[:300]
