"""PPO-RLHF, Safe RLHF (PPO-Lagrangian) and the fixed-lambda reward-shaping baseline.

One loop serves the three commands; they differ only in what the policy is rewarded for.
Each iteration:

1. **Rollout.** Sample a response to each prompt of a batch (`generation.generate`, KV-cached,
   temperature 1), keep the sampled tokens' log-probs ``pi_old``.
2. **Score** (`score_rollout`). The frozen reference (the starting policy) gives
   ``ref_logprobs``; the reward model gives one end score per response, the cost model (Safe
   RLHF, shaping) one end cost; the critics give per-token values.
3. **Lambda** (`Constraint`). Safe RLHF moves lambda (`core.lagrange.LagrangeMultiplier`, log
   space) by ``J_c - cost_limit``, ``J_c`` the mean end cost over a window of recent
   responses, before the policy update.
4. **Per-token rewards and advantages** (`assemble_experience`). With the KL estimate
   ``kl_t = log pi_old - log ref`` on each response token, the reward stream is
   ``-beta * kl_t`` plus the end reward at the last response token; the cost stream (Safe RLHF)
   is ``+beta * kl_t`` plus the end cost there (Dai et al. 2023, "Safe RLHF", the
   PPO-Lagrangian trainer). Shaping puts ``reward - lambda * cost`` (fixed lambda) at the last
   token of the reward stream. GAE (`core.advantages.gae`) on each stream with its own critic;
   Safe RLHF mixes them as ``(A_r - lambda A_c) / (1 + lambda)``
   (`core.lagrange.lagrangian_advantage`). The advantage the policy ascends is then whitened
   (``whiten_advantages``).
5. **Update** (`ppo_update`). ``ppo_epochs`` passes over the rollout in mini-batches
   (``batch_size``, split in ``grad_accum`` micro-batches): the clipped surrogate
   (`core.losses.ppo_policy_loss`) for the policy, the clipped value loss
   (`core.losses.value_loss`) for each critic, both averaged over the response tokens of the
   mini-batch.

Critics are score models initialised from the reward and cost models (their per-token
scores). A step of the progress bar, the metrics and ``max_steps`` is one iteration.
Tensors of a rollout are aligned on response tokens: ``(B, R)``, with ``response_mask``
True = response token.

Under torchrun every process samples and scores its share of each rollout batch (the
sampling noise is drawn per row of the whole batch, so the tokens do not depend on the split),
then the shares are gathered: every process holds the whole rollout, moves lambda, computes
the advantages and walks the same mini-batches, each process taking its share of every
mini-batch. Two processes therefore make the updates one process makes, up to float rounding,
under ``--strategy ddp``, ``fsdp`` or ``fsdp-grad-op``; the run stack checkpoints it exactly.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignloop.core.advantages import gae, kl_shaped_rewards, masked_mean, masked_whiten
from alignloop.core.lagrange import LagrangeMethod, LagrangeMultiplier, lagrangian_advantage, mean_recent_cost
from alignloop.core.losses import entropy_from_logits, ppo_policy_loss, value_loss
from alignloop.errors import UserError
from alignloop.lm.data import PromptCollator
from alignloop.lm.evaluate import judge_policy, log_evaluation, model_scores, write_evaluation
from alignloop.lm.folders import check_inputs
from alignloop.lm.generation import Rollout
from alignloop.lm.models import (
    ScoreModel,
    load_causal_lm,
    load_tokenizer,
    position_ids_from_mask,
    token_logprobs,
)
from alignloop.lm.rollouts import (
    Scores,
    forward_values,
    frozen_score_model,
    gather_rollout,
    sample_share,
    score_rollout,
)
from alignloop.lm.rollouts import (
    forward_logprobs as forward_logprobs,  # importable from here too, as before
)
from alignloop.lm.tasks import TaskOptions, task_from_options, train_prompts
from alignloop.lm.training import (
    DistributedContext,
    TrainCommon,
    batch_indices,
    clip_grad_norm,
    make_optimizer,
    make_scheduler,
    micro_batches,
    prepare_model,
    save_final,
    start_run,
    unwrap,
)
from alignloop.runstack.distributed import checkpoint_states, gradient_sync


@dataclass(frozen=True)
class PPOConfig(TaskOptions, TrainCommon):
    """PPO-RLHF: maximise a reward model's score with a KL penalty to the starting policy."""

    output_dir: Path = Path("runs/ppo")
    """Run folder: run.json, checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    policy: Path = Path("runs/sft/final")
    """Starting policy (a causal-LM folder with its tokenizer); also the frozen reference."""
    reward_model: Path = Path("runs/reward/final")
    """Reward model folder (`alignloop train reward`); also initialises the reward critic."""
    max_steps: int = 60
    """PPO iterations (rollout + update)."""
    total_steps: int = 0
    """Length of the learning-rate schedule in iterations (0 = max_steps); set it to stop early
    on the same schedule, or to extend a finished run (a resume that changes the length needs it)."""
    lr: float = 1e-4
    """Policy learning rate."""
    critic_lr: float = 5e-4
    """Critic learning rate."""
    warmup_steps: int = 0
    """Warm-up optimiser steps."""
    scheduler: Literal["cosine", "linear", "constant"] = "constant"
    """Learning-rate schedule after warm-up."""
    rollout_batch_size: int = 64
    """Prompts per iteration, over all processes."""
    batch_size: int = 32
    """Responses per PPO mini-batch (one optimiser step), over all processes."""
    ppo_epochs: int = 2
    """Passes over each rollout."""
    max_new_tokens: int = 16
    """Longest response in tokens (the end-of-sequence token included)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_k: int = 0
    """Top-k sampling of the rollouts (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1 = off)."""
    kl_coef: float = 0.02
    """beta: per-token KL penalty to the reference."""
    clip_eps: float = 0.2
    """PPO ratio clip range."""
    value_clip_eps: float = 0.2
    """Clip of the value change per update (0 = no clipping)."""
    gamma: float = 1.0
    """Discount over response tokens."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    score_clip: float = 10.0
    """End rewards and costs are clipped to [-score_clip, score_clip]."""
    entropy_coef: float = 0.0
    """Entropy bonus on the policy loss."""
    whiten_advantages: bool = True
    """Standardise the advantages the policy ascends over each rollout's response tokens (after
    the Lagrangian mix, which keeps lambda's weighting; only the step scale changes)."""
    missing_eos_penalty: float = 2.0
    """Subtracted from the end reward of a response cut at max_new_tokens without an end token
    (the reward model never saw such text; without it PPO learns to ramble)."""
    eval_every: int = 10
    """Evaluate every this many iterations (and at the end)."""
    save_every: int = 20
    """Save a checkpoint every this many iterations (and at the end)."""


