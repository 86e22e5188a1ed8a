"""Headless Chromium for looking at rlfm's pages (the labelling app in the browser tests, a
run's report in scripts/screenshot.py): Debian's ``chromium`` from the PATH driven by
Playwright, never a downloaded browser (``playwright install`` is not needed and not used)."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
"""Flags for a quiet headless Chromium: no sandbox (containers), no GPU, and no background
traffic (updates, sync, QUIC) beyond what a page itself requests."""


def chromium_path() -> str | None:
    """The ``chromium`` executable on the PATH, or None (``apt-get install chromium``)."""
    return shutil.which("chromium")


def launch(playwright: Any, path: str) -> Any:
    """A Playwright Chromium browser on the executable ``path`` with :data:`CHROMIUM_ARGS`."""
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
