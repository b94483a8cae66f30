"""The common case of judgement-and-next on PostgreSQL: one SQL statement on the event loop.

`crud.submit_judgement` + `crud.next_assignment` cost about ten ORM round trips. Here the usual
submission — the caller's own open assignment, a fresh idempotency key, labels without harm
categories, not a skip — is one statement in one transaction on a pooled asynchronous connection,
server-side prepared: close the assignment, insert the judgement, count it on the item, read the
project's queue settings, and find or take the next assignment (the caller's other open one if
any, else the most useful free item they never had, locked with FOR UPDATE SKIP LOCKED, slot taken
and assignment inserted). Anything else — a replayed key, someone else's or an expired assignment,
harm categories to check, a skip, gold mixing — rolls the transaction back and answers None, and
the caller takes the general ORM path with the same guarantees.

All parts of one statement see the same snapshot: the assignment just closed still reads as open
to `current_one`, which therefore leaves it out by id. The project's id and overlap reach the
pick as scalar subqueries, so that it is still planned as an ordered scan of the queue index.
"""

from __future__ import annotations

import datetime as dt

import psycopg

from alignloop.platform.pgpool import ConnectionPool
from alignloop.platform.schemas import AssignmentOut, ItemOut, JudgementIn, JudgementOut, SubmittedOut

_SUBMIT_AND_NEXT = """
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
    SELECT item_id, project_id, %(annotator)s, %(key)s, false, '', %(better)s, %(safer)s, %(safe_a)s,
           %(safe_b)s, '[]'::json, '[]'::json, %(severity_a)s, %(severity_b)s, %(corrected)s, %(now)s, %(now)s
    FROM closed
    RETURNING id, item_id, project_id
), counted AS (
    UPDATE items SET done = done + 1 WHERE id = (SELECT item_id FROM judged)
), queue AS (
    SELECT p.id, p.overlap, p.gold_rate, p.harm_categories FROM projects p
    WHERE p.id = (SELECT project_id FROM judged)
), current_one AS (
    SELECT id, item_id, expires_at FROM assignments
    WHERE project_id = (SELECT id FROM queue) AND annotator_id = %(annotator)s AND status = 'open'
      AND id <> %(assignment)s
    ORDER BY id LIMIT 1
), picked AS (
    UPDATE items SET taken = taken + 1, is_full = (NOT is_gold AND taken + 1 >= (SELECT overlap FROM queue))
    WHERE NOT EXISTS (SELECT 1 FROM current_one) AND (SELECT gold_rate FROM queue) = 0 AND id = (
        SELECT c.id FROM items c
        WHERE c.project_id = (SELECT id FROM queue) AND NOT c.is_gold AND NOT c.is_full
          AND c.taken < (SELECT overlap FROM queue)
          AND c.id NOT IN (
              SELECT item_id FROM assignments
              WHERE annotator_id = %(annotator)s AND project_id = (SELECT id FROM queue)
          )
        ORDER BY c.priority DESC, c.id LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
), made AS (
    INSERT INTO assignments (item_id, annotator_id, project_id, status, created_at, expires_at)
    SELECT id, %(annotator)s, (SELECT id FROM queue), 'open', %(now)s, %(expires)s FROM picked
    RETURNING id, item_id, expires_at
), chosen AS (
    SELECT id, item_id, expires_at FROM current_one
    UNION ALL
    SELECT id, item_id, expires_at FROM made
)
SELECT judged.id, judged.item_id, judged.project_id, queue.gold_rate, queue.harm_categories,
       chosen.id, chosen.expires_at, i.id, i.project_id, i.key, i.prompt, i.response_a, i.response_b,
       i.media_a, i.media_b, i.model_a, i.model_b, i.priority, i.meta
FROM judged JOIN queue ON true LEFT JOIN chosen ON true LEFT JOIN items i ON i.id = chosen.item_id
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
    statement; None (nothing stored) when the general path must decide."""
    values = labels.model_dump(mode="json", exclude={"harm_a", "harm_b", "skipped", "skip_reason"})
    key = values.pop("idempotency_key")
    params = {
        **values,
        "assignment": assignment_id,
        "annotator": annotator_id,
        "key": key,
        "now": now,
        "expires": now + dt.timedelta(seconds=lock_s),
    }
    async with pool.transaction() as connection:
        row = await (await connection.execute(_SUBMIT_AND_NEXT, params, prepare=True)).fetchone()
        if row is None or row[3] > 0:  # not the common case, or gold mixing (counts judgements)
            raise psycopg.Rollback()
        judgement_id, item_id, project_id, _, harm_categories, next_id, expires_at = row[:7]
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
        if next_id is not None:
            item = ItemOut.model_validate(dict(zip(_ITEM_FIELDS, row[7:], strict=True)))
            assignment = AssignmentOut(
                id=next_id, expires_at=expires_at, item=item, harm_categories=harm_categories
            )
        return SubmittedOut(judgement=judgement, assignment=assignment)
    return None  # rolled back
