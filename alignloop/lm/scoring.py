"""Rewards and costs for the RL trainers: score models and Python functions, summed with weights.

A source is either a score model folder (`alignloop train reward` or `train cost`), which scores
the sampled token ids at the last real token, or a Python function named ``module:function``
(``module`` importable from the current folder or ``PYTHONPATH``, or a ``path/to/file.py``).
A function is called once per batch, with keyword arguments,

    f(prompts=[...], completions=[...]) -> a sequence of floats, one per completion

where ``prompts[i]`` is the prompt text as read from the prompt file (before any chat template
or ``Human: ... Assistant:`` format) and ``completions[i]`` the decoded response to it. That
is the calling convention of TRL's reward functions too, so one written for ``GRPOTrainer``
(with ``**kwargs``) works unchanged. Rule-based and verifiable rewards (a format check, an
exact answer, a length limit) are functions; learned preferences are models.

The score of a response is ``sum_k w_k s_k`` over the sources (weights 1 by default), each
model score clipped to ``[-score_clip, score_clip]``; costs follow the Safe RLHF sign (cost > 0
= unsafe), so a cost function returns a positive number for a violation.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignloop.errors import UserError
from alignloop.lm.folders import model_folder
from alignloop.lm.models import ScoreModel
from alignloop.lm.rollouts import check_same_vocab

ScoreFunction = Callable[..., Sequence[float]]


def load_function(ref: str, option: str) -> ScoreFunction:
    """The callable named by ``ref`` ("module:function" or "file.py:function"); a `UserError`
    naming ``option`` when it cannot be found."""
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"{option} {ref!r}: name a function as module:function (or path/to/file.py:function)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"{option} {ref!r}: no file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module: Any = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            added = "" not in sys.path
            if added:  # the current folder, as `python -m` would have it
                sys.path.insert(0, "")
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove("")
    except ModuleNotFoundError as exc:
        raise UserError(
            f"{option} {ref!r}: cannot import {exc.name!r}; run from the module's folder, add it to "
            "PYTHONPATH, or give the file: path/to/file.py:function"
        ) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserError(f"{option} {ref!r}: {module_name} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


def call_function(
    function: ScoreFunction, name: str, prompts: Sequence[str], completions: Sequence[str]
) -> list[float]:
    """``function(prompts=..., completions=...)`` checked: one finite number per completion."""
    values = list(function(prompts=list(prompts), completions=list(completions)))
    if len(values) != len(completions):
        raise UserError(
            f"{name}: returned {len(values)} values for {len(completions)} completions; "
            "a scoring function returns one float per completion"
        )
    out = []
    for i, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise UserError(
                f"{name}: value {i} is {value!r} (for {completions[i]!r}); every value must be a finite number"
            )
        out.append(number)
    return out


def check_sources(models: Sequence[Path], functions: Sequence[str], option: str) -> None:
    """A trainer's entry check of ``--{option}-model`` and ``--{option}-function``, before anything
    loads: at least one source, and every model folder a reward or cost model."""
    if not models and not functions:
        raise UserError(f"no {option}: pass --{option}-model DIR or --{option}-function module:function")
    for path in models:
        model_folder(path, f"--{option}-model", "score")


@dataclass
class Scorer:
    """Weighted score models and functions; ``scorer(...)`` scores a batch of responses."""

    models: list[tuple[str, float, ScoreModel]]
    functions: list[tuple[str, float, ScoreFunction]]
    score_clip: float

    @classmethod
    def load(
        cls,
        models: Sequence[Path],
        functions: Sequence[str],
        weights: Sequence[float],
        *,
        tokenizer: Any,
        device: torch.device,
        score_clip: float,
        option: str,
    ) -> Scorer:
        """Load the sources behind ``--{option}-model``, ``--{option}-function`` and
        ``--{option}-weights`` (one weight per model, then per function; none = all 1)."""
        count = len(models) + len(functions)
        if weights and len(weights) != count:
            raise UserError(
                f"--{option}-weights: {len(weights)} weight(s) for {count} source(s) "
                f"({len(models)} --{option}-model, {len(functions)} --{option}-function); give one each, "
                "models first, or none for weights of 1"
            )
        weight = list(weights) or [1.0] * count
        loaded: list[tuple[str, ScoreModel]] = []
        for path in models:
            model_folder(path, f"--{option}-model", "score")
            model = ScoreModel.from_pretrained(path).eval().requires_grad_(False).to(device)
            check_same_vocab(tokenizer, model, Path(path))
            name = Path(path).parent.name if Path(path).name == "final" else Path(path).name
            loaded.append((name if name not in {n for n, _ in loaded} else str(path), model))
        return cls(
            models=[(name, w, m) for (name, m), w in zip(loaded, weight, strict=False)],
            functions=[
                (ref, w, load_function(ref, f"--{option}-function"))
                for ref, w in zip(functions, weight[len(models) :], strict=True)
            ],
            score_clip=score_clip,
        )

    @torch.no_grad()
    def __call__(
        self, sequences: Tensor, attention_mask: Tensor, prompts: Sequence[str], completions: Sequence[str]
    ) -> tuple[Tensor, dict[str, float]]:
        """Scores ``(N,)`` of N responses (``sequences`` ``(N, P + R)``, their texts) and the mean
        of each source's own score, by name."""
        total = torch.zeros(sequences.shape[0], device=sequences.device)
        means: dict[str, float] = {}
        for name, weight, model in self.models:
            scores = model(sequences, attention_mask).end_scores.float()
            scores = scores.clamp(-self.score_clip, self.score_clip)  # (N,)
            total += weight * scores
            means[name] = scores.mean().item()
        for name, weight, function in self.functions:
            values = torch.tensor(call_function(function, name, prompts, completions), device=total.device)
            total += weight * values
            means[name] = values.mean().item()
        return total, means
