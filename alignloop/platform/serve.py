"""`alignloop serve`: migrate the database, optionally create an admin, start uvicorn."""

from __future__ import annotations

import errno
import getpass
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.checks import output_dir, read_password
from alignloop.errors import UserError
from alignloop.platform.db import is_sqlite, make_engine, make_sessionmaker, migrate
from alignloop.platform.settings import Settings

PASSWORD_ENV = "ALIGNLOOP_ADMIN_PASSWORD"


@dataclass(frozen=True)
class ServeConfig:
    db: str = "sqlite:///alignloop.db"
    """Database URL: an SQLite file (default) or postgresql+psycopg://user:pass@host/dbname."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """Port to listen on."""
    workers: int = 1
    """uvicorn worker processes."""
    media_dir: Path = Path("alignloop-media")
    """Where uploaded media clips are stored."""
    secret_key: str | None = None
    """Key that signs session cookies (default: $ALIGNLOOP_SECRET_KEY, else a random one per start)."""
    cookie_secure: bool = False
    """Mark the session cookie Secure (set it when serving over HTTPS)."""
    lock_s: int = 600
    """Seconds an assignment stays locked to its annotator."""
    create_admin: str | None = None
    """Create (or keep) an admin with this name; password from $ALIGNLOOP_ADMIN_PASSWORD, --password-file or a prompt."""
    password_file: Path | None = None
    """File whose first line is the new admin's password."""
    migrate_only: bool = False
    """Migrate the database (and create the admin), then exit without serving."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn log level."""


def _admin_password(password_file: Path | None) -> str:
    if password_file is not None:
        return read_password(password_file, "--password-file")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise UserError(f"--create-admin: set ${PASSWORD_ENV}, pass --password-file, or run in a terminal")
    first = getpass.getpass("admin password: ")
    if first != getpass.getpass("again: "):
        raise UserError("--create-admin: the passwords differ")
    return first


def check_options(config: ServeConfig) -> None:
    """Every option that can be checked without the database, before anything is touched."""
    if not 0 < config.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {config.port}")
    if config.workers < 1:
        raise UserError(f"--workers must be >= 1, got {config.workers}")
    if config.lock_s < 1:
        raise UserError(f"--lock-s must be >= 1, got {config.lock_s}")
    output_dir(config.media_dir, "--media-dir")


def check_address(host: str, port: int) -> None:
    """A `UserError` when the server could not listen on `host:port` (taken, not this machine's,
    not allowed); the socket is closed again at once, for uvicorn to open."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"--port {port}: already in use on {host} (another server?); stop it or pick another --port"
                ) from None
            if exc.errno == errno.EACCES:
                raise UserError(
                    f"--port {port}: not allowed for this user (ports below 1024 need root)"
                ) from None
            raise UserError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); give an address of "
                "this machine (127.0.0.1, or 0.0.0.0 for every interface)"
            ) from None


def open_database(url: str) -> None:
    """Migrate the database at `url`; a `UserError` naming --db (password hidden) when the URL is
    not one, the driver is unknown, or the database cannot be opened or reached."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    example = "sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DATABASE"
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise UserError(f"--db {url!r}: not a database URL; give {example}") from None
    database = make_url(url).database if is_sqlite(url) else None
    if database and database != ":memory:":
        folder = Path(database).parent
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise UserError(
                f"--db {shown}: {blocking} is a file, not a folder; give the database another path"
            )
    try:
        migrate(url)
    except NoSuchModuleError as exc:
        raise UserError(f"--db {shown}: unknown database kind ({exc}); give {example}") from None
    except (DBAPIError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"--db {shown}: cannot open the database ({reason})") from None


def ensure_admin(url: str, name: str, password: str) -> bool:
    """Create the admin `name` unless a user of that name exists; True when created."""
    from sqlalchemy import select

    from alignloop.platform import crud
    from alignloop.platform.models import User

    engine = make_engine(url, pool_size=1)
    try:
        with make_sessionmaker(engine)() as session:
            if session.scalar(select(User.id).where(User.name == name)) is not None:
                return False
            crud.create_user(session, name=name, password=password, role="admin")
            session.commit()
            return True
    finally:
        engine.dispose()


