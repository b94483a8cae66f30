"""JSON API routes. Thin: validate, call `crud`, commit, shape the answer."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import State

from alignloop.feedback.schema import LabelError
from alignloop.platform import auth, crud, export, hotpath, media, stats
from alignloop.platform.api.deps import (
    AdminDep,
    AnyUserDep,
    SessionDep,
    SettingsDep,
    TrainerDep,
    UserDep,
    bearer_token,
    check_login,
)
from alignloop.platform.models import Assignment, Project, User, utcnow
from alignloop.platform.schemas import (
    MAX_ID,
    AssignmentOut,
    ItemOut,
    ItemsIn,
    ItemsOut,
    JudgementIn,
    JudgementOut,
    JudgementsOut,
    Labels,
    NextOut,
    PasswordChangeIn,
    PrioritiesIn,
    ProjectIn,
    ProjectOut,
    SubmittedOut,
    TokenIn,
    TokenInfo,
    TokenOut,
    UserChangeIn,
    UserIn,
    UserOut,
)

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID)]

router = APIRouter(prefix="/api")


# --- people --------------------------------------------------------------------------------------


@router.post("/tokens", status_code=201, tags=["auth"])
def create_token(body: TokenIn, request: Request, session: SessionDep, settings: SettingsDep) -> TokenOut:
    """Exchange a name and password for an API token (shown once; stored only as a digest).

    Failed attempts are counted per name and per client address: past the limit the answer is
    429 with Retry-After.
    """
    user = check_login(request, session, name=body.name, password=body.password)
    if user is None:
        session.commit()
        raise HTTPException(401, "wrong name or password")
    expires_at = utcnow() + dt.timedelta(seconds=body.expires_in_s or settings.token_lifetime_s)
    token = crud.create_token(session, user=user, label=body.label, expires_at=expires_at)
    session.commit()
    return TokenOut(token=token, user_id=user.id, role=user.role, expires_at=expires_at)  # type: ignore[arg-type]


@router.get("/tokens", tags=["auth"])
def list_tokens(user: UserDep, session: SessionDep) -> list[TokenInfo]:
    """The caller's API tokens (never the tokens themselves), expired ones included until the
    next token is made (each one made deletes every expired token)."""
    return [TokenInfo.model_validate(t) for t in crud.list_tokens(session, user_id=user.id)]


@router.delete("/tokens/current", status_code=204, tags=["auth"])
def revoke_token(request: Request, user: UserDep, session: SessionDep) -> Response:
    """Revoke the token this request carries."""
    token = bearer_token(request)
    assert token is not None
    crud.revoke_token(session, token=token)
    session.commit()
    request.app.state.token_cache.forget(auth.token_digest(token))
    return Response(status_code=204)


@router.delete("/tokens/{token_id}", status_code=204, tags=["auth"])
def revoke_token_id(token_id: Id, request: Request, user: UserDep, session: SessionDep) -> Response:
    """Revoke one of the caller's tokens (an admin: anyone's); it stops working at once."""
    digest = crud.revoke_token_id(session, token_id=token_id, by=user)
    session.commit()
    request.app.state.token_cache.forget(digest)
    return Response(status_code=204)


@router.get("/me", tags=["auth"])
def me(user: UserDep) -> UserOut:
    return UserOut.model_validate(user)


@router.put("/me/password", status_code=204, tags=["auth"])
def change_password(body: PasswordChangeIn, request: Request, user: UserDep, session: SessionDep) -> Response:
    """Change one's own password (the current one is checked and throttled like a login); every
    web session of the user ends, API tokens stay."""
    if check_login(request, session, name=user.name, password=body.current_password) is None:
        session.commit()
        raise HTTPException(403, "current_password: wrong password")
    session.commit()
    crud.set_password(session, user_id=user.id, password=body.new_password, revoke_tokens=False)
    session.commit()
    return Response(status_code=204)


@router.post("/users", status_code=201, tags=["admin"])
def create_user(body: UserIn, admin: AdminDep, session: SessionDep) -> UserOut:
    user = crud.create_user(session, name=body.name, password=body.password, role=body.role)
    session.commit()
    return UserOut.model_validate(user)


@router.get("/users", tags=["admin"])
def list_users(admin: AdminDep, session: SessionDep) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in session.scalars(select(User).order_by(User.id))]


def _forget_tokens_of(request: Request, user_id: int) -> None:
    """This process stops answering the user's tokens from memory at once (others: within the TTL)."""
    request.app.state.token_cache.forget_where(lambda cached: cached.id == user_id)