@dataclass(frozen=True)
class CostModelConfig(PPOConfig):
    """PPO with a cost model as well: what Safe RLHF and reward shaping share."""

    cost_model: Path = Path("runs/cost/final")
    """Cost model folder (`alignloop train cost`); Safe RLHF also initialises the cost critic from it."""
    cost_floor: float | None = None
    """End costs below this are raised to it (None = none): with a floor at or a little below 0,
    the safe/unsafe boundary, only unsafe-looking responses move the cost, and safe ones made
    safer no longer pay for unsafe ones (`core.lagrange.floored_cost`); the cost limit is in
    the same floored units."""


@dataclass(frozen=True)
class PPOLagConfig(CostModelConfig):
    """Safe RLHF: maximise reward while the expected cost stays under a limit (PPO-Lagrangian)."""

    output_dir: Path = Path("runs/ppo-lag")
    """Run folder: run.json, checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    cost_limit: float = 0.0
    """d: the limit on the expected end cost (cost 0 is the safe/unsafe boundary)."""
    lambda_init: float = 1.0
    """Initial Lagrange multiplier."""
    lambda_lr: float = 0.1
    """Step size of the multiplier (on log lambda for the log method)."""
    lambda_max: float = 5.0
    """Upper bound on the multiplier."""
    lambda_delay: int = 0
    """Iterations before the multiplier starts to move."""
    lambda_method: LagrangeMethod = "log"
    """Multiplier update rule."""
    cost_window: int = 128
    """J_c is the mean end cost of this many recent responses (of all processes)."""


@dataclass(frozen=True)
class ShapingConfig(CostModelConfig):
    """Baseline: PPO on reward - lambda * cost with a fixed lambda."""

    output_dir: Path = Path("runs/reward-shaping")
    """Run folder: run.json, checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    shaping_lambda: float = 1.0
    """The fixed weight of the cost in the shaped reward."""


