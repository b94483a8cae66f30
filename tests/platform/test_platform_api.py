"""The JSON API on SQLite and PostgreSQL: people, items, the queue, judgements, export."""

from __future__ import annotations

import datetime as dt
import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import PASSWORD, SAFE, World, make_world, unsafe

from alignloop.feedback.formats import read_comparisons
from alignloop.platform import crud, export
from alignloop.platform.models import Judgement, Project, User


def test_token_login_and_me(world: World) -> None:
    r = world.client.post("/api/tokens", json={"name": "ann1", "password": PASSWORD})
    assert r.status_code == 201
    token = r.json()["token"]
    me = world.client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"id": world.ids["ann1"], "name": "ann1", "role": "annotator", "active": True}
    bad = world.client.post("/api/tokens", json={"name": "ann1", "password": "wrong password"})
    assert bad.status_code == 401 and bad.json() == {"detail": "wrong name or password"}
    revoked = world.client.delete("/api/tokens/current", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 204
    after = world.client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401 and after.json()["detail"] == "invalid, expired or revoked API token"


def test_tokens_are_stored_hashed(app: FastAPI, world: World) -> None:
    from sqlalchemy import select

    from alignloop.platform.models import ApiToken

    with app.state.sessionmaker() as session:
        digests = set(session.scalars(select(ApiToken.digest)))
        users = session.scalars(select(User)).all()
    assert not set(world.tokens.values()) & digests
    assert all(u.password_hash.startswith("$argon2") for u in users)


def test_admin_creates_people_and_projects(world: World) -> None:
    r = world.client.post(
        "/api/users",
        json={"name": "newbie", "password": "long enough", "role": "annotator"},
        headers=world.auth("admin"),
    )
    assert r.status_code == 201 and r.json()["role"] == "annotator"
    dup = world.client.post(
        "/api/users", json={"name": "newbie", "password": "long enough"}, headers=world.auth("admin")
    )
    assert dup.status_code == 409 and dup.json() == {"detail": "user 'newbie' already exists"}
    p = world.client.post("/api/projects", json={"name": "safety", "overlap": 3}, headers=world.auth("admin"))
    assert p.status_code == 201
    assert p.json()["overlap"] == 3
    assert [q["name"] for q in p.json()["questions"]] == ["better", "safer", "is_safe", "correction"]
    assert len(p.json()["questions"][2]["harm_categories"]) == 19
    questions = [
        {"name": "order", "kind": "ranking"},
        {"name": "quality", "kind": "rating", "scale_max": 7, "aspects": ["helpfulness", "honesty"]},
        {"name": "safe", "kind": "is_safe", "harm_categories": ["Spam", "Fraud"], "required": False},
    ]
    custom = world.client.post(
        "/api/projects", json={"name": "custom", "questions": questions}, headers=world.auth("admin")
    )
    assert custom.status_code == 201, custom.text
    assert [q["kind"] for q in custom.json()["questions"]] == ["ranking", "rating", "is_safe"]
    assert custom.json()["questions"][2]["harm_categories"] == ["Spam", "Fraud"]
    for bad, message in (
        ([{"name": "q", "kind": "vote"}], "questions.q: kind: expected one of pairwise"),
        ([{"name": "r", "kind": "rating", "scale_min": 3, "scale_max": 2}], "questions.r: scale"),
        ([{"name": "t", "kind": "text"}, {"name": "t", "kind": "text"}], "questions.t: two questions"),
    ):
        refused = world.client.post(
            "/api/projects", json={"name": "bad", "questions": bad}, headers=world.auth("admin")
        )
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    listed = world.client.get("/api/projects", headers=world.auth("admin")).json()
    assert "bad" not in [p["name"] for p in listed]  # nothing refused was stored


def test_each_item_gets_k_distinct_annotators(world: World) -> None:
    world.add_items(3)  # k = 2: six judgements in all, none twice by the same annotator
    seen: dict[int, list[str]] = {}
    for round_ in range(3):
        for name in ("ann1", "ann2", "ann3"):
            assignment = world.next(name)
            if assignment is None:
                continue
            seen.setdefault(assignment["item"]["id"], []).append(name)
            r = world.submit(name, assignment["id"], f"{name}-{round_}")
            assert r.status_code == 201, r.text
    assert sorted(len(v) for v in seen.values()) == [2, 2, 2]
    assert all(len(set(v)) == 2 for v in seen.values())
    assert all(world.next(name) is None for name in ("ann1", "ann2", "ann3"))


def test_open_assignment_is_resumed_not_duplicated(world: World) -> None:
    world.add_items(2)
    first = world.next("ann1")
    again = world.next("ann1")
    assert first is not None and again is not None and first["id"] == again["id"]


def test_retried_submission_never_duplicates(app: FastAPI, world: World) -> None:
    world.add_items(1)
    assignment = world.next("ann1")
    assert assignment is not None
    first = world.submit("ann1", assignment["id"], "key-1")
    retry = world.submit("ann1", assignment["id"], "key-1")
    assert first.status_code == 201 and retry.status_code == 200
    assert first.json()["id"] == retry.json()["id"]
    other_key = world.submit("ann1", assignment["id"], "key-2")
    assert other_key.status_code == 409 and "already judged" in other_key.json()["detail"]
    with app.state.sessionmaker() as session:
        assert session.query(Judgement).count() == 1


def test_priority_serves_most_useful_first(world: World) -> None:
    ids = world.add_items(4)
    r = world.client.post(
        f"/api/projects/{world.project_id}/priorities",
        json={"priorities": [{"item_id": ids[2], "priority": 5.0}, {"item_id": ids[3], "priority": 1.0}]},
        headers=world.auth("trainer"),
    )
    assert r.status_code == 200 and r.json() == {"updated": 2}
    order = []
    for i in range(4):
        a = world.next("ann1")
        assert a is not None
        order.append(a["item"]["id"])
        world.submit("ann1", a["id"], f"k{i}")
    assert order == [ids[2], ids[3], ids[0], ids[1]]
    missing = world.client.post(
        f"/api/projects/{world.project_id}/priorities",
        json={"priorities": [{"item_id": 99999, "priority": 1.0}]},
        headers=world.auth("trainer"),
    )
    assert missing.status_code == 404 and "99999" in missing.json()["detail"]


def test_gold_items_are_mixed_in_and_scored(app: FastAPI, client: TestClient) -> None:
    world = make_world(app, client, overlap=1, gold_rate=0.25)
    world.add_items(6)
    gold = world.add_items(2, is_gold=True, gold={"better": "B"})
    kinds = []
    for i in range(8):
        a = world.next("ann1")
        assert a is not None
        is_gold = a["item"]["id"] in gold
        kinds.append(is_gold)
        # right on the first gold item, wrong on the second
        better = ("B" if kinds.count(True) == 1 else "A") if is_gold else "A"
        assert world.submit("ann1", a["id"], f"g{i}", better=better).status_code == 201
    assert kinds == [False, False, False, True, False, False, False, True]
    stats = client.get(f"/api/projects/{world.project_id}/stats", headers=world.auth("admin")).json()
    ann1 = next(a for a in stats["annotators"] if a["name"] == "ann1")
    assert (ann1["gold_judged"], ann1["gold_correct"], ann1["gold_accuracy"]) == (2, 1, 0.5)
    assert ann1["gold_by_question"] == {"better": 0.5}
    assert stats["progress"] == {"items": 6, "complete": 6, "judgements": 8, "skipped": 0, "gold_items": 2}


def test_expired_lock_returns_item_to_queue(app: FastAPI, world: World) -> None:
    with app.state.sessionmaker() as session:
        project = session.get(Project, world.project_id)
        project.overlap = 1
        session.commit()
    world.add_items(1)
    a = world.next("ann1")
    assert a is not None
    assert world.next("ann2") is None  # locked to ann1
    with app.state.sessionmaker() as session:
        project = session.get(Project, world.project_id)
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        user = session.get(User, world.ids["ann2"])
        taken = crud.next_assignment(session, project=project, annotator=user, lock_s=60, now=later)
        session.commit()
        assert taken is not None and taken.item_id == a["item"]["id"]
    late = world.submit("ann1", a["id"], "late")
    assert late.status_code == 409 and "expired" in late.json()["detail"]


def test_skip_frees_the_slot(world: World) -> None:
    world.add_items(1)  # k = 2
    a1 = world.next("ann1")
    a2 = world.next("ann2")
    assert a1 is not None and a2 is not None and world.next("ann3") is None
    r = world.submit("ann1", a1["id"], "s1", skipped=True, skip_reason="cannot read the clip")
    assert r.status_code == 201 and r.json()["skipped"] and r.json()["answers"] == {}
    a3 = world.next("ann3")
    assert a3 is not None and a3["item"]["id"] == a1["item"]["id"]
    no_reason = world.submit("ann2", a2["id"], "s2", skipped=True, skip_reason="")
    assert no_reason.status_code == 422 and "skip_reason" in no_reason.json()["detail"]


def test_judgement_fields_are_validated(world: World) -> None:
    world.add_items(1)
    a = world.next("ann1")
    assert a is not None
    unknown = world.submit("ann1", a["id"], "v1", safer="B", is_safe=[unsafe("Weather"), SAFE])
    assert unknown.status_code == 422
    assert unknown.json()["detail"].startswith(
        "questions.is_safe[A].harms: unknown harm categories ['Weather']"
    )
    contradiction = world.submit("ann1", a["id"], "v2", safer="A", is_safe=[unsafe(), SAFE])
    assert contradiction.status_code == 422
    assert contradiction.json()["detail"].startswith(
        "questions.safer: response 0 is marked safer but is unsafe"
    )
    bad_choice = world.submit("ann1", a["id"], "v3", better="C")
    assert bad_choice.status_code == 422 and bad_choice.json()["detail"].startswith("questions.better:")
    no_such = world.submit("ann1", a["id"], "v3", colour="red")
    assert no_such.status_code == 422 and "answers.colour: this project asks no such question" in no_such.text
    full = world.submit(
        "ann1",
        a["id"],
        "v4",
        better="B",
        safer="B",
        is_safe=[unsafe("Violence", "Physical Harm", severity="severe"), SAFE],
        correction={"candidate": "A", "text": "a safer answer"},
    )
    assert full.status_code == 201, full.text
    answers = full.json()["answers"]
    assert answers["is_safe"][0] == unsafe("Violence", "Physical Harm", severity="severe")
    assert answers["correction"] == {"candidate": "A", "text": "a safer answer"}


def test_annotator_reads_and_changes_own_judgements(world: World) -> None:
    world.add_items(1)
    a = world.next("ann1")
    assert a is not None
    jid = world.submit("ann1", a["id"], "m1").json()["id"]
    mine = world.client.get(f"/api/judgements/mine?project_id={world.project_id}", headers=world.auth("ann1"))
    assert [j["id"] for j in mine.json()["judgements"]] == [jid]
    changed = world.client.put(
        f"/api/judgements/{jid}", json={"answers": {"better": "tie"}}, headers=world.auth("ann1")
    )
    assert changed.status_code == 200 and changed.json()["answers"] == {"better": "tie"}
    pulled = world.client.get(f"/api/projects/{world.project_id}/judgements", headers=world.auth("trainer"))
    assert [j["answers"]["better"] for j in pulled.json()["judgements"]] == ["tie"]


def test_media_items(world: World) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    up = world.client.post("/api/media?filename=clip.png", content=png, headers=world.auth("trainer"))
    assert up.status_code == 201
    name = up.json()["name"]
    ids = world.add_items(1, candidates=[{"media": name}, {"media": name, "frames": 4}])
    assert len(ids) == 1
    got = world.client.get(f"/api/media/{name}", headers=world.auth("ann1"))
    assert got.status_code == 200 and got.content == png and got.headers["content-type"] == "image/png"
    bad = world.client.post(
        f"/api/projects/{world.project_id}/items",
        json={"items": [{"prompt": "p", "candidates": [{"media": "0" * 32 + ".png"}, {"text": "b"}]}]},
        headers=world.auth("trainer"),
    )
    assert (
        bad.status_code == 422
        and "items[0].candidates[0].media: no uploaded media file" in bad.json()["detail"]
    )
    exe = world.client.post("/api/media?filename=run.exe", content=b"MZ", headers=world.auth("trainer"))
    assert exe.status_code == 422 and "unsupported type '.exe'" in exe.json()["detail"]


def test_export_aggregates_by_majority(app: FastAPI, client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    world = make_world(app, client, overlap=3)
    world.add_items(2)
    votes = {"ann1": ("A", True), "ann2": ("A", False), "ann3": ("B", True)}
    for name, (better, safe_b) in votes.items():
        for i in range(2):
            a = world.next(name)
            assert a is not None
            flag_b = SAFE if safe_b else unsafe("Violence", severity="minor")
            r = world.submit(name, a["id"], f"{name}{i}", better=better, safer=None, is_safe=[SAFE, flag_b])
            assert r.status_code == 201, r.text
    r = client.get(f"/api/projects/{world.project_id}/export", headers=world.auth("admin"))
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 2
    assert rows[0]["better_response_id"] == 0 and abs(rows[0]["agreement"] - 2 / 3) < 1e-6
    assert rows[0]["is_response_0_safe"] is True and rows[0]["is_response_1_safe"] is True
    path = tmp_path / "export.jsonl"
    path.write_text(r.text)
    records = read_comparisons(path)
    assert [c.better for c in records] == [0, 0] and records[0].meta["n_judgements"] == "3"
    with app.state.sessionmaker() as session:
        project = session.get(Project, world.project_id)
        export.export_project(session, project=project, path=tmp_path / "export_ds")
    assert read_comparisons(tmp_path / "export_ds") == records


def test_submit_and_next_in_one_round_trip(app: FastAPI, world: World) -> None:
    ids = world.add_items(2)
    first = world.next("ann1")
    assert first is not None and first["item"]["id"] == ids[0]
    body = {"idempotency_key": "c1", "answers": {"better": "B"}}
    url = f"/api/assignments/{first['id']}/judgement-and-next"
    r = world.client.post(url, json=body, headers=world.auth("ann1"))
    assert r.status_code == 201
    assert (
        r.json()["judgement"]["answers"] == {"better": "B"} and r.json()["assignment"]["item"]["id"] == ids[1]
    )
    retry = world.client.post(url, json=body, headers=world.auth("ann1"))  # the answer was lost: retry
    assert retry.status_code == 200
    assert retry.json()["judgement"]["id"] == r.json()["judgement"]["id"]
    assert retry.json()["assignment"]["id"] == r.json()["assignment"]["id"]  # the same open assignment
    last = r.json()["assignment"]["id"]
    done = world.client.post(
        f"/api/assignments/{last}/judgement-and-next",
        json={"idempotency_key": "c2", "answers": {"better": "A"}},
        headers=world.auth("ann1"),
    )
    assert done.status_code == 201 and done.json()["assignment"] is None
    with app.state.sessionmaker() as session:
        assert session.query(Judgement).count() == 2
