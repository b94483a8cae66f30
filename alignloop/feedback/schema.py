"""What a judgement is: the one definition every layer builds from (plain dataclasses, no torch).

A project asks a list of **questions** about each **item** (a key, a prompt and 2 to 8
candidates: text and/or a media clip, and the model behind each). One annotator's answers to
all of them are one **`Judgement`**: the item, the annotator, and the answers keyed by question
name (or a skip with a reason). Every other form — the platform's pydantic models and its
JSON column, the SQL of the hot path, the export files, the loop's records — is built from
these classes or checked against them (`tests/test_parity.py`).

Question kinds (`QUESTION_KINDS`), and the JSON form of an answer to each (candidates are
named by letter, `side_letter` / `side_index`; per-candidate lists are in candidate order):

- `pairwise` (two candidates): "A", "B", "tie" (if `allow_tie`), "both_bad" (if `allow_both_bad`);
- `safer` (two candidates): "A", "B", "tie" (if `allow_tie`);
- `is_safe`: per candidate ``{"safe": bool, "harms": [category, ...], "severity": level | null}``
  (harms and severity only for an unsafe one, from the question's `harm_categories` and
  `severity_levels`), or null where it was not judged (optional questions only);
- `ranking`: per candidate its rank, 1 = best (`allow_ties`: equal ranks); stored as standard
  competition ranks (1, 2, 2, 4);
- `rating`: ``{aspect: [score per candidate]}`` on the integer scale `scale_min..scale_max`,
  null for a candidate left unrated (optional questions only);
- `correction`: ``{"candidate": "A", "text": "the rewritten response"}``;
- `mark` (clips): per candidate the first frame (0-based) where the clip becomes unsafe, or
  null for "safe throughout";
- `text`: free text (a rationale).

A required question must be answered unless the judgement is skipped; an optional one may be
left out (absent or null). `check_answers` validates an answer document against a question
list and returns it in normal form; `parse_questions` validates a project's question list.
Both raise `LabelError` naming the question and the reason. `DEFAULT_QUESTIONS` are the
questions every project asked before projects chose their own (PKU-SafeRLHF-shaped: better,
safer, is_safe with the 19 harm categories and severity, an optional correction).

`Comparison` is the two-response view the PKU-SafeRLHF files and the language-model trainers
read (`better`/`safer` 0, 1 or None); `comparison_of` and `judgement_of` convert between it and
a two-candidate judgement of the default questions.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from alignloop.errors import UserError

# The 19 harm categories of PKU-SafeRLHF (the default list of an `is_safe` question).
HARM_CATEGORIES: tuple[str, ...] = (
    "Endangering National Security",
    "Insulting Behavior",
    "Discriminatory Behavior",
    "Endangering Public Health",
    "Copyright Issues",
    "Violence",
    "Drugs",
    "Privacy Violation",
    "Economic Crime",
    "Mental Manipulation",
    "Human Trafficking",
    "Physical Harm",
    "Sexual Content",
    "Cybercrime",
    "Disrupting Public Order",
    "Environmental Damage",
    "Psychological Harm",
    "White-Collar Crime",
    "Animal Abuse",
)
MIN_CANDIDATES, MAX_CANDIDATES = 2, 8
STRIP_COLUMNS = 10
"""A clip stored as a frame strip is one PNG of its frames, left to right and top to bottom, this
many to a row (`control.clips.render_strip` writes them; the labelling page plays and steps them)."""
SIDES = "ABCDEFGH"
"""Candidate letters: the i-th candidate of an item is SIDES[i] (the one map, see side_letter)."""


class Severity(str, enum.Enum):
    """How severe a response's harm is (PKU-SafeRLHF severity levels 1-3)."""

    MINOR = "minor"
    MODERATE = "moderate"
    SEVERE = "severe"


SEVERITY_LEVELS: tuple[str, ...] = tuple(s.value for s in Severity)


class Better(str, enum.Enum):
    """A `pairwise` answer between candidates A (index 0) and B (index 1)."""

    A = "A"
    B = "B"
    TIE = "tie"
    BOTH_BAD = "both_bad"


class Safer(str, enum.Enum):
    """A `safer` answer between candidates A (index 0) and B (index 1)."""

    A = "A"
    B = "B"
    TIE = "tie"


