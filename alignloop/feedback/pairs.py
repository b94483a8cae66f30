"""Judgements -> what trainers consume. The one place where a tie, "both bad" or a skip is read.

**The rule** (every consumer goes through the functions below):

- *Preference* (`pairwise`): "A" or "B" gives one pair, winner over loser, for Bradley-Terry
  and DPO. A "tie" and "both bad" give no pair: neither says which is better. (The model
  leaderboard counts both as half a win each, `leaderboard_battles`.)
- *Safety* (`safer` and `is_safe` of two candidates): a pair needs both candidates' safe/unsafe
  flags. When they differ, the safe one is the safer (`ranked`: the Safe RLHF ranking term plus
  both sign terms), whatever `safer` says; when they agree, "A" or "B" ranks the pair, and a
  "tie" or no `safer` answer keeps only the two sign terms (`ranked` False). A "safer"
  candidate marked unsafe while the other is safe contradicts itself: `check_answers` refuses
  it at the door, and a record read from elsewhere raises `LabelError`.
- *Ranking* (k candidates, ranks 1 = best): every pair i < j with different ranks is one
  preference pair (k(k-1)/2 at most; equal ranks give none); `plackett_luce_order` gives the
  order best first (ties broken by candidate order). The reward model keeps a ranking whole
  (`preference_rankings`, for `core.losses.plackett_luce_loss`), where equal ranks again say
  nothing about the tied candidates' order.
- *Ratings*: one (candidate, aspect, score) per rated candidate; `rating_pairs` turns the
  scores of one aspect into preference pairs (higher over lower, equal scores give none).
  That is how ratings train a reward model (not as a regression on the score): the level of a
  score depends on the annotator (offset, how much of the scale they use), its order among
  the candidates of one judgement does not, and pairs keep Bradley-Terry's scale, so ratings
  and choices can train one model.
- *What a reward model learns from* (`preference_pairs`, `preference_rankings`): the
  project's `pairwise` question, else its `ranking`, else its `rating` (the named aspect, else
  the first): one source, so that an annotator's one opinion is not counted twice.
- *Corrections*: (prompt, original = the chosen candidate's text, corrected, which candidate).
- *Marks* (clips of H steps): per step 1 = unsafe, 0 = safe: steps from the marked frame on
  are unsafe, every step of a clip marked safe throughout is safe (`step_labels`); a frame is
  a step when clips show every step (`frame_stride` otherwise).
- A *skipped* judgement gives nothing, and an unanswered optional question gives nothing for
  that question.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignloop.feedback.schema import (
    CorrectionText,
    IsSafe,
    Judgement,
    LabelError,
    Mark,
    Pairwise,
    Question,
    Ranking,
    Rating,
    SaferChoice,
    check_safety_consistency,
    side_index,
)

# ---------------------------------------------------------------------------- the rule, on answers


def preference(choice: str | None) -> tuple[int, int] | None:
    """(winner, loser) indices of a pairwise answer; None for a tie, "both bad" or no answer."""
    if choice in ("A", "B"):
        winner = side_index(choice)
        return winner, 1 - winner
    return None


@dataclass(frozen=True)
class SafetyOrder:
    """Which of two candidates is safer, their flags, and whether the pair is ranked."""

    safer: int
    unsafer: int
    safer_is_safe: bool
    unsafer_is_safe: bool
    ranked: bool
    """False: a tie (or two alike without a "safer" answer): only the two sign terms count."""


def safety_order(choice: str | None, flags: Sequence[bool | None]) -> SafetyOrder | None:
    """The safety pair of a `safer` answer (or None) and the two `is_safe` flags; None when a
    flag is missing. Raises LabelError when the safer one is unsafe and the other safe."""
    if len(flags) != 2 or flags[0] is None or flags[1] is None:
        return None
    flag0, flag1 = bool(flags[0]), bool(flags[1])
    if choice in ("A", "B"):
        check_safety_consistency(side_index(choice), (flag0, flag1))
    if flag0 != flag1:  # one safe, one unsafe: the safe one is the safer, whatever else was said
        safer, ranked = (0 if flag0 else 1), True
    elif choice in ("A", "B"):
        safer, ranked = side_index(choice), True
    else:  # a tie, or no answer, between two alike
        safer, ranked = 0, False
    both = (flag0, flag1)
    return SafetyOrder(safer, 1 - safer, both[safer], both[1 - safer], ranked)


def ranked_pairs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Every (better, worse) pair implied by ranks (1 = best); equal ranks give none."""
    return [
        (i, j) if ranks[i] < ranks[j] else (j, i)
        for i in range(len(ranks))
        for j in range(i + 1, len(ranks))
        if ranks[i] != ranks[j]
    ]


def plackett_luce_order(ranks: Sequence[int]) -> list[int]:
    """Candidate indices best first (ties in candidate order)."""
    return sorted(range(len(ranks)), key=lambda i: (ranks[i], i))


