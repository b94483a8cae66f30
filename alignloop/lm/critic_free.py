"""The loop of the critic-free trainers (`alignloop.lm.grpo`): GRPO, Dr. GRPO, DAPO, RLOO,
REINFORCE++, ReMax and Safe GRPO.

The methods differ only in the baseline each response's score is compared with: a method is an
`Advantage`, a function of the scored rollout built on `core.advantages`, that `run` calls
once per iteration. Each iteration:

1. **Rollout.** ``rollout_batch_size`` prompts, ``group_size`` responses sampled for each
   (`generation.generate`, KV-cached). Under torchrun each process samples its share of the
   rows with the noise of those rows of the whole batch, so the tokens do not depend on the
   split; ReMax also decodes each prompt greedily.
2. **Score.** Reward models and Python reward functions, summed with weights (`scoring`), minus
   ``missing_eos_penalty`` for a response cut without an end token; Safe GRPO also scores every
   response with its cost models and functions.
3. **KL.** The frozen reference (the starting policy) gives the sampled tokens' log-probs:
   ``kl_penalty="loss"`` adds ``kl_coef * k3`` per token to the loss (DeepSeekMath);
   ``"reward"`` subtracts ``kl_coef * sum_t k1_t`` from each score before the baseline (RLOO),
   or per token for REINFORCE++.
4. **Advantage.** GRPO: group mean (and std, unless Dr. GRPO); RLOO: leave-one-out mean;
   REINFORCE++: per-token returns whitened over the whole batch; ReMax: the greedy response's
   score; Safe GRPO: reward and cost standardised apart and mixed by lambda
   (`core.advantages.constrained_group_advantages`, arXiv 2602.05863; ``--advantage-mix naive``
   for the mix-then-standardise that paper shows to fail). DAPO's dynamic sampling drops the
   groups whose scores are all equal.
5. **Lambda** (Safe GRPO). `core.lagrange.LagrangeMultiplier` moves by ``J_c - cost_limit``,
   ``J_c`` the mean cost of the responses of the last ``cost_window`` iterations.
6. **Update.** ``rollout_epochs`` passes over the rollout in mini-batches of ``batch_size``
   responses (split in ``grad_accum`` micro-batches), the clipped surrogate normalised as
   ``--loss`` says (`core.losses.GRPO_LOSSES`).

Every process scores its share, then the shares are gathered: every process holds the whole
rollout, computes the same baselines and lambda, and walks the same mini-batches, taking its
share of each, with the losses normalised over the whole mini-batch. Two processes therefore
make the updates one process makes, up to float rounding, under ``--strategy ddp``, ``fsdp``
or ``fsdp-grad-op``, and the run stack checkpoints it exactly (lambda and its window too).

A step of the progress bar, the metrics and ``max_steps`` is one iteration. Tensors of a
rollout are aligned on response tokens, ``(N, R)`` with ``N`` = prompts x ``group_size``,
``response_mask`` True = response token; scores per group are ``(n, G)``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignloop.core.advantages import informative_groups, kl_k1, kl_penalised_scores
from alignloop.core.lagrange import LagrangeMultiplier, floored_cost
from alignloop.core.losses import GRPO_LOSSES, GRPOLoss, LossTotals
from alignloop.errors import UserError
from alignloop.lm.data import PromptCollator
from alignloop.lm.evaluate import decode_responses, judge_policy, log_evaluation, write_evaluation
from alignloop.lm.folders import check_inputs
from alignloop.lm.generation import Rollout, generate
from alignloop.lm.models import load_causal_lm, load_tokenizer, position_ids_from_mask, token_logprobs
from alignloop.lm.rollouts import gather_shares, sample_share
from alignloop.lm.scoring import Scorer, check_sources
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

LossName = Literal["grpo", "dr-grpo", "dapo"]

LOSS_IMPLIES: dict[str, dict[str, Any]] = {
    "grpo": {"scale_rewards": True, "clip_eps_high": None, "dynamic_sampling": False},
    "dr-grpo": {"scale_rewards": False, "clip_eps_high": None, "dynamic_sampling": False},
    "dapo": {"scale_rewards": True, "clip_eps_high": 0.28, "dynamic_sampling": True},
}
"""What each ``--loss`` sets unless the option is given (clip_eps_high None: the same as clip_eps)."""


@dataclass(frozen=True)
class CriticFreeConfig(TaskOptions, TrainCommon):
    """Options every critic-free trainer has."""

    output_dir: Path = Path("runs/grpo")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    policy: Path = Path("runs/sft/final")
    """Starting policy (a causal-LM folder with its tokenizer); also the frozen reference."""
    reward_model: tuple[Path, ...] = (Path("runs/reward/final"),)
    """Reward model folders (`alignloop train reward`), any number; `--reward-model` alone for none."""
    reward_function: tuple[str, ...] = ()
    """Python reward functions, module:function or file.py:function, called as
    f(prompts=[...], completions=[...]) and returning one float per completion."""
    reward_weights: tuple[float, ...] = ()
    """One weight per reward model, then per reward function (none = all 1); the reward is the sum."""
    max_steps: int = 60
    """Iterations (rollout + update)."""
    lr: float = 1e-4
    """Policy learning rate."""
    warmup_steps: int = 0
    """Warm-up optimiser steps."""
    scheduler: Literal["cosine", "linear", "constant"] = "constant"
    """Learning-rate schedule after warm-up."""
    rollout_batch_size: int = 32
    """Prompts per iteration, over all processes; each gets group_size responses."""
    group_size: int = 4
    """G: responses sampled for each prompt."""
    batch_size: int = 128
    """Responses per optimiser step, over all processes: a multiple of group_size that divides
    rollout_batch_size x group_size."""
    rollout_epochs: int = 1
    """Passes over each rollout (1: on-policy, the ratio is 1 and the clip never acts)."""
    max_new_tokens: int = 16
    """Longest response in tokens (the end-of-sequence token included)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_k: int = 0
    """Top-k sampling of the rollouts (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1 = off)."""
    loss: LossName = "grpo"
    """Loss normalisation: grpo (mean of each response's token mean), dr-grpo (token sum / constant,
    and no std scaling), dapo (token mean over the batch, clip-higher and dynamic sampling)."""
    clip_eps: float = 0.2
    """Ratio clip below: [1 - clip_eps, 1 + clip_eps_high]."""
    clip_eps_high: float | None = None
    """Ratio clip above (DAPO's clip-higher); None = clip_eps, or 0.28 with --loss dapo."""
    dynamic_sampling: bool | None = None
    """Drop groups whose scores are all equal (DAPO); None = on with --loss dapo only."""
    kl_coef: float = 0.04
    """beta: weight of the KL to the reference (0 = none, and no reference model is loaded)."""
    kl_penalty: Literal["loss", "reward"] = "loss"
    """Where the KL goes: a k3 term of the loss, or subtracted from the reward (k1)."""
    score_clip: float = 10.0
    """Model scores are clipped to [-score_clip, score_clip]."""
    missing_eos_penalty: float = 2.0
    """Subtracted from the reward of a response cut at max_new_tokens without an end token."""
    eval_every: int = 10
    """Evaluate every this many iterations (and at the end)."""
    save_every: int = 20
    """Save a checkpoint every this many iterations (and at the end)."""


