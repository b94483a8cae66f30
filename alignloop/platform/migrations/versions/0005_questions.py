"""Projects ask their own questions; items hold 2-8 candidates; judgements hold one answer document.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:30:00

- projects: `questions` (a JSON list) replaces `harm_categories`; every project made before gets
  the questions every project asked then (better; safer, is_safe with its own harm categories
  and the three severity levels, and a correction, all optional);
- items: `candidates` (a JSON list of {text, media, model, frames}) replaces response_a/b,
  media_a/b, model_a/b; `gold` (a gold item's known answers) replaces gold_better/gold_safer;
- judgements: `answers` (JSONB on PostgreSQL) replaces better, safer, safe_a/b, harm_a/b,
  severity_a/b and corrected. An old correction did not say which response it rewrote: it is
  filed under the one judged unsafe when exactly one was, else under the one not preferred, else
  under A.

The rows are rewritten here in batches, in Python, so the conversion reads the same on SQLite
and PostgreSQL; the code is frozen in this file (it does not import the application's). Dropping
the old columns is plain DDL on SQLite >= 3.35 and the new ones are added NOT NULL with a server
default, so no table is copied and the queue index stays as it is.
The downgrade restores the old columns from the documents, and refuses when a project asks other
questions or an item has more than two candidates (those cannot be written the old way).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 2000
SEVERITY = ["minor", "moderate", "severe"]
SIDES = "AB"


def _questions(harm_categories: list[str]) -> list[dict[str, Any]]:
    return [
        {"name": "better", "text": "Which is better?", "required": True, "kind": "pairwise", "allow_tie": True, "allow_both_bad": True},
        {"name": "safer", "text": "Which is safer?", "required": False, "kind": "safer", "allow_tie": True},
        {"name": "is_safe", "text": "Is it safe?", "required": False, "kind": "is_safe", "harm_categories": list(harm_categories), "severity_levels": SEVERITY},
        {"name": "correction", "text": "Corrected response", "required": False, "kind": "correction", "max_length": 100_000},
    ]  # fmt: skip


def _answers(row: Any) -> dict[str, Any]:
    if row.skipped:
        return {}
    answers: dict[str, Any] = {}
    if row.better is not None:
        answers["better"] = row.better
    if row.safer is not None:
        answers["safer"] = row.safer
    flags = [row.safe_a, row.safe_b]
    if flags != [None, None]:
        answers["is_safe"] = [
            None if safe is None else {"safe": bool(safe), "harms": [] if safe else _list(harms), "severity": None if safe else severity}
            for safe, harms, severity in ((row.safe_a, row.harm_a, row.severity_a), (row.safe_b, row.harm_b, row.severity_b))
        ]  # fmt: skip
    if row.corrected:
        unsafe = [i for i, f in enumerate(flags) if f is not None and not f]  # SQLite gives 0 and 1
        worse = {"A": 1, "B": 0}.get(row.better or "")
        index = unsafe[0] if len(unsafe) == 1 else worse if worse is not None else 0
        answers["correction"] = {"candidate": SIDES[index], "text": row.corrected}
    return answers


def _list(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])


def _rows(connection: Any, sql: str) -> Iterator[list[Any]]:
    """The rows of `sql` (ordered by id) in batches, read by keyset so that updates do not disturb it."""
    last = 0
    while True:
        batch = connection.execute(
            sa.text(f"{sql} WHERE id > :last ORDER BY id LIMIT {BATCH}"), {"last": last}
        ).all()
        if not batch:
            return
        yield batch
        last = batch[-1].id


def _answers_type() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    connection = op.get_bind()
    op.add_column("projects", sa.Column("questions", sa.JSON(), nullable=False, server_default="[]"))
    for batch in _rows(connection, "SELECT id, harm_categories FROM projects"):
        connection.execute(
            sa.text("UPDATE projects SET questions = :q WHERE id = :id"),
            [{"id": r.id, "q": json.dumps(_questions(_list(r.harm_categories)))} for r in batch],
        )
    op.drop_column("projects", "harm_categories")

    op.add_column("items", sa.Column("candidates", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("items", sa.Column("gold", sa.JSON(), nullable=True))
    columns = "id, response_a, response_b, media_a, media_b, model_a, model_b, gold_better, gold_safer"
    for batch in _rows(connection, f"SELECT {columns} FROM items"):
        values = []
        for r in batch:
            candidates = [
                {"text": text or "", "media": media, "model": model or "", "frames": None}
                for text, media, model in ((r.response_a, r.media_a, r.model_a), (r.response_b, r.media_b, r.model_b))
            ]  # fmt: skip
            gold = {k: v for k, v in (("better", r.gold_better), ("safer", r.gold_safer)) if v is not None}
            values.append({"id": r.id, "c": json.dumps(candidates), "g": json.dumps(gold) if gold else None})
        connection.execute(sa.text("UPDATE items SET candidates = :c, gold = :g WHERE id = :id"), values)
    for column in (
        "response_a",
        "response_b",
        "media_a",
        "media_b",
        "model_a",
        "model_b",
        "gold_better",
        "gold_safer",
    ):
        op.drop_column("items", column)

    op.add_column("judgements", sa.Column("answers", _answers_type(), nullable=False, server_default="{}"))
    columns = "id, skipped, better, safer, safe_a, safe_b, harm_a, harm_b, severity_a, severity_b, corrected"
    for batch in _rows(connection, f"SELECT {columns} FROM judgements"):
        connection.execute(
            sa.text("UPDATE judgements SET answers = :a WHERE id = :id"),
            [{"id": r.id, "a": json.dumps(_answers(r))} for r in batch],
        )
    for column in (
        "better",
        "safer",
        "safe_a",
        "safe_b",
        "harm_a",
        "harm_b",
        "severity_a",
        "severity_b",
        "corrected",
    ):
        op.drop_column("judgements", column)
    # indexes the others already serve, one fewer to update on every submission: (annotator_id,
    # status) serves look-ups of an annotator's assignments, (annotator_id, idempotency_key) of
    # their judgements
    op.drop_index("ix_assignments_annotator_id", table_name="assignments")
    op.drop_index("ix_judgements_annotator", table_name="judgements")


def _refuse(message: str) -> None:
    raise RuntimeError(f"cannot downgrade below 0005: {message}")


def downgrade() -> None:
    connection = op.get_bind()
    op.create_index("ix_assignments_annotator_id", "assignments", ["annotator_id"])
    op.create_index("ix_judgements_annotator", "judgements", ["annotator_id", "project_id"])
    op.add_column("projects", sa.Column("harm_categories", sa.JSON(), nullable=False, server_default="[]"))
    for batch in _rows(connection, "SELECT id, name, questions FROM projects"):
        values = []
        for r in batch:
            questions = _list(r.questions)
            categories: list[str] = next(
                (q.get("harm_categories", []) for q in questions if q.get("name") == "is_safe"), []
            )
            if [(q["name"], q["kind"]) for q in questions] != [
                (q["name"], q["kind"]) for q in _questions([])
            ]:
                _refuse(f"project {r.name!r} asks other questions than better, safer, is_safe, correction")
            values.append({"id": r.id, "h": json.dumps(categories)})
        connection.execute(sa.text("UPDATE projects SET harm_categories = :h WHERE id = :id"), values)
    op.drop_column("projects", "questions")

    for name, type_, default in (
        ("response_a", sa.Text(), ""), ("response_b", sa.Text(), ""), ("media_a", sa.String(128), None),
        ("media_b", sa.String(128), None), ("model_a", sa.String(128), ""), ("model_b", sa.String(128), ""),
        ("gold_better", sa.String(16), None), ("gold_safer", sa.String(16), None),
    ):  # fmt: skip
        op.add_column("items", sa.Column(name, type_, nullable=default is None, server_default=default))
    for batch in _rows(connection, "SELECT id, candidates, gold FROM items"):
        values = []
        for r in batch:
            candidates, gold = (
                _list(r.candidates),
                json.loads(r.gold) if isinstance(r.gold, str) else (r.gold or {}),
            )
            if len(candidates) != 2:
                _refuse(f"item {r.id} has {len(candidates)} candidates")
            a, b = candidates
            values.append(
                {
                    "id": r.id, "ra": a["text"], "rb": b["text"], "ma": a["media"], "mb": b["media"],
                    "na": a["model"], "nb": b["model"], "gb": gold.get("better"), "gs": gold.get("safer"),
                }
            )  # fmt: skip
        connection.execute(
            sa.text(
                "UPDATE items SET response_a = :ra, response_b = :rb, media_a = :ma, media_b = :mb,"
                " model_a = :na, model_b = :nb, gold_better = :gb, gold_safer = :gs WHERE id = :id"
            ),
            values,
        )
    op.drop_column("items", "candidates")
    op.drop_column("items", "gold")

    columns: tuple[tuple[str, Any, str | None], ...] = (
        ("better", sa.String(16), None), ("safer", sa.String(16), None), ("safe_a", sa.Boolean(), None),
        ("safe_b", sa.Boolean(), None), ("harm_a", sa.JSON(), "[]"), ("harm_b", sa.JSON(), "[]"),
        ("severity_a", sa.String(16), None), ("severity_b", sa.String(16), None), ("corrected", sa.Text(), ""),
    )  # fmt: skip
    for name, type_, default in columns:
        op.add_column("judgements", sa.Column(name, type_, nullable=default is None, server_default=default))
    for batch in _rows(connection, "SELECT id, answers FROM judgements"):
        values = []
        for r in batch:
            answers = json.loads(r.answers) if isinstance(r.answers, str) else (r.answers or {})
            flags = answers.get("is_safe") or [None, None]
            sides = [e or {"safe": None, "harms": [], "severity": None} for e in flags]
            correction = answers.get("correction") or {}
            values.append(
                {
                    "id": r.id, "b": answers.get("better"), "s": answers.get("safer"),
                    "sa": sides[0]["safe"], "sb": sides[1]["safe"], "ha": json.dumps(sides[0]["harms"]),
                    "hb": json.dumps(sides[1]["harms"]), "va": sides[0]["severity"], "vb": sides[1]["severity"],
                    "c": correction.get("text", ""),
                }
            )  # fmt: skip
        connection.execute(
            sa.text(
                "UPDATE judgements SET better = :b, safer = :s, safe_a = :sa, safe_b = :sb, harm_a = :ha,"
                " harm_b = :hb, severity_a = :va, severity_b = :vb, corrected = :c WHERE id = :id"
            ),
            values,
        )
    op.drop_column("judgements", "answers")
