"""Request dependencies: the database session and who is asking (bearer token or session cookie)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from alignloop.platform import auth, crud
from alignloop.platform.db import end_read, session_scope
from alignloop.platform.models import User
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
    """The user behind `token` (remembered for a few seconds per process); 401 without a valid one."""
    if token is None:
        raise HTTPException(401, _NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    cache: auth.TokenCache[User] = request.app.state.token_cache
    digest = auth.token_digest(token)
    user = cache.get(digest)
    if user is not None:
        return user
    user = crud.user_for_token(session, token=token)
    if user is not None:
        session.expunge(user)  # shared read-only by later requests: no session may expire it
    end_read(session)  # no lock is held while the route waits for a thread
    if user is None:
        raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
    cache.put(digest, user)
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


def api_or_session_user(request: Request, session: SessionDep, credentials: Credentials) -> User:
    """For resources the browser also loads (media): a bearer token or a logged-in session."""
    if credentials is None:
        user_id = request.session.get("user_id")
        user = session.get(User, user_id) if isinstance(user_id, int) else None
        end_read(session)
        if user is not None and user.active:
            return user
    token = credentials.credentials.strip() if credentials is not None else None
    return _token_user(request, session, token or None)


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
