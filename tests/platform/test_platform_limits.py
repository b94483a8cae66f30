"""The size limits at their real defaults (what `alignloop serve` runs with): request bodies
over 1 MiB and media uploads over 50 MiB are refused with 413, by Content-Length or while the
body streams in; bodies up to the limit get through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from platform_helpers import World, make_world

from alignloop.platform.app import create_app
from alignloop.platform.settings import Settings

MiB = 1 << 20
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    """The app with every setting at its default but the database, the media folder and the key."""
    app = create_app(Settings(db=db_url, media_dir=tmp_path / "media", secret_key="limits"))
    with TestClient(app) as client:
        yield make_world(app, client)
    app.state.engine.dispose()


def _items_body(size: int) -> bytes:
    """A JSON body of exactly `size` bytes that pushes one item (padded with whitespace)."""
    body = b'{"items": [{"prompt": "p", "candidates": [{"text": "a"}, {"text": "b"}]}]}'
    return body + b" " * (size - len(body))


def _chunks(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """`total` bytes with no Content-Length: the limit is enforced while reading."""
    for start in range(0, total, chunk):
        yield b"x" * min(chunk, total - start)


def test_request_bodies_are_limited_to_1_mib(world: World) -> None:
    url = f"/api/projects/{world.project_id}/items"
    headers = {**world.auth("trainer"), "content-type": "application/json"}
    at_limit = world.client.post(url, content=_items_body(MiB), headers=headers)
    assert at_limit.status_code == 201, at_limit.text
    over = world.client.post(url, content=_items_body(MiB + 1), headers=headers)
    assert over.status_code == 413
    assert over.json() == {"detail": "request body is larger than the limit of 1048576 bytes"}
    streamed = world.client.post(url, content=_chunks(MiB + 1), headers=world.auth("trainer"))
    assert streamed.status_code == 413 and "limit of 1048576 bytes" in streamed.json()["detail"]


def test_media_uploads_are_limited_to_50_mib(world: World) -> None:
    url = "/api/media?filename=clip.png"
    # over the 1 MiB body limit, under the upload limit: stored
    two_mib = world.client.post(url, content=PNG + b"0" * (2 * MiB), headers=world.auth("trainer"))
    assert two_mib.status_code == 201, two_mib.text
    over = world.client.post(
        url, content=PNG + b"0" * (50 * MiB + 1 - len(PNG)), headers=world.auth("trainer")
    )
    assert over.status_code == 413
    assert over.json() == {"detail": "request body is larger than the limit of 52428800 bytes"}
    streamed = world.client.post(url, content=_chunks(50 * MiB + 1), headers=world.auth("trainer"))
    assert streamed.status_code == 413 and "limit of 52428800 bytes" in streamed.json()["detail"]
