"""Database operations, keyword-only, HTTP-free. Errors are `PlatformError`s the app maps to statuses.

The queue: an item is served while `taken` (open assignments + finished judgements) is below the
project's overlap k, most useful (highest priority) first, never to an annotator who already had
it (unique item/annotator). Gold items are mixed in at the project's rate and have no k limit.
On PostgreSQL the chosen row is locked with FOR UPDATE SKIP LOCKED, so concurrent annotators take
different items and `taken` never overshoots; on SQLite the writes are serialised.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased

from alignloop.feedback.schema import LabelError, Question, check_answers, parse_questions, questions_json
from alignloop.platform import auth, names
from alignloop.platform.models import (
    ApiToken,
    Assignment,
    Item,
    Judgement,
    Project,
    User,
    WebSession,
    as_utc,
    utcnow,
)
from alignloop.platform.schemas import ItemIn, JudgementIn, Labels, ProjectIn


class PlatformError(Exception):
    status = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotFound(PlatformError):
    status = 404


class Forbidden(PlatformError):
    status = 403


class Conflict(PlatformError):
    status = 409


class Invalid(PlatformError):
    status = 422


# --- people ------------------------------------------------------------------------------


def _password_hash(password: str) -> str:
    try:
        return auth.hash_password(password)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def create_user(session: Session, *, name: str, password: str, role: str = "annotator") -> User:
    """A new user; the name follows `names.normalise_name` and must not look like an existing one.

    The password is hashed before the first query, so no transaction is held while it is.
    """
    password_hash = _password_hash(password)
    try:
        name = names.normalise_name(name)
    except ValueError as exc:
        raise Invalid(f"name: {exc}") from exc
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    look_alike = names.confusable_with(name, list(session.scalars(select(User.name))))
    if look_alike is not None:
        raise Conflict(f"name: {name!r} looks like the existing user {look_alike!r}; choose another name")
    user = User(name=name, password_hash=password_hash, role=role, active=True)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, *, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def _end_access(session: Session, *, user_id: int, tokens: bool, keep_session: str | None = None) -> None:
    """Delete the user's web sessions (but the one whose id is `keep_session`) and, with
    `tokens`, their API tokens."""
    sessions = delete(WebSession).where(WebSession.user_id == user_id)
    if keep_session is not None:
        sessions = sessions.where(WebSession.digest != auth.token_digest(keep_session))
    session.execute(sessions)
    if tokens:
        session.execute(delete(ApiToken).where(ApiToken.user_id == user_id))


def set_active(session: Session, *, user: User, active: bool, by: User) -> None:
    """Activate or deactivate `user`; deactivation ends their web sessions and revokes their tokens."""
    if user.id == by.id and not active:
        raise Conflict("you cannot deactivate your own account; another admin can")
    user.active = active
    if not active:
        _end_access(session, user_id=user.id, tokens=True)
    session.flush()


def set_password(
    session: Session, *, user_id: int, password: str, revoke_tokens: bool, keep_session: str | None = None
) -> User:
    """A new password; the user's web sessions end (but the one with id `keep_session`: the user's
    own, when they change it themselves), and with `revoke_tokens` (an admin's reset) their API
    tokens too.

    The password is hashed before the first query, so no transaction is held while it is.
    """
    password_hash = _password_hash(password)
    user = get_user(session, user_id=user_id)
    user.password_hash = password_hash
    _end_access(session, user_id=user.id, tokens=revoke_tokens, keep_session=keep_session)
    session.flush()
    return user


def create_token(
    session: Session, *, user: User, label: str = "", expires_at: dt.datetime | None = None
) -> str:
    """A new API token of `user`, valid until `expires_at` (default: `auth.TOKEN_LIFETIME_S` from now).

    Every expired token (anyone's) is deleted first: they open nothing, and would otherwise stay
    in the database for ever.
    """
    now = utcnow()
    session.execute(delete(ApiToken).where(ApiToken.expires_at <= now))
    token, digest = auth.new_api_token()
    expires_at = expires_at or now + dt.timedelta(seconds=auth.TOKEN_LIFETIME_S)
    session.add(ApiToken(user_id=user.id, digest=digest, label=label[:64], expires_at=expires_at))
    session.flush()
    return token


def token_user(session: Session, *, token: str) -> tuple[User, dt.datetime] | None:
    """The active user behind an unexpired token, and when the token expires; None otherwise."""
    row = session.execute(
        select(User, ApiToken.expires_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.digest == auth.token_digest(token), ApiToken.expires_at > utcnow(), User.active)
    ).first()
    return None if row is None else (row[0], as_utc(row[1]))


def revoke_token(session: Session, *, token: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.digest == auth.token_digest(token)))
    if row is not None:
        session.delete(row)


def list_tokens(session: Session, *, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


def revoke_token_id(session: Session, *, token_id: int, by: User) -> str:
    """Revoke a token of `by`'s own (any token, for an admin); answers its digest."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != by.id and by.role != "admin"):
        raise NotFound(f"token {token_id} not found")
    session.delete(row)
    session.flush()
    return row.digest


def create_web_session(session: Session, *, user: User, lifetime_s: float) -> str:
    """A new web session for `user`; answers the id to put in the signed cookie."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session_id, digest = auth.new_session_id()
    session.add(
        WebSession(
            user_id=user.id, digest=digest, created_at=now, expires_at=now + dt.timedelta(seconds=lifetime_s)
        )
    )
    session.flush()
    return session_id


def web_session_user(session: Session, *, session_id: str) -> User | None:
    """The active user whose unexpired web session has this id, or None."""
    return session.scalar(
        select(User)
        .join(WebSession, WebSession.user_id == User.id)
        .where(
            WebSession.digest == auth.token_digest(session_id), WebSession.expires_at > utcnow(), User.active
        )
    )


def end_web_session(session: Session, *, session_id: str) -> None:
    session.execute(delete(WebSession).where(WebSession.digest == auth.token_digest(session_id)))


# --- projects and items --------------------------------------------------------------------


def create_project(session: Session, *, spec: ProjectIn) -> Project:
    if session.scalar(select(Project.id).where(Project.name == spec.name)) is not None:
        raise Conflict(f"project {spec.name!r} already exists")
    project = Project(
        name=spec.name,
        instructions=spec.instructions,
        overlap=spec.overlap,
        gold_rate=spec.gold_rate,
        questions=questions_json(spec.questions),
    )
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, *, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


def questions_of(project: Project) -> tuple[Question, ...]:
    """The project's questions (stored in their JSON form, checked when the project was made)."""
    return parse_questions(project.questions)


def checked_answers(
    questions: Sequence[Question],
    answers: Any,
    candidates: Sequence[dict[str, Any]],
    *,
    partial: bool = False,
) -> dict[str, Any]:
    """`answers` in normal form for an item with these stored candidates; `Invalid` (422) naming
    the question and the reason. `partial`: no question is required (a gold item's known answers)."""
    if partial:
        questions = [dataclasses.replace(q, required=False) for q in questions]
    try:
        return check_answers(
            questions, answers, len(candidates), frames=[c.get("frames") for c in candidates]
        )
    except LabelError as exc:
        raise Invalid(str(exc)) from None


KEYED_PUSH_ATTEMPTS = 5
"""Rounds of read-then-insert a keyed push gets while concurrent pushes store the same keys."""


def _duplicate_keys(items: Sequence[ItemIn]) -> None:
    first: dict[str, int] = {}
    for i, spec in enumerate(items):
        if spec.key is None:
            continue
        if spec.key in first:
            raise Invalid(f"items[{i}].key: {spec.key!r} is also the key of items[{first[spec.key]}]")
        first[spec.key] = i


def _lost_a_key_race(exc: DBAPIError) -> bool:
    """A unique-key violation, or a deadlock of two pushes that insert shared keys in other orders."""
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) == "40P01"


def item_ids_by_key(session: Session, *, project_id: int, keys: Sequence[str]) -> dict[str, int]:
    """The ids of the project's items that have one of `keys`."""
    if not keys:
        return {}
    rows = session.execute(select(Item.key, Item.id).where(Item.project_id == project_id, Item.key.in_(keys)))
    return {key: item_id for key, item_id in rows if key is not None}


def add_items(
    session: Session, *, project: Project, items: Sequence[ItemIn], media_names: set[str]
) -> list[int]:
    """Add items and return their ids in order; media names must be files already uploaded.

    An item whose key is already in the project is not added again: its stored row is kept as it
    is and its id answered. A concurrent push that stores the same key between our look-up and
    our insert makes the insert fail on the unique index (or, on PostgreSQL, deadlock with it when
    the two list shared keys in other orders); the insert is undone (a savepoint) and the keys are
    looked up again, so the same key never gives two rows and no push fails for it.
    """
    _duplicate_keys(items)
    questions = questions_of(project)
    pairs_only = [q.name for q in questions if q.pairs_only]
    specs: list[dict[str, object]] = []
    for i, spec in enumerate(items):
        candidates = [c.model_dump() for c in spec.candidates]
        for j, candidate in enumerate(candidates):
            if candidate["media"] is not None and candidate["media"] not in media_names:
                raise Invalid(
                    f"items[{i}].candidates[{j}].media: no uploaded media file named {candidate['media']!r}"
                )
        if pairs_only and len(candidates) != 2:
            raise Invalid(
                f"items[{i}].candidates: this project asks {', '.join(pairs_only)}, which compare two"
                f" candidates; the item has {len(candidates)}"
            )
        gold = None
        if spec.gold is not None:
            try:
                gold = checked_answers(questions, spec.gold, candidates, partial=True)
            except Invalid as exc:
                raise Invalid(f"items[{i}].gold: {exc.detail}") from None
        values = spec.model_dump(exclude={"candidates", "gold"})
        specs.append({**values, "candidates": candidates, "gold": gold})
    keys = [spec.key for spec in items if spec.key is not None]
    for _ in range(KEYED_PUSH_ATTEMPTS):
        known = item_ids_by_key(session, project_id=project.id, keys=keys)
        rows = [
            None
            if values["key"] in known
            else Item(project_id=project.id, taken=0, done=0, is_full=False, **values)
            for values in specs
        ]
        try:
            with session.begin_nested():
                session.add_all(row for row in rows if row is not None)
                session.flush()
        except DBAPIError as exc:
            if not keys or not _lost_a_key_race(exc):
                raise
            continue  # another push stored some of these keys a moment ago: look them up again
        return [
            known[str(values["key"])] if row is None else row.id
            for row, values in zip(rows, specs, strict=True)
        ]
    raise Conflict("items: concurrent pushes kept storing the same keys; retry the push")


def refresh_queue_statistics(session: Session, *, added: int) -> bool:
    """On PostgreSQL, refresh the planner's statistics of `items` when a push grew the table by at
    least half of what the planner believes it holds (True when refreshed).

    Until autovacuum gets to a table that has just grown (up to a minute later), the planner takes
    it for a few rows and plans the queue's pick as a scan of every free item followed by a sort:
    10-20 ms per pick at 20,000 items, against 0.1-0.4 ms reading the queue index in order.
    """
    if added <= 0 or session.get_bind().dialect.name != "postgresql":
        return False
    believed = session.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'items'::regclass"))
    if believed is not None and believed >= 2 * added:
        return False
    session.execute(text("ANALYZE items"))
    return True


def set_priorities(session: Session, *, project: Project, priorities: dict[int, float]) -> int:
    known = set(
        session.scalars(select(Item.id).where(Item.project_id == project.id, Item.id.in_(priorities))).all()
    )
    missing = sorted(set(priorities) - known)
    if missing:
        raise NotFound(f"items not in project {project.id}: {missing[:10]}")
    for item_id, priority in priorities.items():
        session.execute(update(Item).where(Item.id == item_id).values(priority=priority))
    return len(priorities)


# --- the queue -------------------------------------------------------------------------------


def _take_slot(session: Session, *, item_id: int, overlap: int, only_if_free: bool = False) -> bool:
    """One more open assignment on the item; False when `only_if_free` and it is full."""
    query = update(Item).where(Item.id == item_id)
    if only_if_free:
        query = query.where((Item.taken < overlap) | Item.is_gold)
    taken = session.execute(
        query.values(taken=Item.taken + 1, is_full=and_(~Item.is_gold, Item.taken + 1 >= overlap))
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def _give_slot_back(session: Session, *, item_id: int) -> None:
    session.execute(update(Item).where(Item.id == item_id).values(taken=Item.taken - 1, is_full=False))


def release_expired(session: Session, *, project_id: int, now: dt.datetime) -> int:
    """Expire stale locks and give their slots back to the queue."""
    item_ids = session.scalars(
        update(Assignment)
        .where(Assignment.project_id == project_id, Assignment.status == "open", Assignment.expires_at < now)
        .values(status="expired")
        .returning(Assignment.item_id)
    ).all()
    for item_id in sorted(item_ids):
        _give_slot_back(session, item_id=item_id)
    return len(item_ids)


def wants_gold(judged: int, gold_rate: float) -> bool:
    """Deterministic mixing: the n-th assignment is gold when it crosses a multiple of 1/rate."""
    return gold_rate > 0 and math.floor((judged + 1) * gold_rate) > math.floor(judged * gold_rate)


def _pick_and_take(session: Session, *, project: Project, annotator_id: int, gold: bool) -> Item | None:
    """Take a slot on the most useful item the annotator may have, in one UPDATE ... RETURNING."""
    candidate = aliased(Item)
    had = select(Assignment.item_id).where(
        Assignment.annotator_id == annotator_id, Assignment.project_id == project.id
    )
    chosen = select(candidate.id).where(
        candidate.project_id == project.id, candidate.is_gold == gold, candidate.id.not_in(had)
    )
    if not gold:
        chosen = chosen.where(~candidate.is_full, candidate.taken < project.overlap)
    chosen = chosen.order_by(candidate.priority.desc(), candidate.id).limit(1)

    def take(query: Select[Any]) -> Item | None:
        taken = (
            update(Item)
            .where(Item.id == query.scalar_subquery())
            .values(taken=Item.taken + 1, is_full=and_(~Item.is_gold, Item.taken + 1 >= project.overlap))
            .returning(Item)
        )
        options = {"synchronize_session": False, "populate_existing": True}
        return session.scalars(taken, execution_options=options).first()

    if session.get_bind().dialect.name != "postgresql":
        return take(chosen)
    # SKIP LOCKED spreads concurrent annotators over the items; but it also skips an item whose row
    # another annotator's transaction holds (a submission counting it done), and when that is the
    # last open slot the answer would read "nothing left". So an empty answer is asked once more,
    # waiting for those locks.
    return take(chosen.with_for_update(skip_locked=True)) or take(chosen.with_for_update())


def open_assignment(session: Session, *, project_id: int, annotator_id: int) -> Assignment | None:
    """The annotator's (oldest) open assignment in the project, or None."""
    return session.scalar(
        select(Assignment)
        .where(
            Assignment.project_id == project_id,
            Assignment.annotator_id == annotator_id,
            Assignment.status == "open",
        )
        .order_by(Assignment.id)
        .limit(1)
    )


def next_assignment(
    session: Session,
    *,
    project: Project,
    annotator: User,
    lock_s: int,
    now: dt.datetime | None = None,
    release: bool = True,
) -> Assignment | None:
    """The annotator's open assignment, or a new one locked for `lock_s` seconds; None when done.

    `release` first expires stale locks (callers may do that only every so often).
    """
    now = now or utcnow()
    if release:
        release_expired(session, project_id=project.id, now=now)
    current = open_assignment(session, project_id=project.id, annotator_id=annotator.id)
    if current is not None:
        return current
    order = [False]
    if project.gold_rate > 0:
        judged = session.scalar(
            select(func.count(Judgement.id)).where(
                Judgement.annotator_id == annotator.id, Judgement.project_id == project.id
            )
        )
        order = [True, False] if wants_gold(judged or 0, project.gold_rate) else [False]
    for gold in order:
        item = _pick_and_take(session, project=project, annotator_id=annotator.id, gold=gold)
        if item is None:
            continue
        assignment = Assignment(
            item_id=item.id,
            annotator_id=annotator.id,
            project_id=project.id,
            status="open",
            created_at=now,
            expires_at=now + dt.timedelta(seconds=lock_s),
        )
        assignment.item = item
        session.add(assignment)
        session.flush()
        return assignment
    return None


def judgement_by_key(session: Session, *, annotator_id: int, key: str) -> Judgement | None:
    return session.scalar(
        select(Judgement).where(Judgement.annotator_id == annotator_id, Judgement.idempotency_key == key)
    )


def _label_values(labels: Labels, project: Project, item: Item) -> dict[str, object]:
    """The stored columns of a verdict: its answers checked against the project's questions."""
    if labels.skipped:
        return {"skipped": True, "skip_reason": labels.skip_reason, "answers": {}}
    answers = checked_answers(questions_of(project), labels.answers, item.candidates)
    return {"skipped": False, "skip_reason": "", "answers": answers}


def submit_judgement(
    session: Session,
    *,
    assignment_id: int,
    annotator: User,
    labels: JudgementIn,
    now: dt.datetime | None = None,
) -> tuple[Judgement, bool]:
    """Record a judgement for an assignment; returns (judgement, created). A replay returns the original."""
    now = now or utcnow()
    previous = judgement_by_key(session, annotator_id=annotator.id, key=labels.idempotency_key)
    assignment = session.get(Assignment, assignment_id)
    if assignment is None:
        raise NotFound(f"assignment {assignment_id} not found")
    if assignment.annotator_id != annotator.id:
        raise Forbidden(f"assignment {assignment_id} belongs to another annotator")
    if previous is not None:
        if previous.item_id != assignment.item_id:
            raise Conflict(f"idempotency key {labels.idempotency_key!r} was already used for another item")
        return previous, False
    if assignment.status == "done":
        raise Conflict(f"assignment {assignment_id} is already judged")
    item = assignment.item
    project = session.get(Project, assignment.project_id)
    assert project is not None
    values = _label_values(labels, project, item)
    # open -> done only if still open: a concurrent request may have expired it a moment ago
    still_open = session.execute(
        update(Assignment)
        .where(Assignment.id == assignment.id, Assignment.status == "open")
        .values(status="done")
    ).rowcount  # type: ignore[attr-defined]
    if not still_open:  # expired: its slot went back to the queue, so take one again if free
        if not _take_slot(session, item_id=item.id, overlap=project.overlap, only_if_free=True):
            raise Conflict(f"assignment {assignment_id} expired and its item went to other annotators")
        session.execute(update(Assignment).where(Assignment.id == assignment.id).values(status="done"))
    judgement = Judgement(
        item_id=item.id,
        project_id=assignment.project_id,
        annotator_id=annotator.id,
        idempotency_key=labels.idempotency_key,
        created_at=now,
        updated_at=now,
        **values,
    )
    session.add(judgement)
    if labels.skipped:  # the slot goes back to the queue for someone else
        _give_slot_back(session, item_id=item.id)
    else:
        session.execute(update(Item).where(Item.id == item.id).values(done=Item.done + 1))
    session.flush()
    return judgement, True


def get_judgement(session: Session, *, judgement_id: int, user: User) -> Judgement:
    judgement = session.get(Judgement, judgement_id)
    if judgement is None:
        raise NotFound(f"judgement {judgement_id} not found")
    if user.role == "annotator" and judgement.annotator_id != user.id:
        raise Forbidden(f"judgement {judgement_id} belongs to another annotator")
    return judgement


def update_judgement(session: Session, *, judgement_id: int, user: User, labels: Labels) -> Judgement:
    """An annotator corrects their own judgement (a skip cannot be turned into labels or back)."""
    judgement = get_judgement(session, judgement_id=judgement_id, user=user)
    if judgement.annotator_id != user.id:
        raise Forbidden(f"judgement {judgement_id} belongs to another annotator; only they can change it")
    if labels.skipped != judgement.skipped:
        raise Conflict("a skipped judgement stays skipped and a labelled one stays labelled")
    project = session.get(Project, judgement.project_id)
    item = session.get(Item, judgement.item_id)
    assert project is not None and item is not None
    for key, value in _label_values(labels, project, item).items():
        setattr(judgement, key, value)
    judgement.updated_at = utcnow()
    session.flush()
    return judgement


def list_judgements(
    session: Session,
    *,
    project_id: int,
    annotator_id: int | None = None,
    after_id: int = 0,
    limit: int = 500,
) -> list[Judgement]:
    query = select(Judgement).where(Judgement.project_id == project_id, Judgement.id > after_id)
    if annotator_id is not None:
        query = query.where(Judgement.annotator_id == annotator_id)
    return list(session.scalars(query.order_by(Judgement.id).limit(limit)).all())


def annotator_progress(session: Session, *, project: Project, annotator_id: int) -> dict[str, int]:
    mine = session.scalar(
        select(func.count(Judgement.id)).where(
            Judgement.project_id == project.id, Judgement.annotator_id == annotator_id
        )
    )
    total = session.scalar(select(func.count(Item.id)).where(Item.project_id == project.id, ~Item.is_gold))
    complete = session.scalar(
        select(func.count(Item.id)).where(
            Item.project_id == project.id, ~Item.is_gold, Item.done >= project.overlap
        )
    )
    return {"mine": mine or 0, "total": total or 0, "complete": complete or 0}
