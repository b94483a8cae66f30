"""`alignloop serve` as a subprocess on a free loopback port, for tests that need a real server."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from alignloop.platform import crud
from alignloop.platform.db import make_engine, make_sessionmaker
from alignloop.platform.process import ServerProcess
from alignloop.platform.schemas import ProjectIn


class LiveServer(ServerProcess):
    """The platform server for tests: a fixed cookie-signing key, so restarts keep sessions."""

    def __init__(self, db_url: str, workdir: Path, *, workers: int = 1):
        super().__init__(db_url, workdir, workers=workers, args=["--secret-key", "live-test"])


def seed(db_url: str, *, annotators: int, items: int, overlap: int) -> tuple[int, dict[str, str]]:
    """A project with `items` text items and tokens for an admin and `annotators` annotators."""
    engine = make_engine(db_url, pool_size=1)
    factory: sessionmaker[Session] = make_sessionmaker(engine)
    tokens = {}
    with factory() as session:
        for name, role in [("admin", "admin")] + [(f"a{i}", "annotator") for i in range(annotators)]:
            user = crud.create_user(session, name=name, password="a long password", role=role)
            tokens[name] = crud.create_token(session, user=user)
        project = crud.create_project(session, spec=ProjectIn(name="live", overlap=overlap))
        from alignloop.platform.schemas import CandidateIn, ItemIn

        crud.add_items(
            session,
            project=project,
            items=[
                ItemIn(
                    prompt=f"prompt {i}",
                    candidates=[CandidateIn(text=f"A{i}", model="m1"), CandidateIn(text=f"B{i}", model="m2")],
                )
                for i in range(items)
            ],
            media_names=set(),
        )
        session.commit()
        project_id = project.id
    engine.dispose()
    return project_id, tokens
