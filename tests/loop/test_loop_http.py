"""The loop against a real server: one full round with scripted annotators over HTTP, and a loop
killed mid-round (SIGKILL, its server and annotators with it) that resumes without asking for a
judgement twice or losing one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from alignloop.loop.demo import local_platform, start_annotators
from alignloop.loop.rounds import LoopConfig, drive
from alignloop.platform.client import PlatformClient
from alignloop.platform.process import stop_process

pytestmark = pytest.mark.slow


def platform_rows(db: Path, project: str) -> dict[str, list[tuple]]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as c:
        pid = c.execute(text("SELECT id FROM projects WHERE name = :n"), {"n": project}).scalar_one()
        out = {
            "items": c.execute(text("SELECT id, key FROM items WHERE project_id = :p"), {"p": pid}).all(),
            "assignments": c.execute(
                text("SELECT item_id, annotator_id FROM assignments WHERE project_id = :p"), {"p": pid}
            ).all(),
            "judgements": c.execute(
                text("SELECT id, item_id FROM judgements WHERE project_id = :p AND NOT skipped"), {"p": pid}
            ).all(),
        }
    engine.dispose()
    return out


def test_one_round_through_the_real_server_with_scripted_annotators(tmp_path: Path) -> None:
    from alignloop.loop.toyworld import toyworld_domain

    cfg = LoopConfig(run_dir=tmp_path / "run", rounds=1, pairs=24, project="http-round", progress=False)
    cfg.run_dir.mkdir()
    platform, admin_password = local_platform(cfg.run_dir)
    annotators: list[subprocess.Popen[bytes]] = []
    try:
        platform.start()
        with PlatformClient.login(platform.url, "admin", admin_password.read_text().strip()) as admin:
            # 0.1 s an item: the first annotator to ask cannot finish the batch before the other asks
            annotators = start_annotators(cfg, platform.url, admin, "toyworld", 2, pace=0.1)
            domain = toyworld_domain("smoke", seed=0, progress=False)
            assert drive(cfg, admin, domain) == 0
            # everything the loop learned from came through the platform, from both annotators
            project = admin.find_project("http-round")
            assert project is not None
            rows = admin.judgements(project["id"])
    finally:
        for p in annotators:
            stop_process(p)
        platform.stop()
    state = json.loads((cfg.run_dir / "loop.json").read_text())
    assert state["phases"] == {"1": "evaluated"}
    stored = [json.loads(line) for line in (cfg.run_dir / "judgements.jsonl").read_text().splitlines()]
    n = len((cfg.run_dir / "round-001" / "candidates.jsonl").read_text().splitlines())
    assert 12 <= n <= 24  # pairs with an empty response are left out
    assert len(stored) == len(rows) == n
    assert {j["judgement_id"] for j in stored} == {r["id"] for r in rows}
    assert len({r["annotator_id"] for r in rows}) == 2
    assert all(
        j["answers"]["better"] in {"A", "B", "tie"} and j["answers"]["is_safe"][0] is not None for j in stored
    )
    metrics = state["metrics"]["1"]
    assert metrics["judgements"] == n
    unsafe = metrics["unsafe_rate"] * metrics["n_risky"]  # a share of the risky held-out prompts
    assert metrics["n_risky"] > 0 and unsafe == pytest.approx(round(unsafe), abs=1e-9)
    # the report is the state's figures: round 0 the starting policy, round 1 this one
    rows = json.loads((cfg.run_dir / "report.json").read_text())["rounds"]
    assert rows == [{"round": 0.0, **state["setup_metrics"]}, {"round": 1.0, **metrics}]
    report = (cfg.run_dir / "report.md").read_text()
    assert "| 1 |" in report and (cfg.run_dir / "rounds.png").read_bytes()[:4] == b"\x89PNG"


def wait_for_phase(
    state: Path, round: int, phases: set[str], process: subprocess.Popen, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the loop ended before the kill point"
        if state.is_file():
            try:
                phase = json.loads(state.read_text())["phases"].get(str(round))
            except ValueError:
                phase = None
            if phase in phases:
                return phase
        time.sleep(0.02)
    raise AssertionError(f"round {round} never reached {phases}")


def test_killed_loop_resumes_without_asking_twice_or_losing_a_judgement(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [  # the smoke preset's own sizes: 2 rounds of 24 pairs
        sys.executable, "-m", "alignloop.cli", "loop", "--demo", "toyworld", "--preset", "smoke",
        "--output-dir", str(run_dir), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen[bytes]:
        # a session of its own: the kill takes the server and the annotators down with the loop
        with (tmp_path / "loop.log").open("ab") as log:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    # kill 1: round 1's pairs are on the platform and the annotators are at work
    loop = start()
    wait_for_phase(run_dir / "loop.json", 1, {"pushed"}, loop, timeout=300)
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    # kill 2: round 2 has proposed (its push may or may not have reached the server)
    loop = start()
    wait_for_phase(run_dir / "loop.json", 2, {"proposed", "pushed"}, loop, timeout=300)
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    loop = start()
    assert loop.wait(timeout=600) == 0, (tmp_path / "loop.log").read_text()[-3000:]

    rows = platform_rows(run_dir / "platform.db", "loop-toyworld")
    proposed = [
        json.loads(line)["key"]
        for r in (1, 2)
        for line in (run_dir / f"round-00{r}" / "candidates.jsonl").read_text().splitlines()
    ]
    keys = [key for _, key in rows["items"]]
    assert sorted(keys) == sorted(proposed)  # every pair pushed once, whatever the kills cut
    per_item: dict[int, int] = {}
    for item_id, _ in rows["assignments"]:
        per_item[item_id] = per_item.get(item_id, 0) + 1
    assert set(per_item.values()) == {1}  # overlap 1: nobody was asked twice about a pair
    stored = [json.loads(line) for line in (run_dir / "judgements.jsonl").read_text().splitlines()]
    assert sorted(j["judgement_id"] for j in stored) == sorted(jid for jid, _ in rows["judgements"])
    assert len(stored) == len(proposed)  # none lost, none duplicated
    state = json.loads((run_dir / "loop.json").read_text())
    assert state["phases"] == {"1": "evaluated", "2": "evaluated"} and len(proposed) == 2 * 24
    assert state["metrics"]["2"]["judgements"] == len(
        proposed
    )  # round 2 learned from both rounds' judgements
