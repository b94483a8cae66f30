"""Project statistics for admins: progress, per-annotator counts and gold accuracy (overall and per
question), agreement per question with the metric its kind calls for (Krippendorff's α: nominal
for choices and safe/unsafe flags, ordinal for ranks and ratings, interval for marks; Cohen's κ
between annotator pairs on the first pairwise question) and a Bradley-Terry model leaderboard fed
by pairwise answers and rankings (`feedback.pairs.leaderboard_battles`), with bootstrap
confidence intervals. The statistics themselves live in `alignloop.feedback`; this module
gathers the judgements from the database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback.agreement import Metric, krippendorff_alpha, pairwise_kappa
from alignloop.feedback.leaderboard import leaderboard as bradley_terry_leaderboard
from alignloop.feedback.pairs import leaderboard_battles
from alignloop.feedback.schema import (
    IsSafe,
    Judgement,
    Mark,
    Pairwise,
    Question,
    Ranking,
    SaferChoice,
)
from alignloop.feedback.schema import Rating as RatingQuestion
from alignloop.platform.crud import questions_of
from alignloop.platform.export import item_of
from alignloop.platform.models import Item, Project, User
from alignloop.platform.models import Judgement as JudgementRow


class Progress(BaseModel):
    items: int
    complete: int
    judgements: int
    skipped: int
    gold_items: int


class AnnotatorStats(BaseModel):
    id: int
    name: str
    judgements: int
    skipped: int
    gold_judged: int
    gold_correct: int
    gold_accuracy: float | None
    gold_by_question: dict[str, float | None]
    """Per question with gold answers: the share of this annotator's gold judgements that match."""


class PairKappa(BaseModel):
    annotator_a: str
    annotator_b: str
    shared_items: int
    kappa: float | None


class Agreement(BaseModel):
    question: str
    """The question (with the aspect for a rating: "quality.helpfulness")."""
    kind: str
    metric: str
    alpha: float | None
    units: int
    """Labels that could be compared: items (per candidate for per-candidate questions) with two or more."""


class Rating(BaseModel):
    model: str
    rating: float
    lower: float
    upper: float
    rank: int
    comparisons: int


class ProjectStats(BaseModel):
    progress: Progress
    annotators: list[AnnotatorStats]
    alpha: dict[str, float | None]
    agreement: list[Agreement]
    kappa: list[PairKappa]
    leaderboard: list[Rating]


def progress(session: Session, *, project: Project) -> Progress:
    counts = session.execute(
        select(
            func.count(Item.id).filter(~Item.is_gold),
            func.count(Item.id).filter(~Item.is_gold, Item.done >= project.overlap),
            func.count(Item.id).filter(Item.is_gold),
        ).where(Item.project_id == project.id)
    ).one()
    judged = session.execute(
        select(func.count(JudgementRow.id), func.count(JudgementRow.id).filter(JudgementRow.skipped)).where(
            JudgementRow.project_id == project.id
        )
    ).one()
    return Progress(
        items=counts[0], complete=counts[1], gold_items=counts[2], judgements=judged[0], skipped=judged[1]
    )


def gold_matches(gold: dict[str, Any], answers: dict[str, Any]) -> dict[str, bool]:
    """Per question the gold item answers: whether the judgement gave the same answer."""
    return {name: answers.get(name) == value for name, value in gold.items()}


# Per kind: the metric of its α, and the labels of one judgement: (unit within the item, label) pairs
Labeller = Callable[[Question, Any, Judgement], list[tuple[Any, Any]]]


def _whole(q: Question, answer: Any, j: Judgement) -> list[tuple[Any, Any]]:
    return [(None, answer)]


def _per_candidate(q: Question, answer: Any, j: Judgement) -> list[tuple[Any, Any]]:
    return [(i, v) for i, v in enumerate(answer)]


