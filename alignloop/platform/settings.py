"""Platform settings, read from the environment (`ALIGNLOOP_*`) by pydantic-settings."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alignloop.platform import auth


class Settings(BaseSettings):
    """Everything the web app needs to run; `alignloop serve` fills these from its options."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_", extra="ignore")

    db: str = Field(default="sqlite:///alignloop.db", description="SQLAlchemy URL of the database.")
    media_dir: Path = Field(
        default=Path("alignloop-media"), description="Where uploaded media clips are stored."
    )
    secret_key: str = Field(
        default_factory=lambda: secrets.token_urlsafe(32),
        description="Signs session cookies; set it so sessions survive a restart.",
    )
    cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS only.")
    session_max_age_s: int = Field(default=12 * 3600, ge=60, description="Lifetime of a login session.")
    token_lifetime_s: int = Field(
        default=auth.TOKEN_LIFETIME_S,
        ge=60,
        le=auth.MAX_TOKEN_LIFETIME_S,
        description="Lifetime of a new API token unless its request asks for another (up to a year).",
    )
    login_failures_per_account: int = Field(
        default=50,
        ge=1,
        description="Wrong passwords for one user name within `login_window_s` before further logins"
        " for that name are refused with 429 until the oldest failure leaves the window.",
    )
    login_failures_per_address: int = Field(
        default=200,
        ge=1,
        description="Wrong passwords from one client address within `login_window_s` before further"
        " logins from it are refused with 429.",
    )
    login_window_s: float = Field(default=60.0, gt=0, description="The window failed logins are counted in.")
    password_checks: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) // 2),
        ge=1,
        description="Password hashes one worker process checks at once (each takes about 0.3 s of a"
        " core); further logins wait their turn, so a burst of logins leaves CPU for everyone else.",
    )
    max_body_bytes: int = Field(
        default=1 << 20, description="Largest accepted request body (JSON and forms)."
    )
    max_upload_bytes: int = Field(default=50 << 20, description="Largest accepted media upload.")
    lock_s: int = Field(default=600, description="How long an assignment stays locked to its annotator.")
    serving_gc: bool = Field(
        default=False,
        description="Tune Python's garbage collector for a long-running server (`alignloop serve` "
        "turns it on): start-up objects are frozen out of the cyclic collector and the young "
        "generation is collected every 50,000 allocations instead of 700, so collections do not "
        "stall requests under load.",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="Connections each worker process keeps for the routes served in threads; as many"
        " again may be opened for bursts.",
    )
    async_pool_size: int = Field(
        default=20,
        ge=1,
        description="PostgreSQL: connections per worker process for the routes served on the event loop.",
    )
    async_pool_open: int = Field(
        default=8,
        ge=0,
        description="PostgreSQL: how many of those each worker opens when it starts (the rest on need).",
    )
    token_cache_s: float = Field(
        default=5.0,
        description=(
            "How long a worker process remembers whom an API token belongs to (0: look it up on every"
            " request). A token revoked through another worker, or a user deactivated in the database,"
            " is refused by this one after at most this long."
        ),
    )
