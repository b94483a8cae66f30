"""The pages hold on any data and any id: the dashboard never fails on ratings or model names,
ids beyond the database's range are 404/422 pages, errors are pages (the API keeps JSON), every
response carries the security headers, uploads are what they claim to be, and /api/docs needs no
network."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from platform_helpers import World, error_on_page, web_login

from alignloop.platform import stats
from alignloop.platform.stats import Rating

HUGE = 2**63 + 5
MATHTEXT = r"$\undefinedcommand$"


def test_a_rating_outside_its_interval_and_a_mathtext_name_are_drawn() -> None:
    ratings = [
        Rating(model="steady", rating=1010.0, lower=980.0, upper=1040.0, rank=1, comparisons=40),
        # the bootstrap percentiles need not contain the full-data estimate
        Rating(model="odd", rating=990.0, lower=995.0, upper=1030.0, rank=1, comparisons=3),
        Rating(model=MATHTEXT, rating=1000.0, lower=990.0, upper=1010.0, rank=1, comparisons=5),
    ]
    svg = stats.leaderboard_svg(ratings)
    assert svg.startswith("<svg") and svg.count("<path") >= 3
    assert stats.leaderboard_svg([]) == ""


def test_the_dashboard_shows_odd_ratings_and_names(
    app: FastAPI, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = world.add_items(
        2, candidates=[{"text": "a", "model": MATHTEXT}, {"text": "b", "model": "plain <b>model</b>"}]
    )
    for name in ("ann1", "ann2"):
        for n in range(2):
            a = world.next(name)
            assert a is not None and a["item"]["id"] in ids
            assert world.submit(name, a["id"], f"{name}-{n}").status_code == 201
    web_login(world.client, "admin")
    page = world.client.get(f"/admin/projects/{world.project_id}")
    assert page.status_code == 200
    assert "$\\undefinedcommand$" in page.text and "plain &lt;b&gt;model&lt;/b&gt;" in page.text
    real = stats.leaderboard

    def outside(questions, judgements):  # type: ignore[no-untyped-def]
        return [
            r.model_copy(update={"lower": r.rating + 5, "upper": r.rating + 50})
            for r in real(questions, judgements)
        ]

    monkeypatch.setattr(stats, "leaderboard", outside)
    page = world.client.get(f"/admin/projects/{world.project_id}")
    assert page.status_code == 200
    svg = base64.b64decode(page.text.split('src="data:image/svg+xml;base64,')[1].split('"')[0]).decode()
    assert svg.startswith("<svg")


def test_ids_beyond_the_database_range_are_pages_not_server_errors(world: World) -> None:
    world.add_items(1)
    csrf = web_login(world.client, "admin")
    pid = world.project_id
    for path in (
        f"/projects/{HUGE}/label",
        f"/admin/projects/{HUGE}",
        f"/admin/projects/{HUGE}/export.jsonl",
        f"/admin/users/{HUGE}",
    ):
        r = world.client.get(path)
        assert r.status_code == 422, (path, r.text)
        assert error_on_page(r).startswith("path.")
    for path in (f"/projects/{HUGE}/label", f"/admin/users/{HUGE}/active", f"/tokens/{HUGE}/revoke"):
        r = world.client.post(path, data={"csrf_token": csrf})
        assert r.status_code == 422, (path, r.text)
    for path in ("/projects/2147483647/label", "/admin/projects/2147483647", "/admin/users/2147483647"):
        r = world.client.get(path)
        assert r.status_code == 404 and error_on_page(r).endswith("2147483647 not found"), path
    world.client.post(f"/projects/{pid}/next", data={"csrf_token": csrf})  # takes an assignment
    r = world.client.post(
        f"/projects/{pid}/label",
        data={"csrf_token": csrf, "assignment_id": str(HUGE), "idempotency_key": "k", "q.better": "A"},
    )
    assert r.status_code == 422 and "assignment_id: missing or not a number" in r.text


def test_errors_are_pages_for_people_and_json_for_programs(world: World) -> None:
    pid = world.project_id
    nothing = world.client.get("/no/such/page")
    assert nothing.status_code == 404 and error_on_page(nothing) == "Not Found"
    assert world.client.get("/api/no/such").json() == {"detail": "Not Found"}
    web_login(world.client, "ann1")
    forbidden = world.client.get(f"/admin/projects/{pid}")
    assert forbidden.status_code == 403 and error_on_page(forbidden) == "only admins may see this page"
    assert "<title>403 Forbidden" in forbidden.text
    missing = world.client.get("/projects/999/label")
    assert missing.status_code == 404 and error_on_page(missing) == "project 999 not found"
    csrf = web_login(world.client, "admin")
    taken = world.client.post(
        "/admin/projects", data={"csrf_token": csrf, "name": "p", "overlap": "1", "gold_rate": "0"}
    )
    assert taken.status_code == 409 and error_on_page(taken) == "project 'p' already exists"
    invalid = world.client.post("/admin/projects", data={"csrf_token": csrf, "name": "q", "overlap": "0"})
    assert invalid.status_code == 422 and error_on_page(invalid).startswith("overlap:")
    big = world.client.post("/admin/projects", data={"csrf_token": csrf, "name": "x" * 70_000})
    assert big.status_code == 413 and "larger than the limit" in error_on_page(big)
    api_big = world.client.post(
        f"/api/projects/{pid}/items", content=b"x" * 70_000, headers=world.auth("trainer")
    )
    assert api_big.status_code == 413 and "larger than the limit" in api_big.json()["detail"]
    assert world.client.get(f"/api/projects/{pid}/stats", headers=world.auth("ann1")).json()["detail"]


def _check_headers(headers) -> None:  # type: ignore[no-untyped-def]
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"


def test_every_response_carries_the_security_headers(world: World) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"1" * 64
    name = world.client.post("/api/media?filename=a.png", content=png, headers=world.auth("trainer")).json()[
        "name"
    ]
    responses = [
        world.client.get("/login"),
        world.client.get("/static/style.css"),
        world.client.get("/api/projects", headers=world.auth("ann1")),
        world.client.get("/api/projects"),  # 401
        world.client.get("/nowhere"),  # 404 page
        world.client.get(f"/api/media/{name}", headers=world.auth("ann1")),
        world.client.get("/api/docs"),
        world.client.get("/api/openapi.json"),
        world.client.post("/login", data={}),  # 403 (CSRF)
    ]
    for r in responses:
        _check_headers(r.headers)


def test_pages_need_no_inline_script_or_style(world: World) -> None:
    """What the Content-Security-Policy allows: scripts and styles from this server's files only
    (the browser test watches Chromium for violations)."""
    world.add_items(1)
    web_login(world.client, "admin")
    pages = ["/login", "/projects", "/admin", f"/admin/projects/{world.project_id}", "/account", "/api/docs"]
    pages += [f"/admin/users/{world.ids['ann1']}", f"/projects/{world.project_id}/label"]
    for path in pages:
        html = world.client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script has a src
        assert not re.search(r"\son[a-z]+=", html), path  # no inline handlers
        assert "<style" not in html and "style=" not in html, path
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), path  # nothing from elsewhere


def test_the_api_docs_load_from_this_server(world: World) -> None:
    page = world.client.get("/api/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert "/static/swagger-ui/swagger-ui-bundle.js" in assets and "/static/docs.js" in assets
    for asset in assets:
        r = world.client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    schema = world.client.get("/api/openapi.json").json()
    assert all(path.startswith("/api/") for path in schema["paths"])
    assert "/api/tokens/{token_id}" in schema["paths"] and "/login" not in schema["paths"]


def test_uploads_are_what_they_claim_to_be(world: World, tmp_path: Path) -> None:
    gif = b"GIF89a" + b"\x01" * 32
    checks = {
        ("a.gif", gif): 201,
        ("b.png", gif): 422,  # a GIF named .png
        ("c.png", b"<html><script>alert(1)</script></html>"): 422,
        ("d.mp4", b"\x00\x00\x00\x18ftypisom" + b"0" * 16): 201,
        ("e.webm", b"\x1a\x45\xdf\xa3" + b"0" * 16): 201,
        ("f.jpg", b"\xff\xd8\xff\xe0" + b"0" * 16): 201,
        ("g.gif", b"GIF"): 422,
    }
    for (filename, data), status in checks.items():
        r = world.client.post(f"/api/media?filename={filename}", content=data, headers=world.auth("trainer"))
        assert r.status_code == status, (filename, r.text)
    r = world.client.post("/api/media?filename=b.png", content=gif, headers=world.auth("trainer"))
    assert r.json()["detail"] == "body: 'b.png' names a image/png file but the upload is image/gif content"
    # a file stored before uploads were checked is served as what its bytes are
    stored = tmp_path / "media" / ("0" * 32 + ".png")
    stored.write_bytes(b"<html>not an image</html>")
    served = world.client.get(f"/api/media/{stored.name}", headers=world.auth("ann1"))
    assert served.status_code == 200 and served.headers["content-type"] == "application/octet-stream"
    _check_headers(served.headers)
