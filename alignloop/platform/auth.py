"""Passwords (argon2), API tokens and web session ids (random, stored as SHA-256 digests), CSRF tokens."""

from __future__ import annotations

import functools
import hashlib
import hmac
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
TOKEN_PREFIX = "al_"
MIN_PASSWORD_LENGTH = 8
TOKEN_LIFETIME_S = 30 * 86400  # a new API token's lifetime unless asked otherwise
MAX_TOKEN_LIFETIME_S = 366 * 86400


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(16))


def verify_missing_user(password: str) -> bool:
    """Verify against a hash made with the current parameters and answer False, so that a wrong
    name costs as much time as a wrong password."""
    verify_password(_dummy_hash(_hasher), password)
    return False


def new_api_token() -> tuple[str, str]:
    """A fresh token and the digest to store; the token itself is shown once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> tuple[str, str]:
    """A fresh web session id for the (signed) cookie and the digest the database keeps."""
    session_id = secrets.token_urlsafe(32)
    return session_id, token_digest(session_id)


T = TypeVar("T")


class TokenCache(Generic[T]):
    """Who a token digest belongs to, remembered for up to `ttl_s` seconds (0 turns the cache off).

    Each entry lives a random time between `(1 - spread) * ttl_s` and `ttl_s`, so that the tokens
    of people who started together (all of them, after a restart) do not expire together and send
    every lookup to the database in the same moment (a stall of 300 ms at 50 annotators).
    An entry never outlives the token itself (`put(..., expires_in_s=...)`). `forget` drops a
    digest at once (revocation through this process), `forget_where` every entry of a user
    (deactivation, a password reset). A token revoked, or a user deactivated, through another
    process or directly in the database still works here until its entry expires: at most
    `ttl_s` seconds.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        spread: float = 0.5,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"spread: must be within [0, 1], got {spread}")
        self.ttl_s, self.spread, self.max_entries, self.clock = ttl_s, spread, max_entries, clock
        self._rng = rng or random.Random()
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> T | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return entry[1]

    def put(self, digest: str, value: T, *, expires_in_s: float | None = None) -> None:
        """Remember `value` for `digest`; never past `expires_in_s` from now when given."""
        lifetime = self.ttl_s * (1.0 - self.spread * self._rng.random())
        if expires_in_s is not None:
            lifetime = min(lifetime, expires_in_s)
        if lifetime <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (self.clock() + lifetime, value)

    def forget(self, digest: str) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def forget_where(self, predicate: Callable[[T], bool]) -> None:
        """Drop every entry whose value matches (e.g. all tokens of a user just deactivated)."""
        with self._lock:
            for digest in [d for d, (_, value) in self._entries.items() if predicate(value)]:
                del self._entries[digest]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
