"""`alignloop serve`: migrations at start, an admin from the command line, a live server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from alignloop.platform.models import User


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alignloop.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_serve_migrates_and_creates_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/serve.db"
    r = _serve(
        "--db",
        url,
        "--create-admin",
        "root",
        "--migrate-only",
        env={"ALIGNLOOP_ADMIN_PASSWORD": "s3cret-pass"},
    )
    assert r.returncode == 0, r.stderr
    assert "admin 'root' created" in r.stdout
    engine = create_engine(url)
    assert {
        "users",
        "projects",
        "items",
        "assignments",
        "judgements",
        "api_tokens",
        "alembic_version",
    } <= set(inspect(engine).get_table_names())
    with Session(engine) as session:
        user = session.scalar(select(User).where(User.name == "root"))
        assert user is not None and user.role == "admin" and user.password_hash.startswith("$argon2")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    password_file = tmp_path / "pw"
    password_file.write_text("another-pass\n")
    again = _serve(
        "--db", url, "--create-admin", "root", "--password-file", str(password_file), "--migrate-only"
    )
    assert again.returncode == 0 and "already exists" in again.stdout
    short = _serve(
        "--db", url, "--create-admin", "bob", "--migrate-only", env={"ALIGNLOOP_ADMIN_PASSWORD": "short"}
    )
    assert short.returncode == 2 and "password: must be at least 8 characters" in short.stderr


def test_serve_on_postgresql(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    admin = create_engine(pg_cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE serve_test"))
    admin.dispose()
    r = _serve(
        "--db",
        pg_cluster.url("serve_test"),
        "--create-admin",
        "root",
        "--migrate-only",
        env={"ALIGNLOOP_ADMIN_PASSWORD": "s3cret-pass"},
    )
    assert r.returncode == 0, r.stderr
    engine = create_engine(pg_cluster.url("serve_test"))
    with Session(engine) as session:
        assert session.scalar(select(User.role).where(User.name == "root")) == "admin"
    engine.dispose()


def test_migrations_go_down_and_up_again(db_url: str) -> None:
    """Every migration has a working downgrade; the schema comes back the same."""
    from alignloop.platform.db import migrate

    def tables() -> set[str]:
        engine = create_engine(db_url)
        names = set(inspect(engine).get_table_names())
        indexes = {i["name"] for i in inspect(engine).get_indexes("items")} if "items" in names else set()
        engine.dispose()
        return names | indexes

    at_head = tables()
    assert "ix_items_queue" in at_head
    migrate(db_url, "0001", downgrade=True)
    migrate(db_url, "base", downgrade=True)
    assert tables() <= {"alembic_version"}
    migrate(db_url)
    assert tables() == at_head


def test_connection_plan_keeps_every_worker_within_what_postgresql_allows() -> None:
    import pytest

    from alignloop.platform.serve import connection_plan

    # 2 workers x (2 * 10 + 20) = 80 <= 97: the pools stay as set
    assert connection_plan(97, 2, db_pool=10, async_pool=20) == (10, 20)
    # 3 workers need 120 of 97: 32 each, shared in proportion: 16 for the event loop, 8 (+8) for threads
    assert connection_plan(97, 3, db_pool=10, async_pool=20) == (8, 16)
    # 4 workers: 24 each -> 12 and 6 (+6)
    assert connection_plan(97, 4, db_pool=10, async_pool=20) == (6, 12)
    for available in range(6, 200):
        for workers in (1, 2, 3, 5):
            if available // workers >= 3:
                db, loop = connection_plan(available, workers, db_pool=10, async_pool=20)
                assert workers * (2 * db + loop) <= available and db >= 1 and loop >= 1
    with pytest.raises(SystemExit, match="--workers 8: PostgreSQL has 20 connections free, 2 per worker"):
        connection_plan(20, 8, db_pool=10, async_pool=20)


def test_serve_sizes_the_pools_to_the_server(monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Against a real cluster: what it reports free, and the pool sizes handed to the workers."""
    from sqlalchemy import text

    from alignloop.platform import serve
    from alignloop.platform.db import make_engine
    from alignloop.platform.pgcluster import start_cluster

    cluster = start_cluster(settings={"max_connections": "40"})
    try:
        url = cluster.url()
        free = serve.available_connections(url)
        held = make_engine(url, pool_size=1)
        with held.connect() as connection:
            connection.execute(text("SELECT 1"))
            assert serve.available_connections(url) == free - 1  # one more client holds one
        held.dispose()
        assert 30 <= free <= 37  # 40, less the 3 reserved for superusers and any background client
        env: dict[str, str] = {}
        serve._fit_pools(url, 2, env)  # 2 x 40 wanted, about 18 each allowed
        db, loop = int(env["ALIGNLOOP_DB_POOL_SIZE"]), int(env["ALIGNLOOP_ASYNC_POOL_SIZE"])
        assert 2 * (2 * db + loop) <= free
        assert f"PostgreSQL accepts {free} more connections" in capsys.readouterr().err
    finally:
        cluster.stop()
