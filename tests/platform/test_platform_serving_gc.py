"""`alignloop serve` tunes the garbage collector of its workers; the app alone leaves it be."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alignloop.platform.app import GC_THRESHOLD, create_app
from alignloop.platform.serve import ServeConfig
from alignloop.platform.settings import Settings


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_serving_gc_is_tuned_only_when_asked(tmp_path: Path, sqlite_template: Path, restore_gc) -> None:
    shutil.copy(sqlite_template, tmp_path / "p.db")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    before = gc.get_threshold()
    for serving_gc in (False, True):
        app = create_app(Settings(db=url, media_dir=tmp_path / "media", serving_gc=serving_gc))
        with TestClient(app) as client:
            assert client.get("/api/me").status_code == 401  # the app runs either way
            if serving_gc:
                assert gc.get_threshold()[0] == GC_THRESHOLD and gc.get_freeze_count() > 0
            else:
                assert gc.get_threshold() == before
        app.state.engine.dispose()


def test_serve_turns_serving_gc_on_for_its_workers(tmp_path: Path, monkeypatch) -> None:
    import os

    import uvicorn

    from alignloop.platform import serve

    seen: dict[str, str] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(os.environ))
    for name in ("DB", "MEDIA_DIR", "COOKIE_SECURE", "LOCK_S", "SERVING_GC", "SECRET_KEY"):
        monkeypatch.setenv(f"ALIGNLOOP_{name}", "")  # serve writes the workers' settings into the
        monkeypatch.delenv(f"ALIGNLOOP_{name}")  # environment: undone after the test
    assert serve.run(ServeConfig(db=f"sqlite:///{tmp_path / 's.db'}", media_dir=tmp_path / "m")) == 0
    assert seen["ALIGNLOOP_SERVING_GC"] == "true"
    assert Settings.model_fields["serving_gc"].default is False  # the default for everything else
