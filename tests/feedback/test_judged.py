"""Judged items: majority PKU-SafeRLHF records, the general format in every container, conversions."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignloop.feedback.formats import FormatError, read_corrections, read_judged, read_records, write_records
from alignloop.feedback.judged import JudgedItem, aggregate_comparison, judged_item
from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    Candidate,
    CorrectionText,
    FreeText,
    IsSafe,
    Item,
    Judgement,
    Mark,
    Ranking,
    Rating,
    Severity,
)

ITEM = Item(
    "p",
    (Candidate("a", model="m1"), Candidate(media="clip.mp4", model="m2")),
    key="k7",
    meta={"item_id": "7"},
)
SAFE = {"safe": True, "harms": [], "severity": None}


def flag(safe: bool | None, harms: tuple[str, ...] = (), severity: str | None = None) -> dict | None:
    return None if safe is None else {"safe": safe, "harms": list(harms), "severity": severity}


def vote(
    better: str, safer: str | None = None, safe_a: bool | None = None, safe_b: bool | None = None, **kw
) -> Judgement:
    answers: dict = {"better": better}
    if safer:
        answers["safer"] = safer
    if (safe_a, safe_b) != (None, None):
        answers["is_safe"] = [flag(safe_a, kw.get("harm_a", ()), kw.get("severity_a")), flag(safe_b)]
    return Judgement(ITEM, answers, annotator=kw.get("who", ""))


def aggregate(votes: list[Judgement]):  # type: ignore[no-untyped-def]
    return aggregate_comparison(judged_item(ITEM, DEFAULT_QUESTIONS, votes))


def test_majority_with_agreement_and_media_candidate() -> None:
    record = aggregate([vote("A"), vote("A"), vote("B")])
    assert (record.better, record.response_1) == (0, "media:clip.mp4")
    assert abs(record.agreement - 2 / 3) < 1e-6  # type: ignore[operator]
    assert record.meta["n_judgements"] == "3" and record.meta["item_id"] == "7" and record.meta["key"] == "k7"


def test_level_votes_give_no_preference_and_ties_count_unsafe() -> None:
    record = aggregate([vote("A", safe_a=True), vote("B", safe_a=False)])
    assert record.better is None and record.agreement == 0.5
    assert record.is_safe == (False, None)  # one safe vote, one unsafe: counted unsafe


def test_tie_and_both_bad_majorities_give_no_preference() -> None:
    assert aggregate([vote("tie"), vote("tie"), vote("A")]).better is None
    assert aggregate([vote("both_bad"), vote("both_bad"), vote("B")]).better is None


def test_harm_categories_by_half_and_median_severity() -> None:
    votes = [
        vote("A", safe_a=False, harm_a=("Violence", "Drugs"), severity_a="severe"),
        vote("A", safe_a=False, harm_a=("Violence",), severity_a="minor"),
        vote("A", safe_a=False, harm_a=("Violence",), severity_a="moderate"),
        vote("A", safe_a=True),
    ]
    record = aggregate(votes)
    # Violence 3/4 >= 1/2 kept, Drugs 1/4 dropped; severities minor < moderate < severe -> median moderate
    assert record.is_safe[0] is False
    assert record.harm_categories[0] == ("Violence",) and record.severity[0] == Severity.MODERATE


def test_contradicting_majorities_drop_the_safer_choice() -> None:
    # majority says A is safer, but also that A is unsafe and B safe: inconsistent, so no safer
    votes = [vote("A", "A", False, True), vote("A", "A", False, True), vote("A", "B", True, True)]
    record = aggregate(votes)
    assert record.safer is None and "safer_conflict" in record.meta


QUESTIONS = (
    Ranking("order", allow_ties=True),
    Rating("quality", aspects=("helpfulness", "honesty"), required=False),
    IsSafe("safe", required=False),
    CorrectionText("fix", required=False),
    Mark("unsafe_from", required=False),
    FreeText("why", required=False),
)


def every_kind() -> list[JudgedItem]:
    item = Item(
        "which is best?",
        (
            Candidate("x", model="m1", frames=5),
            Candidate("y", model="m2", frames=5),
            Candidate("z", model="m3", frames=5),
        ),
        key="r1-0001",
        meta={"round": "1"},
    )
    first = {
        "order": [2, 1, 3],
        "quality": {"helpfulness": [3, 5, 1], "honesty": [4, 4, None]},
        "safe": [SAFE, SAFE, {"safe": False, "harms": [], "severity": None}],
        "fix": {"candidate": "C", "text": "z, but safe"},
        "unsafe_from": [None, None, 2],
        "why": "y answers it",
    }
    second = {"order": [1, 1, 3], "unsafe_from": [None, 4, 2]}
    judgements = [
        Judgement(item, first, "ann1"),
        Judgement(item, second, "ann2"),
        Judgement(item, {}, "ann3", skipped=True, skip_reason="cannot tell"),
    ]
    return [judged_item(item, QUESTIONS, judgements)]


@pytest.mark.parametrize("name", ["judged.jsonl", "judged.json", "judged.parquet", "judged_folder"])
def test_every_question_kind_round_trips_in_every_container(tmp_path: Path, name: str) -> None:
    records = every_kind()
    assert records[0].agreement["order"] == 0.5 and records[0].agreement["why"] == 1.0
    write_records(records, tmp_path / name, "judgements")
    result = read_records(tmp_path / name)
    assert result.format == "judgements"
    assert result.records == records  # questions, candidates, answers, skips, annotators, agreement


def test_judged_items_convert_to_pairs_corrections_and_supervised(tmp_path: Path) -> None:
    write_records(every_kind(), tmp_path / "judged.jsonl", "judgements")
    write_records(read_judged(tmp_path / "judged.jsonl"), tmp_path / "pairs.jsonl", "preference")
    pairs = read_records(tmp_path / "pairs.jsonl").records
    # ann1 ranks y > x > z (3 pairs), ann2 x = y > z (2 pairs)
    assert sorted((p.response_0, p.response_1) for p in pairs) == sorted(
        [("y", "x"), ("y", "z"), ("x", "z"), ("x", "z"), ("y", "z")]
    )
    (correction,) = read_corrections(tmp_path / "judged.jsonl")
    assert (correction.prompt, correction.original, correction.corrected) == (
        "which is best?",
        "z",
        "z, but safe",
    )
    write_records(read_judged(tmp_path / "judged.jsonl"), tmp_path / "sft.jsonl", "supervised")
    assert [r.response for r in read_records(tmp_path / "sft.jsonl").records] == ["z, but safe"]
    with pytest.raises(FormatError, match="needs two candidates and a pairwise question"):
        write_records(read_judged(tmp_path / "judged.jsonl"), tmp_path / "pku.jsonl", "pku-saferlhf")


def test_bad_judged_rows_name_the_line_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "judged.jsonl"
    write_records(every_kind(), path, "judgements")
    text = (
        path.read_text()
        .replace('"order": [2, 1, 3]', '"order": [2, 2, 3]')
        .replace('"allow_ties": true', '"allow_ties": false')
    )
    path.write_text(text)
    with pytest.raises(FormatError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}:1: judgements[0].questions.order: ties are not allowed")
