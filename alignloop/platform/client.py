"""A Python client for the platform's JSON API (httpx).

Trainers push items, set priorities and pull judgements; annotators (people's tools, or scripted
teachers) fetch their next assignment and submit answers. Submissions carry an idempotency key
and are retried on connection errors and 5xx answers, so a retry never stores a judgement twice.
Items and judgements travel in the JSON form of `alignloop.feedback.schema` (`item_json`,
`judgement_from_json`).

    trainer = PlatformClient.login("http://127.0.0.1:8000", "trainer", password)
    item = Item("...", (Candidate("first answer", model="sft"), Candidate("second", model="ppo")), key="r1-0001")
    ids = trainer.push_items(project_id, [item_json(item)])
    trainer.set_priorities(project_id, {ids[0]: 2.5})
    judgements = trainer.wait_for_judgements(project_id, ids, per_item=3)

    annotator = PlatformClient.login(url, "teacher-1", password)
    annotator.annotate(project_id, teacher.compare)   # a scripted teacher labels through HTTP
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from alignloop.errors import UserError
from alignloop.feedback.schema import Candidate, Comparison, Item, Judgement, judgement_of

RETRY_STATUSES = {502, 503, 504}


def item_json(item: Item, *, priority: float = 0.0, **fields: Any) -> dict[str, Any]:
    """An item as the items route takes it (candidates' media must be uploaded names)."""
    candidates = [dataclasses.asdict(c) for c in item.candidates]
    return {
        "key": item.key,
        "prompt": item.prompt,
        "candidates": candidates,
        "priority": priority,
        "meta": dict(item.meta),
        **fields,
    }


def item_from_json(row: Mapping[str, Any]) -> Item:
    """An item as the platform sends it (in an assignment)."""
    meta = {str(k): str(v) for k, v in (row.get("meta") or {}).items()}
    return Item(
        row["prompt"], tuple(Candidate(**c) for c in row["candidates"]), key=row.get("key"), meta=meta
    )


def judgement_from_json(row: Mapping[str, Any], item: Item, annotator: str = "") -> Judgement:
    """A judgement as the platform sends it, about `item`."""
    return Judgement(
        item, dict(row["answers"]), annotator or str(row["annotator_id"]), row["skipped"], row["skip_reason"]
    )


class PlatformError(UserError, RuntimeError):
    """The platform refused a request; `status` and the server's `detail` say why (and for a 429,
    `retry_after` how many seconds to wait)."""

    def __init__(self, status: int, detail: str, method: str, path: str, retry_after: float | None = None):
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class PlatformUnreachable(UserError, ConnectionError):
    """No answer from the platform's address (nothing listening, a wrong host, a timeout)."""


def labels_from_comparison(judged: Comparison | None) -> dict[str, Any]:
    """A `feedback.schema.Comparison` (or None: declined) as a submission of the default questions."""
    if judged is None:
        return {"skipped": True, "skip_reason": "declined to judge"}
    return {"answers": judgement_of(judged).answers}


class PlatformClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 8,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.retries = retries

    @classmethod
    def login(
        cls,
        base_url: str,
        name: str,
        password: str,
        *,
        label: str = "api",
        expires_in_s: int | None = None,
        **kwargs: Any,
    ) -> PlatformClient:
        """Exchange a name and password for an API token (valid `expires_in_s` seconds, default
        the server's: 30 days) and return a client that uses it. Too many wrong passwords for the
        name or from this address: PlatformError 429 with `retry_after`."""
        client = cls(base_url, **kwargs)
        body: dict[str, Any] = {"name": name, "password": password, "label": label}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        try:
            answer = client._request("POST", "/api/tokens", json=body)
        except PlatformError as exc:
            client.close()
            if exc.status in (401, 403, 422):
                raise UserError(
                    f"{client.base_url}: the platform refused to log in {name!r} ({exc.detail}); check the "
                    "user name and the password (file)"
                ) from exc
            raise
        client.http.headers["Authorization"] = f"Bearer {answer['token']}"
        return client

    def logout(self) -> None:
        """Revoke the token this client uses; it stops working at once."""
        self._request("DELETE", "/api/tokens/current")

    def tokens(self, user_id: int | None = None) -> list[dict[str, Any]]:
        """This client's user's API tokens (an admin: `user_id`'s), without the tokens themselves."""
        path = "/api/tokens" if user_id is None else f"/api/users/{user_id}/tokens"
        return [dict(t) for t in self._request("GET", path, retry=True)]

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of one's own tokens by id (an admin: anyone's)."""
        self._request("DELETE", f"/api/tokens/{token_id}")

    def change_password(self, current_password: str, new_password: str) -> None:
        """Change one's own password; one's web sessions end, API tokens stay."""
        body = {"current_password": current_password, "new_password": new_password}
        self._request("PUT", "/api/me/password", json=body)

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def _unreachable(self, exc: httpx.TransportError) -> PlatformUnreachable:
        """What to tell the user when a request got no answer."""
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer within {self.http.timeout.read or self.http.timeout.connect} s"
        else:
            reason = str(exc) or type(exc).__name__
        return PlatformUnreachable(
            f"cannot reach the platform at {self.base_url} ({reason}); is `alignloop serve` running "
            "there? check --url"
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> Any:
        """Send a request; with `retry`, connection errors and 502-504 are retried with backoff."""
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise self._unreachable(exc) from exc
                time.sleep(min(0.1 * 2**attempt, 2.0))
                continue
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(min(0.1 * 2**attempt, 2.0))
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                retry_after = response.headers.get("retry-after")
                raise PlatformError(
                    response.status_code,
                    str(detail),
                    method,
                    path,
                    float(retry_after) if retry_after and retry_after.isdigit() else None,
                )
            if response.status_code == 204 or not response.content:
                return None
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response.text
        raise AssertionError("unreachable")

    # --- admins ------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, role: str = "annotator") -> dict[str, Any]:
        return dict(
            self._request("POST", "/api/users", json={"name": name, "password": password, "role": role})
        )

    def users(self) -> list[dict[str, Any]]:
        return [dict(u) for u in self._request("GET", "/api/users", retry=True)]

    def set_active(self, user_id: int, active: bool) -> dict[str, Any]:
        """Deactivate (or reactivate) a user: deactivation ends their sessions and revokes their
        tokens at once."""
        return dict(self._request("PATCH", f"/api/users/{user_id}", json={"active": active}))

    def reset_password(self, user_id: int, password: str) -> dict[str, Any]:
        """Give a user a new password; their sessions end and their tokens are revoked."""
        return dict(self._request("PATCH", f"/api/users/{user_id}", json={"password": password}))

    def create_project(
        self, name: str, *, overlap: int = 1, gold_rate: float = 0.0, **fields: Any
    ) -> dict[str, Any]:
        body = {"name": name, "overlap": overlap, "gold_rate": gold_rate, **fields}
        return dict(self._request("POST", "/api/projects", json=body))

    def projects(self) -> list[dict[str, Any]]:
        """Every project this account may see."""
        return [dict(p) for p in self._request("GET", "/api/projects", retry=True)]

    def find_project(self, name: str) -> dict[str, Any] | None:
        """The project called `name`, or None."""
        return next((p for p in self.projects() if p["name"] == name), None)

    def ensure_project(self, name: str, **fields: Any) -> dict[str, Any]:
        """The project called `name`, created with `fields` (as `create_project`) unless it exists.

        An existing project is returned as it is, even where its settings differ from `fields`.
        """
        found = self.find_project(name)
        if found is not None:
            return found
        try:
            return self.create_project(name, **fields)
        except PlatformError as exc:
            found = self.find_project(name) if exc.status == 409 else None
            if found is None:
                raise
            return found  # created by someone else a moment ago

    def stats(self, project_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/projects/{project_id}/stats"))

    def export(self, project_id: int, path: str | Path | None = None, *, format: str = "auto") -> str:
        """The project's export as JSONL (`format`: auto, judgements, pku-saferlhf, preference,
        correction, supervised; see the export route); also written to `path` when given."""
        text = str(self._request("GET", f"/api/projects/{project_id}/export", params={"format": format}))
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # --- trainers ----------------------------------------------------------------------------

    def upload_media(self, path: str | Path) -> str:
        """Upload a clip (video, GIF, image, frame strip); returns the name to use as a candidate's `media`.

        The name is the content's hash, so an upload is idempotent and retried like a keyed push.
        """
        path = Path(path)
        data = path.read_bytes()
        answer = self._request("POST", "/api/media", params={"filename": path.name}, content=data, retry=True)
        return str(answer["name"])

    def push_items(
        self, project_id: int, items: Iterable[Mapping[str, Any]], *, batch: int = 500
    ) -> list[int]:
        """Push items; returns their ids in order.

        Give each item a `key` (unique in the project, e.g. "r3-0017") and pushing is idempotent:
        an item whose key is already there is not added again and its id is answered. Keyed pushes
        are therefore retried on connection errors and 502-504, and a run that pushes the same
        keyed items again after a crash gets the same ids. Unkeyed items are added each time.
        """
        ids: list[int] = []
        pending = [dict(item) for item in items]
        for start in range(0, len(pending), batch):
            chunk = pending[start : start + batch]
            keyed = all(item.get("key") is not None for item in chunk)
            answer = self._request(
                "POST", f"/api/projects/{project_id}/items", json={"items": chunk}, retry=keyed
            )
            ids += answer["ids"]
        return ids

    def set_priorities(self, project_id: int, priorities: Mapping[int, float]) -> int:
        body = {"priorities": [{"item_id": i, "priority": float(p)} for i, p in priorities.items()]}
        return int(
            self._request("POST", f"/api/projects/{project_id}/priorities", json=body, retry=True)["updated"]
        )

    def judgements(self, project_id: int, *, after_id: int = 0) -> list[dict[str, Any]]:
        """Every judgement in the project after `after_id` (all pages)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._request(
                "GET",
                f"/api/projects/{project_id}/judgements",
                params={"after_id": after_id, "limit": 1000},
                retry=True,
            )
            out += page["judgements"]
            if page["next_after"] is None:
                return out
            after_id = page["next_after"]

    def wait_for_judgements(
        self,
        project_id: int,
        item_ids: Iterable[int],
        *,
        per_item: int = 1,
        timeout: float = 600.0,
        poll: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Poll until every item has `per_item` non-skipped judgements; returns theirs. TimeoutError otherwise."""
        wanted = set(item_ids)
        deadline = time.monotonic() + timeout
        while True:
            found = [j for j in self.judgements(project_id) if j["item_id"] in wanted and not j["skipped"]]
            counts: dict[int, int] = {}
            for j in found:
                counts[j["item_id"]] = counts.get(j["item_id"], 0) + 1
            missing = sum(1 for i in wanted if counts.get(i, 0) < per_item)
            if not missing:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{missing} of {len(wanted)} items still lack {per_item} judgements")
            time.sleep(poll)

    # --- annotators --------------------------------------------------------------------------

    def next_assignment(self, project_id: int) -> dict[str, Any] | None:
        """The next item to judge (locked to this annotator for a while), or None when done."""
        answer = self._request("POST", f"/api/projects/{project_id}/next", retry=True)
        return None if answer["assignment"] is None else dict(answer["assignment"])

    def submit(
        self, assignment_id: int, labels: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Submit `{"answers": {...}}` (or a skip with its reason) for an assignment; retried with
        the same key, so it is stored exactly once."""
        body = {**labels, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        return dict(
            self._request("POST", f"/api/assignments/{assignment_id}/judgement", json=body, retry=True)
        )

    def submit_and_next(
        self, assignment_id: int, labels: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Submit labels and get the next assignment in one round trip: (judgement, next or None)."""
        body = {**labels, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        answer = self._request(
            "POST", f"/api/assignments/{assignment_id}/judgement-and-next", json=body, retry=True
        )
        following = answer["assignment"]
        return dict(answer["judgement"]), None if following is None else dict(following)

    def annotate(
        self,
        project_id: int,
        teacher: Callable[[str, str, str], Comparison | None],
        *,
        limit: int | None = None,
    ) -> int:
        """Label two-candidate items of the default questions with a scripted teacher (e.g.
        `BradleyTerryTeacher.compare`) until none are left."""
        done = 0
        assignment = self.next_assignment(project_id)
        while assignment is not None and (limit is None or done < limit):
            item = item_from_json(assignment["item"])
            judged = teacher(item.prompt, item.text(0), item.text(1))
            labels = labels_from_comparison(judged)
            if limit is not None and done + 1 == limit:
                self.submit(assignment["id"], labels)
                assignment = None
            else:
                _, assignment = self.submit_and_next(assignment["id"], labels)
            done += 1
        return done
