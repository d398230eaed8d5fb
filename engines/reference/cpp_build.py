"""Building and loading the engine's C++ extensions for the CPU (csrc/): cpu_attention.py's
paged attention and cpu_ops.py's fused elementwise ops.

An extension is compiled at first use (torch.utils.cpp_extension: g++ and ninja) into torch's
place for such builds ($TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions; not
$TIERBENCH_CACHE, which tests point at empty directories), in a directory keyed by a hash of its
source, the flags, torch, Python and the CPU: they are built with -march=native, so a build must
never be loaded on another CPU. Where one cannot be built, or with TIERBENCH_NO_CPP=1, a warning
is logged once and the caller gets None: the PyTorch code runs instead.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import sys
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"


class Extension:
    """One extension, loaded (or given up on) once per process."""

    def __init__(self, name: str, source: str, cflags: list[str], ldflags: list[str], what: str) -> None:
        self.name, self.source = name, CSRC / source
        self.cflags, self.ldflags = cflags, ldflags
        self.what = what  # for the warning: "C++ paged attention off, ..."
        self._lock = threading.Lock()
        self._loaded = False
        self.module = None

    def load(self):
        """The extension module, or None (warned once) where it cannot be had."""
        if self._loaded:
            return self.module
        with self._lock:
            if self._loaded:
                return self.module
            if os.environ.get("TIERBENCH_NO_CPP") == "1":
                logger.warning("TIERBENCH_NO_CPP=1: %s", self.what)
            else:
                try:
                    self.module = self._build()
                except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch code still works
                    lines = str(e).strip().splitlines() or [type(e).__name__]
                    why = next((x for x in lines if "error" in x.lower() and "Error building" not in x), lines[0])
                    logger.warning("%s (%s): %s: %s", self.what, self.build_dir(), type(e).__name__, why[:300])
            self._loaded = True
            return self.module

    def build_dir(self) -> Path:
        key = hashlib.sha256("\n".join([self.source.read_text(), *self.cflags, *self.ldflags, torch.__version__,
                                        sys.version, _cpu_id()]).encode()).hexdigest()[:16]
        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
        return root / f"{self.name}-{key}"

    def _build(self):
        d = self.build_dir()
        d.mkdir(parents=True, exist_ok=True)
        # named after its key: torch renames a second build of one name in a process (name_v1), and
        # the file would not be found by the next process
        name = d.name.replace("-", "_")
        so = d / f"{name}.so"
        # torch's own build lock is a file that a builder killed mid-build leaves behind, and then
        # every later load waits forever; flock is released by the kernel when its holder dies.
        with open(d / "build.flock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if so.exists():
                try:
                    return _import(name, so)
                except ImportError:  # a builder killed while linking left it half written
                    so.unlink()
            from torch.utils.cpp_extension import load  # slow to import: only when building

            (d / "lock").unlink(missing_ok=True)  # torch's lock: nobody else holds ours, so it is stale
            # copies: load() appends torch's libraries to the lists it is given
            return load(name=name, sources=[str(self.source)], extra_cflags=list(self.cflags),
                        extra_ldflags=list(self.ldflags), build_directory=str(d), verbose=False)


def _import(name: str, so: Path):
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(next((x for x in info if x.startswith(k)), "") for k in ("model name", "flags"))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
