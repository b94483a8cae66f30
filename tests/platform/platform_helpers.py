"""Helpers shared by the platform tests: a seeded world of users and a project, web login."""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from alignloop.platform import crud
from alignloop.platform.pgcluster import Cluster
from alignloop.platform.schemas import ProjectIn

PASSWORD = "correct horse battery"
SAFE = {"safe": True, "harms": [], "severity": None}
ANSWERS = {"better": "A", "safer": "A", "is_safe": [SAFE, SAFE]}
"""A judgement of the default questions: A better and safer, both safe."""


def unsafe(*harms: str, severity: str | None = None) -> dict[str, object]:
    return {"safe": False, "harms": list(harms), "severity": severity}


@dataclass
class World:
    """An admin, a trainer, three annotators (with API tokens) and one project with k = 2."""

    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    project_id: int = 0

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def add_items(self, n: int, **overrides: object) -> list[int]:
        items = [
            {
                "prompt": f"prompt {i}",
                "candidates": [
                    {"text": f"answer A{i}", "model": "alpha"},
                    {"text": f"answer B{i}", "model": "beta"},
                ],
                **overrides,
            }
            for i in range(n)
        ]
        r = self.client.post(
            f"/api/projects/{self.project_id}/items", json={"items": items}, headers=self.auth("trainer")
        )
        assert r.status_code == 201, r.text
        return list(r.json()["ids"])

    def next(self, name: str) -> dict | None:
        r = self.client.post(f"/api/projects/{self.project_id}/next", headers=self.auth(name))
        assert r.status_code == 200, r.text
        return r.json()["assignment"]

    def submit(self, name: str, assignment_id: int, key: str, **answers: object) -> object:
        """Submit answers to the default questions (better A, safer A, both safe unless given);
        `skipped`/`skip_reason` skip instead."""
        if answers.get("skipped"):
            body: dict[str, object] = {"idempotency_key": key, **answers}
        else:
            body = {"idempotency_key": key, "answers": {**ANSWERS, **answers}}
        return self.client.post(
            f"/api/assignments/{assignment_id}/judgement", json=body, headers=self.auth(name)
        )


def make_world(app: FastAPI, client: TestClient, *, overlap: int = 2, gold_rate: float = 0.0) -> World:
    world = World(client=client)
    with app.state.sessionmaker() as session:
        for name, role in [
            ("admin", "admin"),
            ("trainer", "trainer"),
            ("ann1", "annotator"),
            ("ann2", "annotator"),
            ("ann3", "annotator"),
        ]:
            user = crud.create_user(session, name=name, password=PASSWORD, role=role)
            world.tokens[name] = crud.create_token(session, user=user)
            world.ids[name] = user.id
        project = crud.create_project(session, spec=ProjectIn(name="p", overlap=overlap, gold_rate=gold_rate))
        world.project_id = project.id
        session.commit()
    return world


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def error_on_page(response: Any) -> str:
    """The message of an error page (web routes answer errors as HTML, the API as JSON)."""
    assert response.headers["content-type"].startswith("text/html"), response.text
    match = re.search(r'<p class="error" role="alert" id="error">([^<]*)</p>', response.text)
    assert match, f"no error message in the page: {response.text[:500]}"
    return html.unescape(match.group(1))


def web_login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the login form; returns the session's CSRF token."""
    page = client.get("/login")
    r = client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/projects").text)


def web_take(client: TestClient, project_id: int, csrf: str) -> str:
    """Take the next item on the labelling page (a POST: a GET only shows); the page's HTML."""
    r = client.post(f"/projects/{project_id}/next", data={"csrf_token": csrf})
    assert r.status_code == 200, r.text
    return r.text


class AppTransport(httpx.BaseTransport):
    """Sends a PlatformClient's requests to the test app; may lose the answers to item pushes."""

    def __init__(self, client: TestClient, *, lose_item_answers: int = 0):
        self.inner: httpx.BaseTransport = client._transport
        self.to_lose, self.lost = lose_item_answers, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()  # handled by the app either way
        if request.url.path.endswith("/items") and self.lost < self.to_lose:
            self.lost += 1
            return httpx.Response(503, text="upstream went away")
        return httpx.Response(response.status_code, headers=response.headers, content=body)


_databases = itertools.count()


def pg_database(cluster: Cluster, *, template: str | None = None) -> Iterator[str]:
    """A fresh database on the cluster (a copy of `template`, or empty), dropped afterwards."""
    name = f"test_{next(_databases)}"
    admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")))
    try:
        yield cluster.url(name)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
