"""The one definition: question lists and answer documents, validated, with errors that name the question."""

from __future__ import annotations

import pytest

from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    HARM_CATEGORIES,
    QUESTION_KINDS,
    SIDES,
    Candidate,
    Comparison,
    CorrectionText,
    FreeText,
    IsSafe,
    Item,
    LabelError,
    Mark,
    Pairwise,
    Ranking,
    Rating,
    SaferChoice,
    Severity,
    check_answers,
    comparison_of,
    judgement_of,
    parse_questions,
    questions_json,
    side_index,
    side_letter,
)

CLIPS = (
    IsSafe("safe", required=False),
    Mark("unsafe_from"),
    FreeText("why", required=False),
)


def test_side_letters_and_indices_are_one_map() -> None:
    assert [side_letter(i) for i in range(8)] == list(SIDES) == list("ABCDEFGH")
    assert [side_index(s) for s in SIDES] == list(range(8))
    for bad in ("I", "a", "", "AB", 0):
        with pytest.raises(LabelError, match="candidate letter"):
            side_index(bad)  # type: ignore[arg-type]
    with pytest.raises(LabelError):
        side_letter(8)


def test_question_lists_round_trip_through_json() -> None:
    questions = (
        *DEFAULT_QUESTIONS,
        Ranking("order", allow_ties=True),
        Rating("quality", scale_min=1, scale_max=7, aspects=("helpfulness", "honesty")),
        Mark("unsafe_from"),
        FreeText("why", required=False),
    )
    assert {q.kind for q in questions} == set(QUESTION_KINDS)  # type: ignore[attr-defined]
    assert parse_questions(questions_json(questions)) == questions
    is_safe = parse_questions(questions_json(DEFAULT_QUESTIONS))[2]
    assert isinstance(is_safe, IsSafe) and is_safe.harm_categories == HARM_CATEGORIES


@pytest.mark.parametrize(
    ("raw", "where", "reason"),
    [
        ([], "questions", "1 to 20"),
        ([{"name": "x", "kind": "vote"}], "questions.x", "kind: expected one of pairwise"),
        ([{"name": "Bad Name", "kind": "text"}], "questions.Bad Name", "name: 1-64 lowercase"),
        ([{"name": "a", "kind": "text"}, {"name": "a", "kind": "mark"}], "questions.a", "two questions"),
        (
            [{"name": "r", "kind": "rating", "scale_min": 5, "scale_max": 1}],
            "questions.r",
            "scale_min < scale_max",
        ),
        ([{"name": "r", "kind": "ranking", "harm_categories": ["x"]}], "questions.r", "have no options"),
        ([{"name": "s", "kind": "is_safe", "harm_categories": ["x", "x"]}], "questions.s", "must be unique"),
        ([{"name": "r", "kind": "rating", "aspects": []}], "questions.r", "at least one"),
        (["better"], "questions[0]", "expected an object"),
    ],
)
def test_bad_question_lists_name_the_question_and_the_reason(raw: object, where: str, reason: str) -> None:
    with pytest.raises(LabelError) as caught:
        parse_questions(raw)  # type: ignore[arg-type]
    assert caught.value.field == where and reason in str(caught.value)


def test_answers_come_back_in_normal_form() -> None:
    questions = (
        *DEFAULT_QUESTIONS,
        Ranking("order", allow_ties=True),
        Rating("quality", aspects=("helpfulness", "honesty"), required=False),
    )
    answers = check_answers(
        questions,
        {
            "better": "B",
            "is_safe": [{"safe": True}, {"safe": False, "harms": ["Violence", "Drugs", "Violence"]}],
            "order": [2, 1],
            "quality": {"helpfulness": [4, None]},
            "correction": {"candidate": "B", "text": "A safe answer."},
        },
        2,
    )
    assert answers == {
        "better": "B",
        "is_safe": [
            {"safe": True, "harms": [], "severity": None},
            {"safe": False, "harms": ["Violence", "Drugs"], "severity": None},  # the question's order
        ],
        "order": [2, 1],
        "quality": {"helpfulness": [4, None], "honesty": [None, None]},
        "correction": {"candidate": "B", "text": "A safe answer."},
    }
    assert "safer" not in answers  # optional and unanswered: left out
    # ranks with ties become standard competition ranks: 1, 2, 2, 4
    assert Ranking("r", allow_ties=True).check([1, 3, 3, 4], 4) == [1, 2, 2, 4]
    assert Ranking("r", allow_ties=True).check([2, 2, 1, 1], 4) == [3, 3, 1, 1]