# ------------------------------------------------------------------------ the experience
@dataclass
class Experience:
    """One rollout with everything the update needs, aligned on response tokens ``(B, R)``."""

    sequences: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R)
    response_mask: Tensor  # (B, R) True = response token
    prompt_length: int
    old_logprobs: Tensor  # (B, R)
    advantages: Tensor  # (B, R) what the policy ascends
    reward_values: Tensor  # (B, R)
    reward_returns: Tensor  # (B, R)
    cost_values: Tensor | None  # (B, R) Safe RLHF only
    cost_returns: Tensor | None
    rewards: Tensor | None = None  # (B, R) the per-token reward stream
    costs: Tensor | None = None  # (B, R) the per-token cost stream (Safe RLHF)

    def select(self, rows: list[int]) -> Experience:
        """The rollout restricted to some rows (a mini-batch)."""
        tensors = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]
        changes: dict[str, Any] = {name: getattr(self, name)[rows] for name in tensors}
        return replace(self, **changes)


def assemble_experience(
    rollout: Rollout,
    scores: Scores,
    *,
    kl_coef: float,
    gamma: float,
    gae_lambda: float,
    lam: float | None = None,
    shaping_lambda: float | None = None,
    whiten: bool = True,
) -> tuple[Experience, dict[str, float]]:
    """The per-token reward (and cost) streams and the advantages of a scored rollout.

    Reward stream: ``-kl_coef * kl`` per response token, the end reward (shaping: end reward
    ``- shaping_lambda *`` end cost) at the last one. With ``lam`` (Safe RLHF) the cost stream is
    ``+kl_coef * kl`` plus the end cost at the last token, and the advantage is
    ``(A_r - lam A_c) / (1 + lam)``; otherwise ``A_r``. Whitened over the response tokens.
    """
    mask = rollout.response_mask  # (B, R) True = response token
    end_for_policy = scores.end_reward
    if shaping_lambda is not None:
        assert scores.end_cost is not None, "reward shaping needs end costs"
        end_for_policy = scores.end_reward - shaping_lambda * scores.end_cost  # (B,)
    rewards = kl_shaped_rewards(end_for_policy, scores.kl, mask, kl_coef)  # (B, R)
    adv_r, reward_returns = gae(rewards, scores.reward_values, gamma=gamma, lam=gae_lambda, mask=mask)
    metrics = {
        "reward": scores.end_reward.mean().item(),
        "kl": scores.kl.sum(-1).mean().item(),
        "response_tokens": mask.sum(-1).float().mean().item(),
        "reward_advantage": masked_mean(adv_r, mask).item(),
    }
    if scores.end_cost is not None:
        metrics["cost"] = scores.end_cost.mean().item()
    costs = cost_returns = None
    advantages = adv_r
    if lam is not None:
        assert scores.end_cost is not None and scores.cost_values is not None, (
            "Safe RLHF needs costs and a cost critic"
        )
        costs = kl_shaped_rewards(scores.end_cost, scores.kl, mask, -kl_coef)  # (B, R) +beta * kl + end cost
        adv_c, cost_returns = gae(costs, scores.cost_values, gamma=gamma, lam=gae_lambda, mask=mask)
        advantages = lagrangian_advantage(adv_r, adv_c, lam)
        metrics.update({"lambda": lam, "cost_advantage": masked_mean(adv_c, mask).item()})
    if whiten:
        advantages = masked_whiten(advantages, mask)
    exp = Experience(
        rollout.sequences,
        rollout.attention_mask,
        mask,
        rollout.prompt_length,
        rollout.logprobs,
        advantages,
        scores.reward_values,
        reward_returns,
        scores.cost_values,
        cost_returns,
        rewards,
        costs,
    )
    return exp, metrics