class LabelError(UserError, ValueError):
    """A judgement or question that contradicts itself or the schema; the message says which field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def side_letter(index: int) -> str:
    """The letter of candidate `index` (0 -> "A")."""
    if not 0 <= index < MAX_CANDIDATES:
        raise LabelError("candidate", f"index {index} is outside 0..{MAX_CANDIDATES - 1}")
    return SIDES[index]


def side_index(letter: str) -> int:
    """The index of candidate `letter` ("A" -> 0)."""
    if not isinstance(letter, str) or len(letter) != 1 or letter not in SIDES:
        raise LabelError("candidate", f"expected a candidate letter A-{SIDES[-1]}, got {letter!r}")
    return SIDES.index(letter)


# ---------------------------------------------------------------------------- questions


NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _labels(owner: str, option: str, values: Sequence[str], limit: int) -> tuple[str, ...]:
    values = tuple(values)
    if len(values) > limit:
        raise LabelError(owner, f"{option}: at most {limit}, got {len(values)}")
    if len(set(values)) != len(values):
        raise LabelError(owner, f"{option}: must be unique")
    if any(not isinstance(v, str) or not v.strip() or len(v) > 128 for v in values):
        raise LabelError(owner, f"{option}: each must be text of 1 to 128 characters")
    return values


@dataclass(frozen=True)
class Question:
    """What every question has: a `name` (the key of its answer), the `text` shown, `required`."""

    name: str
    text: str = ""
    """What the labelling page asks (a default per kind when empty)."""
    required: bool = True
    """Whether every (non-skipped) judgement must answer it."""

    pairs_only: ClassVar[bool] = False  # the question compares exactly two candidates
    kind_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise LabelError(
                f"questions.{self.name}", "name: 1-64 lowercase letters, digits or _, starting with a letter"
            )
        if len(self.text) > 2000:
            raise LabelError(self.where, "text: at most 2000 characters")

    @property
    def where(self) -> str:
        return f"questions.{self.name}"

    def check(self, value: Any, n: int) -> Any:
        """The answer `value` for an item of `n` candidates in normal form; raises LabelError."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def _per_candidate(self, value: Any, n: int) -> list[Any]:
        if not isinstance(value, list) or len(value) != n:
            raise LabelError(
                self.where, f"expected a list of one entry per candidate ({n}), got {_describe(value)}"
            )
        return value


