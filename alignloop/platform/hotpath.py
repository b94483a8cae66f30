"""The common case of judgement-and-next on PostgreSQL: two SQL statements on the event loop.

`crud.submit_judgement` + `crud.next_assignment` cost about ten ORM round trips. Here the usual
submission — the caller's own open assignment, a fresh idempotency key, labels without harm
categories, not a skip — is stored by one statement (close the assignment, insert the judgement,
count it on the item), and the next assignment is found or taken by a second one (the caller's
open assignment if any, else the most useful free item they never had, locked with
FOR UPDATE SKIP LOCKED, slot taken and assignment inserted), both in one transaction on a pooled
asynchronous connection, server-side prepared. Anything else — a replayed key, someone else's or
an expired assignment, harm categories to check, a skip, gold mixing — rolls that transaction
back and answers None, and the caller takes the general ORM path with the same guarantees.
"""

from __future__ import annotations

import datetime as dt

import psycopg

from alignloop.platform.pgpool import ConnectionPool
from alignloop.platform.schemas import AssignmentOut, ItemOut, JudgementIn, JudgementOut, SubmittedOut

_SUBMIT = """
WITH previous AS (
    SELECT 1 FROM judgements WHERE annotator_id = %(annotator)s AND idempotency_key = %(key)s
), closed AS (
    UPDATE assignments SET status = 'done'
    WHERE id = %(assignment)s AND annotator_id = %(annotator)s AND status = 'open'
      AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING item_id, project_id
), judged AS (
    INSERT INTO judgements (item_id, project_id, annotator_id, idempotency_key, skipped, skip_reason,
                            better, safer, safe_a, safe_b, harm_a, harm_b, severity_a, severity_b,
                            corrected, created_at, updated_at)
    SELECT item_id, project_id, %(annotator)s, %(key)s, false, '', %(better)s, %(safer)s, %(safe_a)s, %(safe_b)s,
           '[]'::json, '[]'::json, %(severity_a)s, %(severity_b)s, %(corrected)s, %(now)s, %(now)s
    FROM closed
    RETURNING id, item_id, project_id
), counted AS (
    UPDATE items SET done = done + 1 WHERE id = (SELECT item_id FROM judged)
)
SELECT judged.id, judged.item_id, judged.project_id, p.overlap, p.gold_rate, p.harm_categories
FROM judged JOIN projects p ON p.id = judged.project_id
"""

_NEXT = """
WITH current_one AS (
    SELECT id, item_id, expires_at FROM assignments
    WHERE project_id = %(project)s AND annotator_id = %(annotator)s AND status = 'open'
    ORDER BY id LIMIT 1
), picked AS (
    UPDATE items SET taken = taken + 1, is_full = (NOT is_gold AND taken + 1 >= %(overlap)s)
    WHERE NOT EXISTS (SELECT 1 FROM current_one) AND id = (
        SELECT c.id FROM items c
        WHERE c.project_id = %(project)s AND NOT c.is_gold AND NOT c.is_full AND c.taken < %(overlap)s
          AND c.id NOT IN (
              SELECT item_id FROM assignments WHERE annotator_id = %(annotator)s AND project_id = %(project)s
          )
        ORDER BY c.priority DESC, c.id LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
), made AS (
    INSERT INTO assignments (item_id, annotator_id, project_id, status, created_at, expires_at)
    SELECT id, %(annotator)s, %(project)s, 'open', %(now)s, %(expires)s FROM picked
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


def applies(labels: JudgementIn) -> bool:
    """Whether the short path may try this submission (no skip, no harm categories)."""
    return not labels.skipped and not labels.harm_a and not labels.harm_b


async def submit_and_next(
    pool: ConnectionPool,
    *,
    assignment_id: int,
    annotator_id: int,
    labels: JudgementIn,
    lock_s: int,
    now: dt.datetime,
) -> SubmittedOut | None:
    """Store the judgement of the caller's open assignment and hand out their next one, in one
    transaction; None (nothing stored) when the general path must decide."""
    values = labels.model_dump(mode="json", exclude={"harm_a", "harm_b", "skipped", "skip_reason"})
    key = values.pop("idempotency_key")
    async with pool.transaction() as connection:
        params = {**values, "assignment": assignment_id, "annotator": annotator_id, "key": key, "now": now}
        stored = await (await connection.execute(_SUBMIT, params, prepare=True)).fetchone()
        if stored is None or stored[4] > 0:  # not the common case, or gold mixing (counts judgements)
            raise psycopg.Rollback()
        judgement_id, item_id, project_id, overlap, _, harm_categories = stored
        params = {
            "project": project_id,
            "annotator": annotator_id,
            "overlap": overlap,
            "now": now,
            "expires": now + dt.timedelta(seconds=lock_s),
        }
        row = await (await connection.execute(_NEXT, params, prepare=True)).fetchone()
        judgement = JudgementOut(
            id=judgement_id,
            item_id=item_id,
            project_id=project_id,
            annotator_id=annotator_id,
            idempotency_key=key,
            skipped=False,
            skip_reason="",
            harm_a=[],
            harm_b=[],
            created_at=now,
            **values,
        )
        assignment = None
        if row is not None:
            item = ItemOut.model_validate(dict(zip(_ITEM_FIELDS, row[2:], strict=True)))
            assignment = AssignmentOut(
                id=row[0], expires_at=row[1], item=item, harm_categories=harm_categories
            )
        return SubmittedOut(judgement=judgement, assignment=assignment)
    return None  # rolled back
