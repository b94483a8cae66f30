"""Chromium loads every page under the Content-Security-Policy without a violation (and without a
request leaving this server): the pages, the dashboard's plot, an error page and Swagger UI."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_helpers import ARGS, CHROMIUM, log_in, require_chromium
from liveserver import LiveServer, seed

from alignloop.platform.client import PlatformClient
from alignloop.platform.db import migrate


@pytest.mark.browser
@pytest.mark.slow
def test_pages_load_without_csp_violations(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    db_url = f"sqlite:///{tmp_path}/csp.db"
    migrate(db_url)
    project_id, tokens = seed(db_url, annotators=2, items=3, overlap=2)
    server = LiveServer(db_url, tmp_path)
    server.start()
    try:
        for name in ("a0", "a1"):  # judgements, so that the dashboard draws its leaderboard
            with PlatformClient(server.url, tokens[name]) as client:
                for better in ("A", "B"):
                    assignment = client.next_assignment(project_id)
                    assert assignment is not None
                    client.submit(assignment["id"], {"answers": {"better": better}})
        problems: list[str] = []
        elsewhere: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def on_console(message) -> None:  # type: ignore[no-untyped-def]
                expected = page.url.endswith("/nowhere") and "404" in message.text  # the error page's status
                if message.type == "error" and not expected:
                    problems.append(f"{page.url}: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"{page.url}: {error}"))
            page.on(
                "request",
                lambda r: None if r.url.startswith((server.url, "data:")) else elsewhere.append(r.url),
            )
            log_in(page, server.url, "admin", "a long password", landing="/admin")
            for path in ("/admin", f"/admin/projects/{project_id}", "/admin/users/2", "/account", "/nowhere"):
                page.goto(server.url + path)
                page.wait_for_load_state("networkidle")
            plot = page.goto(f"{server.url}/admin/projects/{project_id}")
            assert plot is not None and plot.ok
            assert page.locator("#leaderboard-plot").evaluate("img => img.naturalWidth") > 100
            page.goto(f"{server.url}/api/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # rendered from the schema
            assert page.locator(".swagger-ui .opblock").count() >= 20
            page.goto(f"{server.url}/nowhere")
            assert page.locator("#error").inner_text() == "Not Found"
            page.goto(f"{server.url}/account")
            page.locator("header button").click()  # log out, then the annotator's pages
            log_in(page, server.url, "a0", "a long password")
            page.goto(f"{server.url}/projects/{project_id}/label")
            page.keyboard.press("Enter")  # take the next item: the page's own script posts the form
            page.wait_for_selector("#label-form")
            page.keyboard.press("1")
            assert page.locator('input[name="q.better"][value="A"]').is_checked()
            assert not problems, "\n".join(problems)
            # the listener does see a violation: an inline style is refused under this policy
            page.evaluate("document.body.setAttribute('style', 'color: red')")
            page.wait_for_timeout(200)
            assert problems and "Content Security Policy" in problems[-1], problems
            browser.close()
    finally:
        server.stop()
    assert not elsewhere, elsewhere
