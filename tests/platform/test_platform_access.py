"""Access that can be taken away: server-side sessions, deactivation, password changes and
resets, API tokens that expire and can be listed and revoked (API, client, pages)."""

from __future__ import annotations

import datetime as dt

from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import PASSWORD, AppTransport, World, csrf_of, error_on_page, web_login
from sqlalchemy import select, update

from alignloop.platform.client import PlatformClient, PlatformError
from alignloop.platform.models import ApiToken, utcnow


def _me(client: TestClient, token: str) -> int:
    return client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code


def _logged_in(client: TestClient) -> bool:
    """Whether the client's session cookie still opens a page."""
    r = client.get("/projects", follow_redirects=False)
    assert r.status_code in (200, 303), r.text
    return r.status_code == 200


def _browser(app: FastAPI, name: str, password: str = PASSWORD) -> TestClient:
    client = TestClient(app)
    web_login(client, name, password)
    return client


def test_a_cookie_copied_before_logout_stops_working(app: FastAPI, world: World) -> None:
    csrf = web_login(world.client, "ann1")
    copied = dict(world.client.cookies)
    out = world.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    thief = TestClient(app, cookies=copied)
    r = thief.get("/projects", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/projects"
    assert thief.get("/api/media/" + "0" * 32 + ".png").status_code == 401  # media take the cookie too


def test_deactivation_ends_sessions_and_tokens_at_once(app: FastAPI, world: World) -> None:
    browser = _browser(app, "ann1")
    token = world.tokens["ann1"]
    assert _me(world.client, token) == 200  # now in this process's token cache
    r = world.client.patch(
        f"/api/users/{world.ids['ann1']}", json={"active": False}, headers=world.auth("admin")
    )
    assert r.status_code == 200 and r.json()["active"] is False
    assert _me(world.client, token) == 401  # not after the cache's TTL: at once
    assert not _logged_in(browser)
    assert world.client.post("/api/tokens", json={"name": "ann1", "password": PASSWORD}).status_code == 401
    r = world.client.patch(
        f"/api/users/{world.ids['ann1']}", json={"active": True}, headers=world.auth("admin")
    )
    assert r.status_code == 200 and r.json()["active"] is True
    assert _me(world.client, token) == 401  # deactivation revoked the tokens for good
    assert world.client.post("/api/tokens", json={"name": "ann1", "password": PASSWORD}).status_code == 201
    own = world.client.patch(
        f"/api/users/{world.ids['admin']}", json={"active": False}, headers=world.auth("admin")
    )
    assert own.status_code == 409 and "cannot deactivate your own account" in own.json()["detail"]
    refused = world.client.patch(
        f"/api/users/{world.ids['ann2']}", json={"active": False}, headers=world.auth("ann1")
    )
    assert refused.status_code == 401  # ann1's old token is gone
    missing = world.client.patch("/api/users/999", json={"active": False}, headers=world.auth("admin"))
    assert missing.status_code == 404 and missing.json() == {"detail": "user 999 not found"}


def test_an_admin_resets_a_password(app: FastAPI, world: World) -> None:
    browser = _browser(app, "ann2")
    assert _me(world.client, world.tokens["ann2"]) == 200
    r = world.client.patch(
        f"/api/users/{world.ids['ann2']}", json={"password": "a new password"}, headers=world.auth("admin")
    )
    assert r.status_code == 200
    assert _me(world.client, world.tokens["ann2"]) == 401 and not _logged_in(browser)
    assert world.client.post("/api/tokens", json={"name": "ann2", "password": PASSWORD}).status_code == 401
    assert (
        world.client.post("/api/tokens", json={"name": "ann2", "password": "a new password"}).status_code
        == 201
    )
    short = world.client.patch(
        f"/api/users/{world.ids['ann2']}", json={"password": "short"}, headers=world.auth("admin")
    )
    assert short.status_code == 422 and short.json()["detail"].startswith("password:")
    by_trainer = world.client.patch(
        f"/api/users/{world.ids['ann2']}", json={"password": "x" * 12}, headers=world.auth("trainer")
    )
    assert by_trainer.status_code == 403


def test_users_change_their_own_password(app: FastAPI, world: World) -> None:
    here, elsewhere = _browser(app, "ann1"), _browser(app, "ann1")
    page = here.get("/account")
    assert page.status_code == 200 and "Change password" in page.text
    wrong = here.post(
        "/account/password",
        data={
            "csrf_token": csrf_of(page.text),
            "current_password": "not it",
            "new_password": "brand new pass",
        },
    )
    assert wrong.status_code == 403 and error_on_page(wrong) == "Current password: wrong password."
    changed = here.post(
        "/account/password",
        data={
            "csrf_token": csrf_of(page.text),
            "current_password": PASSWORD,
            "new_password": "brand new pass",
        },
    )
    assert changed.status_code == 200 and "your other sessions have ended" in changed.text
    assert _logged_in(here) and not _logged_in(elsewhere)
    assert _me(world.client, world.tokens["ann1"]) == 200  # tokens stay
    api = world.client.put(
        "/api/me/password",
        json={"current_password": "brand new pass", "new_password": "third password"},
        headers=world.auth("ann1"),
    )
    assert api.status_code == 204 and not _logged_in(here)
    wrong_api = world.client.put(
        "/api/me/password",
        json={"current_password": "brand new pass", "new_password": "fourth password"},
        headers=world.auth("ann1"),
    )
    assert wrong_api.status_code == 403 and wrong_api.json() == {"detail": "current_password: wrong password"}
    web_login(TestClient(app), "ann1", "third password")


def test_tokens_expire_by_default_and_per_token(app: FastAPI, world: World) -> None:
    r = world.client.post("/api/tokens", json={"name": "ann1", "password": PASSWORD})
    expires = dt.datetime.fromisoformat(r.json()["expires_at"])
    assert abs((expires - utcnow()).total_seconds() - 30 * 86400) < 60  # the default: 30 days
    short = world.client.post(
        "/api/tokens", json={"name": "ann1", "password": PASSWORD, "label": "ci", "expires_in_s": 120}
    ).json()
    assert abs((dt.datetime.fromisoformat(short["expires_at"]) - utcnow()).total_seconds() - 120) < 10
    assert _me(world.client, short["token"]) == 200  # remembered by this process now...
    with app.state.sessionmaker() as session:  # ...but no longer than the token lives
        session.execute(update(ApiToken).where(ApiToken.label == "ci").values(expires_at=utcnow()))
        session.commit()
    app.state.token_cache.forget_where(lambda user: True)  # the cache's own bound is tested apart
    after = world.client.get("/api/me", headers={"Authorization": f"Bearer {short['token']}"})
    assert after.status_code == 401 and after.json()["detail"] == "invalid, expired or revoked API token"
    stored = [t["label"] for t in world.client.get("/api/tokens", headers=world.auth("ann1")).json()]
    assert "ci" in stored and len(stored) == 3  # expired, still stored
    world.client.post("/api/tokens", json={"name": "ann2", "password": PASSWORD})  # anyone's login
    with app.state.sessionmaker() as session:  # purges every expired token, and only those
        assert session.scalars(select(ApiToken.label).where(ApiToken.expires_at <= utcnow())).all() == []
    listed = world.client.get("/api/tokens", headers=world.auth("ann1")).json()
    assert [t["label"] for t in listed] == [label for label in stored if label != "ci"]  # the others stay
    too_long = world.client.post(
        "/api/tokens", json={"name": "ann1", "password": PASSWORD, "expires_in_s": 400 * 86400}
    )
    assert too_long.status_code == 422 and too_long.json()["detail"].startswith("expires_in_s:")


def test_tokens_are_listed_and_revoked(app: FastAPI, world: World) -> None:
    second = world.client.post(
        "/api/tokens", json={"name": "ann1", "password": PASSWORD, "label": "laptop"}
    ).json()["token"]
    listed = world.client.get("/api/tokens", headers=world.auth("ann1")).json()
    assert [t["label"] for t in listed] == ["", "laptop"]
    assert all(set(t) == {"id", "user_id", "label", "created_at", "expires_at"} for t in listed)
    laptop = listed[1]["id"]
    assert _me(world.client, second) == 200  # cached in this process
    other = world.client.delete(f"/api/tokens/{laptop}", headers=world.auth("ann2"))
    assert other.status_code == 404 and other.json() == {"detail": f"token {laptop} not found"}
    assert world.client.delete(f"/api/tokens/{laptop}", headers=world.auth("ann1")).status_code == 204
    assert _me(world.client, second) == 401
    by_admin = world.client.get(f"/api/users/{world.ids['ann1']}/tokens", headers=world.auth("admin")).json()
    assert [t["id"] for t in by_admin] == [listed[0]["id"]]
    assert (
        world.client.delete(f"/api/tokens/{listed[0]['id']}", headers=world.auth("admin")).status_code == 204
    )
    assert _me(world.client, world.tokens["ann1"]) == 401
    assert (
        world.client.get(f"/api/users/{world.ids['ann1']}/tokens", headers=world.auth("ann2")).status_code
        == 403
    )


def test_the_client_lists_revokes_deactivates_and_resets(app: FastAPI, world: World) -> None:
    transport = AppTransport(world.client)
    admin = PlatformClient("http://testserver", world.tokens["admin"], transport=transport)
    annotator = PlatformClient.login(
        "http://testserver", "ann3", PASSWORD, label="script", expires_in_s=3600, transport=transport
    )
    mine = annotator.tokens()
    assert [t["label"] for t in mine] == ["", "script"]
    annotator.revoke_token(mine[0]["id"])
    assert _me(world.client, world.tokens["ann3"]) == 401
    annotator.change_password(PASSWORD, "changed by the client")
    assert [u["name"] for u in admin.users()][:2] == ["admin", "trainer"]
    assert [t["label"] for t in admin.tokens(world.ids["ann3"])] == ["script"]
    admin.reset_password(world.ids["ann3"], "reset by the admin")
    try:
        annotator.tokens()
        raise AssertionError("a reset password revokes the user's tokens")
    except PlatformError as exc:
        assert exc.status == 401
    again = PlatformClient.login("http://testserver", "ann3", "reset by the admin", transport=transport)
    assert admin.set_active(world.ids["ann3"], False)["active"] is False
    try:
        again.tokens()
        raise AssertionError("deactivation revokes the user's tokens")
    except PlatformError as exc:
        assert exc.status == 401
    assert admin.set_active(world.ids["ann3"], True)["active"] is True
    last = PlatformClient.login("http://testserver", "ann3", "reset by the admin", transport=transport)
    last.logout()
    try:
        last.tokens()
        raise AssertionError("logout revokes the token")
    except PlatformError as exc:
        assert exc.status == 401
    for i in range(50):
        try:
            PlatformClient.login("http://testserver", "ann3", f"wrong {i}", transport=transport)
        except PlatformError as exc:
            assert exc.status == 401
    try:
        PlatformClient.login("http://testserver", "ann3", "wrong 50", transport=transport)
        raise AssertionError("the 51st wrong password in a minute is refused")
    except PlatformError as exc:
        assert exc.status == 429 and exc.retry_after is not None and 1 <= exc.retry_after <= 60


def test_the_pages_manage_tokens_and_people(app: FastAPI, world: World) -> None:
    browser = _browser(app, "ann1")
    page = browser.get("/account")
    created = browser.post(
        "/account/tokens", data={"csrf_token": csrf_of(page.text), "label": "notebook", "days": "7"}
    )
    assert created.status_code == 200 and "notebook" in created.text
    token = created.text.split('id="new-token">')[1].split("<code>")[1].split("</code>")[0]
    assert _me(world.client, token) == 200
    listed = world.client.get("/api/tokens", headers={"Authorization": f"Bearer {token}"}).json()
    notebook = next(t for t in listed if t["label"] == "notebook")
    assert (
        abs((dt.datetime.fromisoformat(notebook["expires_at"]) - utcnow()).total_seconds() - 7 * 86400) < 60
    )
    revoked = browser.post(
        f"/tokens/{notebook['id']}/revoke", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False
    )
    assert revoked.status_code == 303 and revoked.headers["location"] == "/account"
    assert _me(world.client, token) == 401
    admin = _browser(app, "admin")
    people = admin.get("/admin")
    assert f'href="/admin/users/{world.ids["ann2"]}"' in people.text
    person = admin.get(f"/admin/users/{world.ids['ann2']}")
    assert person.status_code == 200 and 'id="deactivate"' in person.text
    csrf = csrf_of(person.text)
    victim = _browser(app, "ann2")
    assert _me(world.client, world.tokens["ann2"]) == 200
    off = admin.post(f"/admin/users/{world.ids['ann2']}/active", data={"csrf_token": csrf, "active": "false"})
    assert off.status_code == 200 and "deactivated" in off.text and 'id="activate"' in off.text
    assert not _logged_in(victim) and _me(world.client, world.tokens["ann2"]) == 401
    on = admin.post(f"/admin/users/{world.ids['ann2']}/active", data={"csrf_token": csrf, "active": "true"})
    assert on.status_code == 200 and 'id="deactivate"' in on.text
    reset = admin.post(
        f"/admin/users/{world.ids['ann2']}/password", data={"csrf_token": csrf, "password": "given by admin"}
    )
    assert reset.status_code == 200
    web_login(TestClient(app), "ann2", "given by admin")
    own = admin.post(
        f"/admin/users/{world.ids['admin']}/active", data={"csrf_token": csrf, "active": "false"}
    )
    assert own.status_code == 409 and "cannot deactivate your own account" in error_on_page(own)
    others = browser.post(f"/tokens/{listed[0]['id'] + 100}/revoke", data={"csrf_token": csrf_of(page.text)})
    assert others.status_code == 404
    assert browser.get(f"/admin/users/{world.ids['ann2']}").status_code == 403
