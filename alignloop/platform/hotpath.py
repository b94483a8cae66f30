"""The common case of judgement-and-next on PostgreSQL in two SQL statements.

`crud.submit_judgement` + `crud.next_assignment` cost about ten ORM round trips. Here the usual
submission — the caller's own open assignment, a fresh idempotency key, labels without harm
categories, not a skip — is stored by one statement (close the assignment, insert the judgement,
count it on the item), and the next assignment is found or taken by a second one (the caller's
open assignment if any, else the most useful free item they never had, locked with
FOR UPDATE SKIP LOCKED, slot taken and assignment inserted). Anything else — a replayed key,
someone else's or an expired assignment, harm categories to check, a skip, gold mixing — makes
these functions answer None, and the caller takes the general ORM path with the same guarantees.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from alignloop.platform.schemas import AssignmentOut, ItemOut, JudgementIn, JudgementOut

_SUBMIT = text(
    """
WITH previous AS (
    SELECT 1 FROM judgements WHERE annotator_id = :annotator AND idempotency_key = :key
), closed AS (
    UPDATE assignments SET status = 'done'
    WHERE id = :assignment AND annotator_id = :annotator AND status = 'open'
      AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING item_id, project_id
), judged AS (
    INSERT INTO judgements (item_id, project_id, annotator_id, idempotency_key, skipped, skip_reason,
                            better, safer, safe_a, safe_b, harm_a, harm_b, severity_a, severity_b,
                            corrected, created_at, updated_at)
    SELECT item_id, project_id, :annotator, :key, false, '', :better, :safer, :safe_a, :safe_b,
           '[]'::json, '[]'::json, :severity_a, :severity_b, :corrected, :now, :now
    FROM closed
    RETURNING id, item_id, project_id
), counted AS (
    UPDATE items SET done = done + 1 WHERE id = (SELECT item_id FROM judged)
)
SELECT judged.id, judged.item_id, judged.project_id, p.overlap, p.gold_rate, p.harm_categories
FROM judged JOIN projects p ON p.id = judged.project_id
"""
)

_NEXT = text(
    """
WITH current_one AS (
    SELECT id, item_id, expires_at FROM assignments
    WHERE project_id = :project AND annotator_id = :annotator AND status = 'open'
    ORDER BY id LIMIT 1
), picked AS (
    UPDATE items SET taken = taken + 1, is_full = (NOT is_gold AND taken + 1 >= :overlap)
    WHERE NOT EXISTS (SELECT 1 FROM current_one) AND id = (
        SELECT c.id FROM items c
        WHERE c.project_id = :project AND NOT c.is_gold AND NOT c.is_full AND c.taken < :overlap
          AND c.id NOT IN (
              SELECT item_id FROM assignments WHERE annotator_id = :annotator AND project_id = :project
          )
        ORDER BY c.priority DESC, c.id LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
), made AS (
    INSERT INTO assignments (item_id, annotator_id, project_id, status, created_at, expires_at)
    SELECT id, :annotator, :project, 'open', :now, :expires FROM picked
    RETURNING id, item_id, expires_at
), chosen AS (
    SELECT id, item_id, expires_at FROM current_one
    UNION ALL
    SELECT id, item_id, expires_at FROM made
)
SELECT chosen.id AS assignment_id, chosen.expires_at, i.id, i.project_id, i.key, i.prompt, i.response_a,
       i.response_b, i.media_a, i.media_b, i.model_a, i.model_b, i.priority, i.meta
FROM chosen JOIN items i ON i.id = chosen.item_id
"""
)

_ITEM_FIELDS = (
    "id",
    "project_id",
    "key",
    "prompt",
    "response_a",
    "response_b",
    "media_a",
    "media_b",
    "model_a",
    "model_b",
    "priority",
    "meta",
)


def applies(session: Session, labels: JudgementIn) -> bool:
    """Whether the short path may try this submission (PostgreSQL, no skip, no harm categories)."""
    return (
        session.get_bind().dialect.name == "postgresql"
        and not labels.skipped
        and not labels.harm_a
        and not labels.harm_b
    )


def submit(
    session: Session, *, assignment_id: int, annotator_id: int, labels: JudgementIn, now: dt.datetime
) -> tuple[JudgementOut, dict[str, Any]] | None:
    """Store the judgement of the caller's open assignment; None when the general path must decide.

    Answers the judgement and its project's queue settings (overlap, gold_rate, harm_categories).
    """
    values = labels.model_dump(mode="json", exclude={"harm_a", "harm_b", "skipped", "skip_reason"})
    key = values.pop("idempotency_key")
    row = (
        session.connection()
        .execute(
            _SUBMIT,
            {**values, "assignment": assignment_id, "annotator": annotator_id, "key": key, "now": now},
        )
        .first()
    )
    if row is None:
        return None
    judgement = JudgementOut(
        id=row.id,
        item_id=row.item_id,
        project_id=row.project_id,
        annotator_id=annotator_id,
        idempotency_key=key,
        skipped=False,
        skip_reason="",
        harm_a=[],
        harm_b=[],
        created_at=now,
        **values,
    )
    project = {"overlap": row.overlap, "gold_rate": row.gold_rate, "harm_categories": row.harm_categories}
    return judgement, project


def next_assignment(
    session: Session,
    *,
    project_id: int,
    annotator_id: int,
    overlap: int,
    harm_categories: list[str],
    lock_s: int,
    now: dt.datetime,
) -> AssignmentOut | None:
    """The caller's open assignment or a newly taken one (projects without gold mixing); None when done."""
    params = {
        "project": project_id,
        "annotator": annotator_id,
        "overlap": overlap,
        "now": now,
        "expires": now + dt.timedelta(seconds=lock_s),
    }
    row = session.connection().execute(_NEXT, params).first()
    if row is None:
        return None
    item = ItemOut.model_validate(dict(zip(_ITEM_FIELDS, row[2:], strict=True)))
    return AssignmentOut(
        id=row.assignment_id, expires_at=row.expires_at, item=item, harm_categories=harm_categories
    )
