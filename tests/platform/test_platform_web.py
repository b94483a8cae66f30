"""Server-rendered pages: login, the labelling form, the admin dashboard with agreement and leaderboard."""

from __future__ import annotations

import base64
import json
import math

from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import World, error_on_page, make_world, web_login, web_take

from alignloop.feedback.agreement import cohen_kappa, krippendorff_alpha
from alignloop.feedback.schema import Pairwise
from alignloop.platform.schemas import ProjectIn
from alignloop.platform.stats import project_stats


def plot_of(html: str) -> str:
    """The dashboard's leaderboard plot (an SVG image inlined as a data: URL)."""
    encoded = html.split('src="data:image/svg+xml;base64,')[1].split('"')[0]
    return base64.b64decode(encoded).decode()


def _assignment_id(html: str) -> int:
    return int(html.split('name="assignment_id" value="')[1].split('"')[0])


def test_login_page_and_wrong_password(world: World) -> None:
    page = world.client.get("/login")
    assert page.status_code == 200 and 'type="password"' in page.text
    from platform_helpers import csrf_of

    r = world.client.post(
        "/login", data={"name": "ann1", "password": "not the password", "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 401 and "Wrong name or password." in r.text


def test_label_through_the_form(app: FastAPI, world: World) -> None:
    world.add_items(2)
    csrf = web_login(world.client, "ann1")
    page = web_take(world.client, world.project_id, csrf)
    assert "Response A" in page and "Response B" in page and "answer A" in page
    assert 'you judged <span id="mine">0</span>' in page and "0</span> / 2 items complete" in page
    assignment_id = _assignment_id(page)
    form = {
        "csrf_token": csrf,
        "assignment_id": str(assignment_id),
        "idempotency_key": f"web-{assignment_id}",
        "q.better": "B",
        "q.safer": "B",
        "q.is_safe.0.safe": "unsafe",
        "q.is_safe.1.safe": "safe",
        "q.is_safe.0.harms": ["Violence", "Physical Harm"],
        "q.is_safe.0.severity": "moderate",
        "q.correction.candidate": "A",
        "q.correction.original": "answer A0",
        "q.correction.text": "answer A0",  # left as pre-filled: no correction
        "skipped": "0",
    }
    r = world.client.post(f"/projects/{world.project_id}/label", data=form)
    assert r.status_code == 200 and 'you judged <span id="mine">1</span>' in r.text
    again = world.client.post(f"/projects/{world.project_id}/label", data=form)  # a double click
    assert again.status_code == 200
    mine = world.client.get(
        f"/api/judgements/mine?project_id={world.project_id}", headers=world.auth("ann1")
    ).json()
    assert len(mine["judgements"]) == 1
    assert mine["judgements"][0]["answers"] == {
        "better": "B",
        "safer": "B",
        "is_safe": [
            {"safe": False, "harms": ["Violence", "Physical Harm"], "severity": "moderate"},
            {"safe": True, "harms": [], "severity": None},
        ],
    }
    bad = dict(form, assignment_id=str(_assignment_id(r.text)), idempotency_key="x", **{"q.better": ""})
    r = world.client.post(f"/projects/{world.project_id}/label", data=bad)
    assert r.status_code == 422 and "questions.better: required" in r.text


def test_dashboard_shows_progress_agreement_and_leaderboard(app: FastAPI, client: TestClient) -> None:
    world = make_world(app, client, overlap=3)
    models = [("alpha", "beta"), ("beta", "gamma"), ("alpha", "gamma")] * 2
    ids = []
    for i, (model_a, model_b) in enumerate(models):
        pair = [{"text": "a", "model": model_a}, {"text": "b", "model": model_b}]
        ids += world.add_items(1, candidates=pair, prompt=f"q{i}")
    # ann1 and ann2 always prefer the earlier model; ann3 disagrees on the first two items
    for name in ("ann1", "ann2", "ann3"):
        for n in range(len(models)):
            a = world.next(name)
            assert a is not None
            better = "B" if name == "ann3" and a["item"]["id"] in ids[:2] else "A"
            assert world.submit(name, a["id"], f"{name}{n}", better=better, safer=None).status_code == 201
    with app.state.sessionmaker() as session:
        from alignloop.platform.models import Project

        project = session.get(Project, world.project_id)
        report = project_stats(session, project=project)
    # the same tables computed directly: items x annotators
    better = [
        ["B" if name == "ann3" and k < 2 else "A" for name in ("ann1", "ann2", "ann3")] for k in range(6)
    ]
    assert math.isclose(report.alpha["better"] or 0, krippendorff_alpha(better), rel_tol=1e-5)
    kappas = {(k.annotator_a, k.annotator_b): k.kappa for k in report.kappa}
    assert kappas[("ann1", "ann2")] is None  # both always say A: kappa undefined
    expected = cohen_kappa([r[0] for r in better], [r[2] for r in better])
    assert math.isnan(expected) or math.isclose(kappas[("ann1", "ann3")] or 0, expected, rel_tol=1e-5)
    assert [r.model for r in report.leaderboard] == ["alpha", "beta", "gamma"]
    assert all(r.lower <= r.rating <= r.upper for r in report.leaderboard)
    web_login(client, "admin")
    page = client.get(f"/admin/projects/{world.project_id}")
    assert page.status_code == 200
    assert "6 of 6 items" in page.text and "Krippendorff" in page.text
    assert "<svg" in plot_of(page.text)
    assert page.text.index(">alpha<") < page.text.index(">beta<") < page.text.index(">gamma<")
    exported = client.get(f"/admin/projects/{world.project_id}/export.jsonl")
    assert exported.status_code == 200 and len(exported.text.splitlines()) == 6
    admin = client.get("/admin")
    assert admin.status_code == 200 and "6 / 6" in admin.text


def test_admin_forms_create_people_and_projects(world: World) -> None:
    csrf = web_login(world.client, "admin")
    r = world.client.post(
        "/admin/users",
        data={"csrf_token": csrf, "name": "carol", "password": "long enough", "role": "annotator"},
    )
    assert r.status_code == 200 and "carol" in r.text
    r = world.client.post(
        "/admin/projects", data={"csrf_token": csrf, "name": "second", "overlap": "2", "gold_rate": "0.1"}
    )
    assert r.status_code == 200 and "second" in r.text and "data-presets" in r.text
    ranking = json.dumps(
        [{"name": "order", "kind": "ranking"}, {"name": "why", "kind": "text", "required": False}]
    )
    r = world.client.post(
        "/admin/projects", data={"csrf_token": csrf, "name": "ranked", "questions": ranking}
    )
    assert r.status_code == 200 and "ranked" in r.text
    created = {p["name"]: p for p in world.client.get("/api/projects", headers=world.auth("admin")).json()}
    assert [q["kind"] for q in created["ranked"]["questions"]] == ["ranking", "text"]
    assert created["second"]["questions"][2]["harm_categories"][0] == "Endangering National Security"
    for bad, message in (
        ("[{", "questions: not valid JSON"),
        ('[{"name": "x", "kind": "mark", "scale_max": 3}]', "questions.x: mark questions have no options"),
    ):
        r = world.client.post("/admin/projects", data={"csrf_token": csrf, "name": "bad", "questions": bad})
        assert r.status_code == 422 and message in error_on_page(r), r.text
    assert "bad" not in {
        p["name"] for p in world.client.get("/api/projects", headers=world.auth("admin")).json()
    }
    assert isinstance(ProjectIn(name="x").questions[0], Pairwise)


def test_media_candidates_are_shown_as_video_and_image(world: World) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"1" * 64
    mp4 = b"\x00\x00\x00\x18ftypmp42" + b"2" * 64
    image = world.client.post("/api/media?filename=a.png", content=png, headers=world.auth("trainer")).json()[
        "name"
    ]
    video = world.client.post("/api/media?filename=b.mp4", content=mp4, headers=world.auth("trainer")).json()[
        "name"
    ]
    world.add_items(1, candidates=[{"media": image}, {"media": video}])
    assert world.client.get(f"/api/media/{image}").status_code == 401  # not logged in
    page = web_take(world.client, world.project_id, web_login(world.client, "ann1"))
    assert f'<img src="/api/media/{image}"' in page and f'<video src="/api/media/{video}"' in page
    got = world.client.get(f"/api/media/{video}")  # the browser loads it with the session cookie
    assert got.status_code == 200 and got.content == mp4 and got.headers["content-type"] == "video/mp4"
