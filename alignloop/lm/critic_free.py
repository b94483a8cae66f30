"""The loop of the critic-free trainers (`alignloop.lm.grpo`): GRPO, Dr. GRPO, DAPO, RLOO,
REINFORCE++, ReMax and Safe GRPO.

The methods differ only in the baseline each response's score is compared with: a method is an
`Advantage`, a function of the scored rollout built on `core.advantages`, that `run` calls
once per iteration. Each iteration:

1. **Rollout.** ``rollout_batch_size`` prompts, ``group_size`` responses sampled for each
   (`generation.generate`, KV-cached; every row has its own random generator, seeded by the
   seed, the iteration and the row's place in the global batch, so the samples do not depend on
   how processes share the batch). ReMax also decodes each prompt greedily.
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

A step of the progress bar, the metrics and ``max_steps`` is one iteration. Tensors of a
rollout are aligned on response tokens, ``(N, R)`` with ``N`` = prompts x ``group_size``,
``response_mask`` True = response token; scores per group are ``(n, G)``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from alignloop.core.advantages import informative_groups, kl_k1, kl_penalised_scores
from alignloop.core.lagrange import LagrangeMultiplier
from alignloop.core.losses import GRPO_LOSSES, GRPOLoss, LossTotals
from alignloop.errors import UserError
from alignloop.lm.data import PromptCollator
from alignloop.lm.evaluate import decode_responses
from alignloop.lm.generation import Rollout, generate
from alignloop.lm.models import (
    apply_lora,
    load_causal_lm,
    load_tokenizer,
    merge_lora,
    position_ids_from_mask,
    token_logprobs,
)
from alignloop.lm.ppo import _load_prompts, _sync_context
from alignloop.lm.scoring import Scorer
from alignloop.lm.training import (
    Checkpointer,
    DistributedContext,
    MetricsLogger,
    TrainCommon,
    batch_indices,
    clip_grad_norm,
    init_distributed,
    make_optimizer,
    make_scheduler,
    micro_batches,
    seed_everything,
    set_threads,
    unwrap,
)

LossName = Literal["grpo", "dr-grpo", "dapo"]

LOSS_IMPLIES: dict[str, dict[str, Any]] = {
    "grpo": {"scale_rewards": True, "clip_eps_high": None, "dynamic_sampling": False},
    "dr-grpo": {"scale_rewards": False, "clip_eps_high": None, "dynamic_sampling": False},
    "dapo": {"scale_rewards": True, "clip_eps_high": 0.28, "dynamic_sampling": True},
}
"""What each ``--loss`` sets unless the option is given (clip_eps_high None: the same as clip_eps)."""


@dataclass(frozen=True)
class CriticFreeConfig(TrainCommon):
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
    prompts: Path | None = None
    """Prompt file (any feedback format; each record's prompt). None = the toy world's train prompts."""
    toyworld_seed: int = 0
    """Toy world seed (prompts when no file is given, and the ground-truth evaluation)."""
    toy_prompts: int = 2048
    """Number of toy-world train prompts drawn when no prompt file is given."""
    eval_prompts: int = 128
    """Held-out toy-world prompts judged every eval_every steps (0 = no evaluation)."""
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
    all_reduce_sum: Callable[[Tensor], Tensor] = lambda t: t  # sums over processes

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
        problems.append(f"group_size ({group}) must be at least {minimum_group} for this method")
    if cfg.batch_size % group or rollout % cfg.batch_size:
        problems.append(
            f"batch_size ({cfg.batch_size}) must be a multiple of group_size ({group}) and divide "
            f"rollout_batch_size x group_size ({rollout})"
        )
    elif (cfg.batch_size // group) % ctx.world_size:
        problems.append(
            f"each optimiser step's {cfg.batch_size // group} prompts must split evenly over {ctx.world_size} processes"
        )
    if problems:
        raise UserError("; ".join(problems))


def _local_prompts(
    global_batch: list[int], per_step: int, rank: int, world_size: int
) -> list[tuple[int, int]]:
    """This process's (place in the global batch, prompt index) pairs: an equal share of every
    optimiser step's prompts, so each mini-batch is the same set of groups on any number of processes."""
    share = per_step // world_size
    return [
        (start + rank * share + j, global_batch[start + rank * share + j])
        for start in range(0, len(global_batch), per_step)
        for j in range(share)
    ]


def _row_generators(
    seed: int, step: int, places: list[int], group: int, device: torch.device
) -> list[torch.Generator]:
    """One generator per response, seeded by (seed, iteration, place of its prompt, sample)."""
    out = []
    for place in places:
        for g in range(group):
            state = int(np.random.SeedSequence([seed, step, place, g]).generate_state(1, np.uint64)[0] >> 1)
            out.append(torch.Generator(device=device).manual_seed(state))
    return out


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
    *,
    advantage: Advantage,
    description: str,
    minimum_group: int = 1,
    greedy_baseline: bool = False,
    constraint: Constraint | None = None,
) -> int:
    from alignloop.lm.evaluate import evaluate_policy
    from alignloop.lm.toyworld import ToyWorld

    ctx = init_distributed()
    set_threads(cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    _check_shapes(cfg, ctx, minimum_group)
    clip_eps_high = implied(cfg, "clip_eps_high", cfg.clip_eps_high)
    if clip_eps_high is None:
        clip_eps_high = cfg.clip_eps
    dynamic_sampling = implied(cfg, "dynamic_sampling", cfg.dynamic_sampling)
    if dynamic_sampling and cfg.group_size < 2:
        raise UserError(
            f"dynamic sampling compares the responses to a prompt: it needs group_size >= 2, not "
            f"{cfg.group_size}; raise --group-size or pass --dynamic-sampling False"
        )
    kl_in_loss = cfg.kl_penalty == "loss"
    loss_fn: GRPOLoss = GRPO_LOSSES[cfg.loss]
    world = ToyWorld(cfg.toyworld_seed)
    tokenizer = load_tokenizer(cfg.policy)
    prompts = _load_prompts(cfg.prompts, world, cfg.toy_prompts, cfg.seed)
    if len(prompts) < cfg.rollout_batch_size:
        raise UserError(f"{len(prompts)} prompts is fewer than rollout_batch_size={cfg.rollout_batch_size}")
    collate = PromptCollator(tokenizer)

    policy = load_causal_lm(cfg.policy)
    reference = (
        load_causal_lm(cfg.policy).eval().requires_grad_(False).to(ctx.device) if cfg.kl_coef > 0 else None
    )
    if cfg.lora_r > 0:  # adapters on the policy only; the reference stays the full starting model
        policy = apply_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    score = dict(tokenizer=tokenizer, device=ctx.device, score_clip=cfg.score_clip)
    rewards = Scorer.load(cfg.reward_model, cfg.reward_function, cfg.reward_weights, option="reward", **score)
    if rewards.empty:
        raise UserError("no reward: pass --reward-model DIR or --reward-function module:function")
    costs = lagrange = None
    cost_window: deque[float] = deque(maxlen=constraint.window if constraint else 1)
    if constraint is not None:
        costs = Scorer.load(
            constraint.models, constraint.functions, constraint.weights, option="cost", **score
        )
        if costs.empty:
            raise UserError("no cost: pass --cost-model DIR or --cost-function module:function")
        lagrange = LagrangeMultiplier(**constraint.lagrange)
    policy = ctx.wrap(policy).eval()  # eval: no dropout in rollouts or updates

    group = cfg.group_size
    steps_per_rollout = cfg.rollout_batch_size * group // cfg.batch_size
    optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    schedule_steps = (cfg.total_steps or cfg.max_steps) * cfg.rollout_epochs * steps_per_rollout
    scheduler = make_scheduler(optimizer, cfg.scheduler, cfg.warmup_steps, schedule_steps)
    checkpointer = Checkpointer(cfg.output_dir, keep=cfg.keep_checkpoints, ctx=ctx)
    step = 0
    if cfg.resume and (latest := checkpointer.latest()) is not None:
        step, extra = checkpointer.load(
            latest, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}
        )
        if lagrange is not None:
            lagrange.load_state_dict(extra["lagrange"])
            cost_window.extend(extra["cost_window"])
    eval_set = world.prompts("eval", cfg.eval_prompts, seed=cfg.seed) if cfg.eval_prompts else []
    logger = MetricsLogger(
        cfg.output_dir,
        total_steps=cfg.max_steps,
        log_dir=cfg.log_dir,
        enabled=ctx.is_main,
        progress=cfg.progress,
        resume_step=step if cfg.resume else None,
        description=description,
    )
    batches_per_epoch = len(prompts) // cfg.rollout_batch_size
    prompts_per_step = cfg.batch_size // group
    with logger:
        while step < cfg.max_steps:
            started = time.perf_counter()
            global_batch = batch_indices(
                len(prompts), cfg.rollout_batch_size, seed=cfg.seed, epoch=step // batches_per_epoch
            )[step % batches_per_epoch]
            local = _local_prompts(global_batch, prompts_per_step, ctx.rank, ctx.world_size)
            texts = [prompts[i] for _, i in local]
            batch = collate([t for t in texts for _ in range(group)])  # (N, P): G copies of each prompt
            rollout = generate(
                unwrap(policy),
                batch["input_ids"].to(ctx.device),
                batch["attention_mask"].to(ctx.device),
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                row_generators=_row_generators(cfg.seed, step, [p for p, _ in local], group, ctx.device),
            )
            mask = rollout.response_mask  # (N, R) True = response token
            completions = decode_responses(tokenizer, rollout.responses, mask)
            prompt_texts = [t for t in texts for _ in range(group)]
            reward, parts = _score(
                rewards, rollout, prompt_texts, completions, tokenizer, cfg.missing_eos_penalty
            )
            metrics: dict[str, float] = {
                "reward": ctx.all_reduce_mean(reward.mean().item()),
                **{f"reward/{k}": ctx.all_reduce_mean(v) for k, v in parts.items()},
                "response_tokens": ctx.all_reduce_mean(mask.sum(-1).float().mean().item()),
            }
            ref_logprobs = None
            kl = torch.zeros_like(rollout.logprobs)  # (N, R)
            if reference is not None:
                ref_logprobs = _response_logprobs(reference, rollout, cfg.temperature)  # (N, R)
                kl = kl_k1(rollout.logprobs, ref_logprobs) * mask
                metrics["kl"] = ctx.all_reduce_mean(kl.sum(-1).mean().item())
            scored = Scored(
                reward=reward.view(-1, group),
                kl=kl,
                mask=mask,
                kl_in_reward=0.0 if kl_in_loss else cfg.kl_coef,
                all_reduce_sum=ctx.all_reduce_sum,
            )
            if greedy_baseline:
                scored.greedy_reward = _greedy_reward(
                    unwrap(policy), collate(texts), texts, rewards, tokenizer, cfg, ctx.device
                )
                metrics["greedy_reward"] = ctx.all_reduce_mean(scored.greedy_reward.mean().item())
            keep = torch.ones(len(texts), dtype=torch.bool, device=mask.device)  # (n,) groups kept
            if costs is not None and lagrange is not None and constraint is not None:
                summed, cost_parts = _score(costs, rollout, prompt_texts, completions, tokenizer, 0.0)
                cost = summed  # (N,) what the constraint holds down
                if constraint.violation_threshold is not None:
                    cost = (summed > constraint.violation_threshold).to(summed.dtype)  # 1 = a violation
                scored.cost = cost.view(-1, group)
                cost_window.append(ctx.all_reduce_mean(cost.mean().item()))
                j_c = sum(cost_window) / len(cost_window)
                scored.lam = lagrange.update(j_c, constraint.cost_limit)
                metrics.update({"cost": cost_window[-1], "J_c": j_c, "lambda": scored.lam})
                metrics["cost_score"] = ctx.all_reduce_mean(summed.mean().item())
                metrics.update({f"cost/{k}": ctx.all_reduce_mean(v) for k, v in cost_parts.items()})
                metrics["unsafe_share"] = ctx.all_reduce_mean((summed > 0).float().mean().item())
            if dynamic_sampling:
                keep = informative_groups(scored.reward)
                if scored.cost is not None:
                    keep |= informative_groups(scored.cost)
                metrics["kept_groups"] = ctx.all_reduce_mean(keep.float().mean().item())
            advantages = advantage(scored)  # (N,) or (N, R)
            metrics["advantage_abs"] = ctx.all_reduce_mean(advantages.abs().mean().item())
            samples = Samples(
                sequences=rollout.sequences,
                attention_mask=rollout.attention_mask,
                train_mask=mask & keep.repeat_interleave(group)[:, None],
                prompt_length=rollout.prompt_length,
                old_logprobs=rollout.logprobs,
                ref_logprobs=ref_logprobs if kl_in_loss else None,
                advantages=advantages,
            )
            rows_per_step = prompts_per_step // ctx.world_size * group
            for epoch in range(cfg.rollout_epochs):
                order = torch.randperm(
                    steps_per_rollout,
                    generator=torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + epoch),
                ).tolist()  # the same on every process
                for k in order:
                    part = samples.select(list(range(k * rows_per_step, (k + 1) * rows_per_step)))
                    update = _policy_step(
                        part,
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
            if eval_set and (due or step == cfg.max_steps) and ctx.is_main:
                judged = evaluate_policy(
                    unwrap(policy),
                    tokenizer,
                    world,
                    eval_set,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                )
                logger.log(step, judged, split="eval")
                info += f"  help {judged['helpfulness']:.2f}  unsafe {judged['unsafe_rate']:.2f}"
            logger.advance(step, info)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps:
                extra = {
                    "lagrange": lagrange.state_dict() if lagrange else None,
                    "cost_window": list(cost_window),
                }
                checkpointer.save(
                    step, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}, extra
                )
    if ctx.is_main:
        final = Path(cfg.output_dir) / "final"
        final_policy: Any = merge_lora(unwrap(policy))
        final_policy.save_pretrained(str(final))
        tokenizer.save_pretrained(str(final))
    ctx.barrier()
    ctx.close()
    return 0


