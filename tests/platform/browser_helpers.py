"""Shared by the browser tests: Debian's Chromium, its flags, the artifact folder and the login form."""

from __future__ import annotations

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


def log_in(page: Any, url: str, name: str, password: str, landing: str = "/projects") -> None:
    """Log in through the login form with the keyboard and land on the projects page (admins:
    `landing="/admin"`)."""
    page.goto(f"{url}/login")
    # the browser applies `autofocus` after load, on a later frame: type only once it has
    page.wait_for_function("document.activeElement && document.activeElement.name === 'name'")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}{landing}")
