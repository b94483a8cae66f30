"""PPO-RLHF, Safe RLHF (PPO-Lagrangian) and the fixed-lambda reward-shaping baseline.

One loop serves the three commands; they differ only in what the policy is rewarded for.
Each iteration:

1. **Rollout.** Sample a response to each prompt of a batch (`generation.generate`, KV-cached,
   temperature 1), keep the sampled tokens' log-probs ``pi_old``.
2. **Score.** The frozen reference (the starting policy) gives ``ref_logprobs``; the reward
   model gives one end score per response, the cost model (Safe RLHF, shaping) one end cost;
   the critics give per-token values.
3. **Per-token rewards.** With the KL estimate ``kl_t = log pi_old - log ref`` on each
   response token, the reward stream is ``-beta * kl_t`` plus the end reward at the last
   response token; the cost stream (Safe RLHF) is ``+beta * kl_t`` plus the end cost there
   (Dai et al. 2023, "Safe RLHF", the PPO-Lagrangian trainer). Shaping puts
   ``reward - lambda * cost`` (fixed lambda) at the last token of the reward stream.
4. **Advantages.** GAE (`core.advantages.gae`) on each stream with its own critic; Safe RLHF
   mixes them as ``(A_r - lambda A_c) / (1 + lambda)`` (`core.lagrange.lagrangian_advantage`).
   The advantage the policy ascends is then whitened (``whiten_advantages``).
5. **Lambda.** Safe RLHF moves lambda (`core.lagrange.LagrangeMultiplier`, log space) by
   ``J_c - cost_limit``, ``J_c`` the mean end cost over a window of recent responses,
   before the policy update.
6. **Update.** ``ppo_epochs`` passes over the rollout in mini-batches (``batch_size``, split
   in ``grad_accum`` micro-batches): the clipped surrogate (`core.losses.ppo_policy_loss`)
   for the policy, the clipped value loss (`core.losses.value_loss`) for each critic.

Critics are score models initialised from the reward and cost models (their per-token
scores). A step of the progress bar, the metrics and ``max_steps`` is one iteration.
Tensors of a rollout are aligned on response tokens: ``(B, R)``, with ``response_mask``
True = response token.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignloop.config import ConfigError
from alignloop.core.advantages import gae, kl_k1, masked_mean, masked_whiten
from alignloop.core.lagrange import LagrangeMultiplier, lagrangian_advantage, mean_recent_cost
from alignloop.core.losses import entropy_from_logits, ppo_policy_loss, value_loss
from alignloop.errors import UserError
from alignloop.lm.data import PromptCollator
from alignloop.lm.folders import check_inputs
from alignloop.lm.generation import Rollout, generate
from alignloop.lm.models import (
    ScoreModel,
    apply_lora,
    load_causal_lm,
    load_tokenizer,
    merge_lora,
    position_ids_from_mask,
    token_logprobs,
)
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

Mode = Literal["ppo", "lagrangian", "shaping"]


@dataclass(frozen=True)
class PPOConfig(TrainCommon):
    """PPO-RLHF: maximise a reward model's score with a KL penalty to the starting policy."""

    output_dir: Path = Path("runs/ppo")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    policy: Path = Path("runs/sft/final")
    """Starting policy (a causal-LM folder with its tokenizer); also the frozen reference."""
    reward_model: Path = Path("runs/reward/final")
    """Reward model folder (`alignloop train reward`); also initialises the reward critic."""
    prompts: Path | None = None
    """Prompt file (any feedback format; each record's prompt). None = the toy world's train prompts."""
    toyworld_seed: int = 0
    """Toy world seed (prompts when no file is given, and the ground-truth evaluation)."""
    toy_prompts: int = 2048
    """Number of toy-world train prompts drawn when no prompt file is given."""
    eval_prompts: int = 128
    """Held-out toy-world prompts judged every eval_every steps (0 = no evaluation)."""
    max_steps: int = 60
    """PPO iterations (rollout + update)."""
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
class PPOLagConfig(PPOConfig):
    """Safe RLHF: maximise reward while the expected cost stays under a limit (PPO-Lagrangian)."""

    output_dir: Path = Path("runs/ppo-lag")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    cost_model: Path = Path("runs/cost/final")
    """Cost model folder (`alignloop train cost`); also initialises the cost critic."""
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
    lambda_method: Literal["log", "projected", "pid"] = "log"
    """Multiplier update rule."""
    cost_window: int = 128
    """J_c is the mean end cost of this many recent responses (per process)."""