def _flags(q: Question, answer: Any, j: Judgement) -> list[tuple[Any, Any]]:
    return [(i, e["safe"]) for i, e in enumerate(answer) if e is not None]


def _marks(q: Question, answer: Any, j: Judgement) -> list[tuple[Any, Any]]:
    """A clip marked safe throughout counts as unsafe from its end (its frame count), where known."""
    out = []
    for i, frame in enumerate(answer):
        end = j.item.candidates[i].frames
        if frame is not None or end is not None:
            out.append((i, end if frame is None else frame))
    return out


AGREEMENT: dict[type[Question], tuple[Metric, Labeller]] = {
    Pairwise: ("nominal", _whole),
    SaferChoice: ("nominal", _whole),
    IsSafe: ("nominal", _flags),
    Ranking: ("ordinal", _per_candidate),
    Mark: ("interval", _marks),
}
"""How each kind's agreement is measured (ratings: ordinal, per aspect; free text and corrections: none)."""


def agreement(questions: Sequence[Question], labelled: list[tuple[Judgement, int, str]]) -> list[Agreement]:
    """Krippendorff's α of every question (per aspect for ratings) over the labelled judgements
    (judgement, item id, annotator name)."""
    annotators = sorted({name for _, _, name in labelled})
    column = {name: j for j, name in enumerate(annotators)}
    out = []
    for q in questions:
        dimensions: list[tuple[str, Metric, Labeller]] = []
        if isinstance(q, RatingQuestion):
            for aspect in q.aspects:
                labeller: Labeller = (lambda a: lambda q, ans, j: [(i, v) for i, v in enumerate(ans.get(a, [])) if v is not None])(aspect)  # fmt: skip
                dimensions.append((f"{q.name}.{aspect}", "ordinal", labeller))
        elif type(q) in AGREEMENT:
            metric, labeller = AGREEMENT[type(q)]
            dimensions.append((q.name, metric, labeller))
        for name, metric, labeller in dimensions:
            rows: dict[tuple[int, Any], list[Any]] = defaultdict(lambda: [None] * len(annotators))
            for judgement, item_id, annotator in labelled:
                answer = judgement.answers.get(q.name)
                if answer is None:
                    continue
                for unit, label in labeller(q, answer, judgement):
                    rows[(item_id, unit)][column[annotator]] = label
            table = list(rows.values())
            units = sum(sum(x is not None for x in row) >= 2 for row in table)
            alpha = _finite(krippendorff_alpha(table, metric)) if table else None
            out.append(Agreement(question=name, kind=q.kind, metric=metric, alpha=alpha, units=units))  # type: ignore[attr-defined]
    return out


def kappa_of(question: Question | None, labelled: list[tuple[Judgement, int, str]]) -> list[PairKappa]:
    """Cohen's κ on one choice question for each pair of annotators."""
    if question is None:
        return []
    annotators = sorted({name for _, _, name in labelled})
    column = {name: j for j, name in enumerate(annotators)}
    rows: dict[int, list[Any]] = defaultdict(lambda: [None] * len(annotators))
    for judgement, item_id, name in labelled:
        rows[item_id][column[name]] = judgement.answers.get(question.name)
    table = list(rows.values())
    return [
        PairKappa(
            annotator_a=annotators[i],
            annotator_b=annotators[j],
            shared_items=sum(row[i] is not None and row[j] is not None for row in table),
            kappa=_finite(value),
        )
        for (i, j), value in pairwise_kappa(table).items()
    ]