class Constraint:
    """Safe RLHF's constraint ``E[end cost] <= cost_limit``: the Lagrange multiplier and the
    window of recent end costs whose mean is ``J_c``."""

    def __init__(self, multiplier: LagrangeMultiplier, cost_limit: float, window: int):
        self.multiplier, self.cost_limit = multiplier, cost_limit
        self.window: deque[float] = deque(maxlen=window)

    def update(self, end_costs: list[float]) -> tuple[float, float]:
        """Add a rollout's end costs to the window and move lambda; returns (lambda, J_c)."""
        self.window.extend(end_costs)
        j_c = mean_recent_cost(self.window)
        return self.multiplier.update(j_c, self.cost_limit), j_c

    def state_dict(self) -> dict[str, Any]:
        return {"lagrange": self.multiplier.state_dict(), "cost_window": list(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier.load_state_dict(state["lagrange"])
        self.window.clear()
        self.window.extend(state["cost_window"])


# ------------------------------------------------------------------------ the update
def ppo_update(
    exp: Experience,
    rows: list[int],
    tokens: int,
    *,
    policy: nn.Module,
    critics: dict[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    grad_accum: int,
    clip_eps: float,
    value_clip_eps: float | None,
    entropy_coef: float,
    max_grad_norm: float,
    temperature: float,
    ctx: DistributedContext,
) -> dict[str, float]:
    """One optimiser step of the policy and of the critics on a mini-batch: this process's
    `rows` of it; `tokens` is the number of response tokens in the whole mini-batch (all
    processes), over which every loss is averaged."""
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    parts = micro_batches(rows, grad_accum)
    sums: dict[str, float] = {}
    for i, part in enumerate(parts):
        mb = exp.select(part)
        mask = mb.response_mask  # (b, R) True = response token
        share = float(mask.sum()) / tokens  # the micro-batch's share of the mini-batch's tokens
        with gradient_sync([policy, *critics.values()], ctx, sync=i == len(parts) - 1):
            logits = (
                policy(
                    input_ids=mb.sequences,
                    attention_mask=mb.attention_mask,
                    position_ids=position_ids_from_mask(mb.attention_mask),
                ).logits[:, mb.prompt_length - 1 : -1]
                / temperature
            )  # (b, R, V)
            pi_logprobs = token_logprobs(logits, mb.sequences[:, mb.prompt_length :])  # (b, R)
            pi_loss, pi_metrics = ppo_policy_loss(
                pi_logprobs, mb.old_logprobs, mb.advantages, mask, clip_eps=clip_eps
            )
            entropy = masked_mean(entropy_from_logits(logits.float()), mask)
            reward_values = forward_values(
                critics["reward_critic"], mb.sequences, mb.attention_mask, mb.prompt_length
            )
            vf_loss, _ = value_loss(
                reward_values, mb.reward_values, mb.reward_returns, mask, clip_eps=value_clip_eps
            )
            step_metrics = {
                "policy_loss": pi_loss,
                "entropy": entropy,
                "reward_value_loss": vf_loss,
                **pi_metrics,
            }
            loss = pi_loss - entropy_coef * entropy + vf_loss
            if "cost_critic" in critics:
                assert mb.cost_values is not None and mb.cost_returns is not None
                cost_values = forward_values(
                    critics["cost_critic"], mb.sequences, mb.attention_mask, mb.prompt_length
                )
                cost_vf_loss, _ = value_loss(
                    cost_values, mb.cost_values, mb.cost_returns, mask, clip_eps=value_clip_eps
                )
                loss = loss + cost_vf_loss
                step_metrics["cost_value_loss"] = cost_vf_loss
            # DDP and FSDP average gradients over processes, hence * world_size
            (loss * share * ctx.world_size).backward()
        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v) * share
    grad_norm = clip_grad_norm(policy, max_grad_norm)
    for critic in critics.values():
        clip_grad_norm(critic, max_grad_norm)
    for optimizer in optimizers.values():
        optimizer.step()
    reduced = ctx.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
    return {**dict(zip(sums, reduced.tolist(), strict=True)), "grad_norm": grad_norm}


# ------------------------------------------------------------------------ the loop
def _run(
    cfg: PPOConfig,
    command: str,
    description: str,
    *,
    cost_model_path: Path | None = None,
    cost_floor: float | None = None,
    constraint: Constraint | None = None,
    shaping_lambda: float | None = None,
) -> int:
    """The loop of the module docstring. Safe RLHF passes its `constraint` (and the cost model,
    which also initialises the cost critic); shaping passes the cost model and its fixed lambda;
    both pass their `cost_floor`."""
    if cost_floor is not None and not math.isfinite(cost_floor):
        raise UserError(
            f"--cost-floor: {cost_floor} is not a finite number; give one, e.g. 0, or leave it out"
        )
    check_inputs(
        cfg.output_dir,
        files={"--prompts": cfg.prompts, "--eval-prompts": cfg.eval_prompts},
        models={
            "--policy": (cfg.policy, "causal-lm"),
            "--reward-model": (cfg.reward_model, "score"),
            "--cost-model": (cost_model_path, "score"),
        },
    )
    run = start_run(cfg, command)
    ctx = run.ctx
    if cfg.rollout_batch_size % cfg.batch_size or cfg.batch_size % (ctx.world_size * cfg.grad_accum):
        raise UserError(
            f"--rollout-batch-size ({cfg.rollout_batch_size}) must be a multiple of --batch-size ({cfg.batch_size}), "
            f"and --batch-size a multiple of processes x --grad-accum ({ctx.world_size} x {cfg.grad_accum})"
        )
    task = task_from_options(cfg, cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    prompts = train_prompts(task, cfg.rollout_batch_size)
    collate = PromptCollator(tokenizer)

    policy: nn.Module = load_causal_lm(cfg.policy)
    reference = load_causal_lm(cfg.policy).eval().requires_grad_(False).to(ctx.device)
    reward_model = frozen_score_model(cfg.reward_model, tokenizer, ctx)
    critics: dict[str, nn.Module] = {"reward_critic": ScoreModel.from_pretrained(cfg.reward_model)}
    cost_model = None if cost_model_path is None else frozen_score_model(cost_model_path, tokenizer, ctx)
    if constraint is not None:
        assert cost_model_path is not None, "Safe RLHF needs a cost model"
        critics["cost_critic"] = ScoreModel.from_pretrained(cost_model_path)
    # adapters on the policy only; the reference stays the full starting model
    policy = prepare_model(policy, run, cfg)
    critics = {k: prepare_model(c, run, cfg, lora=False) for k, c in critics.items()}

    per_rollout = cfg.rollout_batch_size // cfg.batch_size
    schedule_steps = cfg.total_steps or cfg.max_steps
    optimizer_steps = schedule_steps * cfg.ppo_epochs * per_rollout
    optimizers = {"policy": make_optimizer(policy, cfg.lr, cfg.weight_decay)}
    optimizers |= {k: make_optimizer(c, cfg.critic_lr, cfg.weight_decay) for k, c in critics.items()}
    schedulers = {
        k: make_scheduler(o, cfg.scheduler, cfg.warmup_steps, optimizer_steps) for k, o in optimizers.items()
    }
    trained = {"policy": policy, **critics}
    models, saved_optimizers = checkpoint_states(trained, {k: (trained[k], o) for k, o in optimizers.items()})
    step, extra = run.restore_checked(
        models,
        saved_optimizers,
        schedulers,
        schedule_steps=schedule_steps,
        explicit=cfg.total_steps > 0,
        constant=cfg.scheduler == "constant",
    )
    if run.resume and constraint is not None:
        constraint.load_state_dict(extra["constraint"])
    eval_set = task.prompts("eval") if cfg.eval_size else []
    evaluation = None
    logger = run.logger(
        total_steps=cfg.max_steps,
        description=description,
        resume_step=step,
        progress=cfg.progress,
        log_dir=cfg.log_dir,
        report_to=cfg.report_to,
    )
    batches_per_epoch = len(prompts) // cfg.rollout_batch_size
    with logger:
        while step < cfg.max_steps:
            started = time.perf_counter()
            rows = batch_indices(
                len(prompts), cfg.rollout_batch_size, seed=cfg.seed, epoch=step // batches_per_epoch
            )[step % batches_per_epoch]
            batch = collate([prompts[i] for i in rows])  # the whole batch: the same padding everywhere
            for model in trained.values():
                model.eval()
            rollout = sample_share(
                policy,
                batch,
                ctx,
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
            )
            scores = score_rollout(
                rollout,
                reference=reference,
                reward_model=reward_model,
                cost_model=cost_model,
                reward_critic=unwrap(critics["reward_critic"]),
                cost_critic=unwrap(critics["cost_critic"]) if "cost_critic" in critics else None,
                temperature=cfg.temperature,
                score_clip=cfg.score_clip,
                missing_eos_penalty=cfg.missing_eos_penalty,
                eos_token_id=tokenizer.eos_token_id,
                cost_floor=cost_floor,
            )
            rollout, scores = gather_rollout(rollout, scores, ctx)  # every process: the whole batch
            lam = j_c = None
            if constraint is not None:
                assert scores.end_cost is not None
                lam, j_c = constraint.update(scores.end_cost.tolist())
            exp, metrics = assemble_experience(
                rollout,
                scores,
                kl_coef=cfg.kl_coef,
                gamma=cfg.gamma,
                gae_lambda=cfg.gae_lambda,
                lam=lam,
                shaping_lambda=shaping_lambda,
                whiten=cfg.whiten_advantages,
            )
            if j_c is not None:
                metrics["J_c"] = j_c
            for model in trained.values():
                model.train()
            share = cfg.batch_size // ctx.world_size
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(cfg.rollout_batch_size).tolist()  # the same on every process
                for start in range(0, len(order), cfg.batch_size):
                    minibatch = order[start : start + cfg.batch_size]
                    update = ppo_update(
                        exp,
                        minibatch[ctx.rank * share : (ctx.rank + 1) * share],
                        int(exp.response_mask[minibatch].sum()),
                        policy=policy,
                        critics=critics,
                        optimizers=optimizers,
                        grad_accum=cfg.grad_accum,
                        clip_eps=cfg.clip_eps,
                        value_clip_eps=cfg.value_clip_eps or None,
                        entropy_coef=cfg.entropy_coef,
                        max_grad_norm=cfg.max_grad_norm,
                        temperature=cfg.temperature,
                        ctx=ctx,
                    )
                    for scheduler in schedulers.values():
                        scheduler.step()
            metrics.update(update)
            metrics["seconds"] = time.perf_counter() - started
            step += 1
            logger.log(step, metrics)
            info = f"reward {metrics['reward']:+.2f}"
            if cost_model is not None:
                info += f"  cost {metrics['cost']:+.2f}"
            if lam is not None:
                info += f"  lambda {lam:.2f}"
            due = cfg.eval_every > 0 and step % cfg.eval_every == 0
            if eval_set and (
                due or step == cfg.max_steps
            ):  # every process: a sharded forward is a collective
                evaluation = judge_policy(
                    unwrap(policy),
                    tokenizer,
                    task,
                    eval_set,
                    reward=model_scores(reward_model),
                    cost=None if cost_model is None else model_scores(cost_model),
                    reference=reference,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                )
                info += log_evaluation(logger, step, evaluation)
            logger.advance(step, info)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps:
                extra = {"schedule_steps": schedule_steps}
                if constraint is not None:
                    extra["constraint"] = constraint.state_dict()
                run.checkpointer.save(step, models, saved_optimizers, schedulers, extra)
    save_final(policy, tokenizer, run.layout.final, ctx)
    if evaluation is not None and ctx.is_main:
        write_evaluation(run.layout.root, evaluation, step=step, prompt_source=task.eval_source)
    run.close()
    return 0


# ------------------------------------------------------------------------ commands
def train(cfg: PPOConfig) -> int:
    """`alignloop train ppo`: PPO-RLHF with a reward model."""
    return _run(cfg, "train ppo", "PPO")


def train_lagrangian(cfg: PPOLagConfig) -> int:
    """`alignloop train ppo-lag`: Safe RLHF, PPO-Lagrangian with reward and cost models."""
    multiplier = LagrangeMultiplier(
        cfg.lambda_method,
        init=cfg.lambda_init,
        lr=cfg.lambda_lr,
        max_value=cfg.lambda_max,
        delay=cfg.lambda_delay,
    )
    constraint = Constraint(multiplier, cfg.cost_limit, cfg.cost_window)
    return _run(
        cfg,
        "train ppo-lag",
        "PPO-Lagrangian",
        cost_model_path=cfg.cost_model,
        cost_floor=cfg.cost_floor,
        constraint=constraint,
    )


def train_shaping(cfg: ShapingConfig) -> int:
    """`alignloop train reward-shaping`: PPO on reward - lambda * cost, lambda fixed."""
    return _run(
        cfg,
        "train reward-shaping",
        "reward shaping",
        cost_model_path=cfg.cost_model,
        cost_floor=cfg.cost_floor,
        shaping_lambda=cfg.shaping_lambda,
    )
