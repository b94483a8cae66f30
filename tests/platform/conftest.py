"""Fixtures: every API test runs on SQLite and on a real PostgreSQL cluster, each test in its own database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import World, make_world, pg_database
from sqlalchemy import create_engine, text

from alignloop.platform import auth
from alignloop.platform.app import create_app
from alignloop.platform.db import migrate
from alignloop.platform.pgcluster import Cluster, start_cluster
from alignloop.platform.settings import Settings


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its cheapest settings: the tests check the flow, not the hash cost."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        engine = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("CREATE DATABASE alignloop_template"))
        engine.dispose()
        migrate(cluster.url("alignloop_template"))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        path = tmp_path / "platform.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        yield from pg_database(request.getfixturevalue("pg_cluster"), template="alignloop_template")


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[FastAPI]:
    application = create_app(
        Settings(db=db_url, media_dir=tmp_path / "media", secret_key="test-secret", max_body_bytes=64 * 1024)
    )
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def world(app: FastAPI, client: TestClient) -> World:
    return make_world(app, client)
