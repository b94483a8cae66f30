"""The queue under concurrency: many annotators at once, each item judged by exactly k different people."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alignloop.platform import crud
from alignloop.platform.db import make_engine, make_sessionmaker
from alignloop.platform.models import Item, Judgement, Project, User
from alignloop.platform.schemas import CandidateIn, ItemIn, JudgementIn, ProjectIn

ANNOTATORS, ITEMS, K = 8, 24, 3


def _setup(factory: sessionmaker[Session]) -> tuple[int, list[int]]:
    with factory() as session:
        project = crud.create_project(session, spec=ProjectIn(name="race", overlap=K))
        crud.add_items(
            session,
            project=project,
            items=[
                ItemIn(
                    prompt=f"p{i}", candidates=[CandidateIn(text="a"), CandidateIn(text="b")], priority=i % 3
                )
                for i in range(ITEMS)
            ],
            media_names=set(),
        )
        users = [
            User(name=f"u{i}", password_hash="x", role="annotator", active=True) for i in range(ANNOTATORS)
        ]
        session.add_all(users)
        session.commit()
        return project.id, [u.id for u in users]


def _annotate(
    factory: sessionmaker[Session], project_id: int, user_id: int, errors: list[BaseException]
) -> None:
    try:
        n = 0
        while True:
            with factory() as session:
                project = session.get(Project, project_id)
                user = session.get(User, user_id)
                assert project is not None and user is not None
                assignment = crud.next_assignment(session, project=project, annotator=user, lock_s=600)
                session.commit()
                if assignment is None:
                    return
                labels = JudgementIn(idempotency_key=f"{user_id}-{n}", answers={"better": "A"})
                crud.submit_judgement(session, assignment_id=assignment.id, annotator=user, labels=labels)
                session.commit()
                n += 1
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def test_concurrent_annotators_fill_each_item_exactly_k_times(db_url: str) -> None:
    engine = make_engine(db_url, pool_size=ANNOTATORS)
    try:
        factory = make_sessionmaker(engine)
        project_id, user_ids = _setup(factory)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_annotate, args=(factory, project_id, uid, errors)) for uid in user_ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        with factory() as session:
            judgements = session.scalars(select(Judgement)).all()
            items = session.scalars(select(Item)).all()
        per_item = Counter(j.item_id for j in judgements)
        assert len(judgements) == ITEMS * K
        assert set(per_item.values()) == {K}
        assert len({(j.item_id, j.annotator_id) for j in judgements}) == len(judgements)
        assert all(item.taken == K and item.done == K for item in items)
    finally:
        engine.dispose()


def test_an_item_another_transaction_holds_is_waited_for_not_skipped(db_url: str) -> None:
    """PostgreSQL's SKIP LOCKED passes over rows another transaction holds; when those are all
    that is left, the annotator must wait for them, not be told the queue is empty (which let an
    annotator stop one judgement short under load)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite serialises writers")
    engine = make_engine(db_url, pool_size=2)
    factory = make_sessionmaker(engine)
    holder = factory()
    try:
        project_id, user_ids = _setup(factory)
        holder.execute(select(Item).where(Item.project_id == project_id).with_for_update()).all()
        got: dict[str, int | None] = {}

        def ask() -> None:
            with factory() as session:
                project, user = session.get(Project, project_id), session.get(User, user_ids[0])
                assert project is not None and user is not None
                assignment = crud.next_assignment(session, project=project, annotator=user, lock_s=600)
                got["item"] = None if assignment is None else assignment.item_id
                session.commit()

        thread = threading.Thread(target=ask)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), got  # waiting on the held rows, not answering "nothing left"
        holder.commit()
        thread.join(timeout=30)
        assert got.get("item") is not None, got
    finally:
        holder.close()
        engine.dispose()


def test_stale_locks_are_expired_on_each_apps_own_clock(tmp_path):
    """Two apps in one process (two servers, or two tests' databases) each expire their project 1's
    stale locks at once: one app's release does not hold the other's back for a second."""
    from alignloop.platform.api.routes import ReleaseClock
    from alignloop.platform.app import create_app
    from alignloop.platform.settings import Settings

    first, second = (
        create_app(Settings(db=f"sqlite:///{tmp_path / name}.db", media_dir=tmp_path / name))
        for name in ("first", "second")
    )
    assert first.state.release_clock is not second.state.release_clock
    assert first.state.release_clock.due(1)
    assert not first.state.release_clock.due(1)  # throttled within its second
    assert second.state.release_clock.due(1)
    assert first.state.release_clock.due(2)  # per project
    clock = ReleaseClock(every_s=0.0)
    assert clock.due(1) and clock.due(1)