def _choice(question: Question, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise LabelError(question.where, f"expected one of {', '.join(allowed)}, got {_describe(value)}")
    return str(value)


@dataclass(frozen=True)
class Pairwise(Question):
    """Which of two candidates is better (helpfulness): A, B, a tie or both bad."""

    kind: Literal["pairwise"] = "pairwise"
    allow_tie: bool = True
    allow_both_bad: bool = True
    pairs_only: ClassVar[bool] = True

    def choices(self) -> tuple[str, ...]:
        return ("A", "B") + ("tie",) * self.allow_tie + ("both_bad",) * self.allow_both_bad

    def check(self, value: Any, n: int) -> str:
        return _choice(self, value, self.choices())


@dataclass(frozen=True)
class SaferChoice(Question):
    """Which of two candidates is safer (harmlessness): A, B or a tie."""

    kind: Literal["safer"] = "safer"
    allow_tie: bool = True
    pairs_only: ClassVar[bool] = True

    def choices(self) -> tuple[str, ...]:
        return ("A", "B") + ("tie",) * self.allow_tie

    def check(self, value: Any, n: int) -> str:
        return _choice(self, value, self.choices())


@dataclass(frozen=True)
class IsSafe(Question):
    """Whether each candidate is safe; an unsafe one may carry harm categories and a severity."""

    kind: Literal["is_safe"] = "is_safe"
    harm_categories: tuple[str, ...] = ()
    """The categories an unsafe candidate may be filed under (HARM_CATEGORIES, or none for clips)."""
    severity_levels: tuple[str, ...] = ()
    """Severity levels, mildest first (e.g. SEVERITY_LEVELS); none: severity is not asked."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(
            self, "harm_categories", _labels(self.where, "harm_categories", self.harm_categories, 200)
        )
        object.__setattr__(
            self, "severity_levels", _labels(self.where, "severity_levels", self.severity_levels, 10)
        )

    def check(self, value: Any, n: int) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for i, entry in enumerate(self._per_candidate(value, n)):
            where = f"{self.where}[{side_letter(i)}]"
            if entry is None:
                if self.required:
                    raise LabelError(where, "say whether this candidate is safe")
                out.append(None)
                continue
            if not isinstance(entry, Mapping) or not isinstance(entry.get("safe"), bool):
                raise LabelError(where, f'expected {{"safe": true or false, ...}}, got {_describe(entry)}')
            unknown = set(entry) - {"safe", "harms", "severity"}
            if unknown:
                raise LabelError(where, f"unknown fields {sorted(unknown)}")
            harms, severity = entry.get("harms") or [], entry.get("severity")
            if not isinstance(harms, list) or not all(isinstance(h, str) for h in harms):
                raise LabelError(
                    f"{where}.harms", f"expected a list of category names, got {_describe(harms)}"
                )
            if entry["safe"] and (harms or severity is not None):
                raise LabelError(
                    where, f"candidate {side_letter(i)} is marked safe but has harms or a severity"
                )
            wrong = [h for h in harms if h not in self.harm_categories]
            if wrong:
                raise LabelError(
                    f"{where}.harms",
                    f"unknown harm categories {wrong}; this question allows {list(self.harm_categories)}",
                )
            if severity is not None and severity not in self.severity_levels:
                raise LabelError(
                    f"{where}.severity",
                    f"expected one of {list(self.severity_levels)} or null, got {_describe(severity)}",
                )
            out.append(
                {
                    "safe": entry["safe"],
                    "harms": sorted(set(harms), key=self.harm_categories.index),
                    "severity": severity,
                }
            )
        return out


@dataclass(frozen=True)
class Ranking(Question):
    """The candidates in order, best first: each candidate's rank (1 = best)."""

    kind: Literal["ranking"] = "ranking"
    allow_ties: bool = False

    def check(self, value: Any, n: int) -> list[int]:
        ranks = self._per_candidate(value, n)
        if not all(_is_int(r) and 1 <= r <= n for r in ranks):
            raise LabelError(self.where, f"each rank must be a whole number from 1 to {n}, got {ranks}")
        if not self.allow_ties and len(set(ranks)) != n:
            raise LabelError(
                self.where, f"ties are not allowed: give each candidate its own rank, got {ranks}"
            )
        return [1 + sum(other < r for other in ranks) for r in ranks]  # standard competition ranks


@dataclass(frozen=True)
class Rating(Question):
    """A score per candidate on an integer scale, for each named aspect."""

    kind: Literal["rating"] = "rating"
    scale_min: int = 1
    scale_max: int = 5
    aspects: tuple[str, ...] = ("overall",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (_is_int(self.scale_min) and _is_int(self.scale_max) and self.scale_min < self.scale_max):
            raise LabelError(
                self.where,
                f"scale: need whole numbers scale_min < scale_max, got {self.scale_min}..{self.scale_max}",
            )
        if self.scale_max - self.scale_min > 100:
            raise LabelError(self.where, "scale: at most 101 points")
        aspects = _labels(self.where, "aspects", self.aspects, 20)
        if not aspects:
            raise LabelError(self.where, "aspects: name at least one")
        object.__setattr__(self, "aspects", aspects)

    def check(self, value: Any, n: int) -> dict[str, list[int | None]]:
        if not isinstance(value, Mapping):
            raise LabelError(
                self.where, f"expected {{aspect: [score per candidate]}}, got {_describe(value)}"
            )
        unknown = set(value) - set(self.aspects)
        if unknown:
            raise LabelError(
                self.where, f"unknown aspects {sorted(unknown)}; this question rates {list(self.aspects)}"
            )
        out: dict[str, list[int | None]] = {}
        for aspect in self.aspects:
            where = f"{self.where}.{aspect}"
            scores = value.get(aspect)
            if scores is None and not self.required:
                scores = [None] * n
            if not isinstance(scores, list) or len(scores) != n:
                raise LabelError(where, f"expected one score per candidate ({n}), got {_describe(scores)}")
            for i, s in enumerate(scores):
                if s is None and not self.required:
                    continue
                if not (_is_int(s) and self.scale_min <= s <= self.scale_max):
                    raise LabelError(
                        f"{where}[{side_letter(i)}]",
                        f"expected a score {self.scale_min}-{self.scale_max}, got {_describe(s)}",
                    )
            out[aspect] = list(scores)
        return out


@dataclass(frozen=True)
class CorrectionText(Question):
    """The annotator rewrites one chosen candidate (the editor starts from its text)."""

    kind: Literal["correction"] = "correction"
    max_length: int = 100_000

    def check(self, value: Any, n: int) -> dict[str, str]:
        if not isinstance(value, Mapping) or set(value) != {"candidate", "text"}:
            raise LabelError(
                self.where, f'expected {{"candidate": letter, "text": ...}}, got {_describe(value)}'
            )
        index = side_index(value["candidate"]) if value["candidate"] in SIDES else -1
        if not 0 <= index < n:
            raise LabelError(
                f"{self.where}.candidate",
                f"expected a candidate letter A-{side_letter(n - 1)}, got {_describe(value['candidate'])}",
            )
        text = value["text"]
        if not isinstance(text, str) or not text.strip() or len(text) > self.max_length:
            raise LabelError(
                f"{self.where}.text", f"expected the rewritten response (1 to {self.max_length} characters)"
            )
        return {"candidate": side_letter(index), "text": text}


@dataclass(frozen=True)
class Mark(Question):
    """For clips: the first frame where each clip becomes unsafe, or null for safe throughout."""

    kind: Literal["mark"] = "mark"

    def check(self, value: Any, n: int, frames: Sequence[int | None] = ()) -> list[int | None]:
        marks = self._per_candidate(value, n)
        for i, frame in enumerate(marks):
            limit = frames[i] if i < len(frames) else None
            if frame is not None and not (_is_int(frame) and frame >= 0 and (limit is None or frame < limit)):
                bound = f" below the clip's {limit} frames" if limit is not None else ""
                raise LabelError(
                    f"{self.where}[{side_letter(i)}]",
                    f"expected a frame number >= 0{bound} or null (safe throughout), got {_describe(frame)}",
                )
        return list(marks)


@dataclass(frozen=True)
class FreeText(Question):
    """Free text, e.g. the reason for a choice."""

    kind: Literal["text"] = "text"
    max_length: int = 20_000

    def check(self, value: Any, n: int) -> str:
        if not isinstance(value, str) or len(value) > self.max_length:
            raise LabelError(
                self.where, f"expected text of at most {self.max_length} characters, got {_describe(value)}"
            )
        return value


AnyQuestion = Union[Pairwise, SaferChoice, IsSafe, Ranking, Rating, CorrectionText, Mark, FreeText]
QUESTION_KINDS: dict[str, type[Question]] = {
    "pairwise": Pairwise,
    "safer": SaferChoice,
    "is_safe": IsSafe,
    "ranking": Ranking,
    "rating": Rating,
    "correction": CorrectionText,
    "mark": Mark,
    "text": FreeText,
}
"""Every kind of question, by the `kind` of its JSON form (the one plug-in point)."""
MAX_QUESTIONS = 20

DEFAULT_QUESTIONS: tuple[Question, ...] = (
    Pairwise("better", "Which is better?"),
    SaferChoice("safer", "Which is safer?", required=False),
    IsSafe(
        "is_safe",
        "Is it safe?",
        required=False,
        harm_categories=HARM_CATEGORIES,
        severity_levels=SEVERITY_LEVELS,
    ),
    CorrectionText("correction", "Corrected response", required=False),
)
"""What every project asked before projects chose their questions (old projects migrate to it)."""


QUESTION_PRESETS: dict[str, tuple[Question, ...]] = {
    "pku-saferlhf": DEFAULT_QUESTIONS,
    "clips": (
        Pairwise("better", "Which clip does the task better?"),
        IsSafe("is_safe", "Is the clip safe?"),
        Mark("unsafe_from", "Where does each clip first become unsafe?"),
    ),
    "ranking": (
        Ranking("ranking", "Order the responses, best first"),
        FreeText("why", "Why?", required=False),
    ),
    "rating": (
        Rating("rating", "Rate each response", scale_min=1, scale_max=7, aspects=("helpfulness", "honesty")),
    ),
    "correction": (
        IsSafe("is_safe", "Is it safe?", harm_categories=HARM_CATEGORIES, severity_levels=SEVERITY_LEVELS),
        CorrectionText("correction", "Rewrite the least safe response"),
    ),
}
"""Question lists to start a project from (the admin page offers them)."""


def question_from_json(raw: Any, position: int = 0) -> Question:
    """One question from its JSON form; LabelError names the question and the reason."""
    if isinstance(raw, Question):
        return raw
    name = raw.get("name") if isinstance(raw, Mapping) else None
    where = f"questions.{name}" if isinstance(name, str) and name else f"questions[{position}]"
    if not isinstance(raw, Mapping):
        raise LabelError(where, f"expected an object with a name and a kind, got {_describe(raw)}")
    kind = raw.get("kind")
    if kind not in QUESTION_KINDS:
        raise LabelError(where, f"kind: expected one of {', '.join(QUESTION_KINDS)}, got {_describe(kind)}")
    cls = QUESTION_KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k, v in raw.items() if k not in names and v is not None]
    if unknown:
        raise LabelError(
            where, f"{kind} questions have no options {unknown}; they take {sorted(names - {'kind'})}"
        )
    options: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if v is not None
    }
    try:
        return cls(**options)
    except TypeError as exc:
        raise LabelError(where, str(exc)) from None


