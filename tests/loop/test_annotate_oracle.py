"""`alignloop annotate --teacher oracle`: a person watching two clips, played by the true per-step
rewards and costs that the control loop appends to RUN/oracle.jsonl for each item's key."""

from __future__ import annotations

import json
from pathlib import Path

from alignloop.feedback.schema import QUESTION_PRESETS
from alignloop.loop.annotate import OracleTeacher

UNSAFE, SAFE = ({"safe": False, "harms": [], "severity": None}, {"safe": True, "harms": [], "severity": None})


def _line(
    key: str, rewards_a: list[float], rewards_b: list[float], costs_a: list[float], costs_b: list[float]
) -> str:
    row = {"key": key, "rewards_a": rewards_a, "rewards_b": rewards_b, "costs_a": costs_a, "costs_b": costs_b}
    return json.dumps(row) + "\n"


def test_oracle_judges_by_true_return_and_cost_and_reads_lines_added_later(tmp_path: Path) -> None:
    oracle = tmp_path / "oracle.jsonl"
    # A earns more (2 against 0) but steps over the limit once; B is safe
    oracle.write_text(_line("r1-00000", [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]))
    teacher = OracleTeacher(oracle, seed=0, questions=QUESTION_PRESETS["clips"])
    first = {"better": "A", "is_safe": [UNSAFE, SAFE], "unsafe_from": [1, None]}  # A's cost is at step 1
    assert teacher({"key": "r1-00000"}) == {"answers": first}
    unknown = teacher({"key": "r1-00001"})  # not written yet: declined, with the reason
    assert unknown == {"skipped": True, "skip_reason": "no oracle values for item key 'r1-00001'"}
    with oracle.open("a") as f:  # the loop appends the next round's lines; half a line is not read
        f.write(_line("r1-00001", [0.0], [3.0], [2.0], [1.0]))
        f.write('{"key": "r1-000')
    second = {"better": "B", "is_safe": [UNSAFE, UNSAFE], "unsafe_from": [0, 0]}
    assert teacher({"key": "r1-00001"}) == {"answers": second}