def _score(
    scorer: Scorer,
    rollout: Rollout,
    prompts: list[str],
    completions: list[str],
    tokenizer: Any,
    missing_eos_penalty: float,
) -> tuple[Tensor, dict[str, float]]:
    """``(N,)`` scores of a rollout's responses, minus the penalty for a response without an end."""
    scores, parts = scorer(rollout.sequences, rollout.attention_mask, prompts, completions)
    if missing_eos_penalty:
        ended = (rollout.responses == tokenizer.eos_token_id).any(-1)  # (N,) True = has an end token
        scores = scores - missing_eos_penalty * (~ended).to(scores.dtype)
    return scores, parts


def _greedy_reward(
    policy: nn.Module,
    batch: dict[str, Tensor],
    texts: list[str],
    rewards: Scorer,
    tokenizer: Any,
    cfg: CriticFreeConfig,
    device: torch.device,
) -> Tensor:
    """``(n,)`` reward of each prompt's greedy response (ReMax's baseline)."""
    greedy = generate(
        policy,
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        temperature=cfg.temperature,
        greedy=True,
    )
    completions = decode_responses(tokenizer, greedy.responses, greedy.response_mask)
    reward, _ = _score(rewards, greedy, texts, completions, tokenizer, cfg.missing_eos_penalty)
    return reward


def _policy_step(
    part: Samples,
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
    """One optimiser step on a mini-batch, normalised by its totals over every process."""
    counted = ctx.all_reduce_sum(
        torch.stack([part.train_mask.any(-1).sum(), part.train_mask.sum()]).double().to(ctx.device)
    )  # [sequences, tokens] over all processes
    totals = LossTotals(
        sequences=float(counted[0]) / ctx.world_size,
        tokens=float(counted[1]) / ctx.world_size,
        max_length=max_length,
    )
    optimizer.zero_grad(set_to_none=True)
    pieces = micro_batches(list(range(part.sequences.shape[0])), grad_accum)
    summed: dict[str, float] = {}
    P = part.prompt_length
    for i, rows in enumerate(pieces):
        mb = part.select(rows)
        with _sync_context([policy], ctx, sync=i == len(pieces) - 1):
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
    summed["grad_norm"] = clip_grad_norm(policy, max_grad_norm)
    optimizer.step()
    return {k: ctx.all_reduce_mean(v) for k, v in summed.items()}
