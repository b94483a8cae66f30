"""The toy world as a task of the loop's language-model domain (`loop.lm.LanguageModelDomain`).

What is the toy world's own: the careless SFT policy it trains as the starting policy (`setup`,
run_dir/sft/final), the held-out toy-world pairs the reward, cost and DPO trainers report on
(round-r/heldout-pairs.jsonl), the reward and cost models' accuracies against its ground truth,
how the rounds draw its prompts (a share of risky ones), and the sizes of its `PRESETS`. The
rounds themselves (items, models, the cost limit, the policy update, the evaluation) are the
domain's, the same for every task.

    domain = toyworld_domain("smoke", seed=3)       # a LanguageModelDomain on the toy world

The demo's sizes for what a round changes late in the loop. After round 1 the policy answers
2-7% of risky prompts unsafely and each later round changes that by a few tenths of a point
to two points, so:

- `eval_prompts` = 6000 held-out prompts (about 35% risky), each answered once: the standard
  error of a 2% unsafe rate is then 0.3 points; at 1000 it was 0.8-1.0, larger than a round's
  gain, and the reported rate rose while the policy got safer (BENCHMARKS.md, "The toy-world
  loop, round by round": seed 0 read 3.8% -> 4.3% -> 3.8%, on 6000 prompts 4.2% -> 3.2% -> 2.9%).
- `flag_samples` = 4096 answers for the cost limit's ``flagged`` share (`loop.lm`): the cost
  model flags 0.2-4% of the answers after round 1, which in 512 answers is 1-20 of them; a round
  that drew one (0.2%, the floor of the target) got ``target = flagged`` and no tightening.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignloop.lm.tasks import ToyWorldTask
from alignloop.loop.lm import PRESETS as LM_PRESETS
from alignloop.loop.lm import LanguageModelDomain
from alignloop.loop.lm_tasks import TrainerOptions

PRESETS: dict[str, dict[str, Any]] = {
    # "demo": three rounds of 1000 judged pairs (--pairs 1000), about 15 minutes on 2 busy CPU cores (SFT 4
    # min of it); BENCHMARKS.md has the true unsafe rate and helpfulness per round of seeds 0, 1, 2
    # and a second run of seed 0 ("The toy-world loop, round by round"). Its eval_prompts and
    # flag_samples: see the module docstring. lambda_lr, lambda_max and cost_floor: the one
    # setting of those measured there under which the unsafe rate fell every round on all four
    # runs (cost floor -1: only answers near or past the boundary count in the constraint).
    # "smoke": a plumbing check in seconds
    "demo": {
        "sft_steps": 600,
        "sft_pairs": 4000,
        "reward_steps": 120,
        "cost_steps": 120,
        "ppo_steps": 15,
        "dpo_steps": 60,
        "rollout_batch_size": 64,
        "eval_prompts": 6000,
        "heldout_pairs": 500,
        "flag_samples": 4096,
        "propose_temperature": 1.3,
        "lambda_lr": 1.0,
        "lambda_max": 20.0,
        "cost_floor": -1.0,
    },
    "smoke": {**LM_PRESETS["smoke"], "sft_steps": 8, "sft_pairs": 256, "heldout_pairs": 32},
}


@dataclass(frozen=True)
class ToyWorldLoopTask:
    """The toy world's side of the loop: its starting policy, prompts, held-out pairs and judges."""

    seed: int = 0
    """Seed of the toy world and its prompts."""
    sft_steps: int = 600
    """SFT steps of the starting policy (batch 64)."""
    sft_pairs: int = 4000
    """Prompt/response pairs of the careless SFT corpus."""
    eval_prompts: int = 1000
    """Held-out prompts judged by the ground truth each round (the same ones every round)."""
    heldout_pairs: int = 500
    """Held-out pairs for the reward and cost models' accuracies."""
    propose_risky_share: float | None = None
    """Share of risky prompts among the proposed pairs' prompts (None = the toy world's, 0.35)."""
    name: str = "toyworld"
    task: ToyWorldTask = field(init=False)
    """The `lm.tasks` task of the same world: its held-out prompts are those of `eval_prompts`."""
    world: Any = field(init=False, repr=False, compare=False)
    """The `lm.toyworld.ToyWorld` of `seed`."""

    def __post_init__(self) -> None:
        task = ToyWorldTask(self.seed, eval_size=self.eval_prompts, sample_seed=self.seed + 1000)
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "world", task.world)

    def starting_policy(self, run_dir: Path) -> Path:
        return run_dir / "sft" / "final"

    def starting_score_model(self, kind: str, run_dir: Path) -> Path:
        return self.starting_policy(run_dir)  # the SFT model's body

    def build(self, run_dir: Path, options: TrainerOptions) -> None:
        """SFT on the careless corpus as `alignloop demo` does (skipped when sft/final exists)."""
        from alignloop.lm import sft

        if self.starting_policy(run_dir).is_dir():
            return
        status = sft.train(
            sft.SFTConfig(
                max_steps=self.sft_steps,
                batch_size=64,
                warmup_steps=min(20, self.sft_steps // 4),
                eval_every=max(self.sft_steps, 1),
                save_every=max(self.sft_steps // 4, 1),
                toy_train_size=self.sft_pairs,
                toy_eval_size=min(256, self.sft_pairs),
                **options(0, run_dir / "sft"),
            )
        )
        if status not in (None, 0):
            raise RuntimeError(f"SFT failed with exit code {status}")

    def propose_prompts(self, n: int, seed: int) -> list[str]:
        world = self.world
        asking = dataclasses.replace(world, risky_share=self.propose_risky_share or world.risky_share)
        return [p.text for p in asking.prompts("train", n, seed=seed)]

    def flag_prompts(self, n: int, seed: int) -> list[str]:
        return [p.text for p in self.world.prompts("train", n, seed=seed)]

    def held_out_prompts(self, n: int) -> list[str]:
        return [p.text for p in self.world.prompts("eval", n, seed=self.seed + 1000)]

    def heldout_file(self, round_dir: Path) -> Path:
        """round_dir/heldout-pairs.jsonl, written on the first call."""
        heldout = round_dir / "heldout-pairs.jsonl"
        if not heldout.is_file():
            round_dir.mkdir(parents=True, exist_ok=True)
            self.world.write_preference_file(heldout, self.heldout_pairs, "eval")
        return heldout

    def model_accuracies(self, reward_dir: Path, cost_dir: Path | None) -> dict[str, float]:
        """The reward model's preference accuracy and the cost model's sign accuracy against the
        ground truth, on held-out pairs (NaN without a cost model)."""
        from alignloop.lm.evaluate import held_out_pairs, preference_accuracy, sign_accuracy
        from alignloop.lm.models import ScoreModel, load_tokenizer

        world = self.world
        tokenizer = load_tokenizer(reward_dir)
        reward_model = ScoreModel.from_pretrained(reward_dir).eval()
        pairs = held_out_pairs(world, self.heldout_pairs, seed=self.seed)
        out = {
            "reward_accuracy": preference_accuracy(reward_model, tokenizer, world, pairs),
            "cost_sign_accuracy": float("nan"),
        }
        if cost_dir is not None:
            cost_model = ScoreModel.from_pretrained(cost_dir).eval()
            out["cost_sign_accuracy"] = sign_accuracy(cost_model, tokenizer, world, pairs)
        return out


TASK_FIELDS = frozenset(f.name for f in dataclasses.fields(ToyWorldLoopTask) if f.init) - {"name"}
"""The options of a preset (or an override) that are the toy world's; the rest are the domain's."""
SHARED = frozenset({"seed", "eval_prompts"})
"""Options both take (the toy world draws the held-out prompts the domain evaluates on)."""


def toyworld_domain(preset: str | None = None, **options: Any) -> LanguageModelDomain:
    """The language-model domain on the toy world, with a preset's sizes (None: the defaults)
    and `options` (the domain's or the toy world's fields) over them; `seed` is both's."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: {preset!r} is not one of {', '.join(PRESETS)}")
    chosen = {**(PRESETS[preset] if preset else {}), **options}
    task = ToyWorldLoopTask(**{k: v for k, v in chosen.items() if k in TASK_FIELDS})
    shared = {k: v for k, v in chosen.items() if k not in TASK_FIELDS or k in SHARED}
    return LanguageModelDomain(task, **shared)
