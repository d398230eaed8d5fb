"""Shared fixtures: the real traces in ../shared/traces (tests that need them skip without them)
and the tiny model, built once per test session."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def shared(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from engines.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def weka_trace():
    from traces.load import load_trace
    return load_trace(shared("weka-kv-cache-tester"))


class RefServer:
    """The reference server for tests (`python -m engines.reference.server` through the run's own
    launcher), served as 'tiny' with one torch thread: `.url`, `.wait_ready()`, `.stop()`."""

    NAME = "tiny"

    def __init__(self, model_dir: Path, log: Path, *extra: str, max_model_len: int = 1024):
        from engines.launch import EngineSpec, Server
        spec = EngineSpec("reference", name=log.stem, model=str(model_dir), served_model=self.NAME,
                          args=["--served-model-name", self.NAME, "--max-model-len", str(max_model_len),
                                "--num-threads", "1", *extra], env={"TIERBENCH_API_KEY": ""})
        self.server = Server(spec, log.parent)

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.server.spec.startup_timeout_s = timeout
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def proc(self):
        return self.server.proc

    @property
    def log(self) -> Path:
        return self.server.log_path

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def serving(*servers: RefServer):
    """Start every server (one after another: two at once starve each other on 2 cores), yield
    them, and stop them all however the block ends."""
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
