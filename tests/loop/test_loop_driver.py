"""The round driver against a real server. `alignloop loop`'s exit codes, through the command:
3 when a round's quota is not met in time (and again on a restart, which keeps waiting), 0 when
every round is done, 2 on bad input (nothing stored is touched). Pulling judgements: skips are
left out, each judgement is stored once.

The run directory is prepared as a loop leaves it after pushing round 1's pairs, so the
command goes straight to waiting for judgements: no model is trained here."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from alignloop.cli import main
from alignloop.feedback.schema import Candidate, Item
from alignloop.loop.domain import Proposal
from alignloop.loop.rounds import EXIT_TIMEOUT, LoopConfig, identity, pull
from alignloop.loop.state import (
    JudgementStore,
    LoopState,
    load_candidates,
    round_dir,
    save_candidates,
    write_atomic,
)
from alignloop.platform import crud
from alignloop.platform.app import create_app
from alignloop.platform.client import PlatformClient, item_json
from alignloop.platform.db import migrate
from alignloop.platform.pgcluster import free_port
from alignloop.platform.settings import Settings

PROJECT = "exit-codes"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """The platform app served by uvicorn on a free loopback port; (url, an admin's API token,
    an annotator's)."""
    root = tmp_path_factory.mktemp("platform")
    db = f"sqlite:///{root / 'platform.db'}"
    migrate(db)
    app = create_app(Settings(db=db, media_dir=root / "media", secret_key="exit-codes"))
    with app.state.sessionmaker() as session:
        admin = crud.create_user(session, name="admin", password="a long password", role="admin")
        token = crud.create_token(session, user=admin)
        annotator = crud.create_user(session, name="ann", password="a long password", role="annotator")
        annotator_token = crud.create_token(session, user=annotator)
        session.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", token, annotator_token
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def server(platform: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(url, admin token), with the token in $ALIGNLOOP_TOKEN as the loop reads it."""
    url, token, _ = platform
    monkeypatch.setenv("ALIGNLOOP_TOKEN", token)
    return url, token


def pushed_run(run_dir: Path, url: str, token: str, cfg: LoopConfig, phase: str) -> LoopState:
    """A run directory whose round 1 has finished `phase` (at least "pushed"), its pairs on the
    platform, nobody having judged them."""
    candidates = [
        Proposal(Item(f"prompt {i}", (Candidate("a"), Candidate("b")), key=f"{run_dir.name}-{i}"))
        for i in range(3)
    ]
    with PlatformClient(url, token) as client:
        project_id = int(client.ensure_project(cfg.project, overlap=1)["id"])
        ids = client.push_items(project_id, [item_json(c.item) for c in candidates])
    rd = round_dir(run_dir, 1)
    save_candidates(rd / "candidates.jsonl", candidates)
    write_atomic(rd / "items.json", json.dumps({c.key: i for c, i in zip(candidates, ids, strict=True)}))
    state = LoopState.open(run_dir, identity(cfg))
    state.project_id, state.setup_metrics = project_id, {"unsafe_rate": 0.5, "helpfulness": 0.3}
    state.phases = {"1": phase}
    if phase == "evaluated":
        state.metrics = {"1": {"unsafe_rate": 0.25, "helpfulness": 0.4}}
    state.save(run_dir)
    return state


def loop(run_dir: Path, url: str, *extra: str) -> int:
    args = ["loop", "--output-dir", str(run_dir), "--url", url, "--preset", "smoke", "--rounds", "1"]
    return main([*args, "--project", PROJECT, "--no-progress", *extra])


def test_a_round_that_times_out_exits_3_and_a_restart_keeps_waiting(
    tmp_path: Path, server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = server
    run_dir = tmp_path / "waiting"
    pushed_run(run_dir, url, token, LoopConfig(run_dir=run_dir, preset="smoke", project=PROJECT), "pushed")
    for _ in range(2):  # the first run, then a restart with the same command
        started = time.monotonic()
        assert loop(run_dir, url, "--timeout", "0.3", "--poll", "0.05") == EXIT_TIMEOUT == 3
        assert time.monotonic() - started >= 0.3
        assert (
            "round 1: timed out after 0 s with 0 of 3 items judged (0/3 judgements)"
            in capsys.readouterr().out
        )
        state = json.loads((run_dir / "loop.json").read_text())
        assert state["phases"] == {"1": "pushed"}  # nothing finished, nothing lost


def test_a_finished_run_exits_0_and_writes_its_report(
    tmp_path: Path, server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = server
    run_dir = tmp_path / "finished"
    pushed_run(run_dir, url, token, LoopConfig(run_dir=run_dir, preset="smoke", project=PROJECT), "evaluated")
    assert loop(run_dir, url) == 0
    assert f"report: {run_dir / 'report.md'}" in capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["unsafe_rate"] for r in report["rounds"]] == [0.5, 0.25]


def test_bad_input_exits_2_and_keeps_what_is_stored(
    tmp_path: Path, server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = server
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    (run_dir / "loop.json").write_text("{not json")
    assert loop(run_dir, url) == 2
    assert f"alignloop loop: {run_dir / 'loop.json'}: not a loop state file" in capsys.readouterr().err
    assert (run_dir / "loop.json").read_text() == "{not json"
    assert loop(tmp_path / "other", url, "--quota", "0") == 2
    assert "--quota must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_pull_stores_each_judgement_once_and_leaves_skips_out(
    tmp_path: Path, platform: tuple[str, str, str]
) -> None:
    url, token, annotator_token = platform
    run_dir = tmp_path / "pulled"
    cfg = LoopConfig(run_dir=run_dir, preset="smoke", project="pulled")  # no other test's items
    state = pushed_run(run_dir, url, token, cfg, "pushed")
    by_key = {c.key: c for c in load_candidates(round_dir(run_dir, 1) / "candidates.jsonl")}
    ids = json.loads((round_dir(run_dir, 1) / "items.json").read_text())
    known = {i: (1, by_key[k]) for k, i in ids.items()}
    assert state.project_id is not None
    with PlatformClient(url, annotator_token) as annotator:
        first = annotator.next_assignment(state.project_id)
        assert first is not None
        annotator.submit(first["id"], {"skipped": True, "skip_reason": "cannot tell"})
        second = annotator.next_assignment(state.project_id)
        assert second is not None
        safe = {"safe": True, "harms": [], "severity": None}
        labels = {"answers": {"better": "B", "safer": "tie", "is_safe": [safe, safe]}}
        judged = annotator.submit(second["id"], labels)
    store = JudgementStore(run_dir)
    with PlatformClient(url, token) as trainer:
        assert pull(trainer, state.project_id, state, store, run_dir, known) == 1
        assert pull(trainer, state.project_id, state, store, run_dir, known) == 0  # nothing new
    (stored,) = store.load()
    answers = stored.judgement.answers
    assert (stored.judgement_id, stored.key, answers["better"], answers["safer"]) == (
        judged["id"],
        by_key[next(k for k, i in ids.items() if i == second["item"]["id"])].key,
        "B",
        "tie",
    )
    assert state.after_id == judged["id"]  # the skip before it is not pulled again either
    assert json.loads((run_dir / "loop.json").read_text())["after_id"] == judged["id"]
