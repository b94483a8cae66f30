"""Claims of README.md about the platform that no other test pins down: API tokens are stored as
SHA-256 digests, the API is described at /api/docs, SQLite runs in WAL mode with a busy timeout
and writers that queue."""

from __future__ import annotations

import hashlib

from fastapi import FastAPI
from platform_helpers import World
from sqlalchemy import event, select

from alignloop.platform.models import ApiToken


def test_api_tokens_are_stored_as_their_sha256_digests(app: FastAPI, world: World) -> None:
    with app.state.sessionmaker() as session:
        stored = set(session.scalars(select(ApiToken.digest)))
    assert stored == {hashlib.sha256(token.encode()).hexdigest() for token in world.tokens.values()}


def test_the_api_is_described_at_api_docs(world: World) -> None:
    page = world.client.get("/api/docs")
    assert page.status_code == 200 and "/api/openapi.json" in page.text
    schema = world.client.get("/api/openapi.json").json()
    for path in ("/api/tokens", "/api/projects/{project_id}/items", "/api/projects/{project_id}/export"):
        assert path in schema["paths"], path


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout_and_immediate_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alignloop.platform.db import SQLITE_BUSY_TIMEOUT_MS, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with engine.begin() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS > 0
    engine.dispose()
    assert "BEGIN IMMEDIATE" in statements  # writers take the lock up front and queue on it
