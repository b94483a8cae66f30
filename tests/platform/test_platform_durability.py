"""Durability: SIGKILL the server while annotators submit; every acknowledged judgement survives, once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from liveserver import LiveServer, seed
from sqlalchemy import select

from alignloop.platform.client import PlatformClient
from alignloop.platform.db import make_engine, make_sessionmaker
from alignloop.platform.models import Judgement

ANNOTATORS, ITEMS, K = 6, 40, 2


@pytest.mark.slow
def test_acknowledged_judgements_survive_sigkill(db_url: str, tmp_path: Path) -> None:
    project_id, tokens = seed(db_url, annotators=ANNOTATORS, items=ITEMS, overlap=K)
    server = LiveServer(db_url, tmp_path)
    server.start()
    acknowledged: dict[tuple[str, str], int] = {}  # (annotator, idempotency key) -> judgement id
    lock = threading.Lock()
    errors: list[BaseException] = []

    def annotate(name: str) -> None:
        try:
            with PlatformClient(server.url, tokens[name], retries=40, timeout=10) as client:
                n = 0
                while (assignment := client.next_assignment(project_id)) is not None:
                    key = f"{name}-{n}"
                    judgement = client.submit(
                        assignment["id"], {"answers": {"better": "A"}}, idempotency_key=key
                    )
                    with lock:
                        acknowledged[(name, key)] = judgement["id"]
                    n += 1
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(f"a{i}",)) for i in range(ANNOTATORS)]
    try:
        for thread in threads:
            thread.start()
        while len(acknowledged) < ITEMS * K // 3:  # a third of the work is done: kill mid-stream
            time.sleep(0.01)
        server.kill()
        killed_at = len(acknowledged)
        server.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
    assert not errors, errors
    assert killed_at < ITEMS * K
    engine = make_engine(db_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        rows = session.scalars(select(Judgement)).all()
    engine.dispose()
    stored = {(r.annotator_id, r.idempotency_key): r.id for r in rows}
    assert len(rows) == len(stored)  # no duplicate (annotator, key)
    assert len({(r.item_id, r.annotator_id) for r in rows}) == len(rows)  # nobody judged an item twice
    assert sorted(acknowledged.values()) == sorted(stored.values())  # every acknowledged one, nothing else
    assert len(rows) == ITEMS * K
