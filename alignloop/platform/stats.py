"""Project statistics for admins: progress, per-annotator counts and gold accuracy, agreement
(Krippendorff's α per dimension, Cohen's κ between annotator pairs) and a Bradley-Terry model
leaderboard with bootstrap confidence intervals. The statistics themselves live in
`alignloop.feedback`; this module only gathers the judgements from the database.
"""

from __future__ import annotations

import math
from collections import defaultdict

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback.agreement import krippendorff_alpha, pairwise_kappa
from alignloop.feedback.leaderboard import leaderboard as bradley_terry_leaderboard
from alignloop.platform.models import Item, Judgement, Project, User


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


class PairKappa(BaseModel):
    annotator_a: str
    annotator_b: str
    shared_items: int
    kappa: float | None


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
        select(func.count(Judgement.id), func.count(Judgement.id).filter(Judgement.skipped)).where(
            Judgement.project_id == project.id
        )
    ).one()
    return Progress(
        items=counts[0], complete=counts[1], gold_items=counts[2], judgements=judged[0], skipped=judged[1]
    )


def gold_correct(item: Item, judgement: Judgement) -> bool:
    """A gold judgement is correct when it matches every gold answer the item has."""
    if item.gold_better is not None and judgement.better != item.gold_better:
        return False
    return item.gold_safer is None or judgement.safer == item.gold_safer


def project_stats(session: Session, *, project: Project) -> ProjectStats:
    rows = session.execute(
        select(Judgement, Item, User.name)
        .join(Item, Item.id == Judgement.item_id)
        .join(User, User.id == Judgement.annotator_id)
        .where(Judgement.project_id == project.id)
        .order_by(Judgement.id)
    ).all()
    per: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    names: dict[int, str] = {}
    labelled: list[tuple[Judgement, Item, str]] = []
    for judgement, item, name in rows:
        names[judgement.annotator_id] = name
        counts = per[judgement.annotator_id]
        counts["judgements"] += 1
        if judgement.skipped:
            counts["skipped"] += 1
            continue
        if item.is_gold:
            counts["gold_judged"] += 1
            counts["gold_correct"] += gold_correct(item, judgement)
        else:
            labelled.append((judgement, item, name))
    annotators = [
        AnnotatorStats(
            id=annotator_id,
            name=names[annotator_id],
            judgements=c["judgements"],
            skipped=c["skipped"],
            gold_judged=c["gold_judged"],
            gold_correct=c["gold_correct"],
            gold_accuracy=c["gold_correct"] / c["gold_judged"] if c["gold_judged"] else None,
        )
        for annotator_id, c in sorted(per.items())
    ]
    alpha, kappa = agreement(labelled)
    return ProjectStats(
        progress=progress(session, project=project),
        annotators=annotators,
        alpha=alpha,
        kappa=kappa,
        leaderboard=leaderboard(labelled),
    )


DIMENSIONS = ("better", "safer", "safe_a", "safe_b")
WINNER = {"A": "a", "B": "b", "tie": "tie", "both_bad": "tie"}
BOOTSTRAP_ROUNDS = 200


def agreement(labelled: list[tuple[Judgement, Item, str]]) -> tuple[dict[str, float | None], list[PairKappa]]:
    """Krippendorff's α per dimension (nominal) and Cohen's κ on `better` for each annotator pair."""
    annotators = sorted({name for _, _, name in labelled})
    column = {name: j for j, name in enumerate(annotators)}
    rows: dict[int, dict[str, list[object]]] = defaultdict(
        lambda: {d: [None] * len(annotators) for d in DIMENSIONS}
    )  # item -> dimension -> one label per annotator
    for judgement, item, name in labelled:
        for dimension in DIMENSIONS:
            rows[item.id][dimension][column[name]] = getattr(judgement, dimension)
    alpha = {
        d: _finite(krippendorff_alpha([row[d] for row in rows.values()])) if rows else None
        for d in DIMENSIONS
    }
    kappa = [
        PairKappa(
            annotator_a=annotators[i],
            annotator_b=annotators[j],
            shared_items=sum(
                row["better"][i] is not None and row["better"][j] is not None for row in rows.values()
            ),
            kappa=_finite(value),
        )
        for (i, j), value in pairwise_kappa([row["better"] for row in rows.values()]).items()
    ]
    return alpha, kappa


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def leaderboard(labelled: list[tuple[Judgement, Item, str]]) -> list[Rating]:
    """Bradley-Terry ratings of the models behind the candidates; ties and "both bad" count half."""
    battles = [
        (item.model_a, item.model_b, WINNER[judgement.better])
        for judgement, item, _ in labelled
        if judgement.better in WINNER and item.model_a and item.model_b and item.model_a != item.model_b
    ]
    return [
        Rating(model=r.model, rating=r.rating, lower=r.lower, upper=r.upper, rank=r.rank, comparisons=r.games)
        for r in bradley_terry_leaderboard(battles, rounds=BOOTSTRAP_ROUNDS, seed=0)
    ]


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
