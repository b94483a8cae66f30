"""Projects that ask other questions than today's: a ranking of four, ratings, marks on clips; their
judgements through the API, their statistics, and their export in the general format."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import World, make_world

from alignloop.feedback.formats import read_judged
from alignloop.feedback.schema import Mark, Ranking, Rating, questions_json

QUESTIONS = questions_json(
    (
        Ranking("order"),
        Rating("quality", aspects=("helpfulness",), required=False),
        Mark("unsafe_from", required=False),
    )
)


def test_a_ranking_project_end_to_end(app: FastAPI, client: TestClient, tmp_path: Path) -> None:
    world: World = make_world(app, client, overlap=2)
    r = client.post(
        "/api/projects",
        json={"name": "ranked", "overlap": 2, "questions": QUESTIONS},
        headers=world.auth("admin"),
    )
    assert r.status_code == 201, r.text
    world.project_id = r.json()["id"]
    candidates = [{"text": f"answer {i}", "model": f"m{i}", "frames": 8} for i in range(4)]
    two = world.client.post(
        f"/api/projects/{world.project_id}/items",
        json={"items": [{"prompt": "p", "candidates": candidates[:2]}]},
        headers=world.auth("trainer"),
    )
    assert two.status_code == 201  # rankings and ratings take any number of candidates
    world.add_items(2, candidates=candidates)
    orders = {"ann1": [1, 2, 3, 4], "ann2": [1, 3, 2, 4]}  # both put m0 first and m3 last
    for name, order in orders.items():
        while (a := world.next(name)) is not None:
            n = len(a["item"]["candidates"])
            ranks = order if n == 4 else [1, 2]
            answers = {"order": ranks, "unsafe_from": [None] * (n - 1) + [3]}
            body = {"idempotency_key": f"{name}-{a['id']}", "answers": answers}
            url = f"/api/assignments/{a['id']}/judgement-and-next"
            bad = world.client.post(
                url, json={**body, "answers": {"order": [1, 1] + [3, 4][: n - 2]}}, headers=world.auth(name)
            )
            assert bad.status_code == 422 and bad.json()["detail"].startswith(
                "questions.order: ties are not allowed"
            )
            late = world.client.post(
                url,
                json={**body, "answers": {"order": ranks, "unsafe_from": [None] * (n - 1) + [8]}},
                headers=world.auth(name),
            )
            assert late.status_code == 422 and "below the clip's 8 frames" in late.json()["detail"]
            assert world.client.post(url, json=body, headers=world.auth(name)).status_code == 201
    stats = client.get(f"/api/projects/{world.project_id}/stats", headers=world.auth("admin")).json()
    by_question = {a["question"]: a for a in stats["agreement"]}
    assert by_question["order"]["metric"] == "ordinal" and by_question["unsafe_from"]["metric"] == "interval"
    assert by_question["order"]["alpha"] > 0.5 and by_question["unsafe_from"]["alpha"] == 1.0
    assert [r["model"] for r in stats["leaderboard"]][0] == "m0"  # fed by the rankings
    export = client.get(f"/api/projects/{world.project_id}/export", headers=world.auth("admin"))
    assert export.status_code == 200
    path = tmp_path / "judged.jsonl"
    path.write_text(export.text)
    items = read_judged(path)
    assert len(items) == 3 and all(len(i.judgements) == 2 for i in items)
    assert {j.annotator for i in items for j in i.judgements} == {"ann1", "ann2"}
    four = next(i for i in items if len(i.item.candidates) == 4)
    assert four.agreement["order"] == 0.5 and four.agreement["unsafe_from"] == 1.0
    assert json.loads(export.text.splitlines()[0])["questions"] == QUESTIONS
    pku = client.get(
        f"/api/projects/{world.project_id}/export?format=pku-saferlhf", headers=world.auth("admin")
    )
    assert pku.status_code == 422 and "needs two candidates and a pairwise question" in pku.json()["detail"]
    pairs = client.get(
        f"/api/projects/{world.project_id}/export?format=preference", headers=world.auth("admin")
    )
    assert len(pairs.text.splitlines()) == 2 * (6 + 6 + 1)  # every implied pair of every ranking


def test_pairwise_questions_refuse_items_of_more_than_two(world: World) -> None:
    r = world.client.post(
        f"/api/projects/{world.project_id}/items",
        json={"items": [{"prompt": "p", "candidates": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}]},
        headers=world.auth("trainer"),
    )
    assert r.status_code == 422
    assert (
        "items[0].candidates: this project asks better, safer, which compare two candidates"
        in r.json()["detail"]
    )
