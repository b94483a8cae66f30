"""Migrations 0003 (item keys), 0004 (access) and 0005 (questions, candidates, answer documents)
upgrade older databases with data in them, and downgrade again, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
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
    migrate(url, "0003")
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


def test_0004_upgrades_a_0003_database(empty_db_url: str) -> None:
    """Tokens issued before 0004 get an expiry 30 days out; api_tokens keeps its key, index and
    cascade through SQLite's table copy; sessions and login failures get their tables."""
    url = empty_db_url
    migrate(url, "0003")
    engine = make_engine(url, pool_size=1)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (name, password_hash, role, active, created_at)"
                " VALUES ('old', 'x', 'annotator', true, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO api_tokens (user_id, digest, label, created_at)"
                " VALUES (1, 'digest-1', 'old', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    migrate(url)
    engine = make_engine(url, pool_size=1)
    try:
        inspector = inspect(engine)
        assert {"web_sessions", "login_failures"} <= set(inspector.get_table_names())
        columns = {c["name"]: c for c in inspector.get_columns("api_tokens")}
        assert not columns["expires_at"]["nullable"]
        assert "ix_api_tokens_user_id" in {i["name"] for i in inspector.get_indexes("api_tokens")}
        assert {i["name"] for i in inspector.get_indexes("login_failures")} == {
            "ix_login_failures_key",
            "ix_login_failures_failed_at",
        }
        with engine.connect() as connection:
            expires = connection.execute(text("SELECT expires_at FROM api_tokens")).scalar_one()
        if isinstance(expires, str):
            expires = dt.datetime.fromisoformat(expires)
        expires = expires.replace(tzinfo=dt.timezone.utc) if expires.tzinfo is None else expires
        left = expires - dt.datetime.now(dt.timezone.utc)
        assert dt.timedelta(days=29, hours=23) < left <= dt.timedelta(days=30)
        with pytest.raises(IntegrityError), engine.begin() as connection:  # the digest stays unique
            connection.execute(
                text(
                    "INSERT INTO api_tokens (user_id, digest, label, created_at, expires_at)"
                    " VALUES (1, 'digest-1', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO web_sessions (user_id, digest, created_at, expires_at)"
                    " VALUES (1, 's1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()
    migrate(url, "0003", downgrade=True)
    engine = make_engine(url, pool_size=1)
    try:
        inspector = inspect(engine)
        assert not {"web_sessions", "login_failures"} & set(inspector.get_table_names())
        assert "expires_at" not in {c["name"] for c in inspector.get_columns("api_tokens")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT digest, label FROM api_tokens")).all() == [
                ("digest-1", "old")
            ]
    finally:
        engine.dispose()
    migrate(url)  # and up again, then a deleted user takes their tokens along (the cascade survived)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM users"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 0
    finally:
        engine.dispose()


OLD_ROWS = [
    *(
        f"INSERT INTO users (name, password_hash, role, active, created_at) VALUES ('ann{i}', 'x', 'annotator',"
        " true, CURRENT_TIMESTAMP)"
        for i in range(3)
    ),
    "INSERT INTO projects (name, instructions, overlap, gold_rate, harm_categories, created_at)"
    " VALUES ('old', '', 2, 0, '[\"Violence\", \"Drugs\"]', CURRENT_TIMESTAMP)",
    "INSERT INTO items (project_id, key, prompt, response_a, response_b, media_a, media_b, model_a, model_b, priority,"
    " is_gold, gold_better, gold_safer, meta, taken, done, is_full, created_at)"
    " VALUES (1, 'r1-0', 'p0', 'answer a', '', NULL, 'clip.gif', 'm1', 'm2', 1.5, false, NULL, NULL, '{}', 3, 3,"
    " true, CURRENT_TIMESTAMP)",
    "INSERT INTO items (project_id, key, prompt, response_a, response_b, media_a, media_b, model_a, model_b, priority,"
    " is_gold, gold_better, gold_safer, meta, taken, done, is_full, created_at)"
    " VALUES (1, NULL, 'gold', 'a', 'b', NULL, NULL, '', '', 0, true, 'B', 'A', '{}', 0, 0, false, CURRENT_TIMESTAMP)",
]
JUDGEMENT = (
    "INSERT INTO judgements (item_id, project_id, annotator_id, idempotency_key, skipped, skip_reason, better,"
    " safer, safe_a, safe_b, harm_a, harm_b, severity_a, severity_b, corrected, created_at, updated_at)"
    " VALUES (1, 1, :who, :key, :skipped, :reason, :better, :safer, :safe_a, :safe_b, :harm_a, '[]', :severity_a,"
    " NULL, :corrected, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
OLD_JUDGEMENTS = [  # made by today's schema: every column filled as the old code filled it
    dict(key="k1", skipped=False, reason="", better="A", safer="B", safe_a=False, safe_b=True,
         harm_a='["Violence"]', severity_a="severe", corrected="a safe answer"),
    dict(key="k2", skipped=False, reason="", better="tie", safer=None, safe_a=None, safe_b=None,
         harm_a="[]", severity_a=None, corrected=""),
    dict(key="k3", skipped=True, reason="unreadable", better=None, safer=None, safe_a=None, safe_b=None,
         harm_a="[]", severity_a=None, corrected=""),
]  # fmt: skip


def test_0005_gives_old_projects_todays_questions_and_old_judgements_answer_documents(
    empty_db_url: str,
) -> None:
    from alignloop.feedback.schema import DEFAULT_QUESTIONS, IsSafe, check_answers, parse_questions

    url = empty_db_url
    migrate(url, "0003")
    engine = make_engine(url, pool_size=1)
    with engine.begin() as connection:
        for sql in OLD_ROWS:
            connection.execute(text(sql))
        for row in OLD_JUDGEMENTS:
            connection.execute(text(JUDGEMENT), {**row, "who": OLD_JUDGEMENTS.index(row) + 1})
    engine.dispose()
    migrate(url)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            (questions_json,) = connection.execute(text("SELECT questions FROM projects")).one()
            items = connection.execute(
                text("SELECT key, candidates, gold, priority, taken FROM items ORDER BY id")
            ).all()
            answers = connection.execute(
                text("SELECT idempotency_key, answers FROM judgements ORDER BY id")
            ).all()
        assert "priority DESC" in _queue_index(engine)  # the queue index survived as it was
        assert "harm_categories" not in {c["name"] for c in inspect(engine).get_columns("projects")}
        assert "better" not in {c["name"] for c in inspect(engine).get_columns("judgements")}
    finally:
        engine.dispose()
    load = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731 (SQLite gives text, PostgreSQL objects)
    questions = parse_questions(load(questions_json))
    assert [q.name for q in questions] == [q.name for q in DEFAULT_QUESTIONS]
    assert isinstance(questions[2], IsSafe) and questions[2].harm_categories == ("Violence", "Drugs")
    assert [(k, load(c), load(g), p, t) for k, c, g, p, t in items] == [
        (
            "r1-0",
            [
                {"text": "answer a", "media": None, "model": "m1", "frames": None},
                {"text": "", "media": "clip.gif", "model": "m2", "frames": None},
            ],
            None,
            1.5,
            3,
        ),
        (
            None,
            [
                {"text": "a", "media": None, "model": "", "frames": None},
                {"text": "b", "media": None, "model": "", "frames": None},
            ],
            {"better": "B", "safer": "A"},
            0.0,
            0,
        ),
    ]
    docs = {key: load(doc) for key, doc in answers}
    assert docs == {
        "k1": {
            "better": "A",
            "safer": "B",
            "is_safe": [
                {"safe": False, "harms": ["Violence"], "severity": "severe"},
                {"safe": True, "harms": [], "severity": None},
            ],
            "correction": {"candidate": "A", "text": "a safe answer"},  # the one judged unsafe
        },
        "k2": {"better": "tie"},
        "k3": {},
    }
    for key in ("k1", "k2"):  # what was stored answers today's questions as they are now checked
        assert check_answers(questions, docs[key], 2) == docs[key]
    migrate(url, "0003", downgrade=True)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT idempotency_key, skipped, better, safer, safe_a, safe_b, harm_a, severity_a, corrected"
                    " FROM judgements ORDER BY id"
                )
            ).all()
            old_items = connection.execute(
                text("SELECT response_a, media_b, model_b, gold_better FROM items ORDER BY id")
            ).all()
            (categories,) = connection.execute(text("SELECT harm_categories FROM projects")).one()
        assert "priority DESC" in _queue_index(engine)
    finally:
        engine.dispose()
    expected = [
        (
            r["key"],
            r["skipped"],
            r["better"],
            r["safer"],
            r["safe_a"],
            r["safe_b"],
            json.loads(r["harm_a"]),
            r["severity_a"],
            r["corrected"],
        )
        for r in OLD_JUDGEMENTS
    ]
    assert [
        (k, bool(s), b, sf, None if a is None else bool(a), None if c is None else bool(c), load(h), v, t)
        for k, s, b, sf, a, c, h, v, t in rows
    ] == expected
    assert old_items == [("answer a", "clip.gif", "m2", None), ("a", None, "", "B")]
    assert load(categories) == ["Violence", "Drugs"]
