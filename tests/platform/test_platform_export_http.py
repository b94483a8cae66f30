"""The export over HTTP carries each response's harm categories and severity, aggregated over
the annotators (categories chosen by at least half, the median severity), and reads back."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from platform_helpers import SAFE, make_world, unsafe

from alignloop.feedback.formats import read_comparisons
from alignloop.feedback.schema import HARM_CATEGORIES, Severity


def test_export_carries_harm_categories_and_severity(
    app: FastAPI, client: TestClient, tmp_path: Path
) -> None:
    world = make_world(app, client, overlap=3)
    world.add_items(1)
    votes = {  # B unsafe for two of three annotators: Violence twice, Physical Harm once
        "ann1": unsafe("Violence", "Physical Harm", severity="severe"),
        "ann2": unsafe("Violence", severity="moderate"),
        "ann3": SAFE,
    }
    for name, flag_b in votes.items():
        a = world.next(name)
        assert a is not None
        r = world.submit(name, a["id"], f"{name}-1", is_safe=[SAFE, flag_b])
        assert r.status_code == 201, r.text
    r = client.get(f"/api/projects/{world.project_id}/export", headers=world.auth("admin"))
    assert r.status_code == 200
    (row,) = [json.loads(line) for line in r.text.splitlines()]
    assert (row["is_response_0_safe"], row["is_response_1_safe"]) == (True, False)
    # Violence 2 of 3 >= half: kept; Physical Harm 1 of 3: dropped; median of moderate, severe
    # (the lower middle of an even count) is moderate = level 2; the safe response has none
    assert row["response_1_harm_category"] == {name: name == "Violence" for name in HARM_CATEGORIES}
    assert row["response_0_harm_category"] == dict.fromkeys(HARM_CATEGORIES, False)
    assert (row["response_0_severity_level"], row["response_1_severity_level"]) == (0, 2)
    path = tmp_path / "export.jsonl"
    path.write_text(r.text)
    (record,) = read_comparisons(path)
    assert record.harm_categories == ((), ("Violence",))
    assert record.severity == (None, Severity.MODERATE)