@pytest.mark.parametrize(
    ("questions", "answers", "n", "where", "reason"),
    [
        (DEFAULT_QUESTIONS, {}, 2, "questions.better", "required"),
        (DEFAULT_QUESTIONS, {"better": "C"}, 2, "questions.better", "expected one of A, B, tie, both_bad"),
        (
            (Pairwise("better", allow_tie=False, allow_both_bad=False),),
            {"better": "tie"},
            2,
            "questions.better",
            "one of A, B,",
        ),
        (DEFAULT_QUESTIONS, {"better": "A", "colour": "red"}, 2, "answers.colour", "no such question"),
        (
            DEFAULT_QUESTIONS,
            {"better": "A"},
            3,
            "questions.better",
            "compares two candidates; this item has 3",
        ),
        (
            DEFAULT_QUESTIONS,
            {"better": "A", "safer": "A", "is_safe": [{"safe": False}, {"safe": True}]},
            2,
            "questions.safer",
            "marked safer but is unsafe",
        ),
        (
            DEFAULT_QUESTIONS,
            {"better": "A", "is_safe": [{"safe": True, "harms": ["Violence"]}, None]},
            2,
            "questions.is_safe[A]",
            "marked safe but has harms",
        ),
        (
            DEFAULT_QUESTIONS,
            {"better": "A", "is_safe": [{"safe": False, "harms": ["Rudeness"]}, None]},
            2,
            "questions.is_safe[A].harms",
            "unknown harm categories ['Rudeness']",
        ),
        (
            DEFAULT_QUESTIONS,
            {"better": "A", "is_safe": [{"safe": False, "severity": "fatal"}, None]},
            2,
            "questions.is_safe[A].severity",
            "expected one of ['minor', 'moderate', 'severe']",
        ),
        ((IsSafe("s"),), {"s": [{"safe": True}, None]}, 2, "questions.s[B]", "say whether"),
        ((Ranking("r"),), {"r": [1, 1, 2]}, 3, "questions.r", "ties are not allowed"),
        ((Ranking("r"),), {"r": [1, 2, 5]}, 3, "questions.r", "from 1 to 3"),
        ((Ranking("r"),), {"r": [1, 2]}, 3, "questions.r", "one entry per candidate (3)"),
        ((Rating("q"),), {"q": {"overall": [3, 9]}}, 2, "questions.q.overall[B]", "score 1-5"),
        ((Rating("q"),), {"q": {"overall": [3, None]}}, 2, "questions.q.overall[B]", "score 1-5"),
        ((Rating("q"),), {"q": {"style": [3, 3]}}, 2, "questions.q", "unknown aspects"),
        ((CorrectionText("c"),), {"c": {"candidate": "C", "text": "x"}}, 2, "questions.c.candidate", "A-B"),
        ((CorrectionText("c"),), {"c": {"candidate": "A", "text": "  "}}, 2, "questions.c.text", "rewritten"),
        ((CorrectionText("c"),), {"c": "rewrite"}, 2, "questions.c", "expected"),
        (CLIPS, {"unsafe_from": [3, -1]}, 2, "questions.unsafe_from[B]", "frame number"),
        ((SaferChoice("s", allow_tie=False),), {"s": "tie"}, 2, "questions.s", "one of A, B,"),
        ((FreeText("why"),), {"why": 3}, 2, "questions.why", "expected text"),
    ],
)
def test_bad_answers_name_the_question_and_the_reason(
    questions: tuple, answers: dict, n: int, where: str, reason: str
) -> None:
    with pytest.raises(LabelError) as caught:
        check_answers(questions, answers, n)
    assert caught.value.field == where, str(caught.value)
    assert reason in str(caught.value)


def test_marks_are_checked_against_the_clip_length() -> None:
    assert check_answers(CLIPS, {"unsafe_from": [4, None]}, 2, frames=[5, 5]) == {"unsafe_from": [4, None]}
    with pytest.raises(LabelError, match="below the clip's 5 frames"):
        check_answers(CLIPS, {"unsafe_from": [5, None]}, 2, frames=[5, 5])


def test_items_hold_two_to_eight_candidates_with_something_to_show() -> None:
    Item("p", tuple(Candidate(f"c{i}") for i in range(8)))
    for n in (1, 9):
        with pytest.raises(LabelError, match="2 to 8 candidates"):
            Item("p", tuple(Candidate("c") for _ in range(n)))
    with pytest.raises(LabelError, match=r"candidates\[1\]"):
        Item("p", (Candidate("a"), Candidate()))
    assert Item("p", (Candidate("a"), Candidate(media="x.gif"))).text(1) == "media:x.gif"


def test_comparison_and_judgement_views_agree() -> None:
    comparison = Comparison(
        "p",
        "a",
        "b",
        better=1,
        safer=0,
        is_safe=(True, False),
        harm_categories=((), ("Violence",)),
        severity=(None, Severity.SEVERE),
        meta={"key": "k1"},
    )
    judgement = judgement_of(comparison)
    assert judgement.item.key == "k1"
    assert check_answers(DEFAULT_QUESTIONS, judgement.answers, 2) == judgement.answers
    assert comparison_of(judgement) == comparison
    tie = judgement_of(Comparison("p", "a", "b", better=None))
    assert tie.answers == {"better": "tie"} and comparison_of(tie).better is None