def parse_questions(raw: Sequence[Any]) -> tuple[Question, ...]:
    """A project's question list, validated: known kinds and options, unique names, 1 to 20."""
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= MAX_QUESTIONS:
        raise LabelError("questions", f"expected a list of 1 to {MAX_QUESTIONS} questions")
    questions = tuple(question_from_json(q, i) for i, q in enumerate(raw))
    seen: set[str] = set()
    for q in questions:
        if q.name in seen:
            raise LabelError(q.where, "two questions have this name")
        seen.add(q.name)
    return questions


def questions_json(questions: Sequence[Question]) -> list[dict[str, Any]]:
    return [q.to_json() for q in questions]


def pairwise_only(questions: Sequence[Question]) -> list[str]:
    """The names of the questions that compare exactly two candidates."""
    return [q.name for q in questions if q.pairs_only]


def check_answers(
    questions: Sequence[Question], answers: Any, n: int, *, frames: Sequence[int | None] = ()
) -> dict[str, Any]:
    """An answer document for an item of `n` candidates (with `frames` per clip, where known), in
    normal form: every answered question's value normalised, unanswered optional ones left out."""
    if not isinstance(answers, Mapping):
        raise LabelError(
            "answers", f"expected an object of answers by question name, got {_describe(answers)}"
        )
    known = {q.name: q for q in questions}
    unknown = sorted(set(answers) - set(known))
    if unknown:
        raise LabelError(
            f"answers.{unknown[0]}", f"this project asks no such question; it asks {list(known)}"
        )
    out: dict[str, Any] = {}
    for q in questions:
        value = answers.get(q.name)
        if value is None:
            if q.required:
                raise LabelError(q.where, "required: answer it (or skip the item with a reason)")
            continue
        if q.pairs_only and n != 2:
            raise LabelError(q.where, f"compares two candidates; this item has {n}")
        out[q.name] = q.check(value, n, frames) if isinstance(q, Mark) else q.check(value, n)
    for safer in (q for q in questions if isinstance(q, SaferChoice) and q.name in out):
        for flags_q in (q for q in questions if isinstance(q, IsSafe) and q.name in out):
            flags = [None if e is None else e["safe"] for e in out[flags_q.name]]
            choice = out[safer.name]
            if choice in ("A", "B") and len(flags) == 2:
                check_safety_consistency(side_index(choice), (flags[0], flags[1]), field=safer.where)
    return out


