"""The loop's durable state: atomic files, a refused mismatch, a judgement store that keeps each id once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.feedback.schema import Candidate, Item, Judgement
from alignloop.loop.domain import Judged, Proposal
from alignloop.loop.rounds import round_progress
from alignloop.loop.state import (
    JudgementStore,
    LoopState,
    load_candidates,
    save_candidates,
    write_atomic,
)

ANSWERS = {
    "better": "A",
    "safer": "tie",
    "is_safe": [
        {"safe": True, "harms": [], "severity": None},
        {"safe": False, "harms": ["Violence"], "severity": "minor"},
    ],
}


def judged(jid: int, key: str, r: int = 1) -> Judged:
    item = Item("p", (Candidate("a"), Candidate("b")), key=key)
    return Judged(jid, r, Judgement(item, ANSWERS, annotator="7"))


def test_lines_written_before_answer_documents_still_load(tmp_path: Path) -> None:
    old = {
        "judgement_id": 3, "annotator_id": 7, "round": 1, "better": "A", "safer": "tie", "safe_a": True,
        "safe_b": False, "harm_a": [], "harm_b": ["Violence"], "severity_a": None, "severity_b": "minor",
        "candidate": {"key": "k", "prompt": "p", "response_a": "a", "response_b": "b", "media_a": None,
                      "media_b": None, "model_a": "", "model_b": "", "priority": 0.0},
    }  # fmt: skip
    (tmp_path / "judgements.jsonl").write_text(json.dumps(old) + "\n")
    assert JudgementStore(tmp_path).load() == [judged(3, "k")]


def test_state_survives_a_restart_and_tracks_phases(tmp_path: Path) -> None:
    state = LoopState.open(tmp_path, {"domain": "toyworld", "seed": 0})
    assert state.next_round(3) == 1
    state.finish(tmp_path, 1, "proposed", {"pairs": 10.0})
    state.finish(tmp_path, 1, "pushed")
    again = LoopState.open(tmp_path, {"domain": "toyworld", "seed": 0})
    assert again.done(1, "proposed") and again.done(1, "pushed") and not again.done(1, "collected")
    assert again.metrics == {"1": {"pairs": 10.0}}
    for phase in ("collected", "learned", "aligned", "evaluated"):
        again.finish(tmp_path, 1, phase)
    assert again.next_round(3) == 2 and again.next_round(1) is None


def test_state_refuses_a_run_dir_made_with_other_options(tmp_path: Path) -> None:
    LoopState.open(tmp_path, {"domain": "toyworld", "seed": 0})
    with pytest.raises(ValueError, match=r"seed: 0 in the run, 1 now"):
        LoopState.open(tmp_path, {"domain": "toyworld", "seed": 1})


def test_state_file_that_is_not_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "loop.json").write_text("{not json")
    with pytest.raises(ValueError, match="loop.json: not a loop state file"):
        LoopState.open(tmp_path, {})


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_candidates_round_trip(tmp_path: Path) -> None:
    pairs = [
        Proposal(Item("p", (Candidate("a"), Candidate("b")), key="r1-00000"), priority=0.5),
        Proposal(
            Item("ctx", (Candidate(media="round-001/clips/x.gif"), Candidate(media="y.gif")), key="r1-00001")
        ),
        Proposal(Item("ranked", tuple(Candidate(str(i), model=f"m{i}") for i in range(4)), key="r1-00002")),
    ]
    save_candidates(tmp_path / "c.jsonl", pairs)
    assert load_candidates(tmp_path / "c.jsonl") == pairs


def test_store_keeps_each_judgement_once_and_drops_a_torn_last_line(tmp_path: Path) -> None:
    store = JudgementStore(tmp_path)
    assert store.append([judged(1, "k1"), judged(2, "k2")]) == 2
    assert store.append([judged(2, "k2"), judged(3, "k3")]) == 1  # 2 was there already
    with store.path.open("a") as f:  # a crash half-way through a line
        f.write(json.dumps(judged(4, "k4").to_json())[:25])
    assert [j.judgement_id for j in store.load()] == [1, 2, 3]
    assert store.append([judged(4, "k4")]) == 1  # pulled again after the restart
    loaded = store.load()
    assert [j.judgement_id for j in loaded] == [1, 2, 3, 4]
    assert loaded[0] == judged(1, "k1")


def test_round_progress_counts_at_most_overlap_per_item() -> None:
    rows = [judged(1, "a"), judged(2, "a"), judged(3, "a"), judged(4, "b"), judged(5, "other")]
    counted, complete = round_progress(rows, {"a": 11, "b": 12, "c": 13}, overlap=2)
    assert (counted, complete) == (3, 1)  # a: 2 (of 3), b: 1, c: 0; only a is complete
