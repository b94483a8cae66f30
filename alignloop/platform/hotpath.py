"""The common case of judgement-and-next on PostgreSQL: one SQL statement, one round trip.

`crud.submit_judgement` + `crud.next_assignment` cost about ten ORM round trips. Here the usual
submission — the caller's own open assignment handed out by this process, a fresh idempotency
key, not a skip, a project without gold mixing — is checked against the project's questions in
Python (`feedback.schema.check_answers`, the same check as the general path) and stored by one
statement, on its own an atomic transaction (autocommit) on a pooled asynchronous connection
(`psycopg_pool`), server-side prepared: close the assignment, insert the judgement, count it on
the item, and find or take the next assignment (the caller's other open one if any, else the
most useful free item they never had, locked with FOR UPDATE SKIP LOCKED, slot taken and
assignment inserted). PostgreSQL writes the whole answer as JSON text, which the route sends as
it is. When the statement changes nothing — a replayed key, an assignment someone else closed
or expired — the caller takes the general ORM path, with the same guarantees.

What the check needs comes from memory, since projects and items never change once made: the
project's questions, overlap and gold rate (`Projects`), and for each assignment this process
handed out, whose it is and its item's candidates (`Handed`); a submission of an assignment
handed out by another worker process goes the general way. The JSON the statement builds is
generated from the response models (`ItemOut`, `CandidateOut`, `JudgementOut`), so the two
cannot drift (`tests/test_parity.py`).

All parts of one statement see the same snapshot: the assignment just closed still reads as open
to `current_one`, which therefore leaves it out by id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from alignloop.feedback.schema import Question, check_answers
from alignloop.platform.schemas import ItemOut, JudgementIn, JudgementOut

# ---------------------------------------------------------------------------- the statement


def json_object(model: type[BaseModel], expressions: dict[str, str]) -> str:
    """json_build_object(...) with one key per field of `model`, in its order; a field's value is
    the SQL of `expressions[field]`."""
    missing = set(model.model_fields) - set(expressions)
    extra = set(expressions) - set(model.model_fields)
    if missing or extra:
        raise AssertionError(
            f"{model.__name__}: no SQL for {sorted(missing)}; SQL for unknown {sorted(extra)}"
        )
    return (
        "json_build_object("
        + ", ".join(f"'{name}', {expressions[name]}" for name in model.model_fields)
        + ")"
    )


ITEM_JSON = json_object(ItemOut, {name: f"i.{name}" for name in ItemOut.model_fields})
JUDGEMENT_JSON = json_object(
    JudgementOut,
    {
        "id": "judged.id",
        "item_id": "judged.item_id",
        "project_id": "judged.project_id",
        "annotator_id": "%(annotator)s",
        "idempotency_key": "%(key)s",
        "skipped": "false",
        "skip_reason": "''",
        "answers": "%(answers)s::json",
        "created_at": "%(now)s",
    },
)
JUDGEMENT_COLUMNS = (
    "item_id", "project_id", "annotator_id", "idempotency_key", "skipped", "skip_reason", "answers", "created_at",
    "updated_at",
)  # fmt: skip
"""The columns the statement inserts into `judgements` (every column but the id: the parity test)."""

SUBMIT_AND_NEXT = f"""
WITH previous AS (
    SELECT 1 FROM judgements WHERE annotator_id = %(annotator)s AND idempotency_key = %(key)s
), closed AS (
    UPDATE assignments SET status = 'done'
    WHERE id = %(assignment)s AND annotator_id = %(annotator)s AND project_id = %(project)s
      AND status = 'open' AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING item_id, project_id
), judged AS (
    INSERT INTO judgements ({", ".join(JUDGEMENT_COLUMNS)})
    SELECT item_id, project_id, %(annotator)s, %(key)s, false, '', %(answers)s::jsonb, %(now)s, %(now)s
    FROM closed
    RETURNING id, item_id, project_id
), counted AS (
    UPDATE items SET done = done + 1 WHERE id = (SELECT item_id FROM judged)
), current_one AS (
    SELECT id, item_id, expires_at FROM assignments
    WHERE EXISTS (SELECT 1 FROM judged) AND project_id = %(project)s AND annotator_id = %(annotator)s
      AND status = 'open' AND id <> %(assignment)s
    ORDER BY id LIMIT 1
), picked AS (
    UPDATE items SET taken = taken + 1, is_full = (NOT is_gold AND taken + 1 >= %(overlap)s)
    WHERE EXISTS (SELECT 1 FROM judged) AND NOT EXISTS (SELECT 1 FROM current_one) AND id = (
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
SELECT chosen.id, i.candidates::text,
       json_build_object(
           'judgement', {JUDGEMENT_JSON},
           'assignment', CASE WHEN chosen.id IS NULL THEN NULL ELSE json_build_object(
               'id', chosen.id, 'expires_at', chosen.expires_at, 'item', {ITEM_JSON}) END
       )::text
FROM judged LEFT JOIN chosen ON true LEFT JOIN items i ON i.id = chosen.item_id
"""

# ---------------------------------------------------------------------------- what is known in memory


@dataclass(frozen=True)
class ProjectRules:
    questions: tuple[Question, ...]
    overlap: int
    gold_rate: float


@dataclass(frozen=True)
class Handout:
    annotator_id: int
    project_id: int
    frames: tuple[int | None, ...]
    """One entry per candidate of the item: the clip's frame count, or None."""


class Memory:
    """What this process knows for good: projects' rules, and the assignments it handed out.

    Projects and items never change once made, so nothing here goes stale; an assignment is
    forgotten when it is submitted (or when too many are remembered)."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self.projects: dict[int, ProjectRules] = {}
        self.handed: dict[int, Handout] = {}
        self._lock = threading.Lock()

    def hand_out(self, assignment_id: int, annotator_id: int, project_id: int, candidates: list[Any]) -> None:
        with self._lock:
            if len(self.handed) >= self.LIMIT:
                self.handed.clear()
            frames = tuple(c.get("frames") if isinstance(c, dict) else None for c in candidates)
            self.handed[assignment_id] = Handout(annotator_id, project_id, frames)

    def take(self, assignment_id: int, annotator_id: int) -> Handout | None:
        with self._lock:
            handout = self.handed.get(assignment_id)
            if handout is None or handout.annotator_id != annotator_id:
                return None
            return self.handed.pop(assignment_id)


# ---------------------------------------------------------------------------- the pool and the path


def make_pool(url: str, *, size: int, open_at_start: int, connect_timeout_s: int) -> AsyncConnectionPool:
    """The event loop's pool: autocommit connections (each statement its own transaction), UTC
    times; `open_at_start` are made when the pool opens, the rest on need, up to `size`."""
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    options: dict[str, Any] = {"autocommit": True, "options": "-c TimeZone=UTC"}
    if "connect_timeout" not in make_url(url).query:  # the caller's own takes precedence
        options["connect_timeout"] = connect_timeout_s
    return AsyncConnectionPool(
        libpq, min_size=min(open_at_start, size), max_size=size, open=False, kwargs=options, name="hotpath"
    )


class Pools:
    """One pool per event loop: a server process has one loop, but an application served by two
    loops at once (tests that start its lifespan twice) must not share connections between them,
    since psycopg_pool's connections and workers belong to the loop that made them."""

    def __init__(self, factory: Callable[[], AsyncConnectionPool]):
        self.factory = factory
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}

    async def get(self) -> AsyncConnectionPool:
        """The running loop's pool, opened (in the background) on first use."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = self.factory()
            await pool.open(wait=False)
        return pool

    async def open(self, timeout: float) -> None:
        """Open the running loop's pool and wait until its first connections are made."""
        loop = asyncio.get_running_loop()
        if loop not in self._pools:
            self._pools[loop] = self.factory()
        await self._pools[loop].open(wait=True, timeout=timeout)

    async def close(self) -> None:
        """Close the running loop's pool (at the end of its lifespan)."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()


@dataclass(frozen=True)
class Answered:
    """The statement's result: the response body as JSON text, and the next assignment's candidates."""

    body: str
    next_id: int | None
    next_candidates: list[Any]


def checked(handout: Handout, rules: ProjectRules, labels: JudgementIn) -> dict[str, Any]:
    """The answers in normal form (`LabelError` when they do not answer the project's questions)."""
    return check_answers(rules.questions, labels.answers, len(handout.frames), frames=handout.frames)


async def submit_and_next(
    pool: AsyncConnectionPool,
    *,
    assignment_id: int,
    annotator_id: int,
    key: str,
    answers: dict[str, Any],
    project_id: int,
    overlap: int,
    lock_s: int,
    now: dt.datetime,
) -> Answered | None:
    """Store the checked answers of the caller's open assignment and hand out their next one, in one
    statement; None (nothing stored) when the general path must decide."""
    params = {
        "assignment": assignment_id,
        "annotator": annotator_id,
        "project": project_id,
        "overlap": overlap,
        "key": key,
        "answers": json.dumps(answers, ensure_ascii=False),
        "now": now,
        "expires": now + dt.timedelta(seconds=lock_s),
    }
    async with pool.connection() as connection:
        cursor = await connection.execute(SUBMIT_AND_NEXT, params, prepare=True)
        row = await cursor.fetchone()
    if row is None:
        return None
    next_id, candidates, body = row
    return Answered(body, next_id, [] if candidates is None else json.loads(candidates))


async def common_case(
    state: Any, *, user_id: int, assignment_id: int, labels: JudgementIn, lock_s: int, now: dt.datetime
) -> tuple[str, int] | None:
    """The short path, when it applies: (response body, project id) of a stored judgement, or None
    (nothing stored) when the general path must decide. `LabelError` for answers the project's
    questions refuse. `state` is the application's (`pg_pool`, `memory`)."""
    pools: Pools | None = state.pg_pool
    memory: Memory = state.memory
    if pools is None or labels.skipped:
        return None
    handout = memory.take(assignment_id, user_id)
    rules = None if handout is None else memory.projects.get(handout.project_id)
    if handout is None or rules is None or rules.gold_rate > 0:  # gold mixing counts judgements: general path
        return None
    answers = checked(handout, rules, labels)
    try:
        short = await submit_and_next(
            await pools.get(),
            assignment_id=assignment_id,
            annotator_id=user_id,
            key=labels.idempotency_key,
            answers=answers,
            project_id=handout.project_id,
            overlap=rules.overlap,
            lock_s=lock_s,
            now=now,
        )
    except psycopg.IntegrityError:  # a concurrent retry of the same key: the general path decides
        return None
    if short is None:
        return None
    if short.next_id is not None:
        memory.hand_out(short.next_id, user_id, handout.project_id, short.next_candidates)
    return short.body, handout.project_id
