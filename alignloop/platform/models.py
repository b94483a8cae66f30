"""Database tables (SQLAlchemy 2, typed). The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ANSWERS_JSON = JSON().with_variant(JSONB(), "postgresql")
"""Answer documents: JSONB on PostgreSQL (queryable by key), JSON text on SQLite."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


ROLES = ("admin", "trainer", "annotator")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # one of ROLES
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A stored time as an aware UTC datetime (SQLite hands them back naive, PostgreSQL aware)."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


class ApiToken(Base):
    """A bearer token; only its SHA-256 digest is stored. It stops working at `expires_at`."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[User] = relationship(lazy="joined")


class WebSession(Base):
    """A logged-in browser: the session cookie carries a random id, stored here as its SHA-256
    digest. Logging out, a password change or a deactivation deletes the row, so a copy of the
    cookie stops working at once."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class LoginFailure(Base):
    """One failed (or not yet checked) password check, under one throttling key: `name:<user name>`
    or `addr:<client address>`. Rows older than the throttling window are deleted as logins come."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key", "key", "failed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    failed_at: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch


class Project(Base):
    """A labelling project: what it asks (`questions`, the JSON form of `feedback.schema`'s
    question list, fixed at creation) and how many annotators judge each item."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # k: judgements wanted per item
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    questions: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Item(Base):
    """A prompt and 2 to 8 candidates (`candidates`: the JSON form of `feedback.schema.Candidate`s,
    each a text and/or a stored media clip, the model behind it, a clip's frame count)."""

    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_queue", "project_id", "is_gold", "is_full", text("priority DESC"), "id"),
        # NULL keys are distinct from each other in both databases: only keyed items are unique
        Index("uq_items_project_key", "project_id", "key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # The pusher's name for the item (e.g. "r3-0017"): pushing the same key again returns this row
    key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    # A gold item's known answers (an answer document for some of the project's questions)
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Open assignments plus finished (non-skipped) judgements; the queue serves an item while
    # this is below the project's overlap. Kept as a column so row locks protect it.
    taken: Mapped[int] = mapped_column(Integer, default=0)
    # taken >= overlap (never for gold items): the queue index skips full items without reading them.
    is_full: Mapped[bool] = mapped_column(Boolean, default=False)
    done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Assignment(Base):
    """An item locked to one annotator until `expires_at`; at most one per (item, annotator)."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "annotator_id", name="uq_assignment_item_annotator"),
        Index("ix_assignments_open", "status", "expires_at"),
        Index("ix_assignments_annotator_status", "annotator_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | expired
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    item: Mapped[Item] = relationship(lazy="joined")


class Judgement(Base):
    """One annotator's verdict on one item. A retried submission reuses its idempotency key."""

    __tablename__ = "judgements"
    __table_args__ = (
        UniqueConstraint("annotator_id", "idempotency_key", name="uq_judgement_idempotency"),
        UniqueConstraint("item_id", "annotator_id", name="uq_judgement_item_annotator"),
        Index("ix_judgements_project", "project_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[str] = mapped_column(Text, default="")
    # The answers by question name, in the normal form of `feedback.schema.check_answers` ({} when skipped)
    answers: Mapped[dict[str, Any]] = mapped_column(ANSWERS_JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
