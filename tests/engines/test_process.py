"""engines/process.py: a started child pinned to CPUs is pinned from its first instruction on."""
from __future__ import annotations

import os
import sys

import pytest

from engines.process import start_logged


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs to show")
def test_start_logged_pins_the_child_before_it_runs(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    log = tmp_path / "child.log"
    p = start_logged([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], log, cpus=[cpu])
    assert p.wait(30) == 0
    assert log.read_text().strip() == f"[{cpu}]"
    p = start_logged([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"], log)
    assert p.wait(30) == 0
    assert log.read_text().splitlines()[-1] == str(len(os.sched_getaffinity(0)))  # not pinned by default