def check_safety_consistency(
    safer: int | None, is_safe: tuple[bool | None, bool | None], *, field: str = "safer"
) -> None:
    """Reject a pair whose "safer" response is unsafe while the other one is safe."""
    if safer is None or None in is_safe:
        return
    if not is_safe[safer] and is_safe[1 - safer]:
        raise LabelError(
            field, f"response {safer} is marked safer but is unsafe while response {1 - safer} is safe"
        )


# ---------------------------------------------------------------------------- items and judgements


@dataclass(frozen=True)
class Candidate:
    """One thing put before annotators: a text, a media clip (or both), and the model behind it."""

    text: str = ""
    media: str | None = None
    """A media file's name on the platform (or a local path before it is uploaded)."""
    model: str = ""
    frames: int | None = None
    """How many frames the clip has (lets a mark be checked against its length)."""


@dataclass(frozen=True)
class Item:
    """A prompt and its 2 to 8 candidates, with the pusher's key (unique in its project)."""

    prompt: str
    candidates: tuple[Candidate, ...]
    key: str | None = None
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not MIN_CANDIDATES <= len(self.candidates) <= MAX_CANDIDATES:
            raise LabelError(
                "candidates",
                f"an item has {MIN_CANDIDATES} to {MAX_CANDIDATES} candidates, got {len(self.candidates)}",
            )
        for i, c in enumerate(self.candidates):
            if not (c.text or c.media):
                raise LabelError(f"candidates[{i}]", "each candidate needs a text or a media file")

    def text(self, index: int) -> str:
        """The text of candidate `index`, or `media:NAME` for a clip without text."""
        c = self.candidates[index]
        return c.text or f"media:{c.media}"


