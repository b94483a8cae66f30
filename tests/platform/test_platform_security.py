"""Every refused request is refused with the right status and a message that says why."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import PASSWORD, World, csrf_of, error_on_page, web_login, web_take
from sqlalchemy import func, select

from alignloop.platform.app import create_app
from alignloop.platform.models import Judgement
from alignloop.platform.settings import Settings
from alignloop.platform.web.routes import CSRF_MESSAGE


def _count(app: FastAPI) -> int:
    with app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count(Judgement.id))) or 0)


def test_unauthenticated_requests_are_refused(world: World) -> None:
    world.add_items(1)
    pid = world.project_id
    for method, path in [
        ("GET", "/api/projects"),
        ("POST", f"/api/projects/{pid}/next"),
        ("GET", f"/api/judgements/mine?project_id={pid}"),
        ("GET", "/api/judgements/1"),
        ("GET", f"/api/projects/{pid}/export"),
        ("GET", "/api/media/" + "0" * 32 + ".png"),
    ]:
        r = world.client.request(method, path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["detail"].startswith("not authenticated: send 'Authorization: Bearer <token>'")
        assert r.headers["www-authenticate"] == "Bearer"
    forged = world.client.get("/api/projects", headers={"Authorization": "Bearer al_not-a-real-token"})
    assert forged.status_code == 401 and forged.json() == {"detail": "invalid, expired or revoked API token"}
    page = world.client.get(f"/projects/{pid}/label", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == f"/login?next=/projects/{pid}/label"


def test_another_annotators_label_is_out_of_reach(app: FastAPI, world: World) -> None:
    world.add_items(1)
    a = world.next("ann1")
    assert a is not None
    on_theirs = world.submit("ann2", a["id"], "steal")
    assert on_theirs.status_code == 403
    assert on_theirs.json() == {"detail": f"assignment {a['id']} belongs to another annotator"}
    jid = world.submit("ann1", a["id"], "own").json()["id"]
    read = world.client.get(f"/api/judgements/{jid}", headers=world.auth("ann2"))
    assert read.status_code == 403 and read.json() == {
        "detail": f"judgement {jid} belongs to another annotator"
    }
    change = world.client.put(
        f"/api/judgements/{jid}", json={"answers": {"better": "B"}}, headers=world.auth("ann2")
    )
    assert change.status_code == 403
    mine = world.client.get(f"/api/judgements/mine?project_id={world.project_id}", headers=world.auth("ann2"))
    assert mine.json()["judgements"] == []
    # even an admin cannot rewrite an annotator's judgement
    admin_change = world.client.put(
        f"/api/judgements/{jid}", json={"answers": {"better": "B"}}, headers=world.auth("admin")
    )
    assert admin_change.status_code == 403 and "only they can change it" in admin_change.json()["detail"]
    assert (
        world.client.get(f"/api/judgements/{jid}", headers=world.auth("ann1")).json()["answers"]["better"]
        == "A"
    )


def test_only_admins_export_or_see_statistics(world: World) -> None:
    pid = world.project_id
    for who in ("ann1", "trainer"):
        for path in (f"/api/projects/{pid}/export", f"/api/projects/{pid}/stats", "/api/users"):
            r = world.client.get(path, headers=world.auth(who))
            assert r.status_code == 403, (who, path)
            assert r.json()["detail"].startswith("only admins may do this")
    r = world.client.get(f"/api/projects/{pid}/judgements", headers=world.auth("ann1"))
    assert r.status_code == 403 and "trainer or admin role" in r.json()["detail"]
    r = world.client.post(
        f"/api/projects/{pid}/items",
        json={"items": [{"prompt": "p", "candidates": [{"text": "a"}, {"text": "b"}]}]},
        headers=world.auth("ann1"),
    )
    assert r.status_code == 403
    assert world.client.get(f"/api/projects/{pid}/export", headers=world.auth("admin")).status_code == 200
    web_login(world.client, "ann1")
    assert world.client.get(f"/admin/projects/{pid}").status_code == 403
    web_export = world.client.get(f"/admin/projects/{pid}/export.jsonl")
    assert web_export.status_code == 403 and error_on_page(web_export) == "only admins may see this page"


def test_forged_forms_without_csrf_token_are_refused(app: FastAPI, world: World) -> None:
    world.add_items(1)
    pid = world.project_id
    login_page = world.client.get("/login")
    no_token = world.client.post("/login", data={"name": "ann1", "password": "x" * 8})
    assert no_token.status_code == 403 and error_on_page(no_token) == CSRF_MESSAGE
    csrf = web_login(world.client, "ann1")
    assert csrf != csrf_of(login_page.text)  # a fresh token after login
    locked = world.client.get(f"/projects/{pid}/label")  # a GET (a link from anywhere) locks nothing
    assert 'name="assignment_id"' not in locked.text and "Take the next item" in locked.text
    assert world.client.post(f"/projects/{pid}/next", data={}).status_code == 403  # no CSRF token
    page = web_take(world.client, pid, csrf)
    assignment_id = int(page.split('name="assignment_id" value="')[1].split('"')[0])
    form = {"assignment_id": str(assignment_id), "idempotency_key": f"web-{assignment_id}", "q.better": "A"}
    for token in (None, "forged-token"):
        data = dict(form, **({"csrf_token": token} if token else {}))
        r = world.client.post(f"/projects/{pid}/label", data=data, follow_redirects=False)
        assert r.status_code == 403 and error_on_page(r) == CSRF_MESSAGE
    assert _count(app) == 0
    ok = world.client.post(f"/projects/{pid}/label", data=dict(form, csrf_token=csrf), follow_redirects=False)
    assert ok.status_code == 303 and _count(app) == 1
    assert world.client.post("/logout", data={}).status_code == 403


def test_oversized_and_malformed_payloads_are_refused(world: World) -> None:
    pid = world.project_id
    url = f"/api/projects/{pid}/items"
    big = {"items": [{"prompt": "x" * 70_000, "candidates": [{"text": "a"}, {"text": "b"}]}]}
    r = world.client.post(url, json=big, headers=world.auth("trainer"))
    assert r.status_code == 413 and r.json() == {
        "detail": "request body is larger than the limit of 65536 bytes"
    }

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(80):
            yield b"x" * 1024

    r = world.client.post(url, content=chunks(), headers=world.auth("trainer"))
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    r = world.client.post(
        url, content=b'{"items": [', headers={**world.auth("trainer"), "content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON decode error" in r.json()["detail"]
    r = world.client.post(url, json={"items": [{"prompt": 3}]}, headers=world.auth("trainer"))
    assert r.status_code == 422 and r.json()["detail"].startswith(
        "items.0.prompt: Input should be a valid string"
    )
    r = world.client.post(
        url,
        json={"items": [{"prompt": "p\x00", "candidates": [{"text": "a"}, {"text": "b"}]}]},
        headers=world.auth("trainer"),
    )
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
    r = world.client.post(
        url,
        json={"items": [{"prompt": "p", "candidates": [{"text": "a"}, {"text": "b"}], "evil": 1}]},
        headers=world.auth("trainer"),
    )
    assert r.status_code == 422 and "evil: Extra inputs are not permitted" in r.json()["detail"]
    r = world.client.get(f"/api/projects/{2**40}", headers=world.auth("admin"))
    assert r.status_code == 422 and r.json()["detail"].startswith("path.project_id:")


@pytest.mark.parametrize("secure", [False, True])
def test_session_cookie_flags(tmp_path, secure: bool) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(db=f"sqlite:///{tmp_path}/x.db", secret_key="s", cookie_secure=secure))
    with TestClient(app) as client:
        cookie = client.get("/login").headers["set-cookie"]
    app.state.engine.dispose()
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert ("secure" in cookie.lower().replace("samesite", "")) == secure


def test_login_redirects_only_within_the_site(world: World) -> None:
    for target, landing in [
        ("/projects", "/projects"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),  # browsers read a backslash as a slash
        ("https://evil.example", "/"),
    ]:
        world.client.cookies.clear()
        page = world.client.get("/login")
        r = world.client.post(
            "/login",
            data={"name": "ann1", "password": PASSWORD, "next": target, "csrf_token": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == landing, target
