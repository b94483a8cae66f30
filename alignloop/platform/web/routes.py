"""Pages for people: login, the labelling page, the admin dashboard, one's account. Every form
carries a CSRF token; every error is a page."""

from __future__ import annotations

import base64
import datetime as dt
import json
from http import HTTPStatus
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.schema import (
    QUESTION_PRESETS,
    CorrectionText,
    FreeText,
    IsSafe,
    Mark,
    Pairwise,
    Question,
    Ranking,
    Rating,
    SaferChoice,
    questions_json,
    side_letter,
)
from alignloop.platform import auth, crud, export, logins, media, stats
from alignloop.platform.api.deps import SESSION_KEY, SessionDep, SettingsDep, check_login, session_user
from alignloop.platform.models import ApiToken, Assignment, Project, User, utcnow
from alignloop.platform.schemas import MAX_ID, JudgementIn, ProjectIn

HERE = FilePath(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["media_kind"] = media.media_kind
templates.env.globals["side_letter"] = side_letter
templates.env.globals["STRIP_COLUMNS"] = media.STRIP_COLUMNS
router = APIRouter(tags=["pages"])
CSRF_MESSAGE = "CSRF token missing or invalid; reload the page and try again"
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
FormText = Annotated[str, Form(max_length=256)]


class LoginRequired(Exception):
    """Raised by pages that need a logged-in user; answered with a redirect to /login."""


def csrf_token(request: Request) -> str:
    if "session" not in request.scope:  # an error answered before the session middleware ran
        return ""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = auth.new_csrf_token()
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request, csrf_token: Annotated[str, Form(max_length=256)] = "") -> None:
    """A dependency of every form: its CSRF token must match the session's."""
    if not auth.csrf_matches(request.session.get("csrf"), csrf_token):
        raise HTTPException(403, CSRF_MESSAGE)


async def checked_form(request: Request) -> Any:
    """The posted form, after checking its CSRF token against the session's."""
    form = await request.form()
    await check_csrf(request, str(form.get("csrf_token", "")))
    return form


Csrf = Annotated[None, Depends(check_csrf)]


def web_user(request: Request, session: SessionDep) -> User:
    user = session_user(request, session)
    if user is None:
        raise LoginRequired()
    return user


