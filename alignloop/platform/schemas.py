"""What goes over the wire (pydantic v2), built from the one definition in `alignloop.feedback.schema`.

A project's questions are that module's question dataclasses (a discriminated union on `kind`,
validated by `parse_questions`); an item's candidates are its `Candidate`s; a judgement's
answers are checked against the project's questions by `check_answers` when it is stored
(`crud`), since only the project knows what it asks.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    MAX_CANDIDATES,
    MIN_CANDIDATES,
    QUESTION_KINDS,
    LabelError,
    parse_questions,
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


QuestionSpec = Annotated[Union[tuple(QUESTION_KINDS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]
"""One question: the JSON form of a `feedback.schema` question (its fields are the kind's options)."""


class ProjectIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    instructions: str = Field(default="", max_length=20_000)
    overlap: int = Field(
        default=1, ge=1, le=100, description="How many different annotators judge each item (k)."
    )
    gold_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of assignments that are gold items."
    )
    questions: list[QuestionSpec] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_QUESTIONS),
        description="What annotators are asked about each item (default: better, safer, is_safe with"
        " the 19 PKU-SafeRLHF harm categories and severity, and a correction). Fixed once created.",
    )

    @field_validator("questions", mode="before")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        try:
            return list(parse_questions(value))
        except LabelError as exc:
            raise ValueError(str(exc)) from None


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    instructions: str
    overlap: int
    gold_rate: float
    questions: list[dict[str, Any]]


class CandidateIn(Strict):
    """One candidate: a text and/or an uploaded media file, and the model behind it."""

    text: str = Field(default="", max_length=100_000)
    media: str | None = Field(default=None, max_length=128, description="Name of an uploaded media file.")
    model: str = Field(default="", max_length=128)
    frames: int | None = Field(
        default=None, ge=1, le=100_000, description="A clip's frame count (marks are checked against it)."
    )

    @model_validator(mode="after")
    def _shown(self) -> CandidateIn:
        if not (self.text or self.media):
            raise ValueError("each candidate needs a text or a media file")
        return self


class ItemIn(Strict):
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The pusher's name for the item, unique in the project: an item whose key is "
        "already there is not added again (its id is answered), so a push can be retried.",
    )
    prompt: str = Field(min_length=1, max_length=100_000)
    candidates: list[CandidateIn] = Field(min_length=MIN_CANDIDATES, max_length=MAX_CANDIDATES)
    priority: float = Field(default=0.0, allow_inf_nan=False)
    is_gold: bool = False
    gold: dict[str, Any] | None = Field(
        default=None,
        description="A gold item's known answers, by question name (checked like a judgement's).",
    )
    meta: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gold(self) -> ItemIn:
        if self.is_gold and not self.gold:
            raise ValueError("gold: a gold item needs the known answer to at least one question")
        return self


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class CandidateOut(BaseModel):
    text: str
    media: str | None
    model: str
    frames: int | None


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    key: str | None
    prompt: str
    candidates: list[CandidateOut]
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


class NextOut(BaseModel):
    assignment: AssignmentOut | None


class Labels(Strict):
    """An annotator's verdict: the answers by question name, or a skip with a reason."""

    answers: dict[str, Any] = Field(
        default_factory=dict, description="The answer to each of the project's questions, by name."
    )
    skipped: bool = False
    skip_reason: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _skip(self) -> Labels:
        if self.skipped:
            if not self.skip_reason.strip():
                raise ValueError("skip_reason: say why the item is skipped")
            if self.answers:
                raise ValueError("answers: a skipped item has no answers")
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
    answers: dict[str, Any]
    created_at: dt.datetime


class SubmittedOut(BaseModel):
    judgement: JudgementOut
    assignment: AssignmentOut | None = Field(description="The caller's next assignment; null when done.")


class JudgementsOut(BaseModel):
    judgements: list[JudgementOut]
    next_after: int | None = Field(description="Pass as after_id to fetch the next page.")
