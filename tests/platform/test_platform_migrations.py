"""Migration 0003 (item keys) upgrades a 0002 database with data in it, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_helpers import pg_database
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from alignloop.platform.db import make_engine, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables at all)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/old.db"
        return
    yield from pg_database(request.getfixturevalue("pg_cluster"))


ITEM = (
    "INSERT INTO items (project_id, {key}prompt, response_a, response_b, model_a, model_b, priority,"
    " is_gold, meta, taken, done, is_full, created_at)"
    " VALUES (1, {value}'p', 'a', 'b', '', '', 0, false, '{{}}', 0, 0, false, CURRENT_TIMESTAMP)"
)


def _insert_item(url: str, key: str | None = None) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            sql = (
                ITEM.format(key="", value="") if key is None else ITEM.format(key="key, ", value=f"'{key}', ")
            )
            connection.execute(text(sql))
    finally:
        engine.dispose()


def _queue_index(engine: Engine) -> str:
    """The DDL of the queue index, as the database itself reports it."""
    query = (
        "SELECT sql FROM sqlite_master WHERE name = 'ix_items_queue'"
        if engine.dialect.name == "sqlite"
        else "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_items_queue'"
    )
    with engine.connect() as connection:
        return str(connection.execute(text(query)).scalar_one())


def test_0003_upgrades_a_0002_database(empty_db_url: str) -> None:
    url = empty_db_url
    migrate(url, "0002")
    engine = make_engine(url, pool_size=1)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO projects (name, instructions, overlap, gold_rate, harm_categories, created_at)"
                " VALUES ('old', '', 1, 0, '[]', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    _insert_item(url)
    migrate(url)
    engine = make_engine(url, pool_size=1)
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("items")}
        assert columns["key"]["nullable"]
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("items")}
        assert indexes["uq_items_project_key"]["unique"]
        assert indexes["uq_items_project_key"]["column_names"] == ["project_id", "key"]
        assert "priority DESC" in _queue_index(engine)  # the queue index survived as it was
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, key, prompt FROM items")).all() == [(1, None, "p")]
    finally:
        engine.dispose()
    _insert_item(url)  # many items without a key
    _insert_item(url, "r1-0")
    with pytest.raises(IntegrityError):
        _insert_item(url, "r1-0")
    migrate(url, "0002", downgrade=True)
    engine = make_engine(url, pool_size=1)
    try:
        assert "key" not in {c["name"] for c in inspect(engine).get_columns("items")}
        assert "priority DESC" in _queue_index(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM items")).scalar() == 3
    finally:
        engine.dispose()
