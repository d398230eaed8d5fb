"""The injected delay: when each piece of a call crosses the simulated network (Link), a timer
precise to well under a millisecond (Timers), and the client side that writes each piece at its
due time (Downlink)."""
from __future__ import annotations

import asyncio
import heapq
import os
import socket
import struct
import time
from collections import deque


class Timers:
    """Sleeps until an absolute perf_counter time with sub-millisecond precision: one Linux
    timerfd (CLOCK_MONOTONIC, perf_counter's clock) armed for the earliest due time, watched by
    the event loop. The loop's own timers (uvloop's and asyncio's) have millisecond resolution,
    which would shift every injected delay by up to a millisecond. Elsewhere: asyncio.sleep."""

    def __init__(self):
        self.heap: list = []
        self.seq = 0
        self.armed: float | None = None
        self.fd = -1
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
            if fd < 0 or time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
                raise OSError("no timerfd")

            class _TS(ctypes.Structure):
                _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

            class _ITS(ctypes.Structure):
                _fields_ = [("interval", _TS), ("value", _TS)]
            self._its, self._settime, self._ctypes = _ITS(), libc.timerfd_settime, ctypes
            self.fd = fd
            asyncio.get_running_loop().add_reader(fd, self._fire)
        except (OSError, AttributeError):
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1

    async def sleep_until(self, due: float) -> None:
        if self.fd < 0:
            rem = due - time.perf_counter()
            if rem > 0:
                await asyncio.sleep(rem)
            return
        fut = asyncio.get_running_loop().create_future()
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, fut))
        if self.armed is None or due < self.armed:
            self._arm(due)
        await fut

    def _arm(self, due: float) -> None:
        self.armed = due
        sec = int(due)
        self._its.value.sec, self._its.value.nsec = sec, max(1, int((due - sec) * 1e9))
        self._settime(self.fd, 1, self._ctypes.byref(self._its), None)  # TFD_TIMER_ABSTIME

    def _fire(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        now = time.perf_counter() + 20e-6
        heap = self.heap
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)
        self.armed = None
        if heap:
            self._arm(heap[0][0])


class Link:
    """When each piece of one direction of one call is delivered: arrival + RTT/2 (+ jitter,
    + time on the link at the tier's bandwidth), never before the previous piece."""
    __slots__ = ("half", "net", "rng", "free", "last", "plain")

    def __init__(self, half: float, net, rng):
        self.half, self.net, self.rng = half, net, rng
        self.free = 0.0
        self.last = 0.0
        self.plain = not net.bandwidth_mbps and not net.jitter_ms

    def due(self, arrival: float, nbytes: int) -> float:
        if self.plain:  # the common case, per piece: keep it short
            t = arrival + self.half
        else:
            t = arrival
            if self.net.bandwidth_mbps:
                t = max(t, self.free) + self.net.transfer_s(nbytes)
                self.free = t
            t += self.half
            if self.net.jitter_ms:
                t = max(t + self.net.draw_jitter_s(self.rng), arrival)
        if t < self.last:
            t = self.last
        self.last = t
        return t


class Downlink:
    """Writes pieces to the client at their due times, in order; at once when already due. An
    injected reset (`reset`) goes in the same queue: at its time the connection is reset (RST)."""
    __slots__ = ("writer", "transport", "timers", "q", "task", "trace", "first_out", "last_out", "error",
                 "was_reset")

    def __init__(self, writer: asyncio.StreamWriter, timers: Timers, trace: list | None):
        self.writer, self.timers = writer, timers
        self.transport = writer.transport
        self.q: deque = deque()
        self.task: asyncio.Task | None = None
        self.trace = trace
        self.first_out: float | None = None  # when the first and the last body bytes went out
        self.last_out: float | None = None
        self.error: BaseException | None = None
        self.was_reset = False

    def reset(self, due: float) -> None:
        """Reset the connection at `due`, after what was sent before."""
        self.send(None, due, False)

    def send(self, data: bytes | None, due: float, body: bool = True, now: float | None = None) -> None:
        """Deliver data at `due` (perf_counter); `now`, when the caller has it, saves a clock read;
        None: the reset."""
        if self.error is not None:
            raise self.error
        if not self.q and due <= (now if now is not None else time.perf_counter()):
            self._write(data, body)
            return
        self.q.append((due, data, body))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def _write(self, data: bytes | None, body: bool) -> None:
        t = self.transport
        if t.is_closing():
            raise ConnectionResetError("the client went away")
        if data is None:
            self._reset()
            return
        # The release time, read before the write (one clock read per piece, about 50 ns): the write
        # wakes the client, which may take this core before the write returns.
        now = time.perf_counter() if body else 0.0
        try:
            t.write(data)
        except RuntimeError as e:  # uvloop: the handle is closed
            raise ConnectionResetError(f"the client went away: {e}") from None
        if body:
            self.last_out = now
            if self.first_out is None:
                self.first_out = now
            if self.trace is not None:
                self.trace.append(now)

    async def _run(self) -> None:
        try:
            while self.q:
                due, data, body = self.q[0]
                if due > time.perf_counter():
                    await self.timers.sleep_until(due)
                self.q.popleft()
                self._write(data, body)
                if self.writer.transport.get_write_buffer_size() > 65536:
                    await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self.error = e
        finally:
            self.task = None

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST and drops what was not sent."""
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
        self.was_reset = True
        self.transport.abort()

    async def flush(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)
        if self.error is not None:
            raise self.error
        if not self.was_reset:
            await self.writer.drain()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.q.clear()
