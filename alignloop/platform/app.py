"""The FastAPI application: JSON API under /api, server-rendered pages, security middleware."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from swagger_ui_bundle import swagger_ui_path

from alignloop.platform.api.routes import ReleaseClock, released
from alignloop.platform.api.routes import router as api_router
from alignloop.platform.auth import TokenCache
from alignloop.platform.crud import PlatformError
from alignloop.platform.db import CONNECT_TIMEOUT_S, is_sqlite, make_engine, make_sessionmaker
from alignloop.platform.fastlane import FastLane
from alignloop.platform.hotpath import Memory, Pools, make_pool
from alignloop.platform.logins import Throttle, TooManyAttempts
from alignloop.platform.models import User
from alignloop.platform.settings import Settings
from alignloop.platform.web.routes import STATIC_DIR, LoginRequired, error_page
from alignloop.platform.web.routes import router as web_router

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def is_api(path: str) -> bool:
    """Whether a path belongs to the JSON API (errors as JSON) rather than to the pages (HTML)."""
    return path == "/api" or path.startswith("/api/")


def error_response(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An error as `{"detail": ...}` for the API, as a page for people."""
    if is_api(request.url.path):
        return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)
    return error_page(request, status, detail, headers)


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",  # no inline script, no eval: every page's script is a static file
        "style-src 'self'",
        "img-src 'self' data:",  # data: for the dashboard's plot and Swagger UI's icons
        "media-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Add the security headers to every response: a Content-Security-Policy the pages satisfy,
    nosniff, no framing, and no referrer sent to other sites."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


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
            response = error_response(Request(scope), 413, message)
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


def openapi_of(app: FastAPI, *, pages: bool = False) -> dict[str, Any]:
    """The OpenAPI description of the JSON API (what /api/openapi.json serves), or with `pages`
    of the pages for people (forms and HTML answers; the schemathesis test explores both)."""
    title = app.title + (": pages" if pages else "")
    return get_openapi(title=title, version=app.version, routes=(web_router if pages else api_router).routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        lifespan=_lifespan,
        title="alignloop feedback platform",
        version="1",
        docs_url=None,  # /api/docs is a page of ours that loads Swagger UI from this server
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )

    def api_schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_of(app)
        return app.openapi_schema

    app.openapi = api_schema  # type: ignore[method-assign]
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
    app.state.release_clock = ReleaseClock()
    app.state.token_cache = TokenCache[User](settings.token_cache_s)
    app.state.throttle = Throttle(
        per_account=settings.login_failures_per_account,
        per_address=settings.login_failures_per_address,
        window_s=settings.login_window_s,
    )
    app.state.password_slots = threading.BoundedSemaphore(settings.password_checks)

    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> Response:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, TooManyAttempts) else None
        return error_response(request, exc.status, exc.detail, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return error_response(request, 422, _validation_message(exc), errors=errors)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    app.include_router(api_router)
    app.include_router(web_router)
    app.mount("/static/swagger-ui", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
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
        on_stored=lambda project_id: released(app.state, project_id),
    )
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries them, the fast lane's too
    return app
