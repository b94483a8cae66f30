"""One rule for user names, on the admin form and in the API: NFKC, no surrounding or invisible
whitespace, a length limit, no look-alikes of an existing name, and never ""."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from platform_helpers import PASSWORD, World, csrf_of, error_on_page, web_login
from sqlalchemy import select, text

from alignloop.platform.models import User
from alignloop.platform.names import normalise_name, skeleton

REFUSED = {
    "": "must not be empty",
    " ": "starts with U+0020 SPACE",
    "admin ": "has at position 6 U+0020 SPACE",
    " ann": "starts with U+0020 SPACE",
    "car\u200bol": "has at position 4 U+200B ZERO WIDTH SPACE",
    "\u200dcarol": "starts with U+200D ZERO WIDTH JOINER",
    "carol\u2066": "has at position 6 U+2066 LEFT-TO-RIGHT ISOLATE",
    "x" * 300: "300 characters, more than 64",
    "tab\tname": "has at position 4 U+0009",
    "_leading": "starts with U+005F LOW LINE",
}
LOOK_ALIKES = {
    "\u0430dmin": "admin",  # Cyrillic a
    "Admin": "admin",
    "ADMIN": "admin",
    "\u0251dmin": "admin",  # Latin alpha
    "tr\u0430iner": "trainer",
}


def _users(app: FastAPI) -> list[str]:
    with app.state.sessionmaker() as session:
        return list(session.scalars(select(User.name).order_by(User.id)))


def test_the_rule_and_the_skeleton() -> None:
    assert normalise_name("ｃａｒｏｌ") == "carol"  # full-width letters are NFKC-folded
    assert normalise_name("José.García-2") == "José.García-2"
    assert normalise_name("Jose\u0301") == "José"  # composed
    assert skeleton("\u0430dmin") == skeleton("Admin") == skeleton("admin")
    assert skeleton("adm1n") == skeleton("admln") != skeleton("admin")
    assert skeleton("José") != skeleton("Jose")
    for raw, reason in REFUSED.items():
        with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
            normalise_name(raw)


def test_the_api_and_the_form_refuse_the_same_names(app: FastAPI, world: World) -> None:
    csrf = web_login(world.client, "admin")
    before = _users(app)
    for raw, reason in REFUSED.items():
        api = world.client.post(
            "/api/users", json={"name": raw, "password": "long enough"}, headers=world.auth("admin")
        )
        assert api.status_code == 422 and reason in api.json()["detail"], (raw, api.text)
        form = world.client.post(
            "/admin/users",
            data={"csrf_token": csrf, "name": raw, "password": "long enough", "role": "annotator"},
        )
        assert form.status_code == 422, (raw, form.text)
        assert error_on_page(form).startswith("name: ") and reason in error_on_page(form), raw
    for raw, existing in LOOK_ALIKES.items():
        api = world.client.post(
            "/api/users", json={"name": raw, "password": "long enough"}, headers=world.auth("admin")
        )
        assert api.status_code == 409, (raw, api.text)
        assert (
            api.json()["detail"]
            == f"name: {raw!r} looks like the existing user {existing!r}; choose another name"
        )
        form = world.client.post(
            "/admin/users",
            data={"csrf_token": csrf, "name": raw, "password": "long enough", "role": "annotator"},
        )
        assert form.status_code == 409 and "looks like the existing user" in error_on_page(form)
    assert _users(app) == before
    made = world.client.post(
        "/api/users", json={"name": "ｃａｒｏｌ", "password": "long enough"}, headers=world.auth("admin")
    )
    assert made.status_code == 201 and made.json()["name"] == "carol"
    form = world.client.post(
        "/admin/users", data={"csrf_token": csrf, "name": "Zoë", "password": "long enough", "role": "trainer"}
    )
    assert form.status_code == 200 and _users(app)[-2:] == ["carol", "Zoë"]


def test_nobody_logs_in_as_an_empty_name(app: FastAPI, world: World) -> None:
    from alignloop.platform import auth

    with app.state.sessionmaker() as session:  # a row the old admin form could create
        session.execute(
            text(
                "INSERT INTO users (name, password_hash, role, active, created_at)"
                " VALUES ('', :hash, 'admin', true, CURRENT_TIMESTAMP)"
            ),
            {"hash": auth.hash_password(PASSWORD)},
        )
        session.commit()
    assert world.client.post("/api/tokens", json={"name": "", "password": PASSWORD}).status_code == 422
    assert world.client.post("/api/tokens", json={"name": " ", "password": PASSWORD}).status_code == 401
    page = world.client.get("/login")
    r = world.client.post("/login", data={"name": "", "password": PASSWORD, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401 and "Wrong name or password." in r.text
    ok = world.client.post("/api/tokens", json={"name": " ann1 ", "password": PASSWORD})
    assert ok.status_code == 201 and ok.json()["user_id"] == world.ids["ann1"]  # the name as typed
