"""Chromium (Debian's, through Playwright) labels one item of every question kind, by keyboard only.

One server, one browser session, five projects: today's default questions; clips shown as frame
strips with a mark of the frame where one becomes unsafe; a ranking of four; ratings on two
aspects; a correction. Each answer is then read back from the database, and each page is
photographed into test-artifacts/label-kind-KIND.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_helpers import ARGS, ARTIFACTS, CHROMIUM, log_in, require_chromium, wait_until
from liveserver import LiveServer
from PIL import Image, ImageDraw
from sqlalchemy import select

from alignloop.control.clips import write_strip
from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    HARM_CATEGORIES,
    CorrectionText,
    FreeText,
    IsSafe,
    Mark,
    Pairwise,
    Ranking,
    Rating,
    questions_json,
)
from alignloop.platform import crud
from alignloop.platform.client import PlatformClient
from alignloop.platform.db import make_engine, make_sessionmaker, migrate
from alignloop.platform.models import Judgement, User
from alignloop.platform.schemas import ProjectIn

FRAMES = 12
SAFE = {"safe": True, "harms": [], "severity": None}
PROJECTS: dict[str, tuple[Any, ...]] = {
    "default": DEFAULT_QUESTIONS,
    "clips": (Pairwise("better"), IsSafe("is_safe"), Mark("unsafe_from")),
    "ranking": (Ranking("order"), FreeText("why", required=False)),
    "rating": (Rating("quality", scale_min=1, scale_max=7, aspects=("helpfulness", "honesty")),),
    "correction": (
        IsSafe("is_safe", harm_categories=HARM_CATEGORIES, severity_levels=("minor", "severe")),
        CorrectionText("correction"),
    ),
}


def _strip(path: Path, shade: int) -> Path:
    """A frame strip whose frames show their own number (so a screenshot says which frame is shown)."""
    frames = []
    for f in range(FRAMES):
        frame = Image.new("RGB", (96, 64), (shade, 40 + 15 * f, 90))
        ImageDraw.Draw(frame).text((8, 20), f"frame {f}", fill=(255, 255, 255))
        frames.append(frame)
    return write_strip(frames, path)


def _seed(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        for name, role in (("admin", "admin"), ("a0", "annotator")):
            crud.create_user(session, name=name, password="a long password", role=role)
        ids = {
            kind: crud.create_project(session, spec=ProjectIn(name=kind, questions=questions_json(q))).id
            for kind, q in PROJECTS.items()
        }
        session.commit()
    engine.dispose()
    return ids


def _push(server: LiveServer, ids: dict[str, int], tmp_path: Path) -> None:
    with PlatformClient.login(server.url, "admin", "a long password") as admin:
        strips = [
            admin.upload_media(_strip(tmp_path / f"{s}.png", shade)) for s, shade in (("a", 60), ("b", 160))
        ]
        texts = [
            "Boil the rice in salted water.",
            "Use a fire accelerant.",
            "Ask a chef.",
            "Rinse, then steam it.",
        ]

        def push(kind: str, candidates: list[dict[str, Any]], prompt: str = "How do I cook rice?") -> None:
            admin.push_items(ids[kind], [{"key": f"{kind}-0", "prompt": prompt, "candidates": candidates}])

        push("default", [{"text": texts[0], "model": "m1"}, {"text": texts[1], "model": "m2"}])
        push(
            "clips", [{"media": m, "frames": FRAMES, "model": "p"} for m in strips], "Which clip runs better?"
        )
        push("ranking", [{"text": t, "model": f"m{i}"} for i, t in enumerate(texts)])
        push("rating", [{"text": t} for t in texts[:3]])
        push("correction", [{"text": texts[0]}, {"text": texts[1]}])


def _keys(page: Any, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


@pytest.mark.browser
@pytest.mark.slow
def test_one_item_of_every_question_kind_labelled_by_keyboard(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    db_url = f"sqlite:///{tmp_path}/browser.db"
    migrate(db_url)
    ids = _seed(db_url)
    server = LiveServer(db_url, tmp_path)
    server.start()
    marked: dict[str, int] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _push(server, ids, tmp_path)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, server.url, "a0", "a long password")

            def open_item(kind: str) -> None:
                page.goto(f"{server.url}/projects/{ids[kind]}/label")
                assert page.locator("#label-form").count() == 0  # a GET takes no item
                page.keyboard.press("Enter")  # take the next item (a POST)
                page.wait_for_selector("#label-form")

            def submit(kind: str) -> None:
                page.screenshot(path=str(ARTIFACTS / f"label-kind-{kind}.png"), full_page=True)
                page.keyboard.press("Enter")
                page.wait_for_selector("#done")

            # today's questions: B better (moves on), A safer, A safe, B unsafe (pressed twice)
            open_item("default")
            _keys(page, "2", "1", "1", "2", "2")
            assert page.locator('input[name="q.is_safe.1.safe"][value="unsafe"]').is_checked()
            submit("default")

            # clips: B better; A safe, B unsafe; B becomes unsafe at a stepped frame, A never does
            open_item("clips")
            wait_until(page, "document.querySelectorAll('canvas.strip[data-ready]').length === 2")
            _keys(page, "2", "1", "2", "2", "n", "2", " ")  # pick clip B and pause it
            page.wait_for_timeout(150)
            _keys(page, "ArrowRight", "ArrowRight", "ArrowLeft")
            shown = int(page.locator("#candidate-b canvas").get_attribute("data-frame") or -1)
            assert 0 <= shown < FRAMES and page.locator("#candidate-b .frame").inner_text() == str(shown)
            marked["clips"] = shown
            _keys(page, "m", "1", "s")
            assert "unsafe from frame" in page.locator('.mark-row[data-index="1"] .mark-value').inner_text()
            submit("clips")

            # ranking: C first, then A, D, B; a reason typed after c
            open_item("ranking")
            _keys(page, "3", "1", "4", "2", "c")
            page.keyboard.type("C answers the question")
            _keys(page, "Escape")
            assert page.locator("ol.ranking li").first.get_attribute("data-index") == "2"
            submit("ranking")

            # ratings: helpfulness 7 5 1, honesty 6 6 2, cell after cell
            open_item("rating")
            _keys(page, "7", "5", "1", "6", "6", "2")
            submit("rating")

            # correction: A safe, B unsafe; rewrite B (the editor starts from its text)
            open_item("correction")
            _keys(page, "1", "2", "2", "n", "2")
            editor = page.locator('textarea[name="q.correction.text"]')
            assert editor.input_value() == "Use a fire accelerant."
            _keys(page, "c", "Control+a")
            page.keyboard.type("Use a rice cooker.")
            _keys(page, "Escape")
            submit("correction")
            # a narrow screen stacks the candidates
            page.set_viewport_size({"width": 480, "height": 900})
            page.goto(f"{server.url}/projects/{ids['ranking']}/label")
            browser.close()
    finally:
        server.stop()
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        annotator = session.scalar(select(User.id).where(User.name == "a0"))
        rows = session.scalars(select(Judgement).where(Judgement.annotator_id == annotator)).all()
    engine.dispose()
    by_project = {kind: next(r.answers for r in rows if r.project_id == pid) for kind, pid in ids.items()}
    unsafe = {"safe": False, "harms": [], "severity": None}
    assert by_project == {
        "default": {"better": "B", "safer": "A", "is_safe": [SAFE, unsafe]},
        "clips": {"better": "B", "is_safe": [SAFE, unsafe], "unsafe_from": [None, marked["clips"]]},
        "ranking": {"order": [2, 4, 1, 3], "why": "C answers the question"},
        "rating": {"quality": {"helpfulness": [7, 5, 1], "honesty": [6, 6, 2]}},
        "correction": {
            "is_safe": [SAFE, unsafe],
            "correction": {"candidate": "B", "text": "Use a rice cooker."},
        },
    }
    for kind in PROJECTS:
        assert (ARTIFACTS / f"label-kind-{kind}.png").stat().st_size > 10_000
