"""Chromium shows a control comparison: two real MuJoCo clips play side by side; judged by keyboard."""

from __future__ import annotations

import io
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from browser_helpers import ARGS, ARTIFACTS, CHROMIUM, log_in, require_chromium, wait_until
from liveserver import LiveServer, seed
from PIL import Image
from sqlalchemy import select

from alignloop.control.clips import render_clip, segment_states
from alignloop.platform.client import PlatformClient
from alignloop.platform.db import make_engine, make_sessionmaker, migrate
from alignloop.platform.models import Item, Judgement, User

FRAMES = 25
FPS = 10  # a 2.5 s loop: two looks 0.5 s apart cannot land on the same frame by wrapping around


def _segment(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """qpos, qvel (FRAMES, 9) of HalfCheetah under random actions, after a random warm-up."""
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    qpos, qvel = [], []
    for t in range(10 + FRAMES):
        env.step(env.action_space.sample())
        if t >= 10:
            q, v = segment_states(env)
            qpos.append(q)
            qvel.append(v)
    env.close()
    return np.stack(qpos), np.stack(qvel)


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.browser
@pytest.mark.slow
def test_annotator_judges_two_playing_clips(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    clips = {
        side: render_clip(
            "SafeHalfCheetahVelocity-v5",
            *_segment(seed),
            tmp_path / f"clip-{side}.gif",
            fps=FPS,
            width=160,
            height=120,
            label=side.upper(),
        )
        for side, seed in (("a", 1), ("b", 2))
    }
    db_url = f"sqlite:///{tmp_path}/clips.db"
    migrate(db_url)
    project_id, tokens = seed(db_url, annotators=1, items=0, overlap=1)
    server = LiveServer(db_url, tmp_path)
    server.start()
    try:
        with PlatformClient(server.url, tokens["admin"]) as trainer:
            names = {side: trainer.upload_media(path) for side, path in clips.items()}
            (item_id,) = trainer.push_items(
                project_id,
                [
                    {
                        "key": "r1-0000",
                        "prompt": "Which clip moves the cheetah forward better? Faster than 3.2 m/s is unsafe.",
                        "candidates": [{"media": names[s], "model": "policy-r1"} for s in "ab"],
                    }
                ],
            )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, server.url, "a0", "a long password")
            page.goto(f"{server.url}/projects/{project_id}/label")
            page.keyboard.press("Enter")  # take the item (a POST)
            page.wait_for_selector("#label-form")
            assert page.locator("#candidate-a h2").inner_text() == "Clip A"
            shown = [page.locator(f"#candidate-{side} img") for side in "ab"]
            wait_until(
                page,
                "['a', 'b'].every(s => { const i = document.querySelector(`#candidate-${s} img`);"
                " return i && i.complete && i.naturalWidth > 0; })",
            )
            for side, clip in zip("ab", shown, strict=True):
                assert clip.get_attribute("src") == f"/api/media/{names[side]}"
                assert clip.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [160, 120]
                box = clip.bounding_box()
                assert box is not None and box["width"] >= 320  # scaled up to the card, not a thumbnail
            boxes = [clip.bounding_box() for clip in shown]
            assert (
                boxes[0] and boxes[1] and boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]
            )  # side by side
            assert abs(boxes[0]["y"] - boxes[1]["y"]) < 1
            # both clips play: each looks different 0.5 s later
            first = [_pixels(clip.screenshot()) for clip in shown]
            started = time.monotonic()
            time.sleep(0.5)
            later = [_pixels(clip.screenshot()) for clip in shown]
            waited = time.monotonic() - started
            for side, before, after in zip("ab", first, later, strict=True):
                assert before.shape == after.shape
                changed = float(np.mean(np.any(before != after, axis=-1)))
                assert changed > 0.01, (
                    f"clip {side} did not change in {waited:.2f} s ({changed:.2%} of pixels)"
                )
            assert not np.array_equal(first[0], first[1])  # two different segments
            # judge with the keyboard: B better, A safer (each moves on), A safe (1 once), B unsafe (2 twice)
            for key in ["2", "1", "1", "2", "2"]:
                page.keyboard.press(key)
            assert page.locator('input[name="q.better"][value="B"]').is_checked()
            assert page.locator('input[name="q.safer"][value="A"]').is_checked()
            assert page.locator('input[name="q.is_safe.0.safe"][value="safe"]').is_checked()
            assert page.locator('input[name="q.is_safe.1.safe"][value="unsafe"]').is_checked()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "label-clips.png"), full_page=True)
            page.keyboard.press("Enter")
            page.wait_for_selector("#done")
            assert page.locator("#mine").inner_text() == "1"
            browser.close()
    finally:
        server.stop()
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        annotator = session.scalar(select(User.id).where(User.name == "a0"))
        rows = session.scalars(select(Judgement).where(Judgement.annotator_id == annotator)).all()
        item = session.get(Item, item_id)
        assert item is not None and item.key == "r1-0000" and item.done == 1
    engine.dispose()
    flag = {"harms": [], "severity": None}
    assert [(j.item_id, j.answers, j.skipped) for j in rows] == [
        (
            item_id,
            {"better": "B", "safer": "A", "is_safe": [{"safe": True, **flag}, {"safe": False, **flag}]},
            False,
        )
    ]
    assert (ARTIFACTS / "label-clips.png").stat().st_size > 10_000
