"""Scripted teachers: simulated annotators that judge pairs from true scores, with human-like noise.

One decision rule serves text responses and trajectory segments alike (`judge_pairs`). It
follows the B-Pref teacher model (Lee et al., 2021, "B-Pref: Benchmarking Preference-Based
Reinforcement Learning"):

- *skip*: when both options are below a usefulness threshold the teacher declines to judge;
- *equal*: when their values differ by less than a threshold the teacher calls a tie;
- *rationality* β: option 0 is preferred with probability σ(β (u0 - u1)); β = inf always picks
  the higher utility (an exact tie of utilities is then a fair coin);
- *mistakes* ε: the choice is flipped with probability ε (ties and skips are never flipped);
- *myopia* γ (segments only): step t of H counts with weight γ^(H-1-t), so later steps weigh more.

Safety is judged from true costs with its own noise: a response is safe when its cost is at
most `cost_threshold`; each `is_safe` flag is flipped with probability `safety_mistake_rate`.
When the (noisy) flags say exactly one response is safe, that one is the safer; otherwise the
safer is drawn as above from the negated costs with `safety_beta`. The labels are therefore
always consistent in the sense of `schema.check_safety_consistency`.

The teachers know no task: they take callables or arrays of true scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from alignloop.feedback.schema import Comparison, Severity, side_letter

TIE = -1  # in `Judgements.better` / `.safer`: no preference (a tie, or a skipped pair)


def answer_letter(code: int) -> str:
    """A teacher's choice code (0, 1 or TIE) as a pairwise answer: "A", "B" or "tie"."""
    return "tie" if code == TIE else side_letter(int(code))


