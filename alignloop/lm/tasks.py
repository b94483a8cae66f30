"""Language-model tasks: what a trainer, the evaluator and the loop ask of a task.

A `Task` gives

- **prompts** of two splits: ``train`` (what a trainer samples rollouts on) and ``eval`` (the
  held-out prompts the evaluation answers);
- **reference answers** of a split, when it has them (a supervised file's responses);
- **ground truth**, when it has judges of its own: figures of a policy's responses that do not
  come from a learned model (the toy world's helpfulness and unsafe rate); ``{}`` otherwise;
- whether its judges can judge a prompt (`can_judge`): a scripted annotator with the task's
  judges refuses prompts it cannot judge instead of guessing.

Two tasks: `ToyWorldTask` (`lm.toyworld`, ground truth: helpfulness and harm) and `FileTask`
(any prompt file in a format of `feedback.formats`, TRL's conversational ``prompt`` and
``messages`` rows included; no ground truth). `TASKS` names the built-in ones; `TaskOptions`
are the options every RL trainer takes (``--task toyworld`` or ``--prompts FILE``, and
``--eval-prompts FILE``), and `task_from_options` builds the task they say.

`cost_limit_from_labels` calibrates a cost limit in a cost model's own units from any
task's responses labelled safe and unsafe.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from alignloop.errors import UserError
from alignloop.feedback.schema import SupervisedPair

Split = Literal["train", "eval"]


class Task(Protocol):
    """What a trainer, the evaluator and the loop ask of a language-model task."""

    @property
    def name(self) -> str:
        """The task's name in reports."""
        ...

    @property
    def eval_source(self) -> str:
        """Where the held-out prompts come from, for reports."""
        ...

    def prompts(self, split: Split) -> list[str]:
        """The prompts of a split (the same on every call)."""
        ...

    def references(self, split: Split) -> list[str] | None:
        """Reference answers aligned with `prompts(split)`, or None when the task has none."""
        ...

    def ground_truth(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        """The task's own figures of responses to its prompts ({} when it has no judges)."""
        ...

    def can_judge(self, prompt: str) -> bool:
        """Whether the task's judges can judge responses to `prompt`."""
        ...


@dataclass(frozen=True)
class ToyWorldTask:
    """The toy world (`lm.toyworld`): its train and held-out prompts and its ground-truth judges."""

    seed: int = 0
    """The toy world's seed."""
    train_size: int = 2048
    """Train prompts drawn."""
    eval_size: int = 128
    """Held-out prompts drawn."""
    sample_seed: int = 0
    """Seed of the draw of prompts (the same seed, the same prompts)."""
    name: str = "toyworld"

    @property
    def eval_source(self) -> str:
        return f"{self.eval_size} toy-world held-out prompts"

    @property
    def world(self) -> Any:
        from alignloop.lm.toyworld import ToyWorld

        return ToyWorld(self.seed)

    def prompts(self, split: Split) -> list[str]:
        n = self.train_size if split == "train" else self.eval_size
        return [p.text for p in self.world.prompts(split, n, seed=self.sample_seed)]

    def references(self, split: Split) -> list[str] | None:
        return None

    def ground_truth(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        """``helpfulness`` (mean), ``unsafe_rate`` (share of risky prompts answered unsafely),
        ``unsafe_rate_all`` (over all prompts) and ``n_risky``."""
        world = self.world
        toy = [world.prompt(p) for p in prompts]
        unsafe = [world.is_unsafe(p, r) for p, r in zip(toy, responses, strict=True)]
        risky = [u for p, u in zip(toy, unsafe, strict=True) if p.risky]
        return {
            "helpfulness": sum(world.helpfulness(p, r) for p, r in zip(toy, responses, strict=True))
            / len(toy),
            "unsafe_rate": sum(risky) / max(len(risky), 1),
            "unsafe_rate_all": sum(unsafe) / len(toy),
            "n_risky": float(len(risky)),
        }

    def can_judge(self, prompt: str) -> bool:
        try:
            self.world.prompt(prompt)
        except KeyError:
            return False
        return True


@dataclass(frozen=True)
class FileTask:
    """Prompts from files (any format of `feedback.formats`); no ground truth.

    Without an eval file the evaluation answers the first ``eval_size`` train prompts (not held
    out: the report says so in its prompt source)."""

    train_file: Path
    eval_file: Path | None = None
    eval_size: int = 128
    name: str = "prompts"
    _cache: dict[Path, tuple[list[str], list[str] | None]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def _read(self, path: Path) -> tuple[list[str], list[str] | None]:
        if path not in self._cache:
            from alignloop.feedback.formats import read_records

            if not path.exists():
                raise UserError(f"{path}: prompt file not found; pass --prompts an existing file")
            records = read_records(path).records
            prompts = [r.prompt for r in records]
            if not prompts:
                raise UserError(f"{path}: no prompts in the file")
            supervised = all(isinstance(r, SupervisedPair) for r in records)
            answers = [r.response for r in records if isinstance(r, SupervisedPair)]
            self._cache[path] = (prompts, answers if supervised else None)
        return self._cache[path]

    def _split(self, split: Split) -> tuple[list[str], list[str] | None]:
        if split == "train":
            return self._read(self.train_file)
        prompts, answers = self._read(self.eval_file or self.train_file)
        return prompts[: self.eval_size], None if answers is None else answers[: self.eval_size]

    def prompts(self, split: Split) -> list[str]:
        return self._split(split)[0]

    def references(self, split: Split) -> list[str] | None:
        return self._split(split)[1]

    def ground_truth(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        return {}

    def can_judge(self, prompt: str) -> bool:
        return False

    @property
    def eval_source(self) -> str:
        """Where the evaluation's prompts come from, for reports."""
        if self.eval_file is not None:
            return str(self.eval_file)
        return f"the first {self.eval_size} prompts of {self.train_file} (not held out)"


TASKS: dict[str, Callable[..., Task]] = {"toyworld": ToyWorldTask}
"""The built-in tasks by name (``--task NAME``): each is called with seed, train_size,
eval_size and sample_seed."""


@dataclass(frozen=True)
class TaskOptions:
    """The options of an RL trainer that say what it trains on and evaluates on."""

    task: Literal["toyworld"] | None = None
    """A built-in task: toyworld (its prompts and ground-truth judges); None = the prompts of
    --prompts, or the toy world without them."""
    prompts: Path | None = None
    """Prompt file (any feedback format, TRL conversational prompt/messages rows included;
    each record's prompt)."""
    eval_prompts: Path | None = None
    """Held-out prompt file evaluated every eval_every steps (at most eval_size of them); None =
    the task's held-out prompts (with --prompts: its first eval_size prompts, not held out)."""
    task_seed: int = 0
    """Seed of a built-in task (its prompts and judges)."""
    train_size: int = 2048
    """Train prompts drawn from a built-in task (a prompt file gives all of its own)."""
    eval_size: int = 128
    """Prompts evaluated every eval_every steps and at the end (0 = no evaluation)."""

    RENAMED: ClassVar[dict[str, str]] = {"--toyworld-seed": "--task-seed", "--toy-prompts": "--train-size"}
    """Deprecated spellings of options (they still work, with a note)."""
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"toyworld_seed": "task_seed", "toy_prompts": "train_size"}
    """The same in YAML files (field names)."""

    @classmethod
    def upgrade_args(cls, args: list[str], prog: str) -> list[str]:
        """The command line with the deprecated spellings replaced; ``--eval-prompts N`` (a
        count, its old meaning) becomes ``--eval-size N``."""
        from alignloop.runstack.options import upgrade_args

        out = upgrade_args(args, cls.RENAMED, prog)
        for i, arg in enumerate(out):
            flag, eq, value = arg.partition("=")
            if not eq and i + 1 < len(out):
                value = out[i + 1]
            if flag == "--eval-prompts" and value.isdigit():
                print(f"{prog}: --eval-prompts N (a count) is deprecated; use --eval-size N", file=sys.stderr)
                out[i] = "--eval-size" + (f"={value}" if eq else "")
        return out

    @classmethod
    def upgrade_mapping(cls, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A YAML file's options with the deprecated names replaced (an integer eval_prompts
        is the old count: eval_size)."""
        out = {}
        for key, value in data.items():
            new = cls.RENAMED_KEYS.get(key)
            if key == "eval_prompts" and isinstance(value, int) and not isinstance(value, bool):
                new = "eval_size"
            if new is not None:
                print(f"{where}: {key} is deprecated; use {new}", file=sys.stderr)
            out[new or key] = value
        return out


def make_task(
    name: str | None,
    prompts: Path | None,
    eval_prompts: Path | None,
    *,
    task_seed: int = 0,
    train_size: int = 2048,
    eval_size: int = 128,
    sample_seed: int = 0,
) -> Task:
    """The task a trainer's options name: a built-in one, or a `FileTask` of `prompts`."""
    if name is not None and prompts is not None:
        raise UserError(f"give --task {name} or --prompts {prompts}, not both")
    if prompts is None:
        built = TASKS[name or "toyworld"](
            seed=task_seed, train_size=train_size, eval_size=eval_size, sample_seed=sample_seed
        )
        if eval_prompts is None:
            return built
        held_out = FileTask(eval_prompts, eval_size=eval_size)
        return _WithEvalFile(built, held_out)
    return FileTask(prompts, eval_prompts, eval_size)


def task_from_options(options: TaskOptions, seed: int) -> Task:
    """`make_task` with a trainer's `TaskOptions` (prompts drawn with the run's seed)."""
    return make_task(
        options.task,
        options.prompts,
        options.eval_prompts,
        task_seed=options.task_seed,
        train_size=options.train_size,
        eval_size=options.eval_size,
        sample_seed=seed,
    )


@dataclass(frozen=True)
class _WithEvalFile:
    """A built-in task evaluated on the prompts of a file (its judges still judge what they can)."""

    task: Task
    held_out: FileTask

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def eval_source(self) -> str:
        return self.held_out.eval_source

    def prompts(self, split: Split) -> list[str]:
        return self.task.prompts("train") if split == "train" else self.held_out.prompts("eval")

    def references(self, split: Split) -> list[str] | None:
        return self.task.references("train") if split == "train" else self.held_out.references("eval")

    def ground_truth(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        if all(self.task.can_judge(p) for p in prompts):
            return self.task.ground_truth(prompts, responses)
        return {}

    def can_judge(self, prompt: str) -> bool:
        return self.task.can_judge(prompt)


def train_prompts(task: Task, minimum: int) -> list[str]:
    """The task's train prompts; a `UserError` when there are fewer than `minimum` (a batch)."""
    prompts = task.prompts("train")
    if len(prompts) < minimum:
        source = f" in {task.train_file}" if isinstance(task, FileTask) else f" of --task {task.name}"
        raise UserError(
            f"--rollout-batch-size {minimum} is more than the {len(prompts)} prompts{source}; "
            "pass a smaller --rollout-batch-size or more prompts"
        )
    return prompts


def cost_limit_from_labels(
    cost_model: Any,
    tokenizer: Any,
    labelled: dict[bool, list[tuple[str, str]]],
    unsafe_share: float,
    *,
    floor: float | None = None,
) -> float:
    """A cost limit in the cost model's own units: the expected cost of answers that are unsafe
    with probability ``unsafe_share``,

        d = (1 - unsafe_share) * mean cost(labelled safe) + unsafe_share * mean cost(labelled unsafe),

    over (prompt, response) pairs of any task keyed by their safety label (True = safe), both
    lists non-empty. With the limit at 0, the boundary, the many benign prompts keep the mean
    cost far below it whatever the policy does on risky ones, and lambda decays to 0. With a
    ``floor`` the costs are the floored ones a trainer with that ``cost_floor`` holds down
    (`core.lagrange.floored_cost`)."""
    from alignloop.core.lagrange import floored_cost
    from alignloop.lm.evaluate import score_texts

    if not 0.0 <= unsafe_share < 1.0:
        raise ValueError(f"unsafe_share must be in [0, 1), got {unsafe_share}")
    if not labelled.get(True) or not labelled.get(False):
        raise UserError(
            "too few responses labelled safe and unsafe to calibrate the cost limit on; pass --cost-limit"
        )
    means = {
        safe: float(
            floored_cost(
                score_texts(cost_model, tokenizer, [p for p, _ in rows], [r for _, r in rows]), floor
            ).mean()
        )
        for safe, rows in labelled.items()
    }
    return (1.0 - unsafe_share) * means[True] + unsafe_share * means[False]
