"""Export a project's judgements: every answer, as judged items or in any feedback format.

The stored rows become `feedback.judged.JudgedItem`s (one per non-gold item, with every
annotator's judgement, by name), which `alignloop.feedback.formats` writes in any format and
container: `judgements` (every question kind, the annotators, the agreement per question),
`pku-saferlhf` (majority records of a two-candidate project with a pairwise question),
`preference`, `correction` (the Aligner trainer's input), `supervised` (prompt, corrected).
`auto` is PKU-SafeRLHF where the project can be written so, else the judged items. What is
written reads back with `alignloop data validate` and the trainers' `--train-file`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.feedback.formats import FORMATS, WriteResult, to_row, write_records
from alignloop.feedback.judged import JudgedItem, as_records, judged_item
from alignloop.feedback.schema import Candidate, Item, Judgement, LabelError, Pairwise, Question
from alignloop.platform.crud import Invalid, questions_of
from alignloop.platform.models import Item as ItemRow
from alignloop.platform.models import Judgement as JudgementRow
from alignloop.platform.models import Project, User

EXPORT_FORMATS = ("auto", "judgements", "pku-saferlhf", "preference", "correction", "supervised")


def item_of(row: ItemRow) -> Item:
    """A stored item as the one definition's `Item` (meta gains the item's id)."""
    meta = {str(k): str(v) for k, v in row.meta.items()}
    meta["item_id"] = str(row.id)
    return Item(row.prompt, tuple(Candidate(**c) for c in row.candidates), key=row.key, meta=meta)


def judgement_of(row: JudgementRow, item: Item, annotator: str) -> Judgement:
    return Judgement(item, dict(row.answers), annotator, row.skipped, row.skip_reason)


def judged_items(session: Session, *, project: Project, min_judgements: int = 1) -> list[JudgedItem]:
    """The project's non-gold items with at least `min_judgements` answered (not skipped) judgements."""
    questions = questions_of(project)
    names = dict(session.execute(select(User.id, User.name)).all())
    by_item: dict[int, list[JudgementRow]] = defaultdict(list)
    row: JudgementRow
    for row in session.scalars(
        select(JudgementRow)
        .where(JudgementRow.project_id == project.id)
        .order_by(JudgementRow.item_id, JudgementRow.id)
    ):
        by_item[row.item_id].append(row)
    out = []
    for item_row in session.scalars(
        select(ItemRow).where(ItemRow.project_id == project.id, ~ItemRow.is_gold).order_by(ItemRow.id)
    ):
        rows = by_item[item_row.id]
        if sum(not j.skipped for j in rows) < min_judgements:
            continue
        item = item_of(item_row)
        out.append(
            judged_item(item, questions, [judgement_of(j, item, names.get(j.annotator_id, "")) for j in rows])
        )
    return out


def resolve_format(questions: tuple[Question, ...], fmt: str) -> str:
    """The format an export is written in (`auto`: PKU-SafeRLHF when the project has a pairwise question)."""
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "auto":
        return "pku-saferlhf" if any(isinstance(q, Pairwise) for q in questions) else "judgements"
    return fmt


def lines(session: Session, *, project: Project, fmt: str = "auto", min_judgements: int = 1) -> Iterator[str]:
    """The export as JSONL lines; `Invalid` when the project's judgements cannot be written in `fmt`."""
    fmt = resolve_format(questions_of(project), fmt)
    assert fmt in FORMATS
    records = judged_items(session, project=project, min_judgements=min_judgements)
    try:
        converted: list[Any] = as_records(records, fmt)
    except LabelError as exc:
        raise Invalid(f"format {fmt}: {exc}") from None
    return (json.dumps(to_row(r, fmt), ensure_ascii=False) + "\n" for r in converted)


def export_project(
    session: Session, *, project: Project, path: Path, fmt: str = "auto", min_judgements: int = 1
) -> WriteResult:
    """Write the export to `path`: `.jsonl`, `.json`, `.parquet`, or a `datasets` folder (no suffix)."""
    fmt = resolve_format(questions_of(project), fmt)
    return write_records(judged_items(session, project=project, min_judgements=min_judgements), path, fmt)
