"""What the round driver asks of a kind of policy: propose pairs, learn, align, evaluate.

The driver (`alignloop.loop.rounds`) owns the platform, the run directory's state and the
order of the phases; a `Domain` owns the models. Every phase writes only under the folder it is
given, and may be called again after a crash: it finishes or redoes its own work (resuming a
trainer from its checkpoints where it has them) and never changes an earlier round's files.

    round_dir = run_dir / "round-003"
    pairs = domain.propose(round_dir, 3, n_pairs=200, select="disagreement")   # saved by the driver
    ... the driver pushes them, waits for judgements, pulls them ...
    domain.learn(round_dir, 3, judged_so_far)    # reward + cost models, warm start, all rounds' data
    domain.align(round_dir, 3)                   # the policy
    metrics = domain.evaluate(round_dir, 3)      # ground-truth figures where the task has them
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Selection = Literal["disagreement", "uniform"]


@dataclass(frozen=True)
class Candidate:
    """One pair to put before annotators."""

    key: str
    """Unique in the run (e.g. "r3-0017"); the platform stores each key once per project."""
    prompt: str
    """The prompt, or the context shown above two clips."""
    response_a: str = ""
    response_b: str = ""
    media_a: str | None = None
    """A clip on local disk (relative to the run directory); the driver uploads it."""
    media_b: str | None = None
    model_a: str = ""
    """Names of the policies behind each candidate (e.g. "policy-r3")."""
    model_b: str = ""
    priority: float = 0.0
    """Higher is asked first (e.g. the reward ensemble's disagreement)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Candidate:
        return cls(**row)


@dataclass(frozen=True)
class Judged:
    """A judgement pulled from the platform, joined with the candidate it judges."""

    judgement_id: int
    annotator_id: int
    round: int
    candidate: Candidate
    better: str | None
    """ "A", "B", "tie" or "both_bad" (None when only safety was judged)."""
    safer: str | None
    """ "A", "B" or "tie"."""
    safe_a: bool | None
    safe_b: bool | None
    harm_a: list[str] = field(default_factory=list)
    harm_b: list[str] = field(default_factory=list)
    severity_a: str | None = None
    severity_b: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Judged:
        return cls(**{**row, "candidate": Candidate.from_json(row["candidate"])})


class Domain(Protocol):
    """A kind of policy the loop can align (the toy-world language model, a MuJoCo controller)."""

    name: str

    def setup(self, run_dir: Path) -> dict[str, float]:
        """Build the starting policy (and anything else round 1 needs) under run_dir; metrics of it."""
        ...

    def propose(self, round_dir: Path, round: int, n_pairs: int, select: Selection) -> list[Candidate]:
        """Sample prompts or episodes, generate with the current policy and choose n_pairs to ask."""
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