# ------------------------------------------------------------------------ what a method sees
@dataclass
class Scored:
    """A scored rollout: what a method's baseline is computed from."""

    reward: Tensor  # (n, G) summed weighted reward of each response, no KL
    kl: Tensor  # (N, R) k1 = log pi_old - log ref per response token (0 without a reference)
    mask: Tensor  # (N, R) True = response token
    kl_in_reward: float  # beta when the KL goes into the reward, else 0
    cost: Tensor | None = None  # (n, G) Safe GRPO
    greedy_reward: Tensor | None = None  # (n,) ReMax
    lam: float = 0.0  # the current Lagrange multiplier (Safe GRPO)

    def sequence_reward(self) -> Tensor:
        """``(n, G)`` rewards with the KL penalty of each whole response when it is in the reward."""
        flat = kl_penalised_scores(self.reward.flatten(), self.kl, self.mask, self.kl_in_reward)  # (N,)
        return flat.view_as(self.reward)


Advantage = Callable[[Scored], Tensor]
"""A method's baseline: the scored rollout -> advantages (N,) per response or (N, R) per token."""


@dataclass(frozen=True)
class Constraint:
    """Safe GRPO's cost side, from `GRPOLagConfig`."""

    models: tuple[Path, ...]
    functions: tuple[str, ...]
    weights: tuple[float, ...]
    cost_limit: float
    lagrange: dict[str, Any]  # LagrangeMultiplier arguments
    window: int
    violation_threshold: float | None  # None: the summed cost; else 1[summed cost > threshold]
    floor: float | None = None  # the summed cost is max(cost, floor) (mean cost only)