@router.patch("/users/{user_id}", tags=["admin"])
def change_user(
    user_id: Id, body: UserChangeIn, request: Request, admin: AdminDep, session: SessionDep
) -> UserOut:
    """Deactivate or reactivate a user, or reset their password. Deactivating, or a new password,
    ends every web session of theirs and revokes their API tokens at once."""
    if body.password is not None:
        crud.set_password(session, user_id=user_id, password=body.password, revoke_tokens=True)
    user = crud.get_user(session, user_id=user_id)
    if body.active is not None:
        crud.set_active(session, user=user, active=body.active, by=admin)
    session.commit()
    _forget_tokens_of(request, user_id)
    return UserOut.model_validate(user)


@router.get("/users/{user_id}/tokens", tags=["admin"])
def user_tokens(user_id: Id, admin: AdminDep, session: SessionDep) -> list[TokenInfo]:
    """A user's API tokens (never the tokens themselves)."""
    crud.get_user(session, user_id=user_id)
    return [TokenInfo.model_validate(t) for t in crud.list_tokens(session, user_id=user_id)]


# --- projects, items, media ---------------------------------------------------------------------


@router.post("/projects", status_code=201, tags=["projects"])
def create_project(body: ProjectIn, admin: AdminDep, session: SessionDep) -> ProjectOut:
    project = crud.create_project(session, spec=body)
    session.commit()
    return ProjectOut.model_validate(project)


@router.get("/projects", tags=["projects"])
def list_projects(user: UserDep, session: SessionDep) -> list[ProjectOut]:
    return [ProjectOut.model_validate(p) for p in session.scalars(select(Project).order_by(Project.id))]


@router.get("/projects/{project_id}", tags=["projects"])
def get_project(project_id: Id, user: UserDep, session: SessionDep) -> ProjectOut:
    return ProjectOut.model_validate(crud.get_project(session, project_id=project_id))


@router.post("/projects/{project_id}/items", status_code=201, tags=["items"])
def add_items(
    project_id: Id, body: ItemsIn, user: TrainerDep, session: SessionDep, settings: SettingsDep
) -> ItemsOut:
    """Push comparison items (text candidates, or names of uploaded media files)."""
    project = crud.get_project(session, project_id=project_id)
    media_names = {
        c.media
        for spec in body.items
        for c in spec.candidates
        if c.media is not None and media.path_of(settings.media_dir, c.media) is not None
    }
    ids = crud.add_items(session, project=project, items=body.items, media_names=media_names)
    session.commit()
    if crud.refresh_queue_statistics(session, added=len(body.items)):
        session.commit()
    return ItemsOut(ids=ids)


@router.post("/projects/{project_id}/priorities", tags=["items"])
def set_priorities(
    project_id: Id, body: PrioritiesIn, user: TrainerDep, session: SessionDep
) -> dict[str, int]:
    """Set item priorities (e.g. reward-model disagreement); the queue serves the highest first."""
    project = crud.get_project(session, project_id=project_id)
    updated = crud.set_priorities(
        session, project=project, priorities={p.item_id: p.priority for p in body.priorities}
    )
    session.commit()
    return {"updated": updated}


@router.post("/media", status_code=201, tags=["items"])
async def upload_media(
    request: Request,
    user: TrainerDep,
    settings: SettingsDep,
    filename: Annotated[str, Query(min_length=1, max_length=255, pattern=r"^[^\x00/]+$")],
) -> dict[str, str]:
    """Upload one clip as the raw request body; answers the name to use as a candidate's `media`."""
    data = await request.body()
    try:
        name = media.store(settings.media_dir, filename, data)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"name": name}


@router.get("/media/{name}", tags=["items"], response_class=FileResponse)
def get_media(name: str, user: AnyUserDep, settings: SettingsDep) -> FileResponse:
    path = media.path_of(settings.media_dir, name)
    if path is None:
        raise HTTPException(404, f"no media file named {name!r}")
    return FileResponse(path, media_type=media.served_type(path))


# --- annotating ----------------------------------------------------------------------------------


RELEASE_EVERY_S = 1.0


