"""Engines, sessions and migrations for SQLite (embedded, default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`, so writers queue on the database lock instead of failing; PostgreSQL
relies on row locks (`SELECT ... FOR UPDATE SKIP LOCKED` in the queue).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


CONNECT_TIMEOUT_S = 10
"""PostgreSQL: how long a new connection may take (a host that drops packets would otherwise hold
a request, or start-up, until TCP gives up); a `connect_timeout` in the URL takes precedence."""


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and immediate writes."""
    if not is_sqlite(url):
        timeout = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800, connect_args=timeout
        )
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    # Writers queue on a lock in this process (woken in order, at once) rather than polling
    # SQLite's busy handler; other processes on the same file still meet the busy timeout.
    write_lock = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if not write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError("the database stayed busy too long; try again")
        connection.info["holds_write_lock"] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(connection)
            raise

    def _release(connection: Any) -> None:
        if connection.info.pop("holds_write_lock", False):
            write_lock.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def end_read(session: Session) -> None:
    """End a read-only transaction early where it holds a lock (SQLite's write lock)."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        session.commit()


def migrate(url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    """Bring the database at `url` up (or down) to `revision` with the package's Alembic migrations.

    The Alembic configuration is built here; there is no alembic.ini to find.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if downgrade else command.upgrade)(config, revision)
    finally:
        engine.dispose()


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session per request; committed by the caller, rolled back on error, always closed."""
    session = factory()
    try:
        yield session
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
