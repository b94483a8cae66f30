"""What the round driver asks of a kind of policy: propose items, learn, align, evaluate.

The driver (`alignloop.loop.rounds`) owns the platform, the run directory's state and the
order of the phases; a `Domain` owns the models. Every phase writes only under the folder it is
given, and may be called again after a crash: it finishes or redoes its own work (resuming a
trainer from its checkpoints where it has them) and never changes an earlier round's files.

    round_dir = run_dir / "round-003"
    proposals = domain.propose(round_dir, 3, n_pairs=200, select="disagreement")   # saved by the driver
    ... the driver pushes them, waits for judgements, pulls them ...
    domain.learn(round_dir, 3, judged_so_far)    # reward + cost models, warm start, all rounds' data
    domain.align(round_dir, 3)                   # the policy
    metrics = domain.evaluate(round_dir, 3)      # ground-truth figures where the task has them
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from alignloop.errors import UserError
from alignloop.feedback.judged import JudgedItem, judged_item
from alignloop.feedback.schema import (
    MAX_CANDIDATES,
    MIN_CANDIDATES,
    QUESTION_PRESETS,
    Candidate,
    Item,
    Judgement,
    LabelError,
    Question,
    check_answers,
    pairwise_only,
    parse_questions,
)

Selection = Literal["disagreement", "uniform"]


@dataclass(frozen=True)
class ProjectSpec:
    """What a loop's project asks about each item, and how many candidates an item shows."""

    questions: tuple[Question, ...]
    candidates: int = 2

    def __post_init__(self) -> None:
        if not MIN_CANDIDATES <= self.candidates <= MAX_CANDIDATES:
            raise LabelError(
                "candidates",
                f"an item shows {MIN_CANDIDATES} to {MAX_CANDIDATES} candidates, got {self.candidates}",
            )
        pairs = pairwise_only(self.questions)
        if pairs and self.candidates != 2:
            raise LabelError(
                f"questions.{pairs[0]}", f"compares two candidates; items of {self.candidates} cannot ask it"
            )

    def to_json(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "questions": [q.to_json() for q in self.questions]}


