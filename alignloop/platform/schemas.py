"""What goes over the wire (pydantic v2). The label vocabulary comes from `alignloop.feedback`."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignloop.feedback.schema import (
    HARM_CATEGORIES,
    Better,
    LabelError,
    Safer,
    Severity,
    check_safety_consistency,
)
from alignloop.platform.auth import MAX_TOKEN_LIFETIME_S
from alignloop.platform.models import as_utc
from alignloop.platform.names import NAME_RULE, normalise_name

Role = Literal["admin", "trainer", "annotator"]
KEY_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"


MAX_ID = 2**31 - 1  # database integer keys are 32-bit


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Strict(BaseModel):
    """Input models: unknown fields and NUL characters (which databases cannot store) are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self) -> Strict:
        for name in type(self).model_fields:
            if _has_nul(getattr(self, name)):
                raise ValueError(f"{name}: text must not contain NUL characters")
        return self


class LoginIn(Strict):
    name: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)


class TokenIn(LoginIn):
    label: str = Field(default="api", max_length=64, description="What the token is for, shown in listings.")
    expires_in_s: int | None = Field(
        default=None,
        ge=60,
        le=MAX_TOKEN_LIFETIME_S,
        description="Lifetime of the token in seconds (default: the server's, 30 days unless set).",
    )


class TokenOut(BaseModel):
    token: str
    user_id: int
    role: Role
    expires_at: dt.datetime


class TokenInfo(BaseModel):
    """A token as listed: never the token itself, which is shown only once."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    user_id: int
    label: str
    created_at: dt.datetime
    expires_at: dt.datetime

    @field_validator("created_at", "expires_at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        return as_utc(value)


class UserIn(Strict):
    name: str = Field(description=NAME_RULE)
    password: str = Field(min_length=8, max_length=256)
    role: Role = "annotator"

    @field_validator("name")
    @classmethod
    def _name_rule(cls, value: str) -> str:
        return normalise_name(value)


class UserChangeIn(Strict):
    """What an admin changes about a user: deactivating ends their sessions and revokes their
    tokens; a new password does too."""

    active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)


class PasswordChangeIn(Strict):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    role: Role
    active: bool


class ProjectIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    instructions: str = Field(default="", max_length=20_000)
    overlap: int = Field(
        default=1, ge=1, le=100, description="How many different annotators judge each item (k)."
    )
    gold_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of assignments that are gold items."
    )
    harm_categories: list[str] = Field(default_factory=lambda: list(HARM_CATEGORIES), max_length=200)

    @field_validator("harm_categories")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("harm categories must be unique")
        if any(not c or len(c) > 128 for c in value):
            raise ValueError("each harm category must have 1 to 128 characters")
        return value


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    instructions: str
    overlap: int
    gold_rate: float
    harm_categories: list[str]


class ItemIn(Strict):
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The pusher's name for the item, unique in the project: an item whose key is "
        "already there is not added again (its id is answered), so a push can be retried.",
    )
    prompt: str = Field(min_length=1, max_length=100_000)
    response_a: str = Field(default="", max_length=100_000)
    response_b: str = Field(default="", max_length=100_000)
    media_a: str | None = Field(default=None, max_length=128, description="Name of an uploaded media file.")
    media_b: str | None = Field(default=None, max_length=128)
    model_a: str = Field(default="", max_length=128)
    model_b: str = Field(default="", max_length=128)
    priority: float = Field(default=0.0, allow_inf_nan=False)
    is_gold: bool = False
    gold_better: Better | None = None
    gold_safer: Safer | None = None
    meta: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _candidates(self) -> ItemIn:
        if not (self.response_a or self.media_a) or not (self.response_b or self.media_b):
            raise ValueError("each candidate needs a text response or a media file")
        if self.is_gold and self.gold_better is None and self.gold_safer is None:
            raise ValueError("a gold item needs gold_better or gold_safer")
        return self


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    key: str | None
    prompt: str
    response_a: str
    response_b: str
    media_a: str | None
    media_b: str | None
    model_a: str
    model_b: str
    priority: float
    meta: dict[str, Any]


class ItemsOut(BaseModel):
    ids: list[int] = Field(
        description="One id per pushed item, in order; an existing key answers its item's id."
    )


class PriorityIn(Strict):
    item_id: int = Field(ge=1, le=MAX_ID)
    priority: float = Field(allow_inf_nan=False)


class PrioritiesIn(Strict):
    priorities: list[PriorityIn] = Field(min_length=1, max_length=10_000)


class AssignmentOut(BaseModel):
    id: int
    expires_at: dt.datetime
    item: ItemOut
    harm_categories: list[str]


class NextOut(BaseModel):
    assignment: AssignmentOut | None


class Labels(Strict):
    """An annotator's verdict; `skipped` with a reason replaces every other field."""

    better: Better | None = None
    safer: Safer | None = None
    safe_a: bool | None = None
    safe_b: bool | None = None
    harm_a: list[str] = Field(default_factory=list, max_length=50)
    harm_b: list[str] = Field(default_factory=list, max_length=50)
    severity_a: Severity | None = None
    severity_b: Severity | None = None
    corrected: str = Field(default="", max_length=100_000)
    skipped: bool = False
    skip_reason: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _consistent(self) -> Labels:
        if self.skipped:
            if not self.skip_reason.strip():
                raise ValueError("skip_reason: say why the item is skipped")
            return self
        if self.better is None:
            raise ValueError("better: choose A, B, tie or both_bad (or skip with a reason)")
        for side, safe, harm, severity in (
            ("a", self.safe_a, self.harm_a, self.severity_a),
            ("b", self.safe_b, self.harm_b, self.severity_b),
        ):
            if safe and (harm or severity):
                raise ValueError(f"harm_{side}/severity_{side}: response {side.upper()} is marked safe")
        safer = {Safer.A: 0, Safer.B: 1}.get(self.safer) if self.safer else None
        try:
            check_safety_consistency(safer, (self.safe_a, self.safe_b))
        except LabelError as exc:
            raise ValueError(str(exc)) from exc
        return self


class JudgementIn(Labels):
    idempotency_key: str = Field(
        pattern=KEY_PATTERN, description="Chosen by the client; a retry with the same key never duplicates."
    )


class JudgementOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    item_id: int
    project_id: int
    annotator_id: int
    idempotency_key: str
    skipped: bool
    skip_reason: str
    better: str | None
    safer: str | None
    safe_a: bool | None
    safe_b: bool | None
    harm_a: list[str]
    harm_b: list[str]
    severity_a: str | None
    severity_b: str | None
    corrected: str
    created_at: dt.datetime


class SubmittedOut(BaseModel):
    judgement: JudgementOut
    assignment: AssignmentOut | None = Field(description="The caller's next assignment; null when done.")


class JudgementsOut(BaseModel):
    judgements: list[JudgementOut]
    next_after: int | None = Field(description="Pass as after_id to fetch the next page.")
