"""Chromium (Debian's, through Playwright) drives the labelling page with the keyboard only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_helpers import ARGS, ARTIFACTS, CHROMIUM, log_in, require_chromium
from liveserver import LiveServer, seed
from sqlalchemy import select

from alignloop.platform.db import make_engine, make_sessionmaker, migrate
from alignloop.platform.models import Judgement, User


@pytest.mark.browser
@pytest.mark.slow
def test_annotator_labels_three_items_with_the_keyboard(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    db_url = f"sqlite:///{tmp_path}/browser.db"
    migrate(db_url)
    project_id, _ = seed(db_url, annotators=1, items=4, overlap=1)
    server = LiveServer(db_url, tmp_path)
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, server.url, "a0", "a long password")
            page.goto(f"{server.url}/projects/{project_id}/label")
            assert page.locator("#mine").inner_text() == "0"
            # item 1: B better, B safer, A unsafe (a twice: safe -> unsafe), B safe
            for key in ["2", "w", "a", "a", "s"]:
                page.keyboard.press(key)
            assert page.locator('input[name="better"][value="B"]').is_checked()
            assert page.locator('input[name="safe_a"][value="unsafe"]').is_checked()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "labelling-page.png"), full_page=True)
            page.keyboard.press("Enter")
            page.wait_for_function("document.getElementById('mine').textContent === '1'")
            # item 2: A better, A safer, both safe
            for key in ["1", "q", "a", "s", "Enter"]:
                page.keyboard.press(key)
            page.wait_for_function("document.getElementById('mine').textContent === '2'")
            # item 3: tie on both, then skip item 4 with a reason typed after k
            for key in ["t", "e", "Enter"]:
                page.keyboard.press(key)
            page.wait_for_function("document.getElementById('mine').textContent === '3'")
            page.keyboard.press("k")
            page.keyboard.type("prompt is unreadable")
            page.keyboard.press("Enter")
            page.wait_for_selector("#done")
            browser.close()
    finally:
        server.stop()
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        annotator = session.scalar(select(User.id).where(User.name == "a0"))
        rows = session.scalars(
            select(Judgement).where(Judgement.annotator_id == annotator).order_by(Judgement.id)
        ).all()
    engine.dispose()
    got = [(j.better, j.safer, j.safe_a, j.safe_b, j.skipped) for j in rows]
    assert got == [
        ("B", "B", False, True, False),
        ("A", "A", True, True, False),
        ("tie", "tie", None, None, False),
        (None, None, None, None, True),
    ]
    assert rows[3].skip_reason == "prompt is unreadable"
    assert (ARTIFACTS / "labelling-page.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path / "media", ignore_errors=True)