def project_stats(session: Session, *, project: Project) -> ProjectStats:
    questions = questions_of(project)
    rows = session.execute(
        select(JudgementRow, Item, User.name)
        .join(Item, Item.id == JudgementRow.item_id)
        .join(User, User.id == JudgementRow.annotator_id)
        .where(JudgementRow.project_id == project.id)
        .order_by(JudgementRow.id)
    ).all()
    per: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    names: dict[int, str] = {}
    labelled: list[tuple[Judgement, int, str]] = []
    items: dict[int, Any] = {}
    for row, item, name in rows:
        names[row.annotator_id] = name
        counts = per[row.annotator_id]
        counts["judgements"] += 1
        if row.skipped:
            counts["skipped"] += 1
            continue
        if item.is_gold:
            counts["gold_judged"] += 1
            matches = gold_matches(item.gold or {}, row.answers)
            counts["gold_correct"] += all(matches.values())
            for question, right in matches.items():
                counts[f"gold:{question}"] += 1
                counts[f"gold_right:{question}"] += right
        else:
            if item.id not in items:
                items[item.id] = item_of(item)
            labelled.append((Judgement(items[item.id], dict(row.answers), name), item.id, name))
    annotators = [
        AnnotatorStats(
            id=annotator_id,
            name=names[annotator_id],
            judgements=c["judgements"],
            skipped=c["skipped"],
            gold_judged=c["gold_judged"],
            gold_correct=c["gold_correct"],
            gold_accuracy=c["gold_correct"] / c["gold_judged"] if c["gold_judged"] else None,
            gold_by_question={
                q.name: c[f"gold_right:{q.name}"] / c[f"gold:{q.name}"]
                for q in questions
                if c.get(f"gold:{q.name}")
            },
        )
        for annotator_id, c in sorted(per.items())
    ]
    measured = agreement(questions, labelled)
    return ProjectStats(
        progress=progress(session, project=project),
        annotators=annotators,
        alpha={a.question: a.alpha for a in measured},
        agreement=measured,
        kappa=kappa_of(find_first_choice(questions), labelled),
        leaderboard=leaderboard(questions, [j for j, _, _ in labelled]),
    )


def find_first_choice(questions: Sequence[Question]) -> Question | None:
    return next((q for q in questions if isinstance(q, (Pairwise, SaferChoice))), None)


BOOTSTRAP_ROUNDS = 200


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def leaderboard(questions: Sequence[Question], judgements: list[Judgement]) -> list[Rating]:
    """Bradley-Terry ratings of the models behind the candidates (`feedback.pairs.leaderboard_battles`:
    pairwise answers, else every pair of a ranking; ties and "both bad" count half)."""
    battles = leaderboard_battles(judgements, questions, first_pairwise(questions))
    return [
        Rating(model=r.model, rating=r.rating, lower=r.lower, upper=r.upper, rank=r.rank, comparisons=r.games)
        for r in bradley_terry_leaderboard(battles, rounds=BOOTSTRAP_ROUNDS, seed=0)
    ]


def first_pairwise(questions: Sequence[Question]) -> str | None:
    """The pairwise question the leaderboard reads (the first), or None to read the ranking."""
    return next((q.name for q in questions if isinstance(q, Pairwise)), None) or next(
        (q.name for q in questions if isinstance(q, Ranking)), None
    )


def leaderboard_svg(ratings: list[Rating]) -> str:
    """The leaderboard as an SVG plot: each model's rating (a point) and its bootstrap interval
    (a line), drawn as they are, also where a rating lies outside its own interval (the bootstrap
    percentiles need not contain the full-data estimate); names are plain text, never mathtext."""
    shown = [r for r in ratings if all(math.isfinite(v) for v in (r.rating, r.lower, r.upper))]
    if not shown:
        return ""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 0.45 * len(shown) + 1.0))
    axes = figure.subplots()
    ordered = list(reversed(shown))
    y = list(range(len(ordered)))
    axes.hlines(y, [r.lower for r in ordered], [r.upper for r in ordered], linewidth=2)
    axes.plot([r.rating for r in ordered], y, "o")
    axes.set_yticks(y, [r.model for r in ordered], parse_math=False)
    axes.set_xlabel("Bradley-Terry rating (95% bootstrap interval)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    out = io.StringIO()
    figure.savefig(out, format="svg")
    svg = out.getvalue()
    return svg[svg.index("<svg") :]