def scored_pairs(scores: Sequence[int | None]) -> list[tuple[int, int]]:
    """Every (higher, lower) pair of scores; equal or missing scores give none."""
    return [
        (i, j) if a > b else (j, i)
        for i, a in enumerate(scores)
        for j, b in enumerate(scores)
        if i < j and a is not None and b is not None and a != b
    ]


def step_labels(mark: int | None, steps: int, frame_stride: int = 1) -> list[int]:
    """Per-step unsafe labels (1 unsafe) of a clip of `steps` steps marked at frame `mark` (None:
    safe throughout); frame f shows step f * frame_stride."""
    if mark is None:
        return [0] * steps
    first = min(steps, mark * frame_stride)
    return [0] * first + [1] * (steps - first)


# ---------------------------------------------------------------------------- judgements -> data


@dataclass(frozen=True)
class PreferencePair:
    """One preference: `chosen` over `rejected` (candidate indices into `judgement.item`)."""

    judgement: Judgement
    chosen: int
    rejected: int

    @property
    def prompt(self) -> str:
        return self.judgement.item.prompt

    @property
    def chosen_text(self) -> str:
        return self.judgement.item.text(self.chosen)

    @property
    def rejected_text(self) -> str:
        return self.judgement.item.text(self.rejected)


@dataclass(frozen=True)
class SafetyPair:
    """One pair for the Safe RLHF cost loss (see `SafetyOrder`)."""

    judgement: Judgement
    order: SafetyOrder


@dataclass(frozen=True)
class Score:
    judgement: Judgement
    candidate: int
    aspect: str
    score: int


@dataclass(frozen=True)
class CorrectionRecord:
    prompt: str
    original: str
    corrected: str
    candidate: int
    judgement: Judgement


@dataclass(frozen=True)
class Marked:
    judgement: Judgement
    candidate: int
    frame: int | None
    """The first unsafe frame; None: safe throughout."""


def find(questions: Sequence[Question], kind: type[Question], name: str | None = None) -> Question | None:
    """The project's question of `kind` (the one named `name`, or the only one); None if it has none."""
    found = [q for q in questions if isinstance(q, kind) and (name is None or q.name == name)]
    if len(found) > 1:
        names = ", ".join(q.name for q in found)
        raise LabelError("questions", f"several {kind.__name__} questions ({names}); name the one to use")
    return found[0] if found else None


def _answered(judgements: Iterable[Judgement], question: Question | None) -> Iterable[tuple[Judgement, Any]]:
    if question is None:
        return
    for j in judgements:
        if not j.skipped and j.answers.get(question.name) is not None:
            yield j, j.answers[question.name]


def preference_source(questions: Sequence[Question], name: str | None = None) -> Question | None:
    """The question preferences are read from: `pairwise`, else `ranking`, else `rating`."""
    for kind in (Pairwise, Ranking, Rating):
        question = find(questions, kind, name)
        if question is not None:
            return question
    return None


def _aspect(question: Question, aspect: str | None) -> str:
    assert isinstance(question, Rating)
    if aspect is None:
        return question.aspects[0]
    if aspect not in question.aspects:
        raise LabelError(question.where, f"rates {list(question.aspects)}, not {aspect!r}")
    return aspect


def preference_pairs(
    judgements: Iterable[Judgement],
    questions: Sequence[Question],
    name: str | None = None,
    *,
    aspect: str | None = None,
) -> list[PreferencePair]:
    """Pairs from the `pairwise` question (ties and "both bad" give none) or, where the project
    has none, from its `ranking` (every implied pair) or else its `rating` (`rating_pairs` of
    `aspect`, by default the question's first)."""
    source = preference_source(questions, name)
    if isinstance(source, Pairwise):
        return [
            PreferencePair(j, *order)
            for j, choice in _answered(judgements, source)
            if (order := preference(choice)) is not None
        ]
    if isinstance(source, Ranking):
        return ranking_pairs(judgements, questions, source.name)
    if isinstance(source, Rating):
        return rating_pairs(judgements, questions, _aspect(source, aspect), source.name)
    return []


@dataclass(frozen=True)
class RankedCandidates:
    """Responses to one prompt with their ranks (1 = best, equal ranks: a tie), what a
    Plackett-Luce loss reads; a preference pair is a ranking of two."""

    prompt: str
    texts: tuple[str, ...]
    ranks: tuple[int, ...]
    judgement: Judgement | None = field(default=None, compare=False)
    """The judgement it comes from (None for a record of a two-response file)."""


def ranked_pair(
    prompt: str, chosen: str, rejected: str, judgement: Judgement | None = None
) -> RankedCandidates:
    return RankedCandidates(prompt, (chosen, rejected), (1, 2), judgement)


