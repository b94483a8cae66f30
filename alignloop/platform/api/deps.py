"""Request dependencies: the database session and who is asking (bearer token or session cookie)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from alignloop.platform import auth, crud, logins
from alignloop.platform.db import end_read, session_scope
from alignloop.platform.models import User, utcnow
from alignloop.platform.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.sessionmaker)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


_bearer = HTTPBearer(auto_error=False, description="An API token from POST /api/tokens.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


_NOT_AUTHENTICATED = "not authenticated: send 'Authorization: Bearer <token>' (POST /api/tokens gives one)"


def _token_user(request: Request, session: Session, token: str | None) -> User:
    """The user behind `token` (remembered for a few seconds per process, never past the token's
    expiry); 401 without a valid one."""
    if token is None:
        raise HTTPException(401, _NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    cache: auth.TokenCache[User] = request.app.state.token_cache
    digest = auth.token_digest(token)
    user = cache.get(digest)
    if user is not None:
        return user
    found = crud.token_user(session, token=token)
    if found is not None:
        session.expunge(found[0])  # shared read-only by later requests: no session may expire it
    end_read(session)  # no lock is held while the route waits for a thread
    if found is None:
        raise HTTPException(
            401, "invalid, expired or revoked API token", headers={"WWW-Authenticate": "Bearer"}
        )
    user, expires_at = found
    cache.put(digest, user, expires_in_s=(expires_at - utcnow()).total_seconds())
    return user


def _looked_up_user(request: Request, token: str | None) -> User:
    with request.app.state.sessionmaker() as session:
        return _token_user(request, session, token)


async def api_user(request: Request, credentials: Credentials) -> User:
    """The user behind the request's bearer token; 401 without a valid one.

    A token seen in the last `Settings.token_cache_s` seconds is answered from memory, on the event
    loop; otherwise it is looked up in the database, in a worker thread with a session of its own
    (so a route that needs no session, such as judgement-and-next on PostgreSQL, opens none).
    """
    token = credentials.credentials.strip() if credentials is not None else None
    cache: auth.TokenCache[User] = request.app.state.token_cache
    user = cache.get(auth.token_digest(token)) if token else None
    if user is not None:
        return user
    return await run_in_threadpool(_looked_up_user, request, token or None)


SESSION_KEY = "sid"  # the web session's id in the signed cookie


def session_user(request: Request, session: Session) -> User | None:
    """The user of the request's web session, if it is still open on the server (logging out,
    a password change or a deactivation ends it); ends the read transaction."""
    session_id = request.session.get(SESSION_KEY)
    user = crud.web_session_user(session, session_id=session_id) if isinstance(session_id, str) else None
    end_read(session)  # no lock is held while the page waits for a thread
    return user


def api_or_session_user(request: Request, session: SessionDep, credentials: Credentials) -> User:
    """For resources the browser also loads (media): a bearer token or a logged-in session."""
    if credentials is None:
        user = session_user(request, session)
        if user is not None:
            return user
    token = credentials.credentials.strip() if credentials is not None else None
    return _token_user(request, session, token or None)


def client_address(request: Request) -> str:
    """The client's address as the server sees it (behind a proxy: what uvicorn's
    --forwarded-allow-ips lets through from X-Forwarded-For)."""
    return request.client.host if request.client is not None else "unknown"


def check_login(request: Request, session: Session, *, name: str, password: str) -> User | None:
    """`logins.check_password` with this server's throttle, for this request's client."""
    state = request.app.state
    return logins.check_password(
        session,
        name=name,
        password=password,
        address=client_address(request),
        throttle=state.throttle,
        slots=state.password_slots,
    )


UserDep = Annotated[User, Depends(api_user)]
AnyUserDep = Annotated[User, Depends(api_or_session_user)]


async def trainer_user(user: UserDep) -> User:
    if user.role not in ("admin", "trainer"):
        raise HTTPException(403, f"this needs the trainer or admin role; {user.name!r} is an {user.role}")
    return user


async def admin_user(user: UserDep) -> User:
    if user.role != "admin":
        raise HTTPException(403, f"only admins may do this; {user.name!r} is a {user.role}")
    return user


TrainerDep = Annotated[User, Depends(trainer_user)]
AdminDep = Annotated[User, Depends(admin_user)]
