"""A language model on any task (`lm.tasks.Task`) as a kind of policy the online loop aligns.

The domain is the same for every task; what differs is a `LoopTask`: where the starting policy
comes from, how the rounds draw prompts, and what the task can say about the models beyond the
learned scores. Two of them: `PromptLoopTask` (a prompt file, or any `Task`, with the user's
starting policy and, optionally, starting reward and cost models) and the toy world's
(`loop.toyworld.ToyWorldLoopTask`: it trains the careless SFT policy, writes held-out pairs and
measures the models' accuracies against its ground truth).

Files under the run directory (``round_dir`` is ``run_dir / "round-003"`` and so on):

    round-r/judgements.jsonl       the judgements of rounds 1..r, one judged item a line (the
                                   platform's `judgements` export format), written by `learn`
    round-r/reward, round-r/cost   reward and cost models, warm-started from round r-1's
    round-r/policy                 the aligned policy (PPO-Lagrangian, Safe GRPO or DPO); policy/final
    round-r/align.json             the cost limit PPO-Lagrangian or Safe GRPO ran under, and why
    round-r/evaluation.json, .md   the round's evaluation (`lm.evaluate.judge_policy`): reward and
                                   cost figures, the share judged unsafe, samples, and the task's
                                   ground truth where it has judges

What annotators are asked is the domain's `questions` about items of `candidates` responses
(`alignloop loop --questions`, `loop.domain.project_spec`): by default today's PKU-SafeRLHF
questions about two; a ranking of 4, ratings, any list of questions. The reward model learns
from whatever the questions say about preference (`feedback.pairs.preference_rankings`:
choices, whole rankings by Plackett-Luce, ratings as pairs), the cost model from their safety
labels; a project that asks nothing about safety gets no cost model and its policy is updated
on the reward model alone (PPO, or GRPO).

The policy of round r is aligned from round r-1's (the starting policy for round 1), and that
same starting policy is its frozen reference: the KL penalty then keeps each round's step
small instead of pulling every round back toward the starting policy, so safety gained in
one round is not paid for again in the next, and helpfulness found in one round is kept.
The Lagrange multiplier likewise goes on from the previous round: restarted at 1 it climbed
too slowly (a log-space step of lr * lambda * (J_c - d) per iteration) to hold a tighter limit
against the reward model within a round. It starts from the largest value the previous round
reached, not its last: once a round's policy is safe its last iterations let lambda fall (to
0.4-0.7 after round 1 in the toy world), and the next round, against a sharper reward model,
began from there and let the unsafe rate rise (BENCHMARKS.md, "The toy-world loop, round by
round").

Cost limit: calibrated with the formula of `alignloop demo` (`lm.tasks.cost_limit_from_labels`),
``d = (1 - target) * mean cost(safe) + target * mean cost(unsafe)``, on the current policy's
answers to fresh train prompts split by the new cost model's sign (the demo uses annotator
labels of fixed pairs; the policy's own answers make ``d`` mean the same thing in every round).
Each round asks for fewer flagged answers than the policy gives now,

    target = min(flagged, max(unsafe_share, shrink * flagged)),

``flagged`` the share the cost model flags (cost > 0): cut by a factor, down to a floor, never
loosened. With nothing flagged the limit is the current mean cost. A limit on the labelled
pairs' means instead drifts away from the policy as it changes: later rounds found it slack,
lambda faded, and the reward model (which prefers harmful detail) pulled the policy back.
With `cost_floor` the costs of the limit and of the constraint are ``max(c, cost_floor)``
(`core.lagrange.floored_cost`): on the plain mean, answers that are already safe can be made to
look safer still while the share of flagged ones rises, and the limit still holds.

Item selection (`propose`): `candidates` sampled responses per prompt from the current policy
(at `propose_temperature`: a little above 1 widens what annotators see, and the reward and
cost models learn more from the same number of items than from the policy's few habitual
answers); items with two identical texts, an empty response or a NUL character are dropped. "disagreement"
scores each item with the previous round's reward and cost models
(`alignloop.core.selection.item_disagreement`; for a pair A, B)

    u_reward = 1 - |2 P(A > B) - 1|,  P(A > B) = sigmoid(r_A - r_B)   (the mean over pairs of K)
    u_cost   = max over A, B of 1 - |2 sigmoid(c) - 1|      (cost 0 = the safe/unsafe boundary)
    score    = (u_reward + u_cost) / 2                      in [0, 1]  (u_reward without a cost model)

so an item is asked when the reward model cannot rank it or the cost model cannot tell whether
one of its responses is safe, and keeps the n_pairs highest of a pool of `pool_factor` times
as many (with `explore` > 0, that share of them is drawn uniformly from the rest instead: a
model confidently wrong is never uncertain). Round 1 has no models and draws uniformly
(priority 0).
"""

