"""Password checks for logins (the login form, `POST /api/tokens`, password changes): throttled,
and hashed outside any database transaction.

An argon2 check costs about 0.3 s of a core. Done inside a transaction it held SQLite's write
lock for that long, and 45 parallel wrong logins made everyone else's request wait 29 s. Here a
check is three steps: a short transaction that counts recent failures and reserves this attempt
as one (so parallel attempts cannot all slip under the limit), the hash with no transaction open
(at most `Settings.password_checks` at once per process, so a burst of logins leaves CPU for
other requests), and, on success, dropping the reservation in the caller's next transaction.

Failures are counted per user name and per client address over a sliding window (`Throttle`);
at the limit, attempts are refused with 429 and a Retry-After without checking the password.
The counts live in the database (`login_failures`), so every server process sees the same ones.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from alignloop.platform import auth, names
from alignloop.platform.crud import PlatformError
from alignloop.platform.models import LoginFailure, User


class TooManyAttempts(PlatformError):
    """Too many recent failures for this name or address: answered 429 with Retry-After."""

    status = 429

    def __init__(self, detail: str, retry_after_s: int):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Throttle:
    """The limits (from `Settings.login_failures_per_account`, `..._per_address`, `login_window_s`)."""

    per_account: int
    """Failures for one user name within the window; the next attempt is refused."""
    per_address: int
    """Failures from one client address within the window; the next attempt is refused."""
    window_s: float


def _reserve(session: Session, *, name: str, address: str, throttle: Throttle, now: float) -> list[int]:
    """Count this attempt as a failure in advance, unless a limit is already reached (429)."""
    limits = {f"name:{name}": throttle.per_account, f"addr:{address}": throttle.per_address}
    if session.get_bind().dialect.name == "postgresql":  # SQLite's transactions are serial already
        for key in sorted(limits):
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
    since = now - throttle.window_s
    session.execute(delete(LoginFailure).where(LoginFailure.failed_at < since))
    recent = session.execute(
        select(LoginFailure.key, func.count(), func.min(LoginFailure.failed_at))
        .where(LoginFailure.key.in_(limits), LoginFailure.failed_at >= since)
        .group_by(LoginFailure.key)
    ).all()
    for key, count, oldest in recent:
        if count >= limits[key]:
            session.commit()
            retry_after = max(1, math.ceil(oldest + throttle.window_s - now))
            whom = f"for {name!r}" if key.startswith("name:") else "from your address"
            raise TooManyAttempts(
                f"too many failed logins {whom} in the last {throttle.window_s:g} s;"
                f" try again in {retry_after} s",
                retry_after,
            )
    rows = [LoginFailure(key=key, failed_at=now) for key in limits]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def check_password(
    session: Session,
    *,
    name: str,
    password: str,
    address: str,
    throttle: Throttle,
    slots: threading.Semaphore,
) -> User | None:
    """The active user `name` (as typed: NFKC, surrounding spaces dropped) if `password` is theirs,
    else None; TooManyAttempts when the name or the address has failed too often of late.

    Commits the session's transaction before hashing. On success the reservation is deleted in a
    new transaction that the caller commits (with the token or session it then creates).
    """
    name = names.login_name(name)
    reserved = _reserve(session, name=name, address=address, throttle=throttle, now=time.time())
    user = session.scalar(select(User).where(User.name == name)) if name else None  # never "" (an old row)
    session.commit()  # no transaction, and no lock, while the password is hashed
    with slots:
        if user is None or not user.active:
            ok = auth.verify_missing_user(password)
        else:
            ok = auth.verify_password(user.password_hash, password)
    if not ok:
        return None
    session.execute(delete(LoginFailure).where(LoginFailure.id.in_(reserved)))
    return user