# ------------------------------------------------------------------------ the loop
@dataclass
class Samples:
    """One rollout with what the update needs, aligned on response tokens ``(N, R)``."""

    sequences: Tensor  # (N, P + R)
    attention_mask: Tensor  # (N, P + R)
    train_mask: Tensor  # (N, R) True = a response token of a kept group
    prompt_length: int
    old_logprobs: Tensor  # (N, R)
    ref_logprobs: Tensor | None  # (N, R)
    advantages: Tensor  # (N,) or (N, R)

    def select(self, rows: list[int]) -> Samples:
        tensors = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]
        return replace(self, **{name: getattr(self, name)[rows] for name in tensors})


def _check_shapes(cfg: CriticFreeConfig, ctx: DistributedContext, minimum_group: int) -> None:
    group, rollout = cfg.group_size, cfg.rollout_batch_size * cfg.group_size
    problems = []
    if group < minimum_group:
        problems.append(f"--group-size ({group}) must be at least {minimum_group} for this method")
    if rollout % cfg.batch_size:
        problems.append(
            f"--batch-size ({cfg.batch_size}) must divide --rollout-batch-size x --group-size ({rollout})"
        )
    if cfg.rollout_batch_size % ctx.world_size:
        problems.append(
            f"--rollout-batch-size ({cfg.rollout_batch_size}) must split evenly over {ctx.world_size} processes"
        )
    if problems:
        raise UserError("; ".join(problems))


@torch.no_grad()
def _response_logprobs(model: nn.Module, rollout: Rollout, temperature: float) -> Tensor:
    """``(N, R)`` log-probs of the sampled tokens under ``model`` at the sampling temperature."""
    P = rollout.prompt_length
    logits = model(
        input_ids=rollout.sequences,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids_from_mask(rollout.attention_mask),
    ).logits[:, P - 1 : -1]
    return token_logprobs(logits / temperature, rollout.sequences[:, P:])


def implied(cfg: CriticFreeConfig, option: str, value: Any) -> Any:
    """``value``, or what ``--loss`` implies for ``option`` when it is None (`LOSS_IMPLIES`)."""
    return LOSS_IMPLIES[cfg.loss][option] if value is None else value


