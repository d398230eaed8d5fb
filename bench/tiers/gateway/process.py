"""The gateway in its own process, started and stopped from Python (engines/process.py helpers)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bench.tiers.gateway.config import build_policy, gateway_config, load_config
from engines.process import ChildProcess, free_port, start_logged, stop_group, wait_http_ok

REPO = Path(__file__).resolve().parents[3]  # the child runs `python -m bench.tiers.gateway` from here


class GatewayProcess(ChildProcess):
    """The gateway in its own process. Use as a context manager (stopped on every exit path):

        with GatewayProcess(gateway_config(tiers, {"policy": "fixed", "tier": "edge"}), run_dir) as gw:
            ... gw.base_url ...

    config: a config dict (or Tier list). Its stdout/stderr go to log_dir/<name>.log, the config to
    log_dir/<name>.config.json, and the per-call log to `call_log` (default log_dir/<name>.calls.jsonl;
    False: none). start() waits until /health answers 200 (every upstream up), or, with
    wait_upstreams=False, until the gateway itself answers."""

    def __init__(self, config: dict | list, log_dir: Path, name: str = "gateway", host: str = "127.0.0.1",
                 call_log: Path | bool | None = None, trace_chunks: bool = False, startup_timeout_s: float = 60.0,
                 wait_upstreams: bool = True):
        if isinstance(config, list):
            config = gateway_config(config)
        cfg = load_config(config)  # fail here on a bad config, not in the child
        build_policy(cfg.routing, cfg.tiers)
        self.config = config
        self.name, self.host = name, host
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{name}.log"
        self.config_path = self.log_dir / f"{name}.config.json"
        self.call_log = None if call_log is False else Path(call_log or self.log_dir / f"{name}.calls.jsonl")
        self.trace_chunks = trace_chunks
        self.startup_timeout_s = startup_timeout_s
        self.wait_upstreams = wait_upstreams
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.base_url = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "bench.tiers.gateway", "--config", str(self.config_path), "--host", self.host,
               "--port", str(self.port)]
        if self.call_log is not None:
            cmd += ["--log", str(self.call_log)]
        if self.trace_chunks:
            cmd.append("--trace-chunks")
        return cmd

    def start(self) -> "GatewayProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")
        self.port = free_port(self.host)
        self.base_url = f"http://{self.host}:{self.port}"
        env = dict(os.environ)  # the repository first on the path, installed or not
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = start_logged(self.command(), self.log_path, env=env, cwd=REPO)
        try:
            self.wait_healthy(self.startup_timeout_s, self.wait_upstreams)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout_s: float, upstreams: bool = True) -> None:
        # /health asks every upstream too; /tiers answers as soon as the gateway itself listens
        wait_http_ok(self.base_url + ("/health" if upstreams else "/tiers"), timeout_s, self.proc, "the tier gateway",
                     self.log_path, poll_s=0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_group(self.proc, ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)))

    def calls(self, at_least: int = 0, timeout_s: float = 10.0) -> list[dict]:
        """The per-call log's records so far; with `at_least`, once there are that many (or after
        timeout_s): a call's record is written just after its last byte went out, so its client
        can be done a moment before."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = []
            if self.call_log is not None and self.call_log.exists():
                with open(self.call_log, "rb") as f:
                    rows = [orjson.loads(line) for line in f if line.endswith(b"\n")]
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