def preference_rankings(
    judgements: Iterable[Judgement],
    questions: Sequence[Question],
    name: str | None = None,
    *,
    aspect: str | None = None,
) -> list[RankedCandidates]:
    """What a reward model learns from, by the source of `preference_pairs`: each ranking whole
    (ties kept as equal ranks), else each preference pair as a ranking of two (winner 1, loser 2)."""
    source = preference_source(questions, name)
    if isinstance(source, Ranking):
        return [
            RankedCandidates(j.item.prompt, tuple(map(j.item.text, range(len(ranks)))), tuple(ranks), j)
            for j, ranks in _answered(judgements, source)
            if len(set(ranks)) > 1  # all tied: nothing is said
        ]
    return [
        ranked_pair(p.prompt, p.chosen_text, p.rejected_text, p.judgement)
        for p in preference_pairs(judgements, questions, name, aspect=aspect)
    ]


def ranking_pairs(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[PreferencePair]:
    """Every pair implied by the `ranking` answers."""
    return [
        PreferencePair(j, better, worse)
        for j, ranks in _answered(judgements, find(questions, Ranking, name))
        for better, worse in ranked_pairs(ranks)
    ]


def rankings(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[tuple[Judgement, list[int]]]:
    """(judgement, candidate indices best first) of each ranking, for a Plackett-Luce loss."""
    return [
        (j, plackett_luce_order(ranks)) for j, ranks in _answered(judgements, find(questions, Ranking, name))
    ]


def safety_pairs(
    judgements: Iterable[Judgement],
    questions: Sequence[Question],
    *,
    safer: str | None = None,
    is_safe: str | None = None,
) -> list[SafetyPair]:
    """Safety pairs of two-candidate judgements (see the rule); ties keep their sign terms."""
    flags_q, safer_q = find(questions, IsSafe, is_safe), find(questions, SaferChoice, safer)
    out = []
    for j, entries in _answered(judgements, flags_q):
        if len(j.item.candidates) != 2:
            continue
        flags = [None if e is None else e["safe"] for e in entries]
        choice = None if safer_q is None else j.answers.get(safer_q.name)
        order = safety_order(choice, flags)
        if order is not None:
            out.append(SafetyPair(j, order))
    return out


def safety_labels(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[tuple[Judgement, int, bool]]:
    """(judgement, candidate, safe) for every candidate judged safe or unsafe."""
    return [
        (j, i, bool(e["safe"]))
        for j, entries in _answered(judgements, find(questions, IsSafe, name))
        for i, e in enumerate(entries)
        if e is not None
    ]


def ratings(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[Score]:
    """One score per rated candidate and aspect."""
    return [
        Score(j, i, aspect, score)
        for j, by_aspect in _answered(judgements, find(questions, Rating, name))
        for aspect, scores in by_aspect.items()
        for i, score in enumerate(scores)
        if score is not None
    ]


def rating_pairs(
    judgements: Iterable[Judgement], questions: Sequence[Question], aspect: str, name: str | None = None
) -> list[PreferencePair]:
    """Preference pairs from one aspect's scores (higher over lower; equal scores give none)."""
    return [
        PreferencePair(j, high, low)
        for j, by_aspect in _answered(judgements, find(questions, Rating, name))
        for high, low in scored_pairs(by_aspect.get(aspect) or [])
    ]


def corrections(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[CorrectionRecord]:
    """(prompt, original, corrected, candidate) of every correction."""
    out = []
    for j, answer in _answered(judgements, find(questions, CorrectionText, name)):
        index = side_index(answer["candidate"])
        out.append(CorrectionRecord(j.item.prompt, j.item.text(index), answer["text"], index, j))
    return out


def marks(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[Marked]:
    """The mark of every clip of every judgement that answered the `mark` question."""
    return [
        Marked(j, i, frame)
        for j, frames in _answered(judgements, find(questions, Mark, name))
        for i, frame in enumerate(frames)
    ]


def leaderboard_battles(
    judgements: Iterable[Judgement], questions: Sequence[Question], name: str | None = None
) -> list[tuple[str, str, str]]:
    """(model_a, model_b, "a" | "b" | "tie") for the Bradley-Terry leaderboard: pairwise answers
    (tie and both bad count half each) and, where there is no pairwise question, every pair of a
    ranking (equal ranks count half). Candidates of one model against itself are left out."""
    judgements = list(judgements)
    battles: list[tuple[str, str, str]] = []
    pairwise = find(questions, Pairwise, name)

    def add(j: Judgement, i: int, k: int, outcome: str) -> None:
        a, b = j.item.candidates[i].model, j.item.candidates[k].model
        if a and b and a != b:
            battles.append((a, b, outcome))

    if pairwise is not None:
        for j, choice in _answered(judgements, pairwise):
            add(j, 0, 1, {"A": "a", "B": "b"}.get(str(choice), "tie"))
        return battles
    for j, ranks in _answered(judgements, find(questions, Ranking, name)):
        for i in range(len(ranks)):
            for k in range(i + 1, len(ranks)):
                ri, rk = ranks[i], ranks[k]
                add(j, i, k, "a" if ri < rk else "b" if rk < ri else "tie")
    return battles
