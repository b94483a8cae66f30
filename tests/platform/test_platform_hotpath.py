"""judgement-and-next: the one-statement path on PostgreSQL (asynchronous, on the event loop) keeps
every guarantee of the general one (on SQLite these tests run the general path, so both answer the same)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi import FastAPI
from platform_helpers import World, make_world
from sqlalchemy import event, select, update

from alignloop.platform.models import Assignment, Item, Judgement

SAFE = {"safe": True, "harms": [], "severity": None}
ANSWERS = {"better": "B", "safer": "A", "is_safe": [SAFE, {"safe": False, "harms": [], "severity": "minor"}]}


def _same_instant(answer: dict) -> dict:
    """SQLite gives stored times back without their zone (always UTC here), and PostgreSQL's JSON
    drops a time's trailing zeros: compare the instants."""
    return {
        k: dt.datetime.fromisoformat(v.removesuffix("Z").removesuffix("+00:00"))
        if k in ("created_at", "expires_at")
        else v
        for k, v in answer.items()
    }


def _submit_next(world: World, name: str, assignment_id: int, key: str, **answers: object) -> object:
    body = {"idempotency_key": key, "answers": {**ANSWERS, **answers}}
    return world.client.post(
        f"/api/assignments/{assignment_id}/judgement-and-next", json=body, headers=world.auth(name)
    )


