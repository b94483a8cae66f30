"""Logins are throttled per user name and per client address, across server processes, and
passwords are checked with no database transaction open."""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from liveserver import LiveServer
from platform_helpers import PASSWORD, World, csrf_of, error_on_page
from sqlalchemy import create_engine, text, update

from alignloop.platform import auth, logins
from alignloop.platform.app import create_app
from alignloop.platform.db import migrate
from alignloop.platform.models import LoginFailure
from alignloop.platform.settings import Settings


def _token_login(client: TestClient, name: str, password: str) -> int:
    return client.post("/api/tokens", json={"name": name, "password": password}).status_code


def _form_login(client: TestClient, name: str, password: str):  # type: ignore[no-untyped-def]
    csrf = csrf_of(client.get("/login").text)
    return client.post(
        "/login", data={"name": name, "password": password, "csrf_token": csrf}, follow_redirects=False
    )


@pytest.fixture
def second_worker(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """Another server process on the same database: its own app, its own memory."""
    other = create_app(Settings(db=db_url, media_dir=tmp_path / "media", secret_key="test-secret"))
    with TestClient(other) as client:
        yield client
    other.state.engine.dispose()


def test_the_51st_wrong_password_in_a_minute_gets_429(
    app: FastAPI, world: World, second_worker: TestClient
) -> None:
    # 50 wrong passwords for ann1, spread over two server processes and over both login routes
    for i in range(50):
        client = world.client if i % 2 else second_worker
        if i % 3:
            assert _token_login(client, "ann1", f"wrong {i}") == 401
        else:
            assert _form_login(client, "ann1", f"wrong {i}").status_code == 401
    for client in (world.client, second_worker):
        refused = client.post("/api/tokens", json={"name": "ann1", "password": "wrong 51"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["detail"].startswith("too many failed logins for 'ann1' in the last 60 s")
    # while throttled, even the right password is refused (or the throttle would be an oracle)
    assert _token_login(world.client, "ann1", PASSWORD) == 429
    page = _form_login(world.client, " ann1 ", PASSWORD)  # the name as typed, spaces dropped
    assert page.status_code == 429 and "Too many failed logins for 'ann1'" in error_on_page(page)
    assert 1 <= int(page.headers["retry-after"]) <= 60
    assert _token_login(world.client, "ann2", PASSWORD) == 201  # other accounts are not affected
    with app.state.sessionmaker() as session:  # a minute later the failures have left the window
        session.execute(update(LoginFailure).values(failed_at=LoginFailure.failed_at - 61))
        session.commit()
    assert _token_login(world.client, "ann1", PASSWORD) == 201
    with app.state.sessionmaker() as session:  # the window is cleared as logins come
        assert session.query(LoginFailure).count() == 0


def test_a_successful_login_does_not_count(world: World) -> None:
    for _ in range(3):
        assert _token_login(world.client, "ann1", PASSWORD) == 201
    with world.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert session.query(LoginFailure).count() == 0


def test_failures_are_counted_per_client_address(db_url: str, tmp_path: Path) -> None:
    settings = Settings(db=db_url, media_dir=tmp_path / "m", secret_key="s", login_failures_per_address=5)
    application = create_app(settings)
    with TestClient(application) as client:
        for i in range(5):  # five different names, one address ("testclient")
            assert _token_login(client, f"nobody{i}", "whatever") == 401
        refused = client.post("/api/tokens", json={"name": "someone-else", "password": "whatever"})
        assert refused.status_code == 429
        assert "too many failed logins from your address" in refused.json()["detail"]
    application.state.engine.dispose()


def test_passwords_are_checked_outside_any_transaction(
    app: FastAPI, world: World, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While argon2 runs, another process can take SQLite's write lock (PostgreSQL: no connection of
    ours is inside a transaction); before, the login held the lock for the whole hash (about 0.3 s
    of a core, 29 s of waiting for everyone under 45 parallel wrong logins)."""
    seen: list[str] = []
    verify = auth.verify_password

    def observing_verify(password_hash: str, password: str) -> bool:
        if db_url.startswith("sqlite"):
            other = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.2)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.rollback()
                seen.append("free")
            except sqlite3.OperationalError as exc:
                seen.append(str(exc))
            finally:
                other.close()
        else:
            engine = create_engine(db_url)
            with engine.connect() as connection:
                busy = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            engine.dispose()
            seen.append("free" if busy == 0 else f"{busy} connections inside a transaction")
        return verify(password_hash, password)

    monkeypatch.setattr(auth, "verify_password", observing_verify)
    assert _token_login(world.client, "ann1", "a wrong password") == 401
    assert _token_login(world.client, "ann1", PASSWORD) == 201
    assert _form_login(world.client, "ann2", PASSWORD).status_code == 303
    assert seen == ["free", "free", "free"]


def test_at_most_password_checks_hashes_run_at_once(
    app: FastAPI, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of logins waits for the process's hashing slots (`Settings.password_checks`), so
    it cannot take every core from the requests of everyone else."""
    assert app.state.settings.password_checks >= 1
    app.state.password_slots = threading.BoundedSemaphore(1)
    verify, lock = auth.verify_password, threading.Lock()
    running, peak = [0], [0]

    def slow_verify(password_hash: str, password: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return verify(password_hash, password)

    monkeypatch.setattr(auth, "verify_password", slow_verify)
    throttle = app.state.throttle

    def log_in(name: str) -> bool:
        with app.state.sessionmaker() as session:
            user = logins.check_password(
                session, name=name, password=PASSWORD, address="10.0.0.1", throttle=throttle,
                slots=app.state.password_slots,
            )  # fmt: skip
            session.commit()
            return user is not None

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(log_in, ["ann1", "ann2", "ann3", "trainer"])) == [True] * 4
    assert peak == [1]


def _bench() -> ModuleType:
    """bench/platform_logins.py, whose burst this test runs in a bounded form."""
    path = Path(__file__).resolve().parents[2] / "bench" / "platform_logins.py"
    spec = importlib.util.spec_from_file_location("platform_logins_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_bystander_is_served_during_50_parallel_wrong_logins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 parallel wrong logins (real argon2 cost, half through the form, half through the token
    route) on SQLite: a bystander's authenticated reads stay fast, and the 51st wrong password is
    refused. Before, the hashes held the database lock and the event loop: reads waited 60 s (they
    timed out) and most logins failed (bench/platform_logins.py, BENCHMARKS.md). The bound here is
    generous for a loaded 2-core machine; the bench reports the real figures."""
    bench = _bench()
    db_url = f"sqlite:///{tmp_path}/logins.db"
    migrate(db_url)
    token = bench.seed(db_url)
    monkeypatch.setenv("ALIGNLOOP_PASSWORD_CHECKS", "2")  # the burst takes half as long
    # on a loaded machine the burst may outlast the 60-s window, and its first failures with it
    monkeypatch.setenv("ALIGNLOOP_LOGIN_WINDOW_S", "600")
    server = LiveServer(db_url, tmp_path)
    server.start()
    try:
        result = bench.burst(server.url, token, 50)
        next_status = bench.wrong_login(server.url, 1)
    finally:
        server.stop()
    figures = bench.summary(result)
    assert figures["login_statuses"] == {"401": 50}, figures
    assert figures["bystander_failed_reads"] == 0 and figures["bystander_reads"] >= 20, figures
    assert figures["bystander_p99_s"] < 2.0, figures
    assert next_status == 429