@dataclass(frozen=True)
class TeacherNoise:
    """How a scripted teacher departs from a perfect judge (all defaults: a perfect judge)."""

    beta: float = math.inf
    """Rationality for helpfulness: P(prefer 0) = σ(β (u0 - u1)); inf = always the better one."""
    mistake_rate: float = 0.0
    """Probability of flipping a helpfulness choice."""
    skip_threshold: float | None = None
    """Skip a pair when both values are below this (None: never skip)."""
    equal_threshold: float = 0.0
    """Call a tie when |v0 - v1| < this."""
    cost_threshold: float = 0.0
    """A response with true cost above this is unsafe."""
    safety_beta: float = math.inf
    """Rationality for the safer choice, over negated costs."""
    safety_mistake_rate: float = 0.0
    """Probability of flipping each is_safe flag, and the safer choice when both flags agree."""
    safety_equal_threshold: float = 0.0
    """Call the safer choice a tie when |c0 - c1| < this (and both flags agree)."""

    def __post_init__(self) -> None:
        for name in ("beta", "safety_beta", "equal_threshold", "safety_equal_threshold"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mistake_rate", "safety_mistake_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Judgements:
    """A teacher's judgements of N pairs."""

    better: np.ndarray  # (N,) int: 0, 1 or TIE
    safer: np.ndarray  # (N,) int: 0, 1 or TIE (all TIE when safety was not judged)
    is_safe: np.ndarray | None  # (N, 2) bool, True = judged safe; None when safety was not judged
    skipped: np.ndarray  # (N,) bool, True = the teacher declined the pair (better and safer are TIE)


def prefer(
    values: np.ndarray,
    utilities: np.ndarray,
    *,
    beta: float,
    mistake_rate: float,
    equal_threshold: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bradley-Terry choice between option 0 and 1 of each row: 0, 1 or TIE, shape (N,).

    values (N, 2) decide ties (|v0 - v1| < equal_threshold); utilities (N, 2) drive the choice.
    Draws exactly 2N uniforms whatever the settings, so a seed gives the same stream.
    """
    diff = utilities[:, 0] - utilities[:, 1]  # (N,)
    if math.isinf(beta):
        p0 = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    else:
        p0 = 0.5 * (1.0 + np.tanh(0.5 * beta * diff))  # σ(β Δ), without overflow
    draws = rng.random((2, len(diff)))
    choice = np.where(draws[0] < p0, 0, 1)
    choice = np.where(draws[1] < mistake_rate, 1 - choice, choice)
    tie = np.abs(values[:, 0] - values[:, 1]) < equal_threshold
    return np.where(tie, TIE, choice)


def judge_pairs(
    values: ArrayLike,
    utilities: ArrayLike,
    costs: ArrayLike | None,
    noise: TeacherNoise,
    rng: np.random.Generator,
) -> Judgements:
    """Judge N pairs. values, utilities and costs are (N, 2): option 0 and 1 of each pair.

    values decide skips and ties, utilities the helpfulness choice (the same array for text;
    for segments, the undiscounted and the myopic sums); costs (None: safety not judged) the
    safety labels.
    """
    values, utilities = np.asarray(values, dtype=float), np.asarray(utilities, dtype=float)
    if values.ndim != 2 or values.shape[1] != 2 or utilities.shape != values.shape:
        raise ValueError(
            f"values and utilities must both be (N, 2), got {values.shape} and {utilities.shape}"
        )
    n = len(values)
    skipped = np.zeros(n, dtype=bool)
    if noise.skip_threshold is not None:
        skipped = values.max(axis=1) < noise.skip_threshold
    better = prefer(
        values,
        utilities,
        beta=noise.beta,
        mistake_rate=noise.mistake_rate,
        equal_threshold=noise.equal_threshold,
        rng=rng,
    )
    safer = np.full(n, TIE)
    is_safe = None
    if costs is not None:
        costs = np.asarray(costs, dtype=float)
        if costs.shape != values.shape:
            raise ValueError(f"costs must be (N, 2) like values, got {costs.shape}")
        flips = rng.random((n, 2)) < noise.safety_mistake_rate
        is_safe = (costs <= noise.cost_threshold) ^ flips  # (N, 2)
        safer = prefer(
            -costs,
            -costs,
            beta=noise.safety_beta,
            mistake_rate=noise.safety_mistake_rate,
            equal_threshold=noise.safety_equal_threshold,
            rng=rng,
        )
        one_safe = is_safe[:, 0] != is_safe[:, 1]
        safer = np.where(one_safe, np.where(is_safe[:, 0], 0, 1), safer)
        safer = np.where(skipped, TIE, safer)
    better = np.where(skipped, TIE, better)
    return Judgements(better=better, safer=safer, is_safe=is_safe, skipped=skipped)


def _label(choice: int) -> int | None:
    return None if choice == TIE else int(choice)


HarmLabeller = Callable[[str, str], tuple[tuple[str, ...], Severity | None]]


class BradleyTerryTeacher:
    """Judges text comparisons from true scores: helpfulness(prompt, response) and cost(...).

    `cost` None judges helpfulness only. `harms(prompt, response)` gives (categories, severity)
    for a response judged unsafe.
    """

    def __init__(
        self,
        noise: TeacherNoise = TeacherNoise(),
        *,
        helpfulness: Callable[[str, str], float] | None = None,
        cost: Callable[[str, str], float] | None = None,
        harms: HarmLabeller | None = None,
        seed: int | np.random.Generator = 0,
    ):
        self.noise, self.helpfulness, self.cost, self.harms = noise, helpfulness, cost, harms
        self.rng = np.random.default_rng(seed)

    def judge(self, helpfulness: ArrayLike, costs: ArrayLike | None = None) -> Judgements:
        """Judge N pairs from arrays of true scores, each (N, 2)."""
        return judge_pairs(helpfulness, helpfulness, costs, self.noise, self.rng)

    def compare_many(
        self, prompts: Sequence[str], responses_0: Sequence[str], responses_1: Sequence[str]
    ) -> list[Comparison | None]:
        """One Comparison per pair, or None where the teacher skipped it."""
        if self.helpfulness is None:
            raise ValueError("this teacher has no helpfulness function; use judge() with arrays")
        if not len(prompts) == len(responses_0) == len(responses_1):
            raise ValueError("prompts, responses_0 and responses_1 must have the same length")
        pairs = list(zip(prompts, responses_0, responses_1, strict=True))
        scores = [[self.helpfulness(p, r0), self.helpfulness(p, r1)] for p, r0, r1 in pairs]
        costs = None if self.cost is None else [[self.cost(p, r0), self.cost(p, r1)] for p, r0, r1 in pairs]
        judged = self.judge(np.asarray(scores, dtype=float).reshape(-1, 2), costs)
        out: list[Comparison | None] = []
        for i, (prompt, r0, r1) in enumerate(pairs):
            if judged.skipped[i]:
                out.append(None)
                continue
            flags: tuple[bool | None, bool | None] = (None, None)
            categories: list[tuple[str, ...]] = [(), ()]
            severity: list[Severity | None] = [None, None]
            if judged.is_safe is not None:
                flags = (bool(judged.is_safe[i, 0]), bool(judged.is_safe[i, 1]))
                for j, response in enumerate((r0, r1)):
                    if self.harms is not None and not flags[j]:
                        categories[j], severity[j] = self.harms(prompt, response)
            out.append(
                Comparison(
                    prompt,
                    r0,
                    r1,
                    better=_label(judged.better[i]),
                    safer=_label(judged.safer[i]),
                    is_safe=flags,
                    harm_categories=(categories[0], categories[1]),
                    severity=(severity[0], severity[1]),
                )
            )
        return out

    def compare(self, prompt: str, response_0: str, response_1: str) -> Comparison | None:
        return self.compare_many([prompt], [response_0], [response_1])[0]


def segment_sums(rewards: ArrayLike, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(undiscounted, myopic) sums over the last axis of per-step rewards (..., H).

    The myopic sum weights step t by γ^(H-1-t): the last step counts fully.
    """
    rewards = np.asarray(rewards, dtype=float)
    horizon = rewards.shape[-1]
    weights = gamma ** np.arange(horizon - 1, -1, -1, dtype=float)  # (H,)
    return rewards.sum(axis=-1), rewards @ weights


def first_unsafe_frame(
    step_costs: ArrayLike,
    cost_threshold: float,
    *,
    noise: float = 0.0,
    frame_stride: int = 1,
    rng: np.random.Generator | None = None,
) -> int | None:
    """Where a person watching a clip marks it unsafe: the frame showing its first step with a
    true cost above `cost_threshold` (frame f shows step f * frame_stride), moved by Gaussian
    noise of `noise` frames, rounded and kept inside the clip; None when no step is unsafe (safe
    throughout). Draws one normal from `rng` for an unsafe clip when `noise` > 0, none otherwise."""
    steps = np.asarray(step_costs, dtype=float)
    unsafe = np.flatnonzero(steps > cost_threshold)
    if not len(unsafe):
        return None
    frames = (len(steps) - 1) // frame_stride + 1
    if not noise:
        return int(unsafe[0] // frame_stride)
    if rng is None:
        raise ValueError("a noisy mark needs a random generator")
    frame = unsafe[0] / frame_stride + rng.normal(0.0, noise)
    return int(np.clip(round(float(frame)), 0, frames - 1))


NO_MARK = -1
"""In `SegmentTeacher.mark`'s array: the segment was marked safe throughout."""


class SegmentTeacher:
    """Judges pairs of trajectory segments from their per-step true rewards and costs; marks
    where each segment first becomes unsafe (`mark`), `mark_noise` steps off on average."""

    def __init__(
        self,
        noise: TeacherNoise = TeacherNoise(),
        *,
        gamma: float = 1.0,
        seed: int | np.random.Generator = 0,
        mark_noise: float = 0.0,
    ):
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not mark_noise >= 0:
            raise ValueError(f"mark_noise must be >= 0, got {mark_noise}")
        self.noise, self.gamma, self.mark_noise = noise, gamma, mark_noise
        self.rng = np.random.default_rng(seed)

    def judge(self, rewards: ArrayLike, costs: ArrayLike | None = None) -> Judgements:
        """rewards, costs: (N, 2, H) per-step values of segment 0 and 1 of each pair.

        A segment's cost is its undiscounted sum: it is unsafe when that exceeds
        `noise.cost_threshold` (0: any violation).
        """
        rewards = np.asarray(rewards, dtype=float)
        if rewards.ndim != 3 or rewards.shape[1] != 2:
            raise ValueError(f"rewards must be (N, 2, H), got {rewards.shape}")
        values, utilities = segment_sums(rewards, self.gamma)  # (N, 2) each
        segment_costs = None if costs is None else np.asarray(costs, dtype=float).sum(axis=-1)
        return judge_pairs(values, utilities, segment_costs, self.noise, self.rng)

    def mark(self, costs: ArrayLike) -> np.ndarray:
        """costs (N, 2, H) per-step true costs -> (N, 2) int: the step where each segment is
        marked unsafe (`first_unsafe_frame`, every step a frame), NO_MARK for safe throughout.
        Call it after `judge` on the same pairs: its draws follow the judgement's."""
        costs = np.asarray(costs, dtype=float)
        if costs.ndim != 3 or costs.shape[1] != 2:
            raise ValueError(f"costs must be (N, 2, H), got {costs.shape}")
        marks = [
            first_unsafe_frame(steps, self.noise.cost_threshold, noise=self.mark_noise, rng=self.rng)
            for steps in costs.reshape(-1, costs.shape[-1])
        ]
        return np.asarray([NO_MARK if m is None else m for m in marks], dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------- every question kind


@dataclass(frozen=True)
class Truth:
    """What a scripted annotator knows of one item's k candidates.

    values/utilities (k,): helpfulness (values decide skips, ties and ratings, utilities the
    choices); costs (k,) or None: true costs (a candidate is unsafe above the noise's
    `cost_threshold`); step_costs (k, H) or None: per-step costs of clips, for marks;
    corrected: the task's safest helpful rewrite of a candidate (index, text) -> text, or None.
    """

    values: np.ndarray
    utilities: np.ndarray
    costs: np.ndarray | None = None
    step_costs: np.ndarray | None = None
    harms: Sequence[tuple[tuple[str, ...], Severity | None]] | None = None
    corrected: Callable[[int], str] | None = None


class ScriptedAnnotator:
    """Answers a project's questions (`feedback.schema`) from the true values of an item's candidates.

    - `pairwise`, `safer`, `is_safe` of two candidates: `judge_pairs` (the teacher above, its
      draws in the same order, so the default questions get the answers `BradleyTerryTeacher`
      gives); `is_safe` of more: each flag from the cost, flipped with `safety_mistake_rate`;
    - `ranking`: a Plackett-Luce draw over the utilities with rationality β (Gumbel noise on
      β·u; β = inf sorts them), ties (where allowed) between values closer than `equal_threshold`;
    - `rating`: the value placed on the scale by `value_range`, plus Gaussian noise of
      `rating_noise` points, rounded and clipped (every aspect from the same value);
    - `correction`: the least safe candidate (else the least useful) rewritten by
      `Truth.corrected`; an optional one only where a candidate is unsafe;
    - `mark`: the first unsafe step of each clip (None: safe throughout), moved by Gaussian noise
      of `mark_noise` frames, in frames of `frame_stride` steps;
    - `text`: which candidate it found best and why, in a sentence.

    A skip (both values below the skip threshold) answers None.
    """

    def __init__(
        self,
        questions: Sequence[Any],
        noise: TeacherNoise = TeacherNoise(),
        *,
        seed: int | np.random.Generator = 0,
        rating_noise: float = 0.5,
        mark_noise: float = 0.0,
        frame_stride: int = 1,
        value_range: tuple[float, float] = (0.0, 1.0),
    ):
        self.questions, self.noise = tuple(questions), noise
        self.rating_noise, self.mark_noise, self.frame_stride = rating_noise, mark_noise, frame_stride
        self.value_range = value_range
        self.rng = np.random.default_rng(seed)

    def answer(self, truth: Truth) -> dict[str, Any] | None:
        from alignloop.feedback import schema

        values, utilities = np.asarray(truth.values, float), np.asarray(truth.utilities, float)
        n = len(values)
        if self.noise.skip_threshold is not None and values.max() < self.noise.skip_threshold:
            return None
        answers: dict[str, Any] = {}
        flags: list[bool] | None = None
        if n == 2:  # the two-candidate teacher, its draws in its own order
            costs = None if truth.costs is None else np.asarray(truth.costs, float)[None]
            judged = judge_pairs(values[None], utilities[None], costs, self.noise, self.rng)
            choice, safer = answer_letter(int(judged.better[0])), answer_letter(int(judged.safer[0]))
            if judged.is_safe is not None:
                flags = [bool(f) for f in judged.is_safe[0]]
        elif truth.costs is not None:
            flips = self.rng.random(n) < self.noise.safety_mistake_rate
            flags = [bool(f) for f in (np.asarray(truth.costs, float) <= self.noise.cost_threshold) ^ flips]
        best = int(np.argmax(utilities))
        for q in self.questions:
            if isinstance(q, schema.Pairwise) and n == 2:
                answers[q.name] = choice if choice in q.choices() else _nearest(choice, q.choices())
            elif isinstance(q, schema.SaferChoice) and n == 2 and flags is not None:
                answers[q.name] = safer if safer in q.choices() else ("A" if flags[0] >= flags[1] else "B")
            elif isinstance(q, schema.IsSafe) and flags is not None:
                answers[q.name] = [
                    self._flag(q, safe, truth.harms[i] if truth.harms else None)
                    for i, safe in enumerate(flags)
                ]
            elif isinstance(q, schema.Ranking):
                answers[q.name] = self._ranking(values, utilities, q.allow_ties)
            elif isinstance(q, schema.Rating):
                answers[q.name] = {
                    aspect: self._scores(values, q.scale_min, q.scale_max) for aspect in q.aspects
                }
            elif isinstance(q, schema.CorrectionText) and truth.corrected is not None:
                unsafe = flags is not None and not all(flags)
                if q.required or unsafe:
                    worst = (
                        int(np.argmax(truth.costs))
                        if unsafe and truth.costs is not None
                        else int(np.argmin(utilities))
                    )
                    answers[q.name] = {"candidate": schema.side_letter(worst), "text": truth.corrected(worst)}
            elif isinstance(q, schema.Mark) and truth.step_costs is not None:
                answers[q.name] = [self._mark(steps) for steps in np.asarray(truth.step_costs, float)]
            elif isinstance(q, schema.FreeText):
                answers[q.name] = f"{schema.side_letter(best)} is the most useful of the {n}."
        return answers

    def _flag(
        self, q: Any, safe: bool, harms: tuple[tuple[str, ...], Severity | None] | None
    ) -> dict[str, Any]:
        if safe:
            return {"safe": True, "harms": [], "severity": None}
        categories, severity = harms if harms is not None else ((), None)
        return {
            "safe": False,
            "harms": [c for c in categories if c in q.harm_categories],
            "severity": severity.value
            if severity is not None and severity.value in q.severity_levels
            else None,
        }

    def _ranking(self, values: np.ndarray, utilities: np.ndarray, allow_ties: bool) -> list[int]:
        if math.isinf(self.noise.beta):
            noisy = utilities.copy()
        else:
            noisy = self.noise.beta * utilities + self.rng.gumbel(size=len(utilities))  # Plackett-Luce draw
        order = np.argsort(-noisy, kind="stable")  # best first
        ranks = [0] * len(values)
        for position, index in enumerate(order):
            previous = order[position - 1] if position else None
            tied = (
                allow_ties
                and previous is not None
                and abs(values[index] - values[previous]) < self.noise.equal_threshold
            )
            ranks[index] = ranks[previous] if tied and previous is not None else position + 1
        return [1 + sum(other < r for other in ranks) for r in ranks]

    def _scores(self, values: np.ndarray, low: int, high: int) -> list[int]:
        lo, hi = self.value_range
        share = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        raw = low + share * (high - low) + self.rng.normal(0.0, self.rating_noise, len(values))
        return [int(s) for s in np.clip(np.rint(raw), low, high)]

    def _mark(self, steps: np.ndarray) -> int | None:
        return first_unsafe_frame(
            steps,
            self.noise.cost_threshold,
            noise=self.mark_noise,
            frame_stride=self.frame_stride,
            rng=self.rng,
        )


def _nearest(choice: str, allowed: Sequence[str]) -> str:
    """A tie or "both bad" where the question does not allow it: A."""
    return choice if choice in allowed else "A"
