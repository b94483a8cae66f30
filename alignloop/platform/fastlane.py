"""judgement-and-next's common case answered in front of FastAPI: the platform's busiest request.

Under load most of a submission's server time went to FastAPI's routing, dependency solving and
body handling, not to the submission. `FastLane` is an ASGI layer in front of the application
that answers `POST /api/assignments/{id}/judgement-and-next` itself when everything is the
common case: a bearer token this process already knows (`auth.TokenCache`), a body within the
limit that `JudgementIn` accepts, and an assignment `hotpath.common_case` takes. Everything else
— an unknown token, a bad body, a skip, an answer the project refuses, the general path — goes to
the application untouched (the body it read is handed on), so every answer and error is the
route's own. The checks are the same functions the route calls.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import ValidationError

from alignloop.feedback.schema import LabelError
from alignloop.platform import auth, hotpath
from alignloop.platform.models import utcnow
from alignloop.platform.schemas import MAX_ID, JudgementIn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATH = re.compile(r"^/api/assignments/([1-9][0-9]{0,9})/judgement-and-next$")


class FastLane:
    def __init__(self, app: Any, *, state: Any, max_body: int, on_stored: Callable[[int], Awaitable[None]]):
        self.app, self.state, self.max_body, self.on_stored = app, state, max_body, on_stored

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None or self.state.pg_pool is None or int(match.group(1)) > MAX_ID:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        cache: auth.TokenCache[Any] = self.state.token_cache
        user = (
            cache.get(auth.token_digest(token.strip()))
            if scheme.lower() == "bearer" and token.strip()
            else None
        )
        length = headers.get(b"content-length", b"")
        if user is None or not length.isdigit() or int(length) > self.max_body:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        answer = None
        try:
            labels = JudgementIn.model_validate_json(body)
            answer = await hotpath.common_case(
                self.state,
                user_id=user.id,
                assignment_id=int(match.group(1)),
                labels=labels,
                lock_s=self.state.settings.lock_s,
                now=utcnow(),
            )
        except (ValidationError, LabelError):
            answer = None  # the route says what is wrong
        if answer is None:
            await self.app(scope, _replay(body), send)
            return
        await self.on_stored(answer[1])
        payload = answer[0].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes) -> Receive:
    """A receive channel that gives the body already read, then waits as a finished request does."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