from __future__ import annotations

import json
import random
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignloop.feedback.schema import (
    DEFAULT_QUESTIONS,
    Candidate,
    Comparison,
    IsSafe,
    Item,
    Question,
)
from alignloop.loop.domain import (
    Judged,
    ProjectSpec,
    Proposal,
    Selection,
    previous_round_dir,
    to_judged_items,
)
from alignloop.loop.lm_tasks import LoopTask, trainer_task_options

PolicyUpdate = Literal["ppo-lag", "grpo-lag", "dpo"]
POLICY_UPDATES: tuple[PolicyUpdate, ...] = ("ppo-lag", "grpo-lag", "dpo")

PRESETS: dict[str, dict[str, Any]] = {
    # sizes of the domain on a prompt file (`alignloop loop --domain lm --prompts FILE --preset ...`);
    # the toy world has its own (`loop.toyworld.PRESETS`). "smoke": a plumbing check in seconds
    "default": {},
    "smoke": {
        "reward_steps": 3,
        "cost_steps": 3,
        "ppo_steps": 2,
        "dpo_steps": 3,
        "rollout_batch_size": 16,
        "eval_prompts": 24,
        "flag_samples": 32,
    },
}


def dpo_pairs(comparisons: list[Comparison]) -> list[Comparison]:
    """Pairs for DPO, chosen first: the safe response where exactly one is labelled safe,
    else the more helpful one; pairs with neither preference are left out."""
    out = []
    for c in comparisons:
        safe = c.is_safe
        if None not in safe and safe[0] != safe[1]:
            chosen: int | None = 0 if safe[0] else 1
        else:
            chosen = c.better
        if chosen is not None:
            out.append(Comparison(c.prompt, c.response(chosen), c.response(1 - chosen), better=0))
    return out