def test_answer_matches_what_is_stored_and_counters_move(app: FastAPI, world: World) -> None:
    ids = world.add_items(3)
    first = world.next("ann1")
    assert first is not None
    statements: list[str] = []

    @event.listens_for(app.state.engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    r = _submit_next(world, "ann1", first["id"], "k1")
    assert r.status_code == 201, r.text
    if app.state.engine.dialect.name == "postgresql":  # on the event loop's pool: no ORM statement
        assert statements == [], statements
    answer = r.json()
    stored = world.client.get(f"/api/judgements/{answer['judgement']['id']}", headers=world.auth("ann1"))
    assert _same_instant(stored.json()) == _same_instant(answer["judgement"])
    assert answer["judgement"]["answers"] == ANSWERS
    nxt = answer["assignment"]
    assert nxt["item"]["id"] == ids[1] and nxt["item"]["candidates"][0]["text"] == "answer A1"
    assert nxt["item"]["meta"] == {} and set(nxt) == {"id", "expires_at", "item"}
    # the next assignment as the general path (ORM and pydantic) would write it: the same
    general = world.client.post(f"/api/projects/{world.project_id}/next", headers=world.auth("ann1")).json()
    assert _same_instant(general["assignment"]) == _same_instant(nxt)
    with app.state.sessionmaker() as session:
        items = {i.id: i for i in session.scalars(select(Item))}
        statuses = dict(session.execute(select(Assignment.item_id, Assignment.status)).all())
    assert (items[ids[0]].taken, items[ids[0]].done) == (1, 1)
    assert (items[ids[1]].taken, items[ids[1]].done) == (1, 0)
    assert statuses == {ids[0]: "done", ids[1]: "open"}


def test_replay_foreign_and_expired_assignments(app: FastAPI, world: World) -> None:
    world.add_items(3)
    mine = world.next("ann1")
    theirs = world.next("ann2")
    assert mine is not None and theirs is not None
    foreign = _submit_next(world, "ann2", mine["id"], "x1")
    assert foreign.status_code == 403
    ok = _submit_next(world, "ann1", mine["id"], "k1")
    replay = _submit_next(world, "ann1", mine["id"], "k1")
    assert (ok.status_code, replay.status_code) == (201, 200)
    assert _same_instant(replay.json()["judgement"]) == _same_instant(ok.json()["judgement"])
    assert replay.json()["assignment"]["id"] == ok.json()["assignment"]["id"]
    reused = _submit_next(world, "ann1", ok.json()["assignment"]["id"], "k1")  # same key, other item
    assert reused.status_code == 409
    with app.state.sessionmaker() as session:  # ann2's lock ran out; the slot is still free (k = 2)
        session.execute(update(Assignment).where(Assignment.id == theirs["id"]).values(status="expired"))
        session.execute(update(Item).where(Item.id == theirs["item"]["id"]).values(taken=Item.taken - 1))
        session.commit()
    late = _submit_next(world, "ann2", theirs["id"], "y1")
    assert late.status_code == 201, late.text
    with app.state.sessionmaker() as session:
        rows = session.execute(select(Judgement.annotator_id, Judgement.idempotency_key)).all()
    assert sorted(rows) == sorted([(world.ids["ann1"], "k1"), (world.ids["ann2"], "y1")])


def test_overlap_is_never_exceeded_nor_doubled(app: FastAPI, world: World) -> None:
    world.add_items(3)  # k = 2, three annotators: six judgements, each item twice, never twice by one
    current = {name: world.next(name) for name in ("ann1", "ann2", "ann3")}
    n = 0
    while any(current.values()):
        for name, assignment in current.items():
            if assignment is not None:
                r = _submit_next(world, name, assignment["id"], f"{name}-{n}")
                assert r.status_code == 201, r.text
                current[name] = r.json()["assignment"]
                n += 1
    with app.state.sessionmaker() as session:
        pairs = session.execute(select(Judgement.item_id, Judgement.annotator_id)).all()
        taken = sorted(session.scalars(select(Item.taken)))
    assert len(pairs) == len(set(pairs)) == 6 and taken == [2, 2, 2]


def test_answers_and_skips_still_checked(app: FastAPI, world: World) -> None:
    world.add_items(2)
    first = world.next("ann1")
    assert first is not None
    harm = {"safe": False, "harms": ["no such harm"], "severity": None}
    bad = _submit_next(world, "ann1", first["id"], "k1", is_safe=[SAFE, harm])
    assert bad.status_code == 422 and "unknown harm categories" in bad.json()["detail"]
    loose = _submit_next(
        world, "ann1", first["id"], "k0", is_safe=[{"safe": True}, None]
    )  # normal form stored
    assert loose.status_code == 201 and loose.json()["judgement"]["answers"]["is_safe"] == [SAFE, None]
    first = loose.json()["assignment"]
    skip = {"skipped": True, "skip_reason": "unreadable"}
    r = world.client.post(
        f"/api/assignments/{first['id']}/judgement-and-next",
        json={"idempotency_key": "k2", **skip},
        headers=world.auth("ann1"),
    )
    assert r.status_code == 201 and r.json()["judgement"]["skipped"] is True
    with app.state.sessionmaker() as session:
        assert session.get(Item, first["item"]["id"]).taken == 0  # type: ignore[union-attr]


def test_gold_items_are_still_mixed_in(app: FastAPI, client: object) -> None:
    world = make_world(app, client, overlap=1, gold_rate=0.5)  # type: ignore[arg-type]
    world.add_items(4)
    gold = world.add_items(2, is_gold=True, gold={"better": "A"})
    seen = []
    assignment = world.next("ann1")
    n = 0
    while assignment is not None:
        seen.append(assignment["item"]["id"])
        r = _submit_next(world, "ann1", assignment["id"], f"g{n}")
        assert r.status_code == 201, r.text
        assignment = r.json()["assignment"]
        n += 1
    assert set(gold) <= set(seen) and len(seen) == len(set(seen)) == 6


def test_refusals_unauthenticated_malformed_and_lock_expiry(app: FastAPI, world: World) -> None:
    world.add_items(2)
    first = world.next("ann1")
    assert first is not None
    url = f"/api/assignments/{first['id']}/judgement-and-next"
    body = {"idempotency_key": "k1", "answers": ANSWERS}
    assert world.client.post(url, json=body).status_code == 401
    wrong = world.client.post(url, json=body, headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    bad = world.client.post(url, json={**body, "answers": {"better": "C"}}, headers=world.auth("ann1"))
    assert bad.status_code == 422 and bad.json()["detail"].startswith("questions.better: expected one of")
    raw = world.client.post(
        url, content=b"{not json", headers={**world.auth("ann1"), "Content-Type": "application/json"}
    )
    assert raw.status_code == 422
    with app.state.sessionmaker() as session:  # nothing refused was stored, the lock is still ann1's
        assert session.scalars(select(Judgement)).all() == []
        assert session.get(Assignment, first["id"]).status == "open"  # type: ignore[union-attr]
    ok = _submit_next(world, "ann1", first["id"], "k1")
    assert ok.status_code == 201, ok.text


def test_the_pool_replaces_a_broken_connection_and_times_are_utc(db_url: str) -> None:
    import asyncio

    from alignloop.platform.hotpath import make_pool

    if not db_url.startswith("postgresql"):
        pytest.skip("the pool serves PostgreSQL only")

    async def scenario() -> tuple[int, str, int, int]:
        pool = make_pool(db_url, size=1, open_at_start=1, connect_timeout_s=5)
        await pool.open(wait=True, timeout=10)
        try:
            async with pool.connection() as connection:
                first = (await (await connection.execute("SELECT pg_backend_pid()")).fetchone() or [0])[0]
                zone = (await (await connection.execute("SHOW TimeZone")).fetchone() or [""])[0]
                await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        except Exception:  # the backend went away under the statement
            pass
        finally:
            async with pool.connection() as connection:  # a fresh one, not the dead one
                fresh = (await (await connection.execute("SELECT pg_backend_pid()")).fetchone() or [0])[0]
                answer = (await (await connection.execute("SELECT 41 + 1")).fetchone() or [0])[0]
            await pool.close()
        return first, zone, fresh, answer

    first, zone, fresh, answer = asyncio.run(scenario())
    assert zone == "UTC" and answer == 42 and fresh != first


def test_a_submission_handed_out_elsewhere_takes_the_general_path(app: FastAPI, world: World) -> None:
    """Another worker process handed the assignment out: this one does not know it, and answers the same."""
    ids = world.add_items(2)
    first = world.next("ann1")
    assert first is not None
    app.state.memory.handed.clear()
    r = _submit_next(world, "ann1", first["id"], "k1")
    assert r.status_code == 201 and r.json()["assignment"]["item"]["id"] == ids[1]
    assert r.json()["judgement"]["answers"] == ANSWERS


def test_app_starts_when_postgresql_is_not_up_yet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from alignloop.platform.app import create_app
    from alignloop.platform.pgcluster import free_port
    from alignloop.platform.settings import Settings

    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/absent"  # nothing listens there
    app = create_app(Settings(db=url, media_dir=tmp_path / "media"))
    with caplog.at_level("WARNING"), TestClient(app) as client:
        assert client.get("/login").status_code == 200
    assert "could not open PostgreSQL connections at start-up" in caplog.text


def test_connections_to_a_server_that_never_answers_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that takes the connection but never speaks (as a dropped route looks to libpq): the
    pool and the ORM engine give up after their connect timeout instead of waiting on TCP."""
    import asyncio
    import socket
    import time

    import psycopg
    import sqlalchemy

    from alignloop.platform import db
    from alignloop.platform.hotpath import make_pool

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads or answers
        url = f"postgresql+psycopg://nobody@127.0.0.1:{silent.getsockname()[1]}/absent"

        async def pool_connect() -> None:  # one of the pool's connections, made as the pool makes them
            pool = make_pool(url, size=1, open_at_start=0, connect_timeout_s=2)
            await psycopg.AsyncConnection.connect(pool.conninfo, **pool.kwargs)

        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            asyncio.run(pool_connect())
        assert time.monotonic() - start < 10
        for engine_url, default in ((url, 2), (url + "?connect_timeout=2", 60)):  # the URL's own wins
            monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", default)
            engine = db.make_engine(engine_url, pool_size=1)
            start = time.monotonic()
            with pytest.raises(sqlalchemy.exc.OperationalError, match="timeout"), engine.connect():
                pass
            assert time.monotonic() - start < 10
            engine.dispose()
