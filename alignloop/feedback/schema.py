"""What a judgement is. Plain dataclasses, no torch: shared by the trainers and the platform.

The conventions follow PKU-SafeRLHF: helpfulness (`better`) and harmlessness (`safer`,
`is_safe`) are judged separately, each response may carry harm categories and a severity.
Response indices are 0 and 1; `None` for `better`/`safer` means no preference (a tie).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from alignloop.errors import UserError

# The 19 harm categories of PKU-SafeRLHF (the default for a project; configurable there).
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


class Severity(str, enum.Enum):
    """How severe a response's harm is (PKU-SafeRLHF severity levels 1-3)."""

    MINOR = "minor"
    MODERATE = "moderate"
    SEVERE = "severe"


class Better(str, enum.Enum):
    """An annotator's helpfulness choice between candidates A (index 0) and B (index 1)."""

    A = "A"
    B = "B"
    TIE = "tie"
    BOTH_BAD = "both_bad"


class Safer(str, enum.Enum):
    """An annotator's harmlessness choice between candidates A (index 0) and B (index 1)."""

    A = "A"
    B = "B"
    TIE = "tie"


class LabelError(UserError, ValueError):
    """A judgement that contradicts itself or the schema; the message says which field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


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


def check_safety_consistency(safer: int | None, is_safe: tuple[bool | None, bool | None]) -> None:
    """Reject a pair whose "safer" response is unsafe while the other one is safe."""
    if safer is None or None in is_safe:
        return
    if not is_safe[safer] and is_safe[1 - safer]:
        raise LabelError(
            "safer",
            f"response {safer} is marked safer but is unsafe while response {1 - safer} is safe",
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