@dataclass(frozen=True)
class ShapingConfig(PPOConfig):
    """Baseline: PPO on reward - lambda * cost with a fixed lambda."""

    output_dir: Path = Path("runs/reward-shaping")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    cost_model: Path = Path("runs/cost/final")
    """Cost model folder (`alignloop train cost`)."""
    shaping_lambda: float = 1.0
    """The fixed weight of the cost in the shaped reward."""


# ------------------------------------------------------------------------ rollout math
def forward_logprobs(
    model: nn.Module, sequences: Tensor, attention_mask: Tensor, prompt_length: int
) -> tuple[Tensor, Tensor]:
    """Log-probs ``(B, R)`` of the response tokens and the logits ``(B, R, V)`` that predict them."""
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).logits[:, prompt_length - 1 : -1]  # (B, R, V): position t predicts token t + 1
    return token_logprobs(logits, sequences[:, prompt_length:]), logits


def forward_values(
    critic: nn.Module, sequences: Tensor, attention_mask: Tensor, prompt_length: int
) -> Tensor:
    """Values ``(B, R)``: the critic's score at the position just before each response token."""
    return critic(sequences, attention_mask).scores[:, prompt_length - 1 : -1]


def kl_shaped_rewards(end_scores: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards ``(B, R)``: ``-kl_coef * kl`` on every response token plus the end score
    ``(B,)`` on the last one (``response_mask`` True = response token; a negative ``kl_coef``
    gives the cost stream's ``+beta * kl``)."""
    rewards = -kl_coef * kl * response_mask  # (B, R)
    last = response_mask.long().cumsum(-1).argmax(-1)  # (B,) index of the last response token
    return rewards.scatter_add(1, last[:, None], end_scores[:, None].to(rewards.dtype))


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

    def select(self, rows: list[int]) -> Experience:
        """The rollout restricted to some rows (a mini-batch)."""
        tensors = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]
        changes: dict[str, Any] = {name: getattr(self, name)[rows] for name in tensors}
        return replace(self, **changes)


# ------------------------------------------------------------------------ the loop
def _load_prompts(path: Path | None, world: Any, n: int, seed: int) -> list[str]:
    if path is None:
        return [p.text for p in world.prompts("train", n, seed=seed)]
    from alignloop.feedback.formats import read_prompts

    prompts = [r.prompt for r in read_prompts(path)]
    if not prompts:
        raise UserError(f"--prompts {path}: holds no prompts")
    return prompts


def _check_same_vocab(tokenizer: Any, model: ScoreModel, path: Path) -> None:
    if model.config.vocab_size < len(tokenizer):
        raise UserError(
            f"{path}: the model's vocabulary ({model.config.vocab_size}) is smaller than the policy's "
            f"tokenizer ({len(tokenizer)}); reward/cost models must share the policy's tokenizer"
        )


def _sync_context(models: list[nn.Module], ctx: DistributedContext, sync: bool) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce on micro-batches before the last one."""
    stack = contextlib.ExitStack()
    if ctx.distributed and not sync:
        for m in models:
            stack.enter_context(m.no_sync())  # type: ignore[operator]
    return stack


def _run(cfg: PPOConfig, mode: Mode) -> int:
    from alignloop.lm.evaluate import evaluate_policy
    from alignloop.lm.toyworld import ToyWorld

    cost_path: Path | None = getattr(cfg, "cost_model", None)
    check_inputs(
        cfg.output_dir,
        files={"--prompts": cfg.prompts},
        models={
            "--policy": (cfg.policy, "causal-lm"),
            "--reward-model": (cfg.reward_model, "score"),
            "--cost-model": (cost_path, "score"),
        },
    )
    ctx = init_distributed()
    set_threads(cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    if cfg.rollout_batch_size % (cfg.batch_size) or cfg.batch_size % (ctx.world_size * cfg.grad_accum):
        raise ConfigError(
            f"rollout_batch_size ({cfg.rollout_batch_size}) must be a multiple of batch_size ({cfg.batch_size}), "
            f"and batch_size a multiple of processes x grad_accum ({ctx.world_size} x {cfg.grad_accum})"
        )
    world = ToyWorld(cfg.toyworld_seed)
    tokenizer = load_tokenizer(cfg.policy)
    prompts = _load_prompts(cfg.prompts, world, cfg.toy_prompts, cfg.seed)
    if len(prompts) < cfg.rollout_batch_size:
        raise UserError(
            f"--rollout-batch-size {cfg.rollout_batch_size} is more than the {len(prompts)} prompts"
            f"{' in ' + str(cfg.prompts) if cfg.prompts else ''}; pass a smaller one or more prompts"
        )
    collate = PromptCollator(tokenizer)

    policy = load_causal_lm(cfg.policy)
    reference = load_causal_lm(cfg.policy).eval().requires_grad_(False)
    if cfg.lora_r > 0:  # adapters on the policy only; the reference stays the full starting model
        policy = apply_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    reward_model = ScoreModel.from_pretrained(cfg.reward_model).eval().requires_grad_(False)
    _check_same_vocab(tokenizer, reward_model, cfg.reward_model)
    critics: dict[str, nn.Module] = {"reward_critic": ScoreModel.from_pretrained(cfg.reward_model)}
    cost_model: ScoreModel | None = None
    if mode != "ppo" and cost_path is not None:
        cost_model = ScoreModel.from_pretrained(cost_path).eval().requires_grad_(False)
        _check_same_vocab(tokenizer, cost_model, cost_path)
        if mode == "lagrangian":
            critics["cost_critic"] = ScoreModel.from_pretrained(cost_path)
    for m in (reference, reward_model, cost_model):
        if m is not None:
            m.to(ctx.device)
    policy = ctx.wrap(policy).eval()  # eval: no dropout in rollouts or updates
    critics = {k: ctx.wrap(c).eval() for k, c in critics.items()}

    per_rollout = cfg.rollout_batch_size // cfg.batch_size
    optimizer_steps = cfg.max_steps * cfg.ppo_epochs * per_rollout
    policy_opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    critic_opt = make_optimizer(list(critics.values()), cfg.critic_lr, cfg.weight_decay)
    policy_sched = make_scheduler(policy_opt, cfg.scheduler, cfg.warmup_steps, optimizer_steps)
    critic_sched = make_scheduler(critic_opt, cfg.scheduler, cfg.warmup_steps, optimizer_steps)
    lagrange = LagrangeMultiplier(
        getattr(cfg, "lambda_method", "log"),
        init=getattr(cfg, "lambda_init", 1.0),
        lr=getattr(cfg, "lambda_lr", 0.1),
        max_value=getattr(cfg, "lambda_max", None),
        delay=getattr(cfg, "lambda_delay", 0),
    )
    cost_window: deque[float] = deque(maxlen=getattr(cfg, "cost_window", 1))

    models = {"policy": policy, **critics}
    optimizers = {"policy": policy_opt, "critic": critic_opt}
    schedulers = {"policy": policy_sched, "critic": critic_sched}
    checkpointer = Checkpointer(cfg.output_dir, keep=cfg.keep_checkpoints, ctx=ctx)
    step = 0
    if cfg.resume and (latest := checkpointer.latest()) is not None:
        step, extra = checkpointer.load(latest, models, optimizers, schedulers)
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
        description={"ppo": "PPO", "lagrangian": "PPO-Lagrangian", "shaping": "reward shaping"}[mode],
        report_to=cfg.report_to,
    )
    batches_per_epoch = len(prompts) // cfg.rollout_batch_size
    with logger:
        while step < cfg.max_steps:
            started = time.perf_counter()
            rows = batch_indices(
                len(prompts),
                cfg.rollout_batch_size,
                seed=cfg.seed,
                epoch=step // batches_per_epoch,
                rank=ctx.rank,
                world_size=ctx.world_size,
            )[step % batches_per_epoch]
            batch = collate([prompts[i] for i in rows])
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
            )
            exp, metrics = _make_experience(
                rollout,
                policy=unwrap(policy),
                reference=reference,
                reward_model=reward_model,
                cost_model=cost_model,
                critics={k: unwrap(c) for k, c in critics.items()},
                mode=mode,
                lagrange=lagrange,
                cost_window=cost_window,
                cost_limit=getattr(cfg, "cost_limit", 0.0),
                shaping_lambda=getattr(cfg, "shaping_lambda", 0.0),
                kl_coef=cfg.kl_coef,
                gamma=cfg.gamma,
                gae_lambda=cfg.gae_lambda,
                score_clip=cfg.score_clip,
                missing_eos_penalty=cfg.missing_eos_penalty,
                whiten_advantages=cfg.whiten_advantages,
                eos_token_id=tokenizer.eos_token_id,
                temperature=cfg.temperature,
                ctx=ctx,
            )
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(exp.sequences.shape[0]).tolist()
                per_rank = cfg.batch_size // ctx.world_size
                for start in range(0, len(order), per_rank):
                    update = _ppo_update(
                        exp,
                        order[start : start + per_rank],
                        policy=policy,
                        critics=critics,
                        policy_opt=policy_opt,
                        critic_opt=critic_opt,
                        grad_accum=cfg.grad_accum,
                        clip_eps=cfg.clip_eps,
                        value_clip_eps=cfg.value_clip_eps or None,
                        entropy_coef=cfg.entropy_coef,
                        max_grad_norm=cfg.max_grad_norm,
                        temperature=cfg.temperature,
                        ctx=ctx,
                    )
                    policy_sched.step()
                    critic_sched.step()
            metrics.update(update)
            metrics["seconds"] = time.perf_counter() - started
            step += 1
            logger.log(step, metrics)
            info = f"reward {metrics['reward']:+.2f}"
            if cost_model is not None:
                info += f"  cost {metrics['cost']:+.2f}"
            if mode == "lagrangian":
                info += f"  lambda {metrics['lambda']:.2f}"
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
                extra = {"lagrange": lagrange.state_dict(), "cost_window": list(cost_window)}
                checkpointer.save(step, models, optimizers, schedulers, extra)
    if ctx.is_main:
        final = Path(cfg.output_dir) / "final"
        final_policy: Any = merge_lora(unwrap(policy))
        final_policy.save_pretrained(str(final))
        tokenizer.save_pretrained(str(final))
    ctx.barrier()
    ctx.close()
    return 0


@torch.no_grad()
def _make_experience(
    rollout: Rollout,
    *,
    policy: nn.Module,
    reference: nn.Module,
    reward_model: ScoreModel,
    cost_model: ScoreModel | None,
    critics: dict[str, nn.Module],
    mode: Mode,
    lagrange: LagrangeMultiplier,
    cost_window: deque[float],
    cost_limit: float,
    shaping_lambda: float,
    kl_coef: float,
    gamma: float,
    gae_lambda: float,
    score_clip: float,
    missing_eos_penalty: float,
    whiten_advantages: bool,
    eos_token_id: int,
    temperature: float,
    ctx: DistributedContext,
) -> tuple[Experience, dict[str, float]]:
    """Score a rollout, build both reward streams, run GAE and (Safe RLHF) move lambda."""
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_length
    mask = rollout.response_mask  # (B, R) True = response token
    old_logprobs = rollout.logprobs  # (B, R)
    ref_logits = reference(
        input_ids=seqs, attention_mask=attn, position_ids=position_ids_from_mask(attn)
    ).logits
    ref_logprobs = token_logprobs(ref_logits[:, P - 1 : -1] / temperature, seqs[:, P:])  # (B, R)
    kl = kl_k1(old_logprobs, ref_logprobs) * mask  # (B, R)
    end_reward = reward_model(seqs, attn).end_scores.clamp(-score_clip, score_clip)  # (B,)
    ended = (rollout.responses == eos_token_id).any(-1)  # (B,) True = the response has an end token
    end_reward = end_reward - missing_eos_penalty * (~ended).to(end_reward.dtype)
    end_cost = None
    if cost_model is not None:
        end_cost = cost_model(seqs, attn).end_scores.clamp(-score_clip, score_clip)  # (B,)
    metrics = {
        "reward": ctx.all_reduce_mean(end_reward.mean().item()),
        "kl": ctx.all_reduce_mean(kl.sum(-1).mean().item()),
        "response_tokens": ctx.all_reduce_mean(mask.sum(-1).float().mean().item()),
    }
    if end_cost is not None:
        metrics["cost"] = ctx.all_reduce_mean(end_cost.mean().item())

    reward_values = forward_values(critics["reward_critic"], seqs, attn, P)  # (B, R)
    if mode == "shaping":
        assert end_cost is not None
        end_for_policy = end_reward - shaping_lambda * end_cost  # (B,)
    else:
        end_for_policy = end_reward
    rewards = kl_shaped_rewards(end_for_policy, kl, mask, kl_coef)  # (B, R)
    adv_r, reward_returns = gae(rewards, reward_values, gamma=gamma, lam=gae_lambda, mask=mask)

    cost_values = cost_returns = None
    if mode == "lagrangian":
        assert end_cost is not None
        cost_window.extend(end_cost.tolist())
        j_c = ctx.all_reduce_mean(mean_recent_cost(cost_window))
        lam = lagrange.update(j_c, cost_limit)
        costs = kl_shaped_rewards(end_cost, kl, mask, -kl_coef)  # (B, R) +beta * kl + end cost
        cost_values = forward_values(critics["cost_critic"], seqs, attn, P)  # (B, R)
        adv_c, cost_returns = gae(costs, cost_values, gamma=gamma, lam=gae_lambda, mask=mask)
        advantages = lagrangian_advantage(adv_r, adv_c, lam)
        metrics.update({"lambda": lam, "J_c": j_c, "cost_advantage": masked_mean(adv_c, mask).item()})
    else:
        advantages = adv_r
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    metrics["reward_advantage"] = masked_mean(adv_r, mask).item()
    exp = Experience(
        seqs,
        attn,
        mask,
        P,
        old_logprobs,
        advantages,
        reward_values,
        reward_returns,
        cost_values,
        cost_returns,
    )
    return exp, metrics


def _ppo_update(
    exp: Experience,
    rows: list[int],
    *,
    policy: nn.Module,
    critics: dict[str, nn.Module],
    policy_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    grad_accum: int,
    clip_eps: float,
    value_clip_eps: float | None,
    entropy_coef: float,
    max_grad_norm: float,
    temperature: float,
    ctx: DistributedContext,
) -> dict[str, float]:
    """One optimiser step of the policy and of the critics on a mini-batch of the rollout."""
    policy_opt.zero_grad(set_to_none=True)
    critic_opt.zero_grad(set_to_none=True)
    parts = micro_batches(rows, grad_accum)
    totals: dict[str, float] = {}
    for i, part in enumerate(parts):
        mb = exp.select(part)
        mask = mb.response_mask  # (b, R) True = response token
        with _sync_context([policy, *critics.values()], ctx, sync=i == len(parts) - 1):
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
            loss = pi_loss - entropy_coef * entropy
            reward_values = forward_values(
                critics["reward_critic"], mb.sequences, mb.attention_mask, mb.prompt_length
            )
            vf_loss, vf_metrics = value_loss(
                reward_values, mb.reward_values, mb.reward_returns, mask, clip_eps=value_clip_eps
            )
            step_metrics = {
                "policy_loss": pi_loss,
                "entropy": entropy,
                "reward_value_loss": vf_loss,
                **pi_metrics,
            }
            if "cost_critic" in critics:
                assert mb.cost_values is not None and mb.cost_returns is not None
                cost_values = forward_values(
                    critics["cost_critic"], mb.sequences, mb.attention_mask, mb.prompt_length
                )
                cost_vf_loss, _ = value_loss(
                    cost_values, mb.cost_values, mb.cost_returns, mask, clip_eps=value_clip_eps
                )
                vf_loss = vf_loss + cost_vf_loss
                step_metrics["cost_value_loss"] = cost_vf_loss
            ((loss + vf_loss) / len(parts)).backward()
        for k, v in step_metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v) / len(parts)
    totals["grad_norm"] = clip_grad_norm(policy, max_grad_norm)
    for critic in critics.values():
        clip_grad_norm(critic, max_grad_norm)
    policy_opt.step()
    critic_opt.step()
    return {k: ctx.all_reduce_mean(v) for k, v in totals.items()}


# ------------------------------------------------------------------------ commands
def train(cfg: PPOConfig) -> int:
    """`alignloop train ppo`: PPO-RLHF with a reward model."""
    return _run(cfg, "ppo")


def train_lagrangian(cfg: PPOLagConfig) -> int:
    """`alignloop train ppo-lag`: Safe RLHF, PPO-Lagrangian with reward and cost models."""
    return _run(cfg, "lagrangian")


def train_shaping(cfg: ShapingConfig) -> int:
    """`alignloop train reward-shaping`: PPO on reward - lambda * cost, lambda fixed."""
    return _run(cfg, "shaping")
