"""Pages for people: login, the labelling page, the admin dashboard. Every form carries a CSRF token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

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
from alignloop.platform import auth, crud, export, media, stats
from alignloop.platform.api.deps import SessionDep, SettingsDep
from alignloop.platform.db import end_read
from alignloop.platform.models import Assignment, Project, User
from alignloop.platform.schemas import JudgementIn, ProjectIn

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["media_kind"] = media.media_kind
templates.env.globals["side_letter"] = side_letter
templates.env.globals["STRIP_COLUMNS"] = media.STRIP_COLUMNS
router = APIRouter(include_in_schema=False)
CSRF_MESSAGE = "CSRF token missing or invalid; reload the page and try again"


class LoginRequired(Exception):
    """Raised by pages that need a logged-in user; answered with a redirect to /login."""


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = auth.new_csrf_token()
        request.session["csrf"] = token
    return token


async def checked_form(request: Request) -> Any:
    """The posted form, after checking its CSRF token against the session's."""
    form = await request.form()
    if not auth.csrf_matches(request.session.get("csrf"), form.get("csrf_token")):  # type: ignore[arg-type]
        raise HTTPException(403, CSRF_MESSAGE)
    return form


def web_user(request: Request, session: SessionDep) -> User:
    user_id = request.session.get("user_id")
    user = session.get(User, user_id) if isinstance(user_id, int) else None
    end_read(session)  # no lock is held while the page waits for a thread
    if user is None or not user.active:
        raise LoginRequired()
    return user


def web_admin(user: Annotated[User, Depends(web_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "only admins may see this page")
    return user


WebUser = Annotated[User, Depends(web_user)]
WebAdmin = Annotated[User, Depends(web_admin)]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", None)
    return templates.TemplateResponse(
        request, name, {"csrf": csrf_token(request), **context}, status_code=status_code
    )


@router.get("/")
def home(request: Request, session: SessionDep) -> Response:
    user_id = request.session.get("user_id")
    user = session.get(User, user_id) if isinstance(user_id, int) else None
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/admin" if user.role == "admin" else "/projects", status_code=303)


@router.get("/login")
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", next=next, error=None)


def _local(path: str) -> str:
    """Only same-site redirects after login."""
    parsed = urlparse(path)
    return path if not parsed.scheme and not parsed.netloc and path.startswith("/") else "/"


@router.post("/login")
async def login(request: Request, session: SessionDep) -> Response:
    form = await checked_form(request)
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    user = crud.authenticate(session, name=name, password=password)
    if user is None:
        return render(
            request,
            "login.html",
            status_code=401,
            next=form.get("next", "/"),
            error="Wrong name or password.",
        )
    request.session.clear()
    request.session["user_id"] = user.id
    request.session["csrf"] = auth.new_csrf_token()
    return RedirectResponse(_local(str(form.get("next", "/"))), status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
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
def label_page(request: Request, project_id: int, user: WebUser, session: SessionDep) -> HTMLResponse:
    """The labelling page. It only reads: it shows the annotator's open assignment, or a button
    that takes the next one (a POST, so a link from elsewhere never locks an item)."""
    project = crud.get_project(session, project_id=project_id)
    return _label_page(request, session, user, project, _open_assignment(session, project, user), None)


@router.post("/projects/{project_id}/next")
async def label_next(
    request: Request, project_id: int, user: WebUser, session: SessionDep, settings: SettingsDep
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
    request: Request, project_id: int, user: WebUser, session: SessionDep, settings: SettingsDep
) -> Response:
    form = await checked_form(request)
    project = crud.get_project(session, project_id=project_id)
    assignment: Assignment | None = None
    try:
        assignment_id = int(str(form.get("assignment_id", "")))
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
        presets=json.dumps({k: questions_json(v) for k, v in QUESTION_PRESETS.items()}).replace("</", "<\\/"),
        presets_names=list(QUESTION_PRESETS),
    )


@router.post("/admin/users")
async def admin_create_user(request: Request, user: WebAdmin, session: SessionDep) -> Response:
    form = await checked_form(request)
    role = str(form.get("role", "annotator"))
    if role not in ("admin", "trainer", "annotator"):
        raise HTTPException(422, f"role: {role!r} is not one of admin, trainer, annotator")
    crud.create_user(
        session, name=str(form.get("name", "")), password=str(form.get("password", "")), role=role
    )
    session.commit()
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/projects")
async def admin_create_project(request: Request, user: WebAdmin, session: SessionDep) -> Response:
    """Create a project; its questions come as the JSON list of the form's `questions` field
    (the page fills it from its question builder), the default questions when empty."""
    form = await checked_form(request)
    raw_questions = str(form.get("questions", "")).strip()
    try:
        fields: dict[str, Any] = {
            "name": str(form.get("name", "")),
            "instructions": str(form.get("instructions", "")),
            "overlap": int(str(form.get("overlap", "1")) or 1),
            "gold_rate": float(str(form.get("gold_rate", "0")) or 0),
        }
        if raw_questions:
            fields["questions"] = json.loads(raw_questions)
        spec = ProjectIn(**fields)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"questions: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise HTTPException(422, message) from None
    except ValueError as exc:
        raise HTTPException(422, f"project form: {exc}") from None
    crud.create_project(session, spec=spec)
    session.commit()
    return RedirectResponse("/admin", status_code=303)


@router.get("/admin/projects/{project_id}/export.jsonl")
def dashboard_export(project_id: int, user: WebAdmin, session: SessionDep, format: str = "auto") -> Response:
    """The export (`auto`: PKU-SafeRLHF where the project allows, else judged items), for an admin
    logged in to the web pages."""
    project = crud.get_project(session, project_id=project_id)
    return Response(
        "".join(export.lines(session, project=project, fmt=format)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="project-{project.id}.jsonl"'},
    )


@router.get("/admin/projects/{project_id}")
def dashboard(request: Request, project_id: int, user: WebAdmin, session: SessionDep) -> HTMLResponse:
    project = crud.get_project(session, project_id=project_id)
    report = stats.project_stats(session, project=project)
    return render(
        request,
        "dashboard.html",
        user=user,
        project=project,
        report=report,
        plot=stats.leaderboard_svg(report.leaderboard),
    )
