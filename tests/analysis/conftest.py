"""The headless Chromium the report tests open their pages in (tests/analysis/test_report.py
drives it over the DevTools protocol)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def browser():
    from tests.analysis.test_report import CHROMIUM, Chromium
    pytest.importorskip("websockets", reason="the browser test drives Chromium with the websockets package")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium); the browser check needs it")
    with Chromium(CHROMIUM) as b:
        yield b
