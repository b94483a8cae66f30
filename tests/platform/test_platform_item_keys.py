"""Items pushed with a key are stored once per project: re-pushes, retries and races add no rows."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from liveserver import LiveServer, seed
from platform_helpers import AppTransport, World
from sqlalchemy import select, text

from alignloop.platform import crud
from alignloop.platform.client import PlatformClient
from alignloop.platform.db import make_engine, make_sessionmaker
from alignloop.platform.models import Item
from alignloop.platform.schemas import CandidateIn, ItemIn


def _item(key: str | None, text: str = "x") -> dict[str, object]:
    return {
        "key": key,
        "prompt": f"prompt {text}",
        "candidates": [{"text": f"A {text}"}, {"text": f"B {text}"}],
    }


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
    body = {"idempotency_key": "j1", "answers": {"better": "A"}}
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


def _race(app: FastAPI, project_id: int, orders: list[list[str]]) -> list[dict[str, int]]:
    """One session per order pushes those keyed items at once (as the route does: add, commit)."""
    start = threading.Barrier(len(orders))
    answers: list[dict[str, int]] = [{} for _ in orders]
    errors: list[BaseException] = []

    def push(n: int) -> None:
        try:
            start.wait(timeout=30)
            with app.state.sessionmaker() as session:
                project = crud.get_project(session, project_id=project_id)
                pair = [CandidateIn(text="a"), CandidateIn(text="b")]
                specs = [ItemIn(key=k, prompt=f"p {k}", candidates=pair) for k in orders[n]]
                ids = crud.add_items(session, project=project, items=specs, media_names=set())
                session.commit()
            answers[n] = dict(zip(orders[n], ids, strict=True))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=push, args=(n,)) for n in range(len(orders))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    return answers


class LookupsMeet:
    """On PostgreSQL, every racer's first key look-up waits for the others' before anyone inserts.

    That forces the losing inserts onto the unique index (the path under test). SQLite takes its
    write lock at the start of each transaction, so there the racers are serialised instead.
    `calls` counts the look-ups, to show that the losers looked again.
    """

    def __init__(self, app: FastAPI, monkeypatch: pytest.MonkeyPatch):
        self.app, self.monkeypatch, self.calls = app, monkeypatch, 0
        self.postgres = app.state.engine.dialect.name == "postgresql"

    def install(self, racers: int) -> None:
        if not self.postgres:
            return
        meet, original, first_of = threading.Barrier(racers), crud.item_ids_by_key, set()

        def looked_up(session, **kwargs):  # type: ignore[no-untyped-def]
            found = original(session, **kwargs)
            self.calls += 1
            if threading.get_ident() not in first_of:
                first_of.add(threading.get_ident())
                meet.wait(timeout=30)
            return found

        self.monkeypatch.setattr(crud, "item_ids_by_key", looked_up)


@pytest.fixture
def lookups_meet(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> LookupsMeet:
    return LookupsMeet(app, monkeypatch)


def test_racing_pushes_of_the_same_keys_store_each_once(
    app: FastAPI, world: World, lookups_meet: LookupsMeet
) -> None:
    keys = [f"race-{i}" for i in range(20)]
    lookups_meet.install(4)
    answers = _race(app, world.project_id, [keys] * 4)
    assert all(ids == answers[0] for ids in answers), answers
    assert len(set(answers[0].values())) == 20
    assert sorted(r[0] for r in _rows(app)) == sorted(answers[0].values())
    if lookups_meet.postgres:
        assert lookups_meet.calls >= 4 + 3  # three racers lost the insert and looked again


def test_racing_pushes_in_opposite_orders(app: FastAPI, world: World, lookups_meet: LookupsMeet) -> None:
    """Racers that list shared keys in opposite orders get the same ids for them."""
    keys = [f"both-{i}" for i in range(10)]
    lookups_meet.install(2)
    forward, backward = _race(app, world.project_id, [keys, keys[::-1]])
    assert forward == backward
    assert sorted(r[0] for r in _rows(app)) == sorted(forward.values())


def test_a_push_that_deadlocks_looks_again(app: FastAPI, world: World) -> None:
    """PostgreSQL: another writer holds k1 and then wants k0, which the push holds: a deadlock.

    The push waits on k1 first, so its deadlock check fires first and PostgreSQL aborts its insert;
    it must undo it, let the other writer finish and answer the other writer's ids.
    """
    engine = app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: two transactions never hold rows the other wants")
    insert = text(
        "INSERT INTO items (project_id, key, prompt, candidates, priority, is_gold, meta, taken, done, is_full,"
        ' created_at) VALUES (:project, :key, \'other\', \'[{"text": "a"}, {"text": "b"}]\', 0, false,'
        " '{}', 0, 0, false, now()) RETURNING id"
    )
    answers: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def push() -> None:
        try:
            answers.extend(_race(app, world.project_id, [["k0", "k1"]]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with engine.connect() as other, engine.connect() as watcher:
        other_ids = {"k1": other.execute(insert, {"project": world.project_id, "key": "k1"}).scalar_one()}
        pusher = threading.Thread(target=push)
        pusher.start()
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        for _ in range(300):  # until the push waits on k1
            if watcher.execute(waiting).scalar_one():
                break
            watcher.rollback()
            time.sleep(0.02)
        else:
            pytest.fail("the push never waited on the other writer's key")
        other_ids["k0"] = other.execute(insert, {"project": world.project_id, "key": "k0"}).scalar_one()
        other.commit()
        pusher.join(timeout=60)
    assert not errors, errors
    assert answers == [other_ids]
    assert sorted(r[0] for r in _rows(app)) == sorted(other_ids.values())


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


@pytest.mark.slow
def test_racing_http_pushes_through_two_server_processes(db_url: str, tmp_path: Path) -> None:
    """Four clients push overlapping keyed batches at once to a server with two worker processes."""
    project_id, tokens = seed(db_url, annotators=0, items=0, overlap=1)
    server = LiveServer(db_url, tmp_path, workers=2)
    server.start()
    clients, rounds = 4, 3
    answers: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def push(n: int) -> None:
        try:
            with PlatformClient(server.url, tokens["admin"], timeout=30) as trainer:
                for r in range(rounds):
                    keys = [f"k{i}" for i in range(15 * r, 15 * r + 30)]  # half of them pushed last round
                    start.wait(timeout=60)
                    answers[(n, r)] = trainer.push_items(project_id, [_item(k) for k in keys])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
    assert not errors, errors
    for r in range(rounds):
        assert all(answers[(n, r)] == answers[(0, r)] for n in range(clients)), r
        if r:
            assert answers[(0, r)][:15] == answers[(0, r - 1)][15:]  # the overlap kept its ids
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        keys = session.scalars(select(Item.key)).all()
    engine.dispose()
    assert sorted(keys) == sorted(f"k{i}" for i in range(15 * rounds + 15))
