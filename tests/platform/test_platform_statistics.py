"""A push that grows the items table refreshes PostgreSQL's statistics, so the queue's pick reads
the queue index in order instead of scanning and sorting every free item."""

from __future__ import annotations

from fastapi import FastAPI
from platform_helpers import World
from sqlalchemy import text

from alignloop.platform import crud


def _believed_items(app: FastAPI) -> float:
    with app.state.sessionmaker() as session:
        return float(session.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'items'::regclass")))


def test_growing_push_refreshes_statistics_small_one_does_not(app: FastAPI, world: World) -> None:
    world.add_items(40)
    with app.state.sessionmaker() as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        if not postgres:  # SQLite has no planner statistics to refresh
            assert not crud.refresh_queue_statistics(session, added=40)
            return
    assert _believed_items(app) == 40  # the route analysed the table it grew from nothing
    world.add_items(10)  # a quarter of what the planner knows of: left to autovacuum
    assert _believed_items(app) == 40
    world.add_items(30)  # 80 rows now, 30 of them new: at least half of 40, analysed again
    assert _believed_items(app) == 80
    with app.state.sessionmaker() as session:
        assert not crud.refresh_queue_statistics(session, added=0)