def run(
    cfg: CriticFreeConfig,
    command: str,
    *,
    advantage: Advantage,
    description: str,
    minimum_group: int = 1,
    greedy_baseline: bool = False,
    constraint: Constraint | None = None,
) -> int:
    """The loop of the module docstring for one method (its `advantage`); ReMax asks for the
    `greedy_baseline`, Safe GRPO passes its `constraint`."""
    check_inputs(
        cfg.output_dir,
        files={"--prompts": cfg.prompts, "--eval-prompts": cfg.eval_prompts},
        models={"--policy": (cfg.policy, "causal-lm")},
    )
    check_sources(cfg.reward_model, cfg.reward_function, "reward")
    if constraint is not None:
        check_sources(constraint.models, constraint.functions, "cost")
        if constraint.floor is not None and (
            constraint.violation_threshold is not None or not math.isfinite(constraint.floor)
        ):
            raise UserError(
                f"--cost-floor {constraint.floor}: give a finite floor, and only without --violation-threshold "
                "(an indicator cost has nothing below it to raise)"
            )
    run = start_run(cfg, command)
    ctx = run.ctx
    _check_shapes(cfg, ctx, minimum_group)
    clip_eps_high = implied(cfg, "clip_eps_high", cfg.clip_eps_high)
    if clip_eps_high is None:
        clip_eps_high = cfg.clip_eps
    dynamic_sampling = implied(cfg, "dynamic_sampling", cfg.dynamic_sampling)
    if dynamic_sampling and cfg.group_size < 2:
        raise UserError(
            f"dynamic sampling compares the responses to a prompt: it needs --group-size >= 2, not "
            f"{cfg.group_size}; raise --group-size or pass --dynamic-sampling False"
        )
    kl_in_loss = cfg.kl_penalty == "loss"
    loss_fn: GRPOLoss = GRPO_LOSSES[cfg.loss]
    task = task_from_options(cfg, cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    prompts = train_prompts(task, cfg.rollout_batch_size)
    collate = PromptCollator(tokenizer)

    policy: nn.Module = load_causal_lm(cfg.policy)
    reference = None
    if cfg.kl_coef > 0:  # the full starting model, also under LoRA
        reference = load_causal_lm(cfg.policy).eval().requires_grad_(False).to(ctx.device)
    score = dict(tokenizer=tokenizer, device=ctx.device, score_clip=cfg.score_clip)
    rewards = Scorer.load(cfg.reward_model, cfg.reward_function, cfg.reward_weights, option="reward", **score)
    costs = lagrange = None
    cost_window: deque[float] = deque(maxlen=constraint.window if constraint else 1)
    if constraint is not None:
        costs = Scorer.load(
            constraint.models, constraint.functions, constraint.weights, option="cost", **score
        )
        lagrange = LagrangeMultiplier(**constraint.lagrange)
    policy = prepare_model(policy, run, cfg)

    group = cfg.group_size
    n_rows = cfg.rollout_batch_size * group  # N: responses per iteration, over all processes
    steps_per_rollout = n_rows // cfg.batch_size
    schedule_steps = cfg.total_steps or cfg.max_steps
    optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(
        optimizer, cfg.scheduler, cfg.warmup_steps, schedule_steps * cfg.rollout_epochs * steps_per_rollout
    )
    models, optimizers = checkpoint_states({"policy": policy}, {"policy": (policy, optimizer)})
    step, extra = run.restore_checked(
        models,
        optimizers,
        {"policy": scheduler},
        schedule_steps=schedule_steps,
        explicit=cfg.total_steps > 0,
        constant=cfg.scheduler == "constant",
    )
    if run.resume and lagrange is not None:
        lagrange.load_state_dict(extra["lagrange"])
        cost_window.extend(extra["cost_window"])
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
    share = n_rows // ctx.world_size
    mine = slice(ctx.rank * share, (ctx.rank + 1) * share)  # this process's rows of a rollout
    with logger:
        while step < cfg.max_steps:
            started = time.perf_counter()
            rows = batch_indices(
                len(prompts), cfg.rollout_batch_size, seed=cfg.seed, epoch=step // batches_per_epoch
            )[step % batches_per_epoch]
            texts = [prompts[i] for i in rows for _ in range(group)]  # (N,) G copies of each prompt
            batch = collate(texts)  # the whole rollout: the same padding on every process
            policy.eval()
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
            completions = decode_responses(tokenizer, rollout.responses, rollout.response_mask)
            reward, parts = _score(
                rewards, rollout, texts[mine], completions, tokenizer, cfg.missing_eos_penalty
            )
            metrics: dict[str, float] = {f"reward/{k}": ctx.all_reduce_mean(v) for k, v in parts.items()}
            ref_logprobs = None
            if reference is not None:
                ref_logprobs = _response_logprobs(reference, rollout, cfg.temperature)  # (n, R)
            summed = None
            if costs is not None:
                summed, cost_parts = _score(costs, rollout, texts[mine], completions, tokenizer, 0.0)
                metrics.update({f"cost/{k}": ctx.all_reduce_mean(v) for k, v in cost_parts.items()})
            greedy = None
            if greedy_baseline:
                greedy = _greedy_reward(unwrap(policy), texts[mine][::group], rewards, tokenizer, cfg, ctx)
            # every process: the whole rollout, so the baselines, lambda and mini-batches are one process's
            rollout, (reward, ref_logprobs, summed, greedy) = gather_shares(
                ctx, rollout, reward, ref_logprobs, summed, greedy
            )
            mask = rollout.response_mask  # (N, R) True = response token
            kl = torch.zeros_like(rollout.logprobs)  # (N, R)
            if ref_logprobs is not None:
                kl = kl_k1(rollout.logprobs, ref_logprobs) * mask
                metrics["kl"] = kl.sum(-1).mean().item()
            metrics["reward"] = reward.mean().item()
            metrics["response_tokens"] = mask.sum(-1).float().mean().item()
            scored = Scored(
                reward=reward.view(-1, group),
                kl=kl,
                mask=mask,
                kl_in_reward=0.0 if kl_in_loss else cfg.kl_coef,
            )
            if greedy is not None:
                scored.greedy_reward = greedy
                metrics["greedy_reward"] = greedy.mean().item()
            if summed is not None and lagrange is not None and constraint is not None:
                cost = floored_cost(summed, constraint.floor)  # (N,) what the constraint holds down
                if constraint.violation_threshold is not None:
                    cost = (summed > constraint.violation_threshold).to(summed.dtype)  # 1 = a violation
                scored.cost = cost.view(-1, group)
                cost_window.append(cost.mean().item())
                j_c = sum(cost_window) / len(cost_window)
                scored.lam = lagrange.update(j_c, constraint.cost_limit)
                metrics.update({"cost": cost_window[-1], "J_c": j_c, "lambda": scored.lam})
                metrics["cost_score"] = summed.mean().item()
                metrics["unsafe_share"] = (summed > 0).float().mean().item()
            keep = torch.ones(
                cfg.rollout_batch_size, dtype=torch.bool, device=mask.device
            )  # (n,) groups kept
            if dynamic_sampling:
                keep = informative_groups(scored.reward)
                if scored.cost is not None:
                    keep |= informative_groups(scored.cost)
                metrics["kept_groups"] = keep.float().mean().item()
            advantages = advantage(scored)  # (N,) or (N, R)
            metrics["advantage_abs"] = advantages.abs().mean().item()
            samples = Samples(
                sequences=rollout.sequences,
                attention_mask=rollout.attention_mask,
                train_mask=mask & keep.repeat_interleave(group)[:, None],
                prompt_length=rollout.prompt_length,
                old_logprobs=rollout.logprobs,
                ref_logprobs=ref_logprobs if kl_in_loss else None,
                advantages=advantages,
            )
            policy.train()
            per_process = cfg.batch_size // ctx.world_size
            for _ in range(cfg.rollout_epochs):
                order = torch.randperm(n_rows).tolist()  # the same on every process
                for start in range(0, n_rows, cfg.batch_size):
                    minibatch = order[start : start + cfg.batch_size]
                    update = _policy_step(
                        samples,
                        minibatch,
                        minibatch[ctx.rank * per_process : (ctx.rank + 1) * per_process],
                        policy=policy,
                        optimizer=optimizer,
                        loss_fn=loss_fn,
                        clip_eps_low=cfg.clip_eps,
                        clip_eps_high=clip_eps_high,
                        kl_coef=cfg.kl_coef if kl_in_loss else 0.0,
                        max_length=cfg.max_new_tokens,
                        grad_accum=cfg.grad_accum,
                        max_grad_norm=cfg.max_grad_norm,
                        temperature=cfg.temperature,
                        ctx=ctx,
                    )
                    scheduler.step()
            metrics.update(update)
            metrics["seconds"] = time.perf_counter() - started
            step += 1
            logger.log(step, metrics)
            info = f"reward {metrics['reward']:+.2f}"
            if constraint is not None:
                info += f"  cost {metrics['cost']:+.2f}  lambda {metrics['lambda']:.2f}"
            due = cfg.eval_every > 0 and step % cfg.eval_every == 0
            if eval_set and (
                due or step == cfg.max_steps
            ):  # every process: a sharded forward is a collective
                evaluation = judge_policy(
                    unwrap(policy),
                    tokenizer,
                    task,
                    eval_set,
                    reward=lambda *batch: rewards(*batch)[0],
                    cost=None if costs is None else (lambda *batch: costs(*batch)[0]),
                    reference=reference,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                )
                info += log_evaluation(logger, step, evaluation)
            logger.advance(step, info)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps:
                extra = {"schedule_steps": schedule_steps}
                if lagrange is not None:
                    extra |= {"lagrange": lagrange.state_dict(), "cost_window": list(cost_window)}
                run.checkpointer.save(step, models, optimizers, {"policy": scheduler}, extra)
    save_final(policy, tokenizer, run.layout.final, ctx)
    if evaluation is not None and ctx.is_main:
        write_evaluation(run.layout.root, evaluation, step=step, prompt_source=task.eval_source)
    run.close()
    return 0


def _score(
    scorer: Scorer,
    rollout: Rollout,
    prompts: list[str],
    completions: list[str],
    tokenizer: Any,
    missing_eos_penalty: float,
) -> tuple[Tensor, dict[str, float]]:
    """``(n,)`` scores of a rollout's responses, minus the penalty for a response without an end."""
    scores, parts = scorer(rollout.sequences, rollout.attention_mask, prompts, completions)
    if missing_eos_penalty:
        ended = (rollout.responses == tokenizer.eos_token_id).any(-1)  # (n,) True = has an end token
        scores = scores - missing_eos_penalty * (~ended).to(scores.dtype)
    return scores, parts


def _greedy_reward(
    policy: nn.Module,
    prompts: list[str],
    rewards: Scorer,
    tokenizer: Any,
    cfg: CriticFreeConfig,
    ctx: DistributedContext,
) -> Tensor:
    """``(n,)`` reward of each prompt's greedy response (ReMax's baseline)."""
    batch = PromptCollator(tokenizer)(prompts)
    greedy = generate(
        policy,
        batch["input_ids"].to(ctx.device),
        batch["attention_mask"].to(ctx.device),
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        temperature=cfg.temperature,
        greedy=True,
        all_ended=(lambda ended: not ctx.any(not ended)) if ctx.distributed else None,
    )
    completions = decode_responses(tokenizer, greedy.responses, greedy.response_mask)
    reward, _ = _score(rewards, greedy, prompts, completions, tokenizer, cfg.missing_eos_penalty)
    return reward


def _policy_step(
    samples: Samples,
    minibatch: list[int],
    rows: list[int],
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: GRPOLoss,
    clip_eps_low: float,
    clip_eps_high: float,
    kl_coef: float,
    max_length: int,
    grad_accum: int,
    max_grad_norm: float,
    temperature: float,
    ctx: DistributedContext,
) -> dict[str, float]:
    """One optimiser step on a mini-batch (``minibatch``: its rows of the rollout; ``rows``: this
    process's share of them), the loss normalised by the counts of the whole mini-batch."""
    kept = samples.train_mask[minibatch]  # (b, R) over all processes
    # DDP and FSDP average the processes' gradients: each divides by its share of the totals
    totals = LossTotals(
        sequences=float(kept.any(-1).sum()) / ctx.world_size,
        tokens=float(kept.sum()) / ctx.world_size,
        max_length=max_length,
    )
    optimizer.zero_grad(set_to_none=True)
    pieces = micro_batches(rows, grad_accum)
    summed: dict[str, float] = {}
    P = samples.prompt_length
    for i, piece in enumerate(pieces):
        mb = samples.select(piece)
        with gradient_sync([policy], ctx, sync=i == len(pieces) - 1):
            logits = policy(
                input_ids=mb.sequences,
                attention_mask=mb.attention_mask,
                position_ids=position_ids_from_mask(mb.attention_mask),
            ).logits[:, P - 1 : -1]  # (b, R, V): position t predicts token t + 1
            logprobs = token_logprobs(logits / temperature, mb.sequences[:, P:])  # (b, R)
            loss, loss_metrics = loss_fn(
                logprobs,
                mb.old_logprobs,
                mb.advantages,
                mb.train_mask,
                clip_eps_low=clip_eps_low,
                clip_eps_high=clip_eps_high,
                ref_logprobs=mb.ref_logprobs,
                kl_coef=kl_coef,
                totals=totals,
            )
            loss.backward()
        summed["policy_loss"] = summed.get("policy_loss", 0.0) + float(loss.detach())
        for k, v in loss_metrics.items():
            summed[k] = summed.get(k, 0.0) + float(v) / len(pieces)
    grad_norm = clip_grad_norm(policy, max_grad_norm)
    optimizer.step()
    names = list(summed)
    reduced = ctx.all_reduce_sum(torch.tensor([summed[k] for k in names], dtype=torch.float64))
    out = dict(zip(names, reduced.tolist(), strict=True))
    out |= {k: v / ctx.world_size for k, v in out.items() if k != "policy_loss"}  # the rest are means
    return {**out, "grad_norm": grad_norm}
