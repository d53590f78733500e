"""Debian's headless chromium driven by Playwright, for the dashboard's tests and benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Debian's chromium: Playwright's own browser download needs internet, which stores lack.
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why no browser can be launched here, or None when one can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (`make browser` installs it: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401  # optional: a dev extra
    except ImportError as exc:
        return f"the playwright package is missing ({exc}): run `make venv`"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless chromium (a Playwright Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