@dataclass
class LanguageModelDomain:
    """A language model on any task, aligned round by round (see the module docstring)."""

    task: LoopTask
    """The task, and where the starting policy and the rounds' prompts come from."""
    seed: int = 0
    """Seed of the samples and every trainer."""
    reward_steps: int = 120
    """Reward-model steps each round (batch 64, over the judgements of every round)."""
    cost_steps: int = 120
    """Cost-model steps each round."""
    ppo_steps: int = 15
    """PPO-Lagrangian (or Safe GRPO) iterations each round."""
    dpo_steps: int = 60
    """DPO steps each round (policy_update "dpo")."""
    rollout_batch_size: int = 64
    """Responses per PPO or GRPO iteration (GRPO: rollout_batch_size / group_size prompts)."""
    group_size: int = 4
    """Responses per prompt of a Safe GRPO iteration."""
    eval_prompts: int = 1000
    """Held-out prompts evaluated each round (the same ones every round)."""
    policy_update: PolicyUpdate = "ppo-lag"
    """How the policy learns: PPO-Lagrangian or Safe GRPO on the reward and cost models, or DPO
    on the pairs."""
    pool_factor: int = 2
    """Under "disagreement", choose among this many times n_pairs candidate pairs."""
    explore: float = 0.0
    """Share of a "disagreement" round's pairs drawn uniformly from the rest of the pool."""
    propose_temperature: float = 1.3
    """Sampling temperature of the proposed responses (above 1: more varied pairs to judge)."""
    unsafe_share: float = 0.002
    """Floor of the target share of flagged answers (see the module docstring)."""
    shrink: float = 0.4
    """Each round's target is this share of the flagged answers of the current policy."""
    flag_samples: int = 512
    """Fresh answers of the current policy the cost limit is calibrated on."""
    kl_coef: float = 0.02
    """The KL penalty to the round's starting policy (PPO: in the reward; GRPO: a k3 loss term)."""
    lambda_lr: float = 0.2
    """Step size of the Lagrange multiplier (log space); each round starts from the largest the
    last one reached."""
    lambda_max: float = 5.0
    """Upper bound on the Lagrange multiplier."""
    cost_floor: float | None = None
    """Costs below this count as this in the constraint and its limit (None = none): only
    unsafe-looking answers then move the mean cost (see the module docstring)."""
    max_new_tokens: int = 16
    """Longest sampled response, in tokens."""
    threads: int = 1
    """torch CPU threads (0 = torch's default)."""
    progress: bool = True
    """Progress bars in the trainers."""
    questions: tuple[Question, ...] = DEFAULT_QUESTIONS
    """What annotators are asked (the default questions: better, safer, is_safe, a correction)."""
    candidates: int = 2
    """Responses to one prompt shown together (2 for pairwise questions; up to 8, e.g. a ranking)."""
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.policy_update not in POLICY_UPDATES:
            raise ValueError(
                f"policy_update: {self.policy_update!r} is not one of {', '.join(POLICY_UPDATES)}"
            )
        if self.policy_update == "grpo-lag" and self.rollout_batch_size % self.group_size:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} is not a multiple of group_size {self.group_size}"
            )
        ProjectSpec(self.questions, self.candidates)  # its checks: 2-8 candidates, pairwise questions of 2
        self.name = self.task.name

    # ------------------------------------------------------------------ paths
    def _trainer_options(self, round: int, output_dir: Path) -> dict[str, Any]:
        """Options of every trainer a round runs in `output_dir`; a run a crash cut short resumes."""
        from alignloop.runstack.checkpoint import Checkpointer

        resume = Checkpointer(output_dir).latest() is not None
        return {
            "output_dir": output_dir,
            "seed": self.seed + round,
            "threads": self.threads,
            "progress": self.progress,
            "resume": resume,
        }

    def _policy(self, round_dir: Path, round: int) -> Path:
        """The policy that round `round` starts from (round - 1's, the starting policy for round 1)."""
        if round <= 1:
            return self.task.starting_policy(round_dir.parent)
        return previous_round_dir(round_dir, round) / "policy" / "final"

    def _set_threads(self) -> None:
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)

    # ------------------------------------------------------------------ phases
    def setup(self, run_dir: Path) -> dict[str, float]:
        """The starting policy (the task builds it if it trains its own) and its figures."""
        self._set_threads()
        self.task.build(run_dir, self._trainer_options)
        return self._judge(self.task.starting_policy(run_dir), None, None).metrics

    @property
    def asks_safety(self) -> bool:
        """Whether the questions say anything about safety (else no cost model is trained)."""
        return any(isinstance(q, IsSafe) for q in self.questions)

    def propose(self, round_dir: Path, round: int, n_pairs: int, select: Selection) -> list[Proposal]:
        """n_pairs items of `candidates` sampled responses each from the current policy to train
        prompts; the same (seed, round) gives the same items."""
        import torch

        from alignloop.lm.models import load_causal_lm, load_tokenizer

        if select not in ("disagreement", "uniform"):
            raise ValueError(f"select: {select!r} is not one of disagreement, uniform")
        self._set_threads()
        policy_dir = self._policy(round_dir, round)
        tokenizer = load_tokenizer(policy_dir)
        policy = load_causal_lm(policy_dir).eval()
        wanted = n_pairs * self.pool_factor if select == "disagreement" and round > 1 else n_pairs
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}-propose-{round}".encode()))
        pool: list[tuple[str, tuple[str, ...]]] = []
        # items with equal or empty texts, or a NUL (a byte-level tokenizer can decode one; the
        # platform cannot store it), are dropped: draw again until the pool is full
        for attempt in range(8):
            texts = self.task.propose_prompts(2 * (wanted - len(pool)), 10_000 * round + attempt)
            samples = [
                self._sample(policy, tokenizer, texts, generator, self.propose_temperature)
                for _ in range(self.candidates)
            ]
            for prompt, *responses in zip(texts, *samples, strict=True):
                if all(r and "\x00" not in r for r in responses) and len(set(responses)) == len(responses):
                    pool.append((prompt, tuple(responses)))
            if len(pool) >= wanted:
                break
        pool = pool[:wanted]
        scores = self._disagreement(round_dir, round, pool) if round > 1 else [0.0] * len(pool)
        indices = list(range(len(pool)))
        rng = random.Random(f"{self.seed}-select-{round}")
        if select == "disagreement" and round > 1:
            indices.sort(key=lambda i: -scores[i])
            top = n_pairs - round_half(n_pairs * self.explore)
            rest = indices[top:]
            rng.shuffle(rest)
            indices = indices[:top] + rest
        else:
            rng.shuffle(indices)
        chosen = sorted(indices[:n_pairs])
        model = f"policy-r{round - 1}"
        return [
            Proposal(
                Item(
                    pool[k][0], tuple(Candidate(t, model=model) for t in pool[k][1]), key=f"r{round}-{i:05d}"
                ),
                priority=round_score(scores[k]),
            )
            for i, k in enumerate(chosen)
        ]

    def learn(self, round_dir: Path, round: int, judged: list[Judged]) -> dict[str, float]:
        """Reward and cost models on the judgements of every round, warm-started from round - 1's
        (round 1: the task's starting models, or the starting policy's body); the task's figures
        of them. Without a safety question there is no cost model."""
        from alignloop.feedback.formats import write_records
        from alignloop.feedback.judged import comparisons
        from alignloop.lm import cost, reward
        from alignloop.lm.data import rankings_of, safety_judged

        self._set_threads()
        items, contradictory = to_judged_items(judged, self.questions)
        if not items:
            raise ValueError(
                f"round {round}: no usable judgement to learn from ({contradictory} contradictory)"
            )
        round_dir.mkdir(parents=True, exist_ok=True)
        data = round_dir / "judgements.jsonl"
        fresh = round_dir / ".judgements.jsonl"
        write_records(items, fresh, "judgements")
        if not data.is_file() or data.read_bytes() != fresh.read_bytes():
            for stage in ("reward", "cost", "policy"):  # trained on other data: redo them
                shutil.rmtree(round_dir / stage, ignore_errors=True)
            fresh.replace(data)
        else:
            fresh.unlink()
        heldout = self.task.heldout_file(round_dir)
        previous = None if round <= 1 else previous_round_dir(round_dir, round)
        reward_pairs = len(rankings_of(items)[0])
        cost_pairs = len(safety_judged(comparisons(items))[0])
        stages: list[tuple[str, Any, Any, int, int]] = [
            ("reward", reward, reward.RewardConfig, self.reward_steps, reward_pairs)
        ]
        if self.asks_safety:
            stages.append(("cost", cost, cost.CostConfig, self.cost_steps, cost_pairs))
        for kind, module, config, steps, usable in stages:
            if (round_dir / kind / "final").is_dir():
                continue
            if usable == 0:
                raise ValueError(f"round {round}: no judgement usable for the {kind} model")
            warm = (
                self.task.starting_score_model(kind, round_dir.parent)
                if previous is None
                else previous / kind / "final"
            )
            status = module.train(  # type: ignore[attr-defined]
                config(
                    model=str(warm),
                    train_file=data,
                    eval_file=heldout,
                    max_steps=steps,
                    batch_size=min(64, usable),
                    warmup_steps=min(10, steps // 4),
                    eval_every=max(steps, 1),
                    save_every=max(steps // 3, 1),
                    **self._trainer_options(round, round_dir / kind),
                )
            )
            if status not in (None, 0):
                raise RuntimeError(f"round {round}: the {kind} model failed with exit code {status}")
        cost_dir = round_dir / "cost" / "final" if self.asks_safety else None
        accuracies = self.task.model_accuracies(round_dir / "reward" / "final", cost_dir)
        return {
            **accuracies,
            "judgements": float(len(judged)),
            "reward_pairs": float(reward_pairs),
            "cost_pairs": float(cost_pairs),
            "contradictory": float(contradictory),
        }

    def align(self, round_dir: Path, round: int) -> dict[str, float]:
        """PPO-Lagrangian (or Safe GRPO) from the current policy with this round's models, or DPO
        on the judged pairs; the policy lands in round_dir/policy/final."""
        self._set_threads()
        if self.policy_update == "dpo":
            return self._align_dpo(round_dir, round)
        from alignloop.lm import ppo
        from alignloop.lm.training import read_metrics

        if not self.asks_safety:
            return self._align_unconstrained(round_dir, round)
        settings = round_dir / "align.json"
        if not settings.is_file():
            settings.write_text(json.dumps(self._cost_limit(round_dir, round)) + "\n")
        chosen = json.loads(settings.read_text())
        cost_limit = float(chosen["cost_limit"])
        out = round_dir / "policy"
        if not (out / "final").is_dir():
            if self.policy_update == "grpo-lag":
                status = self._train_grpo_lag(round_dir, round, out, cost_limit)
            else:
                status = ppo.train_lagrangian(
                    ppo.PPOLagConfig(
                        cost_model=round_dir / "cost" / "final",
                        cost_limit=cost_limit,
                        lambda_init=self._previous_lambda(round_dir, round),
                        lambda_lr=self.lambda_lr,
                        cost_floor=self.cost_floor,
                        lambda_max=self.lambda_max,
                        **self._ppo_options(round_dir, round, out),
                    )
                )
            if status not in (None, 0):
                raise RuntimeError(f"round {round}: {self.policy_update} failed with exit code {status}")
        last = list(read_metrics(out, split="train"))[-1]
        return {
            "cost_limit": cost_limit,
            "flagged_share": float(chosen["flagged"]),
            "target_share": float(chosen["target"]),
            **{k: float(last[k]) for k in ("lambda", "J_c", "reward", "cost", "kl") if k in last},
        }

    def evaluate(self, round_dir: Path, round: int) -> dict[str, float]:
        """The round's policy on the held-out prompts (the same every round): the reward and cost
        models' figures, and the task's ground truth where it has judges; written to
        round_dir/evaluation.json and evaluation.md."""
        from alignloop.lm.evaluate import write_evaluation

        self._set_threads()
        cost_dir = round_dir / "cost" / "final" if self.asks_safety else None
        evaluation = self._judge(round_dir / "policy" / "final", round_dir / "reward" / "final", cost_dir)
        write_evaluation(round_dir, evaluation, step=round, prompt_source=self.task.task.eval_source)
        return evaluation.metrics

    # ------------------------------------------------------------------ pieces
    def _previous_lambda(self, round_dir: Path, round: int) -> float:
        """The largest Lagrange multiplier PPO-Lagrangian (or Safe GRPO) reached in round - 1 (1
        in round 1, and after a DPO round): see the module docstring."""
        from alignloop.lm.training import read_metrics

        metrics = None if round <= 1 else previous_round_dir(round_dir, round) / "policy"
        if metrics is None or not (metrics / "metrics.jsonl").is_file():
            return 1.0
        seen = [r["lambda"] for r in read_metrics(metrics, split="train") if "lambda" in r]
        return float(max(seen)) if seen else 1.0

    def _sample(
        self, policy: Any, tokenizer: Any, prompts: list[str], generator: Any, temperature: float = 1.0
    ) -> list[str]:
        from alignloop.lm.data import PromptCollator
        from alignloop.lm.evaluate import decode_responses
        from alignloop.lm.generation import generate

        collate = PromptCollator(tokenizer)
        texts: list[str] = []
        for start in range(0, len(prompts), 256):
            batch = collate(prompts[start : start + 256])
            rollout = generate(
                policy,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=temperature,
                generator=generator,
            )
            texts += decode_responses(tokenizer, rollout.responses, rollout.response_mask)
        return texts

    def _disagreement(
        self, round_dir: Path, round: int, pool: list[tuple[str, tuple[str, ...]]]
    ) -> list[float]:
        """The disagreement of round - 1's models on each (prompt, responses)."""
        import torch

        from alignloop.core.selection import item_disagreement
        from alignloop.lm.evaluate import score_texts
        from alignloop.lm.models import ScoreModel, load_tokenizer

        if not pool:
            return []
        previous = previous_round_dir(round_dir, round)
        tokenizer = load_tokenizer(previous / "reward" / "final")
        prompts = [p for p, _ in pool]

        def scores(model_dir: Path) -> torch.Tensor:  # (N, K)
            model = ScoreModel.from_pretrained(model_dir).eval()
            return torch.stack(
                [
                    score_texts(model, tokenizer, prompts, [texts[k] for _, texts in pool])
                    for k in range(self.candidates)
                ],
                1,
            )

        costs = scores(previous / "cost" / "final") if self.asks_safety else None
        return item_disagreement(scores(previous / "reward" / "final"), costs).tolist()

    def _cost_limit(self, round_dir: Path, round: int) -> dict[str, float]:
        """The round's cost limit (see the module docstring), with the flagged and target shares."""
        import torch

        from alignloop.lm.evaluate import score_texts
        from alignloop.lm.models import ScoreModel, load_causal_lm, load_tokenizer
        from alignloop.lm.tasks import cost_limit_from_labels

        policy_dir = self._policy(round_dir, round)
        tokenizer = load_tokenizer(policy_dir)
        prompts = self.task.flag_prompts(self.flag_samples, 20_000 + round)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}-flagged-{round}".encode()))
        responses = self._sample(load_causal_lm(policy_dir).eval(), tokenizer, prompts, generator)
        cost_model = ScoreModel.from_pretrained(round_dir / "cost" / "final").eval()
        costs = score_texts(cost_model, tokenizer, prompts, responses)  # (N,)
        labelled: dict[bool, list[tuple[str, str]]] = {True: [], False: []}  # True = flagged safe
        for prompt, response, cost in zip(prompts, responses, costs.tolist(), strict=True):
            labelled[cost <= 0].append((prompt, response))
        flagged = len(labelled[False]) / len(prompts)
        target = min(flagged, max(self.unsafe_share, self.shrink * flagged))
        if not labelled[False]:
            labelled[False] = labelled[True]  # nothing flagged: the limit is the current mean cost
        if not labelled[True]:
            labelled[True] = labelled[False]
        limit = cost_limit_from_labels(cost_model, tokenizer, labelled, target, floor=self.cost_floor)
        return {"cost_limit": limit, "flagged": flagged, "target": target}

    def _rl_options(self, round_dir: Path, round: int, out: Path) -> dict[str, Any]:
        """The options PPO, PPO-Lagrangian, GRPO and Safe GRPO share: the round's policy, the
        task's train prompts, the domain's sizes, the run stack's options."""
        return {
            "policy": self._policy(round_dir, round),
            **trainer_task_options(self.task.task),
            "max_steps": self.ppo_steps,
            "eval_size": 0,
            "eval_every": max(self.ppo_steps, 1),
            "save_every": max(self.ppo_steps // 4, 1),
            "max_new_tokens": self.max_new_tokens,
            "kl_coef": self.kl_coef,
            **self._trainer_options(round, out),
        }

    def _ppo_options(self, round_dir: Path, round: int, out: Path) -> dict[str, Any]:
        """PPO's: the round's reward model, rollout_batch_size prompts an iteration."""
        return {
            **self._rl_options(round_dir, round, out),
            "reward_model": round_dir / "reward" / "final",
            "rollout_batch_size": self.rollout_batch_size,
            "batch_size": min(32, self.rollout_batch_size),
        }

    def _grpo_options(self, round_dir: Path, round: int, out: Path) -> dict[str, Any]:
        """GRPO's: rollout_batch_size responses an iteration in groups of group_size, one
        optimiser step over all of them."""
        prompts = self.rollout_batch_size // self.group_size
        return {
            **self._rl_options(round_dir, round, out),
            "reward_model": (round_dir / "reward" / "final",),
            "rollout_batch_size": prompts,
            "group_size": self.group_size,
            "batch_size": prompts * self.group_size,
        }

    def _train_grpo_lag(self, round_dir: Path, round: int, out: Path, cost_limit: float) -> int:
        from alignloop.lm import grpo

        return grpo.train_lagrangian(
            grpo.GRPOLagConfig(
                cost_model=(round_dir / "cost" / "final",),
                cost_limit=cost_limit,
                lambda_init=self._previous_lambda(round_dir, round),
                lambda_lr=self.lambda_lr,
                cost_floor=self.cost_floor,
                lambda_max=self.lambda_max,
                **self._grpo_options(round_dir, round, out),
            )
        )

    def _align_unconstrained(self, round_dir: Path, round: int) -> dict[str, float]:
        """PPO (or GRPO) on the reward model alone (a project that asks nothing about safety)."""
        from alignloop.lm import grpo, ppo
        from alignloop.lm.training import read_metrics

        out = round_dir / "policy"
        if not (out / "final").is_dir():
            if self.policy_update == "grpo-lag":
                status = grpo.train(grpo.GRPOConfig(**self._grpo_options(round_dir, round, out)))
            else:
                status = ppo.train(ppo.PPOConfig(**self._ppo_options(round_dir, round, out)))
            if status not in (None, 0):
                raise RuntimeError(f"round {round}: the policy update failed with exit code {status}")
        last = list(read_metrics(out, split="train"))[-1]
        return {k: float(last[k]) for k in ("reward", "kl") if k in last}

    def _align_dpo(self, round_dir: Path, round: int) -> dict[str, float]:
        from alignloop.feedback.formats import read_judged, write_records
        from alignloop.feedback.judged import comparisons
        from alignloop.lm import dpo

        pairs = dpo_pairs(comparisons(read_judged(round_dir / "judgements.jsonl")))
        if not pairs:
            raise ValueError(f"round {round}: no judged pair has a safety or helpfulness preference for DPO")
        data = round_dir / "dpo-pairs.jsonl"
        write_records(pairs, data, "preference")
        out = round_dir / "policy"
        if not (out / "final").is_dir():
            status = dpo.train(
                dpo.DPOConfig(
                    model=str(self._policy(round_dir, round)),
                    train_file=data,
                    eval_file=self.task.heldout_file(round_dir),
                    max_steps=self.dpo_steps,
                    batch_size=min(32, len(pairs)),
                    warmup_steps=min(10, self.dpo_steps // 4),
                    eval_every=max(self.dpo_steps, 1),
                    save_every=max(self.dpo_steps // 3, 1),
                    **self._trainer_options(round, out),
                )
            )
            if status not in (None, 0):
                raise RuntimeError(f"round {round}: DPO failed with exit code {status}")
        return {"dpo_pairs": float(len(pairs))}

    def _judge(self, policy_dir: Path, reward_dir: Path | None, cost_dir: Path | None) -> Any:
        """`judge_policy` of the policy on the task's held-out prompts (an `Evaluation`)."""
        from alignloop.lm.evaluate import judge_policy, model_scores
        from alignloop.lm.models import ScoreModel, load_causal_lm, load_tokenizer

        policy = load_causal_lm(policy_dir).eval()
        score = {
            name: None if folder is None else model_scores(ScoreModel.from_pretrained(folder).eval())
            for name, folder in (("reward", reward_dir), ("cost", cost_dir))
        }
        return judge_policy(
            policy,
            load_tokenizer(policy_dir),
            self.task.task,
            self.task.held_out_prompts(self.eval_prompts),
            reward=score["reward"],
            cost=score["cost"],
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )


def round_half(value: float) -> int:
    """`value` rounded to the nearest integer, halves up."""
    return int(value + 0.5)


def round_score(value: float) -> float:
    """Priorities kept to 6 decimals (stable through JSON and the platform's database)."""
    return round(value, 6)
