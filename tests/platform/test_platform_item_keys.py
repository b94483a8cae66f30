"""Items pushed with a key are stored once per project: re-pushes, retries and races add no rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import World
from sqlalchemy import select

from alignloop.platform import crud
from alignloop.platform.client import PlatformClient
from alignloop.platform.models import Item
from alignloop.platform.schemas import ItemIn


def _item(key: str | None, text: str = "x") -> dict[str, object]:
    return {"key": key, "prompt": f"prompt {text}", "response_a": f"A {text}", "response_b": f"B {text}"}


def _push(world: World, items: list[dict[str, object]]) -> httpx.Response:
    return world.client.post(
        f"/api/projects/{world.project_id}/items", json={"items": items}, headers=world.auth("trainer")
    )


def _rows(app: FastAPI) -> list[tuple[int, str | None, str]]:
    with app.state.sessionmaker() as session:
        return [tuple(r) for r in session.execute(select(Item.id, Item.key, Item.prompt).order_by(Item.id))]


def test_repush_answers_the_same_ids_and_adds_nothing(app: FastAPI, world: World) -> None:
    first = _push(world, [_item("r1-0", "one"), _item("r1-1", "two"), _item(None, "free")])
    assert first.status_code == 201, first.text
    ids = first.json()["ids"]
    assert len(set(ids)) == 3
    # the same keys again, with different text, mixed with a new key and another unkeyed item
    again = _push(
        world, [_item("r1-new", "new"), _item("r1-1", "changed"), _item(None, "free"), _item("r1-0")]
    )
    assert again.status_code == 201, again.text
    new_id, same_1, free_2, same_0 = again.json()["ids"]
    assert (same_0, same_1) == (ids[0], ids[1])
    assert new_id not in ids and free_2 not in ids  # unkeyed items are added every time
    rows = _rows(app)
    assert len(rows) == 5
    stored = {key: prompt for _, key, prompt in rows}
    assert stored["r1-0"] == "prompt one" and stored["r1-1"] == "prompt two"  # rows left unchanged
    # keys are per project: another project may use the same ones
    r = world.client.post("/api/projects", json={"name": "other"}, headers=world.auth("admin"))
    other = world.client.post(
        f"/api/projects/{r.json()['id']}/items",
        json={"items": [_item("r1-0")]},
        headers=world.auth("trainer"),
    )
    assert other.status_code == 201 and other.json()["ids"][0] not in ids


def test_duplicate_key_in_one_request_is_refused(app: FastAPI, world: World) -> None:
    r = _push(world, [_item("k0"), _item("k1"), _item(None), _item("k1")])
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "items[3].key: 'k1' is also the key of items[1]"
    assert _rows(app) == []
    too_long = _push(world, [_item("k" * 129)])
    assert too_long.status_code == 422 and "key" in too_long.json()["detail"]


def test_key_is_in_the_item_and_the_assignment(world: World) -> None:
    (item_id,) = _push(world, [_item("r2-7")]).json()["ids"]
    assignment = world.next("ann1")
    assert assignment is not None and assignment["item"]["id"] == item_id
    assert assignment["item"]["key"] == "r2-7"
    _push(world, [_item("r2-8")])
    # judgement-and-next (its short path on PostgreSQL) answers the key of the next item too
    body = {"idempotency_key": "j1", "better": "A", "safer": "A", "safe_a": True, "safe_b": True}
    r = world.client.post(
        f"/api/assignments/{assignment['id']}/judgement-and-next", json=body, headers=world.auth("ann1")
    )
    assert r.status_code == 201, r.text
    assert r.json()["assignment"]["item"]["key"] == "r2-8"


def test_export_keeps_the_key(world: World) -> None:
    _push(world, [_item("r3-1")])
    for name in ("ann1", "ann2"):
        a = world.next(name)
        assert a is not None
        assert world.submit(name, a["id"], f"{name}-1").status_code == 201
    r = world.client.get(f"/api/projects/{world.project_id}/export", headers=world.auth("admin"))
    assert r.status_code == 200 and '"key": "r3-1"' in r.text


def _race(app: FastAPI, project_id: int, keys: list[str], threads: int) -> list[list[int]]:
    """`threads` sessions push the same keyed items at once (each as the route does: add, commit)."""
    start = threading.Barrier(threads)
    answers: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def push(n: int) -> None:
        try:
            start.wait(timeout=30)
            with app.state.sessionmaker() as session:
                project = crud.get_project(session, project_id=project_id)
                specs = [ItemIn(key=k, prompt=f"p {k}", response_a="a", response_b="b") for k in keys]
                answers[n] = crud.add_items(session, project=project, items=specs, media_names=set())
                session.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=push, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    return answers


@pytest.fixture
def lookups_meet(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """On PostgreSQL, every racer's first key look-up waits for the others' before anyone inserts.

    That forces the losing inserts onto the unique index (the path under test). SQLite takes its
    write lock at the start of each transaction, so there the racers are serialised instead.
    Yields the number of look-ups made, to show that the losers looked again.
    """
    calls: list[int] = []
    if app.state.engine.dialect.name != "postgresql":
        yield calls
        return
    meet = threading.Barrier(4)
    original = crud.item_ids_by_key
    first_of: set[int] = set()

    def looked_up(session, **kwargs):  # type: ignore[no-untyped-def]
        found = original(session, **kwargs)
        calls.append(threading.get_ident())
        if threading.get_ident() not in first_of:
            first_of.add(threading.get_ident())
            meet.wait(timeout=30)
        return found

    monkeypatch.setattr(crud, "item_ids_by_key", looked_up)
    yield calls


def test_racing_pushes_of_the_same_keys_store_each_once(
    app: FastAPI, world: World, lookups_meet: list[int]
) -> None:
    keys = [f"race-{i}" for i in range(20)]
    answers = _race(app, world.project_id, keys, threads=4)
    assert all(ids == answers[0] for ids in answers), answers
    assert len(set(answers[0])) == 20
    rows = _rows(app)
    assert sorted(r[0] for r in rows) == sorted(answers[0])
    if app.state.engine.dialect.name == "postgresql":
        assert len(lookups_meet) >= 4 + 3  # three racers lost the insert and looked again


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


def test_client_push_is_retried_and_idempotent(app: FastAPI, client: TestClient, world: World) -> None:
    """The first answer is lost after the server stored the items (a 503 from a proxy): one retry, same ids."""

    transport = AppTransport(client, lose_item_answers=1)
    with PlatformClient("http://testserver", world.tokens["trainer"], transport=transport) as trainer:
        ids = trainer.push_items(world.project_id, [_item(f"c-{i}") for i in range(5)])
        assert transport.lost == 1
        assert len(_rows(app)) == 5
        assert trainer.push_items(world.project_id, [_item(f"c-{i}") for i in range(5)], batch=2) == ids
    assert len(_rows(app)) == 5


def test_client_find_and_ensure_project(client: TestClient, world: World) -> None:
    with PlatformClient("http://testserver", world.tokens["admin"], transport=AppTransport(client)) as admin:
        assert admin.find_project("loop") is None
        made = admin.ensure_project("loop", overlap=3, instructions="judge the clips")
        assert made["overlap"] == 3
        again = admin.ensure_project("loop", overlap=1)  # exists: returned unchanged
        assert again == made
        assert admin.find_project("loop") == made
        assert admin.find_project("p") is not None  # the world's project
