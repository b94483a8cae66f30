"""The rule for ties, "both bad" and skips, written once in `feedback.pairs`, on hand-made cases."""

from __future__ import annotations

import pytest

from alignloop.feedback import pairs
from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    Candidate,
    CorrectionText,
    IsSafe,
    Item,
    Judgement,
    LabelError,
    Mark,
    Ranking,
    Rating,
)


def judged(answers: dict, n: int = 2, *, skipped: bool = False, models: str = "") -> Judgement:
    candidates = tuple(Candidate(f"r{i}", model=models[i] if models else "") for i in range(n))
    return Judgement(Item("p", candidates), answers, annotator="ann", skipped=skipped)


@pytest.mark.parametrize(
    ("better", "pair"), [("A", (0, 1)), ("B", (1, 0)), ("tie", None), ("both_bad", None), (None, None)]
)
def test_a_preference_pair_only_from_a_choice(better: str | None, pair: tuple[int, int] | None) -> None:
    assert pairs.preference(better) == pair
    found = pairs.preference_pairs([judged({"better": better})], DEFAULT_QUESTIONS)
    assert [(p.chosen, p.rejected) for p in found] == ([pair] if pair else [])
    if pair:
        assert (found[0].chosen_text, found[0].rejected_text) == (f"r{pair[0]}", f"r{pair[1]}")


def test_skipped_judgements_give_nothing() -> None:
    j = judged({"better": "A", "is_safe": [{"safe": True}, {"safe": False}]}, skipped=True)
    assert pairs.preference_pairs([j], DEFAULT_QUESTIONS) == []
    assert pairs.safety_pairs([j], DEFAULT_QUESTIONS) == []


@pytest.mark.parametrize(
    ("safer", "flags", "expected"),
    [
        # (safer, unsafer, safer_is_safe, unsafer_is_safe, ranked)
        ("A", (True, False), (0, 1, True, False, True)),
        ("B", (False, False), (1, 0, False, False, True)),  # both unsafe, B less so
        ("tie", (True, True), (0, 1, True, True, False)),  # a tie keeps its two sign terms
        ("tie", (True, False), (0, 1, True, False, True)),  # flags differ: the safe one is safer
        ("tie", (False, True), (1, 0, True, False, True)),
        (None, (False, True), (1, 0, True, False, True)),  # no answer, flags differ: implied
        (None, (True, True), (0, 1, True, True, False)),  # no answer, flags agree: signs only
    ],
)
def test_safety_pairs_keep_the_sign_terms_of_ties(safer: str | None, flags: tuple, expected: tuple) -> None:
    order = pairs.safety_order(safer, flags)
    assert order is not None
    assert (order.safer, order.unsafer, order.safer_is_safe, order.unsafer_is_safe, order.ranked) == expected
    answers = {"better": "tie", "is_safe": [{"safe": f} for f in flags]}
    if safer is not None:
        answers["safer"] = safer
    (found,) = pairs.safety_pairs([judged(answers)], DEFAULT_QUESTIONS)
    assert found.order == order


def test_safety_needs_both_flags_and_refuses_a_contradiction() -> None:
    assert pairs.safety_order("A", (True, None)) is None
    assert pairs.safety_pairs([judged({"better": "A", "safer": "A"})], DEFAULT_QUESTIONS) == []
    with pytest.raises(LabelError, match="marked safer but is unsafe"):
        pairs.safety_order("A", (False, True))


def test_a_ranking_gives_every_implied_pair_and_a_plackett_luce_order() -> None:
    questions = (Ranking("order", allow_ties=True),)
    # ranks: A 2nd, B 1st, C 2nd (tied with A), D 4th
    j = judged({"order": [2, 1, 2, 4]}, n=4)
    found = {(p.chosen, p.rejected) for p in pairs.preference_pairs([j], questions)}
    assert found == {(1, 0), (1, 2), (1, 3), (0, 3), (2, 3)}  # 6 pairs less the tie A = C
    assert pairs.rankings([j], questions) == [(j, [1, 0, 2, 3])]
    strict = judged({"order": [3, 1, 2]}, n=3)
    assert len(pairs.ranking_pairs([strict], (Ranking("order"),))) == 3  # k(k-1)/2