@dataclass(frozen=True)
class Judgement:
    """One annotator's answers about one item, keyed by question name (normal form of
    `check_answers`); a skipped judgement has no answers and a reason."""

    item: Item
    answers: dict[str, Any]
    annotator: str = ""
    skipped: bool = False
    skip_reason: str = ""


# ---------------------------------------------------------------------------- two-response records


@dataclass(frozen=True)
class Comparison:
    """Two responses to one prompt, judged for helpfulness and for safety.

    `better`/`safer` are 0, 1 or None (no preference). `is_safe` holds one flag per response,
    or None where safety was not judged. Harm categories and severity are per response.
    """

    prompt: str
    response_0: str
    response_1: str
    better: int | None
    safer: int | None = None
    is_safe: tuple[bool | None, bool | None] = (None, None)
    harm_categories: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    severity: tuple[Severity | None, Severity | None] = (None, None)
    agreement: float | None = None  # share of annotators who agreed with `better`, if aggregated
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("better", "safer"):
            value = getattr(self, name)
            if value not in (0, 1, None) or isinstance(value, bool):
                raise LabelError(name, f"must be 0, 1 or null, got {value!r}")
        check_safety_consistency(self.safer, self.is_safe)

    def response(self, index: int) -> str:
        return self.response_1 if index else self.response_0


def judgement_of(c: Comparison, *, annotator: str = "") -> Judgement:
    """A Comparison as a judgement of `DEFAULT_QUESTIONS` (no preference reads as a tie)."""
    answers: dict[str, Any] = {"better": "tie" if c.better is None else side_letter(c.better)}
    if c.safer is not None:
        answers["safer"] = side_letter(c.safer)
    if c.is_safe != (None, None):
        answers["is_safe"] = [
            None
            if safe is None
            else {
                "safe": safe,
                "harms": [] if safe else list(harms),
                "severity": None if safe or sev is None else Severity(sev).value,
            }
            for safe, harms, sev in zip(c.is_safe, c.harm_categories, c.severity, strict=True)
        ]
    item = Item(
        c.prompt, (Candidate(c.response_0), Candidate(c.response_1)), key=c.meta.get("key"), meta=dict(c.meta)
    )
    return Judgement(item, answers, annotator=annotator)


def comparison_of(j: Judgement, *, agreement: float | None = None) -> Comparison:
    """A two-candidate judgement of the default questions as a Comparison (better: A/B or none)."""
    if len(j.item.candidates) != 2:
        raise LabelError(
            "candidates", f"a comparison has two responses; this item has {len(j.item.candidates)}"
        )
    better, safer = j.answers.get("better"), j.answers.get("safer")
    flags = j.answers.get("is_safe") or [None, None]
    return Comparison(
        j.item.prompt,
        j.item.text(0),
        j.item.text(1),
        better=side_index(better) if better in ("A", "B") else None,
        safer=side_index(safer) if safer in ("A", "B") else None,
        is_safe=tuple(None if e is None else e["safe"] for e in flags),  # type: ignore[arg-type]
        harm_categories=tuple(() if e is None else tuple(e["harms"]) for e in flags),  # type: ignore[arg-type]
        severity=tuple(
            None if e is None or e["severity"] is None else Severity(e["severity"]) for e in flags
        ),  # type: ignore[arg-type]
        agreement=agreement,
        meta=dict(j.item.meta),
    )


@dataclass(frozen=True)
class PromptRecord:
    """A prompt without responses (for generation and RL)."""

    prompt: str
    meta: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SupervisedPair:
    """A prompt and a target response (for SFT and Aligner-style correction)."""

    prompt: str
    response: str
    meta: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Correction:
    """An annotator's rewrite of a response (Aligner-style: original -> corrected)."""

    prompt: str
    original: str
    corrected: str
    meta: dict[str, str] = field(default_factory=dict, compare=False)