def project_spec(spec: str) -> ProjectSpec:
    """`alignloop loop --questions`: a preset of `feedback.schema.QUESTION_PRESETS` followed by
    the candidates per item (``ranking4``: the ranking preset over 4 candidates; ``rating3``;
    without a number, 2: ``pku-saferlhf``), or a project definition file, JSON or YAML:
    ``{"candidates": 4, "questions": [{"name": "order", "kind": "ranking"}, ...]}`` with the
    questions as the platform's API takes them. Raises `UserError` naming what is wrong."""
    match = re.fullmatch(r"([a-z][a-z-]*?)([0-9]*)", spec)
    if match and match.group(1) in QUESTION_PRESETS:
        name, count = match.groups()
        return ProjectSpec(QUESTION_PRESETS[name], int(count) if count else 2)
    path = Path(spec)
    if not path.is_file():
        raise UserError(
            f"--questions {spec}: neither a preset ({', '.join(f'{p}[K]' for p in QUESTION_PRESETS)}, "
            "K the candidates per item) nor a project definition file"
        )
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid JSON or YAML ({exc})") from None
    if not isinstance(raw, dict) or set(raw) - {"candidates", "questions"} or "questions" not in raw:
        raise UserError(
            f'{path}: expected {{"candidates": K, "questions": [...]}}, got {json.dumps(raw)[:80]}'
        )
    try:
        return ProjectSpec(parse_questions(raw["questions"]), int(raw.get("candidates", 2)))
    except (LabelError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None


def item_to_json(item: Item) -> dict[str, Any]:
    return {
        "key": item.key,
        "prompt": item.prompt,
        "candidates": [
            {"text": c.text, "media": c.media, "model": c.model, "frames": c.frames} for c in item.candidates
        ],
        "meta": dict(item.meta),
    }


def item_from_json(row: dict[str, Any]) -> Item:
    """An item as written by `item_to_json`, or a pair as the loop wrote it before items held
    several candidates (response_a/b, media_a/b, model_a/b)."""
    if "candidates" not in row:
        row = {
            "key": row["key"],
            "prompt": row["prompt"],
            "candidates": [
                {
                    "text": row.get(f"response_{s}", ""),
                    "media": row.get(f"media_{s}"),
                    "model": row.get(f"model_{s}", ""),
                }
                for s in "ab"
            ],
        }
    candidates = tuple(Candidate(**c) for c in row["candidates"])
    return Item(row["prompt"], candidates, key=row["key"], meta=dict(row.get("meta") or {}))


@dataclass(frozen=True)
class Proposal:
    """One item to put before annotators, with how useful its judgement would be."""

    item: Item
    """Its `key` is unique in the run (e.g. "r3-0017"): the platform stores each key once per
    project. Candidates' `media` are clips on local disk (relative to the run directory), which
    the driver uploads; `model` names the policy behind each (e.g. "policy-r3")."""
    priority: float = 0.0
    """Higher is asked first (e.g. the reward ensemble's disagreement)."""

    @property
    def key(self) -> str:
        assert self.item.key is not None
        return self.item.key

    def to_json(self) -> dict[str, Any]:
        return {**item_to_json(self.item), "priority": self.priority}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Proposal:
        return cls(item_from_json(row), float(row.get("priority", 0.0)))


@dataclass(frozen=True)
class Judged:
    """A judgement pulled from the platform, of the item a proposal put there (the one
    `feedback.schema.Judgement`: answers by question name, the annotator's id)."""

    judgement_id: int
    round: int
    judgement: Judgement

    @property
    def key(self) -> str:
        return str(self.judgement.item.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "judgement_id": self.judgement_id,
            "round": self.round,
            "item": item_to_json(self.judgement.item),
            "annotator": self.judgement.annotator,
            "answers": self.judgement.answers,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Judged:
        if "candidate" in row:  # a line written before judgements held answer documents
            answers: dict[str, Any] = {k: row[k] for k in ("better", "safer") if row.get(k) is not None}
            sides = [
                (row.get(f"safe_{s}"), row.get(f"harm_{s}") or [], row.get(f"severity_{s}")) for s in "ab"
            ]
            if any(safe is not None for safe, _, _ in sides):
                answers["is_safe"] = [
                    None
                    if safe is None
                    else {"safe": safe, "harms": [] if safe else harms, "severity": None if safe else sev}
                    for safe, harms, sev in sides
                ]
            old = Judgement(item_from_json(row["candidate"]), answers, str(row["annotator_id"]))
            return cls(int(row["judgement_id"]), int(row["round"]), old)
        judgement = Judgement(
            item_from_json(row["item"]), dict(row["answers"]), str(row.get("annotator", ""))
        )
        return cls(int(row["judgement_id"]), int(row["round"]), judgement)


class Domain(Protocol):
    """A kind of policy the loop can align (a language model on a task, `loop.lm`; a MuJoCo
    controller, `loop.control`)."""

    name: str
    questions: tuple[Question, ...]
    """What annotators are asked about each item (the project is created with them)."""

    def setup(self, run_dir: Path) -> dict[str, float]:
        """Build the starting policy (and anything else round 1 needs) under run_dir; metrics of it."""
        ...

    def propose(self, round_dir: Path, round: int, n_pairs: int, select: Selection) -> list[Proposal]:
        """Sample prompts or episodes, generate with the current policy and choose n_pairs items to ask."""
        ...

    def learn(self, round_dir: Path, round: int, judged: list[Judged]) -> dict[str, float]:
        """Update the reward and cost models on the judgements of every round so far."""
        ...

    def align(self, round_dir: Path, round: int) -> dict[str, float]:
        """Update the policy on the newest reward and cost models."""
        ...

    def evaluate(self, round_dir: Path, round: int) -> dict[str, float]:
        """Figures of the round's policy (ground truth where the task has it)."""
        ...


# ------------------------------------------------------------------ helpers of the rounds
def previous_round_dir(round_dir: Path, round: int) -> Path:
    """The folder of round - 1, named like round_dir ("round-003" -> "round-002")."""
    match = re.fullmatch(r"(.*?)(\d+)", round_dir.name)
    if match is None or int(match.group(2)) != round:
        raise ValueError(f"{round_dir}: the folder name does not end with the round number {round}")
    prefix, digits = match.groups()
    return round_dir.with_name(f"{prefix}{round - 1:0{len(digits)}d}")


def to_judged_items(judged: list[Judged], questions: tuple[Question, ...]) -> tuple[list[JudgedItem], int]:
    """Each item's judgements as one judged item (the `judgements` export format; the round in the
    item's `meta`), items in (round, key) order, judgements in id order; and how many judgements
    were left out because their answers contradict the questions (`check_answers`: e.g. the
    safer response marked unsafe while the other is safe)."""
    by_key: dict[str, tuple[Item, list[Judgement]]] = {}
    dropped = 0
    for j in sorted(judged, key=lambda j: (j.round, j.key, j.judgement_id)):
        item = j.judgement.item
        try:
            answers = check_answers(questions, j.judgement.answers, len(item.candidates))
        except LabelError:
            dropped += 1
            continue
        if j.key not in by_key:
            by_key[j.key] = (dataclasses.replace(item, meta={**item.meta, "round": str(j.round)}), [])
        kept, judgements = by_key[j.key]
        judgements.append(Judgement(kept, answers, j.judgement.annotator))
    return [judged_item(item, questions, judgements) for item, judgements in by_key.values()], dropped
