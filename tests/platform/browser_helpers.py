"""Shared by the browser tests: Debian's Chromium, its flags, the artifact folder and the login form."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (scripts/setup_system.sh installs chromium)")


def wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until the JavaScript `expression` is truthy on `page`, checking every 50 ms from here.

    Not `page.wait_for_function`: when its first check fails, Playwright's in-page poller
    evaluates the string with `eval`, which the platform's Content-Security-Policy (script-src
    'self') refuses, so a page that is slow to get ready under load failed the test with an
    EvalError. `page.evaluate` runs through the DevTools protocol, which the policy does not cover.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s:.0f} s: {expression}")
        time.sleep(0.05)


def log_in(page: Any, url: str, name: str, password: str, landing: str = "/projects") -> None:
    """Log in through the login form with the keyboard and land on the projects page (admins:
    `landing="/admin"`)."""
    page.goto(f"{url}/login")
    # the browser applies `autofocus` after load, on a later frame: type only once it has
    wait_until(page, "document.activeElement && document.activeElement.name === 'name'")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}{landing}")
