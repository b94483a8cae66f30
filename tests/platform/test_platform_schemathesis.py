"""Schemathesis explores every operation of the API's OpenAPI schema and of the pages' (forms
posted with a valid CSRF token, by a logged-in admin and annotator); no input may cause a server
error. API errors are JSON with a `detail`, page errors are HTML pages."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from platform_helpers import PASSWORD, World, web_login
from sqlalchemy import delete, update
from starlette.testclient import TestClient

from alignloop.platform import auth, crud
from alignloop.platform.app import openapi_of
from alignloop.platform.models import LoginFailure, User

EXAMPLES = 6  # per operation and user: bounded so the run takes seconds
SKIPPED = {"DELETE /api/tokens/current"}  # would revoke the token the rest of the operation uses
WHO = ("admin", "ann1")


class Access:
    """Fresh credentials for each operation: what the operation before may have revoked,
    deactivated or changed (tokens, sessions, passwords, login failures) is restored."""

    def __init__(self, app: FastAPI, world: World):
        self.app, self.world = app, world

    def renew(self) -> dict[str, dict[str, Any]]:
        with self.app.state.sessionmaker() as session:
            session.execute(update(User).values(active=True, password_hash=auth.hash_password(PASSWORD)))
            session.execute(delete(LoginFailure))
            tokens = {
                name: crud.create_token(session, user=crud.get_user(session, user_id=self.world.ids[name]))
                for name in WHO
            }
            session.commit()
        access = {}
        for name in WHO:
            browser = TestClient(self.app)
            csrf = web_login(browser, name)
            access[name] = {
                "headers": {"Authorization": f"Bearer {tokens[name]}"},
                "cookies": dict(browser.cookies),
                "csrf": csrf,
            }
        return access


def _explore(
    operation: schemathesis.APIOperation, access: dict[str, Any], failures: list[str], *, page: bool
) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def explore(case: schemathesis.Case) -> None:
        if page and isinstance(case.body, dict) and "csrf_token" in case.body:
            case.body["csrf_token"] = access["csrf"]  # past the CSRF check, into the form itself
        if page:
            response = case.call(cookies=access["cookies"], allow_redirects=False)
        else:
            response = case.call(headers=access["headers"])
        where = f"{case.method} {case.formatted_path}"
        if response.status_code >= 500:
            failures.append(f"{where} -> {response.status_code}: {response.text[:200]}")
        elif response.status_code >= 400 and page:
            content_type = response.headers.get("content-type", [""])[0]
            assert content_type.startswith("text/html"), (where, response.status_code, response.text[:200])
        elif response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and isinstance(body.get("detail"), str), (where, response.text)

    explore()


def test_no_server_errors(app: FastAPI, world: World) -> None:
    world.add_items(3)
    a = world.next("ann1")
    assert a is not None
    world.submit("ann1", a["id"], "seed")
    api = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    pages = schemathesis.openapi.from_dict(openapi_of(app, pages=True))
    pages.app = app
    explored: dict[bool, list[str]] = {False: [], True: []}
    failures: list[str] = []
    access = Access(app, world)
    for page, schema in ((False, api), (True, pages)):
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.label in SKIPPED:
                continue
            explored[page].append(operation.label)
            credentials = access.renew()
            for who in WHO:
                _explore(operation, credentials[who], failures, page=page)
    assert len(explored[False]) >= 20
    assert {"POST /login", "POST /projects/{project_id}/label", "POST /admin/users", "GET /account"} <= set(
        explored[True]
    )
    assert not failures, "\n".join(failures[:10])