class ReleaseClock:
    """When each project's stale locks were last expired, by this app (one per app, so that two
    apps in one process, or a test's fresh database, do not wait on each other's clock)."""

    def __init__(self, every_s: float = RELEASE_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[int, float] = {}

    def due(self, project_id: int) -> bool:
        """Expire stale locks at most once every `every_s` per project (it is a write)."""
        now = time.monotonic()
        if now - self._last.get(project_id, -self.every_s) < self.every_s:
            return False
        self._last[project_id] = now
        return True


def release_due(request: Request, project_id: int) -> bool:
    clock: ReleaseClock = request.app.state.release_clock
    return clock.due(project_id)


def _assignment_out(request: Request, assignment: Assignment, project: Project) -> AssignmentOut:
    """The assignment as it goes out; the hot path remembers it (and the project's rules) for
    the submission that will follow."""
    memory: hotpath.Memory = request.app.state.memory
    if project.id not in memory.projects:
        memory.projects[project.id] = hotpath.ProjectRules(
            crud.questions_of(project), project.overlap, project.gold_rate
        )
    memory.hand_out(assignment.id, assignment.annotator_id, project.id, assignment.item.candidates)
    return AssignmentOut(
        id=assignment.id, expires_at=assignment.expires_at, item=ItemOut.model_validate(assignment.item)
    )


@router.post("/projects/{project_id}/next", tags=["annotate"])
def next_assignment(
    project_id: Id, request: Request, user: UserDep, session: SessionDep, settings: SettingsDep
) -> NextOut:
    """The caller's next item, locked to them for a while; `assignment` is null when nothing is left."""
    project = crud.get_project(session, project_id=project_id)
    try:
        assignment = crud.next_assignment(
            session,
            project=project,
            annotator=user,
            lock_s=settings.lock_s,
            release=release_due(request, project_id),
        )
        session.commit()
    except IntegrityError as exc:  # the same annotator asked twice at once; the other request won
        session.rollback()
        raise HTTPException(
            409, "another request of yours took an assignment at the same time; retry"
        ) from exc
    return NextOut(assignment=None if assignment is None else _assignment_out(request, assignment, project))


def _submit(
    session: SessionDep, user: User, assignment_id: int, body: JudgementIn, *, commit: bool = True
) -> tuple[JudgementOut, bool]:
    try:
        judgement, created = crud.submit_judgement(
            session, assignment_id=assignment_id, annotator=user, labels=body
        )
        if commit:
            session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent retry of the same submission got there first
        previous = crud.judgement_by_key(session, annotator_id=user.id, key=body.idempotency_key)
        if previous is None:
            raise HTTPException(409, f"assignment {assignment_id} is already judged") from None
        judgement, created = previous, False
    return JudgementOut.model_validate(judgement), created


@router.post("/assignments/{assignment_id}/judgement", status_code=201, tags=["annotate"])
def submit(
    assignment_id: Id, body: JudgementIn, user: UserDep, session: SessionDep, response: Response
) -> JudgementOut:
    """Judge an assigned item. Retrying with the same idempotency key returns the stored judgement (200)."""
    judgement, created = _submit(session, user, assignment_id, body)
    if not created:
        response.status_code = 200
    return judgement


def _release_expired(factory: sessionmaker[Session], project_id: int) -> None:
    with factory() as session:
        crud.release_expired(session, project_id=project_id, now=utcnow())
        session.commit()


async def released(state: State, project_id: int) -> None:
    """Expire the project's stale locks when it is time (after a short-path submission)."""
    clock: ReleaseClock = state.release_clock
    if clock.due(project_id):
        await run_in_threadpool(_release_expired, state.sessionmaker, project_id)


def _submit_and_next_general(
    request: Request, user: User, assignment_id: int, body: JudgementIn, lock_s: int
) -> tuple[SubmittedOut, int]:
    """judgement-and-next through the ORM, for every case; answers the result and its status code."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        judgement, created = _submit(session, user, assignment_id, body, commit=False)
        project = crud.get_project(session, project_id=judgement.project_id)
        try:
            assignment = crud.next_assignment(
                session,
                project=project,
                annotator=user,
                lock_s=lock_s,
                release=release_due(request, project.id),
            )
            session.commit()
        except IntegrityError:  # a parallel request of the same annotator took one at the same time
            session.rollback()  # that undid the judgement too: store it on its own, then hand out theirs
            judgement, created = _submit(session, user, assignment_id, body)
            project = crud.get_project(session, project_id=judgement.project_id)
            assignment = crud.next_assignment(
                session, project=project, annotator=user, lock_s=lock_s, release=False
            )
            session.commit()
        answer = SubmittedOut(
            judgement=judgement,
            assignment=None if assignment is None else _assignment_out(request, assignment, project),
        )
    return answer, 201 if created else 200


@router.post(
    "/assignments/{assignment_id}/judgement-and-next",
    status_code=201,
    tags=["annotate"],
    response_model=SubmittedOut,
)
async def submit_and_next(
    assignment_id: Id, body: JudgementIn, user: UserDep, request: Request, settings: SettingsDep
) -> Response:
    """Judge an assigned item and get the next assignment of the same project in one round trip.

    The judgement and the next assignment are committed together; a retry with the same key
    returns the judgement (200) and the next item.
    """
    try:  # PostgreSQL, an assignment this process handed out: one statement on the event loop
        short = await hotpath.common_case(
            request.app.state,
            user_id=user.id,
            assignment_id=assignment_id,
            labels=body,
            lock_s=settings.lock_s,
            now=utcnow(),
        )
    except LabelError as exc:
        raise HTTPException(422, str(exc)) from None
    if short is not None:
        await released(request.app.state, short[1])
        return Response(short[0], status_code=201, media_type="application/json")
    answer, status = await run_in_threadpool(
        _submit_and_next_general, request, user, assignment_id, body, settings.lock_s
    )
    return Response(answer.model_dump_json(), status_code=status, media_type="application/json")


@router.get("/judgements/mine", tags=["annotate"])
def my_judgements(
    user: UserDep,
    session: SessionDep,
    project_id: Annotated[int, Query(ge=1, le=MAX_ID)],
    after_id: AfterId = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JudgementsOut:
    rows = crud.list_judgements(
        session, project_id=project_id, annotator_id=user.id, after_id=after_id, limit=limit
    )
    return JudgementsOut(
        judgements=[JudgementOut.model_validate(j) for j in rows], next_after=rows[-1].id if rows else None
    )


@router.get("/judgements/{judgement_id}", tags=["annotate"])
def get_judgement(judgement_id: Id, user: UserDep, session: SessionDep) -> JudgementOut:
    """One judgement: annotators see only their own."""
    return JudgementOut.model_validate(crud.get_judgement(session, judgement_id=judgement_id, user=user))


@router.put("/judgements/{judgement_id}", tags=["annotate"])
def update_judgement(judgement_id: Id, body: Labels, user: UserDep, session: SessionDep) -> JudgementOut:
    """Change one's own judgement."""
    judgement = crud.update_judgement(session, judgement_id=judgement_id, user=user, labels=body)
    session.commit()
    return JudgementOut.model_validate(judgement)


# --- trainers and admins -------------------------------------------------------------------------


@router.get("/projects/{project_id}/judgements", tags=["results"])
def project_judgements(
    project_id: Id,
    user: TrainerDep,
    session: SessionDep,
    after_id: AfterId = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JudgementsOut:
    """Every annotator's judgements in a project, oldest first, paged by `after_id`."""
    crud.get_project(session, project_id=project_id)
    rows = crud.list_judgements(session, project_id=project_id, after_id=after_id, limit=limit)
    return JudgementsOut(
        judgements=[JudgementOut.model_validate(j) for j in rows], next_after=rows[-1].id if rows else None
    )


@router.get("/projects/{project_id}/stats", tags=["results"])
def project_stats(project_id: Id, admin: AdminDep, session: SessionDep) -> stats.ProjectStats:
    """Progress, per-annotator counts and gold accuracy, agreement and the model leaderboard."""
    project = crud.get_project(session, project_id=project_id)
    return stats.project_stats(session, project=project)


@router.get("/projects/{project_id}/export", tags=["results"])
def export_project(
    project_id: Id,
    admin: AdminDep,
    session: SessionDep,
    min_judgements: Annotated[int, Query(ge=1, le=1000)] = 1,
    format: Annotated[
        str,
        Query(
            description="auto (PKU-SafeRLHF where the project has a pairwise question and two candidates,"
            " else judgements), judgements (every answer of every kind), pku-saferlhf, preference,"
            " correction (the Aligner trainer's input) or supervised (prompt, corrected)."
        ),
    ] = "auto",
) -> StreamingResponse:
    """The project as JSONL: one judged item per line, or the records another format holds."""
    project = crud.get_project(session, project_id=project_id)
    lines = export.lines(session, project=project, fmt=format, min_judgements=min_judgements)
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="project-{project.id}.jsonl"'},
    )
