"""The FastAPI application: JSON API under /api, server-rendered pages, security middleware."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from alignloop.platform.api.routes import released
from alignloop.platform.api.routes import router as api_router
from alignloop.platform.auth import TokenCache
from alignloop.platform.crud import PlatformError
from alignloop.platform.db import CONNECT_TIMEOUT_S, is_sqlite, make_engine, make_sessionmaker
from alignloop.platform.fastlane import FastLane
from alignloop.platform.hotpath import Memory, Pools, make_pool
from alignloop.platform.models import User
from alignloop.platform.settings import Settings
from alignloop.platform.web.routes import STATIC_DIR, LoginRequired
from alignloop.platform.web.routes import router as web_router

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over a size limit (413), by Content-Length or while streaming."""

    def __init__(self, app: Any, *, max_body: int, max_upload: int, upload_path: str = "/api/media"):
        self.app, self.max_body, self.max_upload, self.upload_path = app, max_body, max_upload, upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if scope["path"] == self.upload_path else self.max_body
        message = f"request body is larger than the limit of {limit} bytes"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response = JSONResponse({"detail": message}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > limit:
                raise StarletteHTTPException(413, message)
            return incoming

        await self.app(scope, limited, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(message if where == "body" and ": " in message else f"{where}: {message}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


GC_THRESHOLD = 50_000  # allocations between young-generation collections (CPython's default: 700)
START_WAIT_S = 3.0  # how long start-up waits for the event loop's first PostgreSQL connections
THREADS = 200  # sync routes run in threads; a request waiting on the database must not starve the rest


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    if app.state.settings.serving_gc:
        # the objects built at start-up live as long as the process: keep them out of the
        # cyclic collector, and collect the youngest generation less often, so that
        # collections do not stall requests under load (median p99 214 -> 124 ms in BENCHMARKS.md)
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
    if app.state.pg_pool is not None:
        from psycopg_pool import PoolTimeout

        try:  # the first connections are ready before the first requests come
            await app.state.pg_pool.open(START_WAIT_S)
        except PoolTimeout as exc:  # the database may come up later: the pool keeps trying
            logger.warning("could not open PostgreSQL connections at start-up: %s", exc)
    yield
    if app.state.pg_pool is not None:
        await app.state.pg_pool.close()
    app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        lifespan=_lifespan,
        title="alignloop feedback platform",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.db, pool_size=settings.db_pool_size)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.pg_pool = (  # judgement-and-next's common case runs on the event loop (PostgreSQL)
        None
        if is_sqlite(settings.db)
        else Pools(
            lambda: make_pool(
                settings.db,
                size=settings.async_pool_size,
                open_at_start=settings.async_pool_open,
                connect_timeout_s=CONNECT_TIMEOUT_S,
            )
        )
    )
    app.state.memory = Memory()
    app.state.token_cache = TokenCache[User](settings.token_cache_s)

    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": _validation_message(exc), "errors": errors}, status_code=422)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Any:
        from fastapi.responses import RedirectResponse

        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    app.include_router(api_router)
    app.include_router(web_router)
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key,
        session_cookie="alignloop_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.add_middleware(BodyLimit, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    app.add_middleware(
        FastLane,
        state=app.state,
        max_body=settings.max_body_bytes,
        on_stored=lambda project_id: released(app.state.sessionmaker, project_id),
    )
    return app
