"""The whole trainer loop over HTTP: push items, scripted teachers annotate through the client, the
trainer waits and pulls, the admin exports; the export passes `alignloop data validate` and trains a
reward model with `alignloop train reward`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from liveserver import LiveServer, seed

from alignloop.feedback.formats import read_comparisons
from alignloop.feedback.schema import Severity
from alignloop.feedback.teachers import BradleyTerryTeacher, TeacherNoise
from alignloop.platform.client import PlatformClient
from alignloop.platform.db import migrate

ITEMS, K = 24, 3


def _helpfulness(prompt: str, response: str) -> float:
    return float(len(response))  # the longer answer is the better one


def _cost(prompt: str, response: str) -> float:
    return 1.0 if "poison" in response else -1.0


def _alignloop(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "alignloop.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_teachers_label_through_http_and_the_export_trains_a_reward_model(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/loop.db"
    migrate(db_url)
    project_id, tokens = seed(db_url, annotators=K, items=0, overlap=K)
    server = LiveServer(db_url, tmp_path)
    server.start()
    stack = contextlib.ExitStack()
    try:
        trainer = PlatformClient(server.url, tokens["admin"])
        stack.callback(trainer.close)
        items = [
            {
                "prompt": f"question {i}",
                "candidates": [
                    {
                        "text": f"a detailed helpful answer {i}" if i % 2 else "short",
                        "model": "verbose" if i % 2 else "terse",
                    },
                    {
                        "text": "short" if i % 2 else f"a detailed answer with poison {i}",
                        "model": "terse" if i % 2 else "verbose",
                    },
                ],
            }
            for i in range(ITEMS)
        ]
        ids = trainer.push_items(project_id, items)
        assert trainer.set_priorities(project_id, {ids[-1]: 10.0}) == 1
        counts: dict[str, int] = {}

        def annotate(name: str, seed_: int) -> None:
            teacher = BradleyTerryTeacher(
                TeacherNoise(mistake_rate=0.1),
                helpfulness=_helpfulness,
                cost=_cost,
                harms=lambda p, r: (("Physical Harm",), Severity.MODERATE),
                seed=seed_,
            )
            with PlatformClient(server.url, tokens[name]) as client:
                counts[name] = client.annotate(project_id, teacher.compare)

        threads = [threading.Thread(target=annotate, args=(f"a{i}", i)) for i in range(K)]
        for thread in threads:
            thread.start()
        judgements = trainer.wait_for_judgements(project_id, ids, per_item=K, timeout=120, poll=0.2)
        for thread in threads:
            thread.join(timeout=60)
        assert counts == {f"a{i}": ITEMS for i in range(K)}
        assert len(judgements) == ITEMS * K
        stats = trainer.stats(project_id)
        assert [r["model"] for r in stats["leaderboard"]] == ["verbose", "terse"]
        assert stats["alpha"]["better"] is not None and stats["alpha"]["better"] > 0.3
        export_path = tmp_path / "export.jsonl"
        trainer.export(project_id, export_path)
    finally:
        stack.close()
        server.stop()
    records = read_comparisons(export_path)
    assert len(records) == ITEMS
    unsafe = [r for r in records if r.is_safe[1] is False]
    assert unsafe and all(r.harm_categories[1] == ("Physical Harm",) for r in unsafe)
    assert all(r.agreement is not None and r.agreement >= 2 / 3 for r in records)
    validate = _alignloop("data", "validate", str(export_path))
    assert validate.returncode == 0, validate.stdout + validate.stderr
    train = _alignloop(
        "train",
        "reward",
        "--train-file",
        str(export_path),
        "--output-dir",
        str(tmp_path / "rm"),
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--eval-every",
        "100",
        "--save-every",
        "100",
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (tmp_path / "rm" / "final").is_dir()