def connection_plan(available: int, workers: int, *, db_pool: int, async_pool: int) -> tuple[int, int]:
    """Per-worker pool sizes (threads' pool, event loop's pool) that keep `workers` processes within
    the `available` PostgreSQL connections. A worker may hold 2 * db_pool + async_pool at once (the
    threads' pool opens as many again for bursts); when all workers together could exceed what is
    available, both pools shrink in proportion. Too few connections for even one of each: an error.
    """
    need = 2 * db_pool + async_pool
    if workers * need <= available:
        return db_pool, async_pool
    share = available // workers
    if share < 3:
        raise SystemExit(
            f"--workers {workers}: PostgreSQL has {available} connections free, {share} per worker,"
            " and each worker needs at least 3; use fewer workers or raise max_connections"
        )
    event_loop = max(1, share * async_pool // need)
    return max(1, (share - event_loop) // 2), event_loop


def available_connections(url: str) -> int:
    """How many more client connections the PostgreSQL server accepts for ordinary users now."""
    from sqlalchemy import text

    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            limit, reserved, in_use = connection.execute(
                text(
                    "SELECT current_setting('max_connections')::int,"
                    " current_setting('superuser_reserved_connections')::int,"
                    " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
                )
            ).one()
    finally:
        engine.dispose()
    return int(limit) - int(reserved) - int(in_use) + 1  # this connection is closed again


def _fit_pools(url: str, workers: int, env: dict[str, str]) -> None:
    """Size the workers' connection pools to what the PostgreSQL server allows, and say so when
    they had to shrink (a refused connection under load would fail requests)."""
    settings = Settings()
    available = available_connections(url)
    db_pool, async_pool = connection_plan(
        available, workers, db_pool=settings.db_pool_size, async_pool=settings.async_pool_size
    )
    if (db_pool, async_pool) != (settings.db_pool_size, settings.async_pool_size):
        print(
            f"PostgreSQL accepts {available} more connections: each of the {workers} workers keeps"
            f" {db_pool} (+{db_pool} in bursts) for threads and {async_pool} for the event loop,"
            f" instead of {settings.db_pool_size} (+{settings.db_pool_size}) and {settings.async_pool_size}",
            file=sys.stderr,
        )
    env["ALIGNLOOP_DB_POOL_SIZE"] = str(db_pool)
    env["ALIGNLOOP_ASYNC_POOL_SIZE"] = str(async_pool)


def run(config: ServeConfig) -> int:
    check_options(config)
    password = _admin_password(config.password_file) if config.create_admin else None
    if not config.migrate_only:
        check_address(config.host, config.port)
    open_database(config.db)
    if config.create_admin and password is not None:
        try:
            created = ensure_admin(config.db, config.create_admin, password)
        except Exception as exc:  # crud errors carry a message for the user
            print(f"--create-admin: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return 2
        print(f"admin {config.create_admin!r} {'created' if created else 'already exists'}")
    if config.migrate_only:
        return 0
    import uvicorn

    env = {
        "ALIGNLOOP_DB": config.db,
        "ALIGNLOOP_MEDIA_DIR": str(config.media_dir),
        "ALIGNLOOP_COOKIE_SECURE": "true" if config.cookie_secure else "false",
        "ALIGNLOOP_LOCK_S": str(config.lock_s),
        "ALIGNLOOP_SERVING_GC": "true",
    }
    if not is_sqlite(config.db):
        _fit_pools(config.db, config.workers, env)
    secret = config.secret_key or os.environ.get("ALIGNLOOP_SECRET_KEY")
    if secret is None and config.workers > 1:
        secret = Settings().secret_key  # every worker must sign cookies with the same key
    if secret is not None:
        env["ALIGNLOOP_SECRET_KEY"] = secret
    os.environ.update(env)  # the workers build their Settings from the environment
    uvicorn.run(
        "alignloop.platform.app:create_app",
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        log_level=config.log_level,
        access_log=False,
    )
    return 0