def web_admin(user: Annotated[User, Depends(web_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "only admins may see this page")
    return user


WebUser = Annotated[User, Depends(web_user)]
WebAdmin = Annotated[User, Depends(web_admin)]


def render(
    request: Request,
    name: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    context.setdefault("user", None)
    return templates.TemplateResponse(
        request, name, {"csrf": csrf_token(request), **context}, status_code=status_code, headers=headers
    )


def error_page(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """An error as a page (the JSON API answers `{"detail": ...}` instead)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return render(request, "error.html", status, headers, status=status, title=title, detail=detail)


@router.get("/api/docs", include_in_schema=False)
def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI for /api/openapi.json, every file of it served by this server (works offline)."""
    return templates.TemplateResponse(request, "docs.html", {})


@router.get("/")
def home(request: Request, session: SessionDep) -> Response:
    user = session_user(request, session)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/admin" if user.role == "admin" else "/projects", status_code=303)


@router.get("/login")
def login_page(request: Request, next: Annotated[str, Query(max_length=2000)] = "/") -> HTMLResponse:
    return render(request, "login.html", next=next, error=None)


def _local(path: str) -> str:
    """Only same-site redirects after login ("//host" and "/\\host" lead elsewhere in browsers)."""
    parsed = urlparse(path)
    same_site = path.startswith("/") and not path.startswith(("//", "/\\"))
    return path if same_site and not parsed.scheme and not parsed.netloc else "/"


def _log_in(request: Request, session: Session, name: str, password: str) -> str | None:
    """A new web session's id for the right name and password, else None (TooManyAttempts when
    throttled)."""
    user = check_login(request, session, name=name, password=password)
    if user is None:
        session.commit()
        return None
    lifetime = request.app.state.settings.session_max_age_s
    session_id = crud.create_web_session(session, user=user, lifetime_s=lifetime)
    session.commit()
    return session_id


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    _: Csrf,
    name: FormText = "",
    password: FormText = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Log in; wrong passwords are counted per name and per client address (429 past the limit)."""
    try:
        session_id = await run_in_threadpool(_log_in, request, session, name, password)
    except logins.TooManyAttempts as exc:
        return render(
            request,
            "login.html",
            status_code=429,
            headers={"Retry-After": str(exc.retry_after_s)},
            next=next,
            error=exc.detail[0].upper() + exc.detail[1:] + ".",
        )
    if session_id is None:
        return render(request, "login.html", status_code=401, next=next, error="Wrong name or password.")
    request.session.clear()
    request.session[SESSION_KEY] = session_id
    request.session["csrf"] = auth.new_csrf_token()
    return RedirectResponse(_local(next), status_code=303)


@router.post("/logout")
def logout(request: Request, session: SessionDep, _: Csrf) -> Response:
    """End the session on the server too: a copy of the cookie no longer logs anyone in."""
    session_id = request.session.get(SESSION_KEY)
    if isinstance(session_id, str):
        crud.end_web_session(session, session_id=session_id)
        session.commit()
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/projects")
def projects_page(request: Request, user: WebUser, session: SessionDep) -> HTMLResponse:
    projects = session.scalars(select(Project).order_by(Project.id)).all()
    return render(request, "projects.html", user=user, projects=projects)


def _label_page(
    request: Request,
    session: SessionDep,
    user: User,
    project: Project,
    assignment: Assignment | None,
    error: str | None,
) -> HTMLResponse:
    progress = crud.annotator_progress(session, project=project, annotator_id=user.id)
    return render(
        request,
        "label.html",
        status_code=422 if error else 200,
        user=user,
        project=project,
        questions=crud.questions_of(project),
        assignment=assignment,
        item=assignment.item if assignment else None,
        progress=progress,
        error=error,
        empty=request.query_params.get("empty") == "1",
    )


def _open_assignment(session: SessionDep, project: Project, user: User) -> Assignment | None:
    """The annotator's open assignment in the project, without taking a new one."""
    return crud.open_assignment(session, project_id=project.id, annotator_id=user.id)


@router.get("/projects/{project_id}/label")
def label_page(request: Request, project_id: Id, user: WebUser, session: SessionDep) -> HTMLResponse:
    """The labelling page. It only reads: it shows the annotator's open assignment, or a button
    that takes the next one (a POST, so a link from elsewhere never locks an item)."""
    project = crud.get_project(session, project_id=project_id)
    return _label_page(request, session, user, project, _open_assignment(session, project, user), None)


@router.post("/projects/{project_id}/next")
async def label_next(
    request: Request, project_id: Id, user: WebUser, session: SessionDep, settings: SettingsDep
) -> Response:
    """Take the next item (locked to the annotator for a while) and show it."""
    await checked_form(request)
    project = crud.get_project(session, project_id=project_id)
    taken = crud.next_assignment(session, project=project, annotator=user, lock_s=settings.lock_s)
    session.commit()
    return RedirectResponse(f"/projects/{project_id}/label{'' if taken else '?empty=1'}", status_code=303)


def answers_from_form(questions: tuple[Question, ...], form: Any, n: int) -> dict[str, Any]:
    """The answer document of the labelling form. Fields are named `q.NAME` (a choice, free
    text), `q.NAME.I` (candidate I's rank, a mark: a frame or "safe"), `q.NAME.I.safe`
    ("safe"/"unsafe"), `q.NAME.I.harms`, `q.NAME.I.severity`, `q.NAME.ASPECT.I` (a score),
    `q.NAME.candidate` and `q.NAME.text` (a correction; left as pre-filled, an optional one
    is not an answer). Unanswered questions are left out; `check_answers` judges the rest."""

    def get(name: str) -> str:
        return str(form.get(name, "")).strip()

    def number(value: str) -> Any:
        return int(value) if value.lstrip("-").isdigit() else value

    out: dict[str, Any] = {}
    for q in questions:
        p = f"q.{q.name}"
        value: Any = None
        if isinstance(q, (Pairwise, SaferChoice, FreeText)):
            value = get(p) or None
        elif isinstance(q, IsSafe):
            entries: list[Any] = []
            for i in range(n):
                flag = get(f"{p}.{i}.safe")
                unsafe = flag == "unsafe"
                entries.append(
                    None
                    if flag not in ("safe", "unsafe")
                    else {
                        "safe": not unsafe,
                        "harms": form.getlist(f"{p}.{i}.harms") if unsafe else [],
                        "severity": (get(f"{p}.{i}.severity") or None) if unsafe else None,
                    }
                )
            value = entries if any(e is not None for e in entries) else None
        elif isinstance(q, (Ranking, Mark)):
            raw = [get(f"{p}.{i}") for i in range(n)]
            marks = [None if isinstance(q, Mark) and v == "safe" else number(v) for v in raw]
            value = marks if any(raw) else None
        elif isinstance(q, Rating):
            scores = {
                a: [number(get(f"{p}.{a}.{i}")) if get(f"{p}.{a}.{i}") else None for i in range(n)]
                for a in q.aspects
            }
            value = scores if any(v is not None for row in scores.values() for v in row) else None
        elif isinstance(q, CorrectionText):
            candidate, text = get(f"{p}.candidate"), str(form.get(f"{p}.text", ""))
            original = str(form.get(f"{p}.original", ""))
            if text.strip() and (q.required or text.strip() != original.strip()):
                value = {"candidate": candidate, "text": text}
        if value is not None:
            out[q.name] = value
    return out


@router.post("/projects/{project_id}/label")
async def label_submit(
    request: Request, project_id: Id, user: WebUser, session: SessionDep, settings: SettingsDep
) -> Response:
    form = await checked_form(request)
    project = crud.get_project(session, project_id=project_id)
    assignment: Assignment | None = None
    try:
        assignment_id = int(str(form.get("assignment_id", "")))
        if not 1 <= assignment_id <= MAX_ID:
            raise ValueError(assignment_id)
        assignment = session.get(Assignment, assignment_id)
        if assignment is None or assignment.annotator_id != user.id:
            raise crud.Forbidden(f"assignment {assignment_id} is not yours")
        skipped = form.get("skipped") == "1"
        labels = JudgementIn(
            idempotency_key=str(form.get("idempotency_key", "")),
            skipped=skipped,
            skip_reason=str(form.get("skip_reason", "")) if skipped else "",
            answers={}
            if skipped
            else answers_from_form(crud.questions_of(project), form, len(assignment.item.candidates)),
        )
        crud.submit_judgement(session, assignment_id=assignment_id, annotator=user, labels=labels)
        taken = crud.next_assignment(session, project=project, annotator=user, lock_s=settings.lock_s)
        session.commit()
    except ValidationError as exc:
        session.rollback()
        message = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        return _label_page(request, session, user, project, _open_assignment(session, project, user), message)
    except ValueError:
        return _label_page(request, session, user, project, None, "assignment_id: missing or not a number")
    except IntegrityError:
        session.rollback()  # a double submission of the same form: the first one counts
        return RedirectResponse(f"/projects/{project_id}/label", status_code=303)
    except crud.PlatformError as exc:
        session.rollback()
        return _label_page(
            request, session, user, project, _open_assignment(session, project, user), exc.detail
        )
    return RedirectResponse(f"/projects/{project_id}/label{'' if taken else '?empty=1'}", status_code=303)


@router.get("/admin")
def admin_page(request: Request, user: WebAdmin, session: SessionDep) -> HTMLResponse:
    projects = session.scalars(select(Project).order_by(Project.id)).all()
    users = session.scalars(select(User).order_by(User.id)).all()
    progress = {p.id: stats.progress(session, project=p) for p in projects}
    return render(
        request,
        "admin.html",
        user=user,
        projects=projects,
        users=users,
        progress=progress,
        message=None,
        presets=json.dumps({k: questions_json(v) for k, v in QUESTION_PRESETS.items()}),
        presets_names=list(QUESTION_PRESETS),
    )


@router.post("/admin/users")
def admin_create_user(
    request: Request,
    user: WebAdmin,
    session: SessionDep,
    _: Csrf,
    name: Annotated[str, Form()] = "",  # the name rule says what is wrong with it, length included
    password: FormText = "",
    role: Annotated[Literal["admin", "trainer", "annotator"], Form()] = "annotator",
) -> Response:
    """The same rule for names as the API's (`names.normalise_name`, no look-alikes)."""
    crud.create_user(session, name=name, password=password, role=role)
    session.commit()
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/projects")
def admin_create_project(
    request: Request,
    user: WebAdmin,
    session: SessionDep,
    _: Csrf,
    name: Annotated[str, Form(max_length=128)] = "",
    overlap: Annotated[int, Form(ge=1, le=100)] = 1,
    gold_rate: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    instructions: Annotated[str, Form(max_length=20_000)] = "",
    questions: Annotated[str, Form(max_length=200_000)] = "",
) -> Response:
    """Create a project; its questions come as the JSON list of the form's `questions` field
    (the page fills it from a preset), the default questions when empty."""
    fields: dict[str, Any] = {
        "name": name,
        "overlap": overlap,
        "gold_rate": gold_rate,
        "instructions": instructions,
    }
    try:
        if questions.strip():
            fields["questions"] = json.loads(questions)
        spec = ProjectIn(**fields)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"questions: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValidationError as exc:
        raise HTTPException(422, f"project form: {_form_errors(exc)}") from exc
    crud.create_project(session, spec=spec)
    session.commit()
    return RedirectResponse("/admin", status_code=303)


def _form_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


@router.get("/admin/users/{user_id}")
def admin_user_page(request: Request, user_id: Id, user: WebAdmin, session: SessionDep) -> HTMLResponse:
    """One person: deactivate or reactivate, reset the password, see and revoke their tokens."""
    person = crud.get_user(session, user_id=user_id)
    tokens = crud.list_tokens(session, user_id=user_id)
    return render(request, "admin_user.html", user=user, person=person, tokens=tokens, now=utcnow())


def _forget_tokens_of(request: Request, user_id: int) -> None:
    request.app.state.token_cache.forget_where(lambda cached: cached.id == user_id)


@router.post("/admin/users/{user_id}/active")
def admin_set_active(
    request: Request,
    user_id: Id,
    user: WebAdmin,
    session: SessionDep,
    _: Csrf,
    active: Annotated[bool, Form()] = False,
) -> Response:
    """Deactivating ends the person's web sessions and revokes their API tokens at once."""
    person = crud.get_user(session, user_id=user_id)
    crud.set_active(session, user=person, active=active, by=user)
    session.commit()
    _forget_tokens_of(request, user_id)
    return RedirectResponse(f"/admin/users/{user_id}", status_code=303)


@router.post("/admin/users/{user_id}/password")
def admin_reset_password(
    request: Request, user_id: Id, user: WebAdmin, session: SessionDep, _: Csrf, password: FormText = ""
) -> Response:
    """A new password ends the person's web sessions and revokes their API tokens."""
    crud.set_password(session, user_id=user_id, password=password, revoke_tokens=True)
    session.commit()
    _forget_tokens_of(request, user_id)
    return RedirectResponse(f"/admin/users/{user_id}", status_code=303)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: Id, user: WebUser, session: SessionDep, _: Csrf) -> Response:
    """Revoke one of one's own tokens (an admin: anyone's); back to where it was listed."""
    owner = session.scalar(select(ApiToken.user_id).where(ApiToken.id == token_id))
    request.app.state.token_cache.forget(crud.revoke_token_id(session, token_id=token_id, by=user))
    session.commit()
    return RedirectResponse("/account" if owner == user.id else f"/admin/users/{owner}", status_code=303)


# --- one's own account ----------------------------------------------------------------------------


def _account_page(
    request: Request,
    session: Session,
    user: User,
    *,
    status_code: int = 200,
    error: str | None = None,
    message: str | None = None,
    new_token: str | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    tokens = crud.list_tokens(session, user_id=user.id)
    return render(
        request,
        "account.html",
        status_code,
        headers,
        user=user,
        tokens=tokens,
        now=utcnow(),
        error=error,
        message=message,
        new_token=new_token,
    )


@router.get("/account")
def account_page(request: Request, user: WebUser, session: SessionDep) -> HTMLResponse:
    """One's password and API tokens."""
    return _account_page(request, session, user)


@router.post("/account/password")
def change_password(
    request: Request,
    user: WebUser,
    session: SessionDep,
    _: Csrf,
    current_password: FormText = "",
    new_password: FormText = "",
) -> HTMLResponse:
    """Change one's password (the current one is checked, and throttled, as at login); one's other
    web sessions end, this one and the API tokens stay."""
    try:
        checked = check_login(request, session, name=user.name, password=current_password)
    except logins.TooManyAttempts as exc:
        return _account_page(
            request, session, user, status_code=429, error=exc.detail,
            headers={"Retry-After": str(exc.retry_after_s)},
        )  # fmt: skip
    session.commit()
    if checked is None:
        return _account_page(
            request, session, user, status_code=403, error="Current password: wrong password."
        )
    crud.set_password(
        session,
        user_id=user.id,
        password=new_password,
        revoke_tokens=False,
        keep_session=request.session.get(SESSION_KEY),
    )
    session.commit()
    return _account_page(request, session, user, message="Password changed; your other sessions have ended.")


@router.post("/account/tokens")
def create_token(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    _: Csrf,
    label: Annotated[str, Form(max_length=64)] = "web",
    days: Annotated[int, Form(ge=1, le=auth.MAX_TOKEN_LIFETIME_S // 86400)] = auth.TOKEN_LIFETIME_S // 86400,
) -> HTMLResponse:
    """A new API token, shown on this page once."""
    expires_at = utcnow() + dt.timedelta(days=days)
    token = crud.create_token(session, user=user, label=label, expires_at=expires_at)
    session.commit()
    return _account_page(request, session, user, new_token=token)


@router.get("/admin/projects/{project_id}/export.jsonl")
def dashboard_export(
    project_id: Id, user: WebAdmin, session: SessionDep, format: Annotated[str, Query(max_length=32)] = "auto"
) -> Response:
    """The export (`auto`: PKU-SafeRLHF where the project allows, else judged items), for an admin
    logged in to the web pages."""
    project = crud.get_project(session, project_id=project_id)
    return Response(
        "".join(export.lines(session, project=project, fmt=format)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="project-{project.id}.jsonl"'},
    )


@router.get("/admin/projects/{project_id}")
def dashboard(request: Request, project_id: Id, user: WebAdmin, session: SessionDep) -> HTMLResponse:
    project = crud.get_project(session, project_id=project_id)
    report = stats.project_stats(session, project=project)
    return render(
        request,
        "dashboard.html",
        user=user,
        project=project,
        report=report,
        plot=base64.b64encode(stats.leaderboard_svg(report.leaderboard).encode()).decode(),
    )
