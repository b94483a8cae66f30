"""What the loop's language-model domain (`loop.lm.LanguageModelDomain`) asks of its task.

A `LoopTask` wraps an `lm.tasks.Task` (the prompts and ground truth trainers and the evaluation
see) with what the rounds need besides: where the starting policy comes from (and whether the
task trains it), which models round 1's reward and cost models start from, how the rounds draw
train prompts, the held-out prompts every round is evaluated on, the pairs the trainers report
on, and what the task's judges say about the learned models. `PromptLoopTask` is any task with
the user's starting policy (`alignloop loop --domain lm --prompts FILE --policy DIR`); the toy
world's is `loop.toyworld.ToyWorldLoopTask`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alignloop.lm.tasks import FileTask, Task, ToyWorldTask

TrainerOptions = Callable[[int, Path], dict[str, Any]]
"""(round, output folder) -> the options every trainer of that round takes (`_trainer_options`)."""


class LoopTask(Protocol):
    """What the language-model domain asks of its task beyond `lm.tasks.Task`."""

    @property
    def name(self) -> str:
        """The domain's name in reports (the report plots the figures `loop.report` lists for it)."""
        ...

    @property
    def task(self) -> Task:
        """Prompts and ground truth, as the trainers and the evaluation see them."""
        ...

    def starting_policy(self, run_dir: Path) -> Path:
        """The policy round 1 starts from (a causal-LM folder with its tokenizer)."""
        ...

    def build(self, run_dir: Path, options: TrainerOptions) -> None:
        """Make the starting policy when the task trains its own (nothing to do otherwise)."""
        ...

    def starting_score_model(self, kind: str, run_dir: Path) -> Path:
        """The folder round 1's reward (`kind` "reward") or cost model is trained from."""
        ...

    def propose_prompts(self, n: int, seed: int) -> list[str]:
        """`n` train prompts to propose items about (the same seed, the same prompts)."""
        ...

    def flag_prompts(self, n: int, seed: int) -> list[str]:
        """`n` train prompts the cost limit is calibrated on."""
        ...

    def held_out_prompts(self, n: int) -> list[str]:
        """The held-out prompts every round's evaluation answers (at most `n`; the same every round)."""
        ...

    def heldout_file(self, round_dir: Path) -> Path:
        """The preference pairs the round's reward, cost and DPO trainers report on."""
        ...

    def model_accuracies(self, reward_dir: Path, cost_dir: Path | None) -> dict[str, float]:
        """Figures of the round's reward and cost models the task can give ({} without judges)."""
        ...


def draw_prompts(prompts: list[str], n: int, seed: str) -> list[str]:
    """`n` of `prompts` in an order shuffled by `seed`, each once before any is drawn again."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        cycle = list(prompts)
        rng.shuffle(cycle)
        out += cycle[: n - len(out)]
    return out


@dataclass(frozen=True)
class PromptLoopTask:
    """A task with the user's starting policy (and, optionally, starting reward and cost models):
    rounds draw the task's train prompts; every round is evaluated on its held-out prompts."""

    task: Task
    policy: Path
    """The starting policy (a causal-LM folder with its tokenizer); also round 1's KL reference."""
    reward_model: Path | None = None
    """Round 1's reward model starts from this (None: from the starting policy's body)."""
    cost_model: Path | None = None
    """Round 1's cost model starts from this (None: from the starting policy's body)."""
    seed: int = 0
    name: str = "lm"

    def starting_policy(self, run_dir: Path) -> Path:
        return self.policy

    def build(self, run_dir: Path, options: TrainerOptions) -> None:
        return None

    def starting_score_model(self, kind: str, run_dir: Path) -> Path:
        given = {"reward": self.reward_model, "cost": self.cost_model}[kind]
        return self.policy if given is None else given

    def propose_prompts(self, n: int, seed: int) -> list[str]:
        return draw_prompts(self.task.prompts("train"), n, f"{self.seed}-propose-{seed}")

    def flag_prompts(self, n: int, seed: int) -> list[str]:
        return draw_prompts(self.task.prompts("train"), n, f"{self.seed}-flag-{seed}")

    def held_out_prompts(self, n: int) -> list[str]:
        return self.task.prompts("eval")[:n]

    def heldout_file(self, round_dir: Path) -> Path:
        """The round's judgements themselves (round_dir/judgements.jsonl, written by `learn`): a
        prompt file has no held-out pairs, and every judgement is kept for training; the trainers'
        figures are then on their own data, and the round's evaluation on held-out prompts is the
        measure that counts."""
        return round_dir / "judgements.jsonl"

    def model_accuracies(self, reward_dir: Path, cost_dir: Path | None) -> dict[str, float]:
        return {}


def trainer_task_options(task: Task) -> dict[str, Any]:
    """The `lm.tasks.TaskOptions` an RL trainer gets to train on `task`'s train prompts."""
    if isinstance(task, ToyWorldTask):
        return {"task": "toyworld", "task_seed": task.seed}
    if isinstance(task, FileTask):
        return {"prompts": task.train_file}
    raise TypeError(f"no trainer options for the task {task!r}: the trainers take a prompt file or --task")
