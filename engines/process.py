"""Child processes: the one place that knows how tierbench starts, watches and stops them.

Every server, gateway, locust process and measurement helper is started here: on a free loopback
port, in its own session (so Ctrl-C in the terminal reaches us and we stop the whole group), with
its output in a log file, and asked to die with its parent (a run killed outright by SIGKILL gets
no chance to clean up). Used by engines/launch.py, bench/ and tools/.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# The usual escalation: a polite interrupt, then SIGTERM, then SIGKILL.
STOP_STEPS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


class ChildProcess:
    """What every started child shares (engine servers, the tier gateway, the instant server): a
    context manager that starts it and stops it on every exit, Ctrl-C included, and the tail of
    its log for error messages. A subclass sets `log_path` and defines start() and stop()."""

    log_path: Path

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, n: int = 20) -> str:
        return log_tail(self.log_path, n)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, never one this process handed out before: servers started at once (an
    A/B's two, side-by-side engines) bind seconds later, and the kernel may offer a port again as
    soon as the probe closes it."""
    with _port_lock:
        for _ in range(100):
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no free port that was not handed out before")


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to the hard one (a server with a thousand
    idle connections needs more than the common 1024); the new soft limit."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return -1


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies, so a server never
    outlives a run that was killed outright (SIGKILL leaves no chance to clean up)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def start_logged(cmd: Sequence[str], log_path: Path | str | None, env: dict | None = None,
                 cwd: Path | str | None = None, cpus: Sequence[int] | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session that dies with us, its stdout and stderr appended to log_path
    (discarded when None), pinned to `cpus` when given (set before exec, so every thread it starts
    inherits it)."""
    def preexec() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    if log_path is None:
        return subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)


def log_tail(path: Path | str, n: int = 20) -> str:
    """The last n lines of a log, joined on one line (for error messages)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen | None, what: str, log_path: Path | str,
                 died: type[Exception] = RuntimeError, poll_s: float = 0.5) -> None:
    """Poll GET `url` until it answers 200. Raises `died` if `proc` exits first, TimeoutError after
    timeout_s; both messages name `what`, its log and why the last poll failed."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise died(f"{what} exited with status {proc.returncode} during start-up; see {log_path}: {log_tail(log_path, 3)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read(500).decode('utf-8', 'replace')}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        time.sleep(poll_s)
    raise TimeoutError(f"{what} is not healthy after {timeout_s:.0f} s ({last}); see {log_path}")


def stop_groups(procs: Sequence[subprocess.Popen | None], steps=STOP_STEPS) -> None:
    """Signal the process group of every live process (each started in its own session) with
    each (signal, wait) in turn, all together, until they have exited: one grace period for the
    lot, not one each."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for sig, wait in steps:
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        live = [p for p in live if p.poll() is None]
        if not live:
            return


def stop_group(p: subprocess.Popen | None, steps=STOP_STEPS) -> None:
    """Signal the process group of p (started with start_logged or start_new_session) with each
    (signal, wait) in turn until it exits."""
    stop_groups([p], steps)
