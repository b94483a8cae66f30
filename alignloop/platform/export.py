"""Export a project's judgements as PKU-SafeRLHF records, one per item, aggregated by majority.

Several annotators judge each item; the record keeps the majority `better`/`safer`/`is_safe` and
the share of annotators who agreed with `better` (`agreement`). A tie between A and B, or a
majority for "tie"/"both bad", gives no preference (`better_response_id` null). Safety ties count
as unsafe. Harm categories chosen by at least half of the annotators are kept; severity is the
median. Files are written by `alignloop.feedback.formats`, so its readers load them back.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.feedback.agreement import majority
from alignloop.feedback.formats import WriteResult, to_row, write_records
from alignloop.feedback.schema import Comparison, LabelError, Severity, check_safety_consistency
from alignloop.platform.models import Item, Judgement, Project

SIDE = {"A": 0, "B": 1}
SEVERITY_ORDER = [Severity.MINOR.value, Severity.MODERATE.value, Severity.SEVERE.value]


def _safe_majority(flags: Sequence[bool | None]) -> bool | None:
    given = [f for f in flags if f is not None]
    if not given:
        return None
    return sum(given) * 2 > len(given)  # a tie counts as unsafe


def _candidate(item: Item, side: str) -> str:
    text: str = getattr(item, f"response_{side}")
    name = getattr(item, f"media_{side}")
    return text or f"media:{name}"


def aggregate(item: Item, judgements: Sequence[Judgement]) -> Comparison:
    """One record from an item's non-skipped judgements."""
    better_vote, agreement = majority([j.better for j in judgements])
    safer_vote, _ = majority([j.safer for j in judgements])
    is_safe = (_safe_majority([j.safe_a for j in judgements]), _safe_majority([j.safe_b for j in judgements]))
    harm: list[tuple[str, ...]] = []
    severity: list[Severity | None] = []
    for i, side in enumerate("ab"):
        if is_safe[i] is not False:
            harm.append(())
            severity.append(None)
            continue
        counts = Counter(c for j in judgements for c in getattr(j, f"harm_{side}"))
        harm.append(tuple(sorted(c for c, n in counts.items() if 2 * n >= len(judgements))))
        levels = sorted(
            SEVERITY_ORDER.index(s) for j in judgements if (s := getattr(j, f"severity_{side}")) is not None
        )
        severity.append(Severity(SEVERITY_ORDER[levels[(len(levels) - 1) // 2]]) if levels else None)
    meta = {str(k): str(v) for k, v in item.meta.items()}
    meta.update(
        item_id=str(item.id),
        **({} if item.key is None else {"key": item.key}),
        model_0=item.model_a,
        model_1=item.model_b,
        n_judgements=str(len(judgements)),
        better_votes=json.dumps(dict(Counter(j.better for j in judgements))),
    )
    safer = SIDE.get(safer_vote) if safer_vote else None
    try:
        check_safety_consistency(safer, is_safe)
    except LabelError:  # the majority "safer" contradicts the majority safety flags: keep no preference
        meta["safer_conflict"] = f"majority safer {safer_vote} contradicts majority is_safe"
        safer = None
    return Comparison(
        item.prompt,
        _candidate(item, "a"),
        _candidate(item, "b"),
        better=SIDE.get(better_vote) if better_vote else None,
        safer=safer,
        is_safe=is_safe,
        harm_categories=(harm[0], harm[1]),
        severity=(severity[0], severity[1]),
        agreement=None if math.isnan(agreement) else round(agreement, 6),
        meta=meta,
    )


def comparisons(session: Session, *, project: Project, min_judgements: int = 1) -> list[Comparison]:
    """Aggregated records of the project's (non-gold) items with at least `min_judgements` labels."""
    by_item: dict[int, list[Judgement]] = defaultdict(list)
    for judgement in session.scalars(
        select(Judgement)
        .where(Judgement.project_id == project.id, ~Judgement.skipped)
        .order_by(Judgement.item_id, Judgement.id)
    ):
        by_item[judgement.item_id].append(judgement)
    items = session.scalars(
        select(Item).where(Item.project_id == project.id, ~Item.is_gold).order_by(Item.id)
    ).all()
    return [aggregate(item, by_item[item.id]) for item in items if len(by_item[item.id]) >= min_judgements]


def pku_lines(session: Session, *, project: Project, min_judgements: int = 1) -> list[str]:
    """The export as PKU-SafeRLHF JSONL lines."""
    return [
        json.dumps(to_row(record, "pku-saferlhf"), ensure_ascii=False) + "\n"
        for record in comparisons(session, project=project, min_judgements=min_judgements)
    ]


def export_project(session: Session, *, project: Project, path: Path, min_judgements: int = 1) -> WriteResult:
    """Write the export to `path`: `.jsonl`, `.json`, `.parquet`, or a `datasets` folder (no suffix)."""
    records = comparisons(session, project=project, min_judgements=min_judgements)
    return write_records(records, path, "pku-saferlhf")