def test_ratings_per_candidate_and_aspect_and_as_pairs() -> None:
    questions = (Rating("q", aspects=("helpfulness", "honesty"), required=False),)
    j = judged({"q": {"helpfulness": [5, 2, None], "honesty": [3, 3, 4]}}, n=3)
    scores = [(s.candidate, s.aspect, s.score) for s in pairs.ratings([j], questions)]
    assert scores == [
        (0, "helpfulness", 5),
        (1, "helpfulness", 2),
        (0, "honesty", 3),
        (1, "honesty", 3),
        (2, "honesty", 4),
    ]
    assert [(p.chosen, p.rejected) for p in pairs.rating_pairs([j], questions, "helpfulness")] == [(0, 1)]
    assert {(p.chosen, p.rejected) for p in pairs.rating_pairs([j], questions, "honesty")} == {(2, 0), (2, 1)}


def test_corrections_say_which_candidate_they_rewrite() -> None:
    questions = (CorrectionText("fix"),)
    (c,) = pairs.corrections([judged({"fix": {"candidate": "B", "text": "better"}})], questions)
    assert (c.prompt, c.original, c.corrected, c.candidate) == ("p", "r1", "better", 1)


def test_marks_become_per_step_labels() -> None:
    assert pairs.step_labels(3, 6) == [0, 0, 0, 1, 1, 1]  # unsafe from the marked frame on
    assert pairs.step_labels(None, 4) == [0, 0, 0, 0]  # safe throughout
    assert pairs.step_labels(0, 3) == [1, 1, 1]
    assert pairs.step_labels(2, 10, frame_stride=3) == [0] * 6 + [1] * 4  # frame 2 shows step 6
    assert pairs.step_labels(9, 5) == [0] * 5  # a mark past the end labels nothing unsafe
    j = judged({"m": [2, None]})
    assert [(m.candidate, m.frame) for m in pairs.marks([j], (Mark("m"),))] == [(0, 2), (1, None)]


def test_leaderboard_counts_ties_and_both_bad_half_and_reads_rankings() -> None:
    js = [judged({"better": b}, models="xy") for b in ("A", "B", "tie", "both_bad")]
    assert pairs.leaderboard_battles(js, DEFAULT_QUESTIONS) == [
        ("x", "y", "a"),
        ("x", "y", "b"),
        ("x", "y", "tie"),
        ("x", "y", "tie"),
    ]
    ranked = judged({"r": [2, 1, 2]}, n=3, models="xyz")
    assert pairs.leaderboard_battles([ranked], (Ranking("r", allow_ties=True),)) == [
        ("x", "y", "b"),
        ("x", "z", "tie"),
        ("y", "z", "a"),
    ]


def test_which_question_is_read_when_a_project_has_several() -> None:
    questions = (IsSafe("safe_now"), IsSafe("safe_later"))
    with pytest.raises(LabelError, match="several IsSafe questions"):
        pairs.safety_labels([], questions)
    j = judged(
        {"safe_now": [{"safe": True}, {"safe": False}], "safe_later": [{"safe": False}, {"safe": False}]}
    )
    assert [s for _, _, s in pairs.safety_labels([j], questions, "safe_later")] == [False, False]


def test_a_reward_model_reads_one_source_rankings_whole_and_ratings_as_pairs() -> None:
    # pairwise first: a choice is a ranking of two, a tie or both bad gives nothing
    js = [judged({"better": b}) for b in ("B", "tie", "both_bad")]
    found = pairs.preference_rankings(js, DEFAULT_QUESTIONS)
    assert [(r.prompt, r.texts, r.ranks) for r in found] == [("p", ("r1", "r0"), (1, 2))]
    assert found[0].judgement is js[0]
    # a ranking stays whole, ties kept as equal ranks; all tied says nothing
    ranking = (Ranking("order", allow_ties=True), Rating("q"))
    js = [judged({"order": [2, 1, 2, 4], "q": {"overall": [1, 2, 3, 4]}}, n=4), judged({"order": [1, 1]})]
    (whole,) = pairs.preference_rankings(js, ranking)
    assert (whole.texts, whole.ranks) == (("r0", "r1", "r2", "r3"), (2, 1, 2, 4))  # not the rating too
    # ratings alone: pairs of the first aspect (or the one named), higher over lower, ties none
    rating = (Rating("q", aspects=("helpfulness", "honesty")),)
    j = judged({"q": {"helpfulness": [2, 5, 2], "honesty": [1, 1, 3]}}, n=3)
    assert {r.texts for r in pairs.preference_rankings([j], rating)} == {("r1", "r0"), ("r1", "r2")}
    assert {(p.chosen, p.rejected) for p in pairs.preference_pairs([j], rating, aspect="honesty")} == {
        (2, 0),
        (2, 1),
    }
    with pytest.raises(LabelError, match="rates \\['helpfulness', 'honesty'\\], not 'style'"):
        pairs.preference_pairs([j], rating, aspect="style")
    assert pairs.preference_rankings([j], (IsSafe("s"),)) == []  # nothing to prefer by
