"""What an RL trainer of language models does with a rollout before its own update: sample this
process's share of a batch, score it with the frozen reference and the reward and cost models
and the critics, and gather the shares.

`sample_share` draws the sampling noise of each row at that row's place in the whole batch
(`generation.generate`'s ``rows``) and keeps every process decoding until every response has
ended, so N processes sampling their shares draw the tokens one process sampling the whole
batch draws; `gather_rollout` (`gather_shares` for scores of another shape) then gives every
process the whole rollout. PPO (`alignloop.lm.ppo`) and the critic-free trainers
(`alignloop.lm.critic_free`, without critics) are built on these.
Tensors are aligned on response tokens: ``(B, R)``, ``response_mask`` True = response token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignloop.core.advantages import kl_k1
from alignloop.core.lagrange import floored_cost
from alignloop.errors import UserError
from alignloop.lm.generation import Rollout, generate
from alignloop.lm.models import ScoreModel, position_ids_from_mask, token_logprobs
from alignloop.runstack.distributed import DistributedContext, unwrap

__all__ = [
    "Scores",
    "check_same_vocab",
    "forward_logprobs",
    "forward_values",
    "frozen_score_model",
    "gather_rollout",
    "gather_shares",
    "sample_share",
    "score_rollout",
]


def sample_share(
    policy: nn.Module,
    batch: dict[str, Tensor],
    ctx: DistributedContext,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Rollout:
    """This process's share of a rollout: rows ``rank * B/N .. (rank + 1) * B/N`` of the whole
    left-padded batch ``batch`` (input_ids, attention_mask (B, P), the same on every process),
    sampled as one process sampling the whole batch would sample them."""
    total = batch["input_ids"].shape[0]
    per_rank = total // ctx.world_size
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    return generate(
        unwrap(policy),
        batch["input_ids"][mine].to(ctx.device),
        batch["attention_mask"][mine].to(ctx.device),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rows=(mine.start, total),
        all_ended=(lambda ended: not ctx.any(not ended)) if ctx.distributed else None,
    )


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


@dataclass
class Scores:
    """What the frozen models and the critics say about a rollout, aligned on its responses."""

    kl: Tensor  # (B, R) log pi_old - log ref on response tokens, 0 elsewhere
    end_reward: Tensor  # (B,) clipped, less the missing-end penalty
    end_cost: Tensor | None  # (B,) clipped (and floored); None without a cost model
    reward_values: Tensor  # (B, R)
    cost_values: Tensor | None  # (B, R) Safe RLHF only


@torch.no_grad()
def score_rollout(
    rollout: Rollout,
    *,
    reference: nn.Module,
    reward_model: nn.Module,
    cost_model: nn.Module | None,
    reward_critic: nn.Module,
    cost_critic: nn.Module | None,
    temperature: float,
    score_clip: float,
    missing_eos_penalty: float,
    eos_token_id: int,
    cost_floor: float | None = None,
) -> Scores:
    """Score a rollout with the reference, the reward and cost models and the critics; end
    costs below ``cost_floor`` are raised to it (`core.lagrange.floored_cost`)."""
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_length
    mask = rollout.response_mask  # (B, R) True = response token
    ref_logits = reference(
        input_ids=seqs, attention_mask=attn, position_ids=position_ids_from_mask(attn)
    ).logits
    ref_logprobs = token_logprobs(ref_logits[:, P - 1 : -1] / temperature, seqs[:, P:])  # (B, R)
    kl = kl_k1(rollout.logprobs, ref_logprobs) * mask  # (B, R)
    end_reward = reward_model(seqs, attn).end_scores.clamp(-score_clip, score_clip)  # (B,)
    ended = (rollout.responses == eos_token_id).any(-1)  # (B,) True = the response has an end token
    end_reward = end_reward - missing_eos_penalty * (~ended).to(end_reward.dtype)
    end_cost = (
        None
        if cost_model is None
        else floored_cost(cost_model(seqs, attn).end_scores.clamp(-score_clip, score_clip), cost_floor)
    )
    return Scores(
        kl,
        end_reward,
        end_cost,
        forward_values(reward_critic, seqs, attn, P),
        None if cost_critic is None else forward_values(cost_critic, seqs, attn, P),
    )


def gather_shares(
    ctx: DistributedContext, rollout: Rollout, *shares: Tensor | None
) -> tuple[Rollout, list[Any]]:
    """Every process's rollout share and the tensors ``shares`` aligned on its rows (None stays
    None), concatenated in rank order: the whole batch's."""
    if not ctx.distributed:
        return rollout, list(shares)
    whole = Rollout(
        ctx.all_gather(rollout.sequences),
        ctx.all_gather(rollout.attention_mask),
        ctx.all_gather(rollout.response_mask),
        ctx.all_gather(rollout.logprobs),
        rollout.prompt_length,
    )
    return whole, [None if t is None else ctx.all_gather(t) for t in shares]


def gather_rollout(rollout: Rollout, scores: Scores, ctx: DistributedContext) -> tuple[Rollout, Scores]:
    """Every process's rollout share and scores, concatenated in rank order (the whole batch)."""
    whole, gathered = gather_shares(ctx, rollout, *(getattr(scores, f.name) for f in fields(scores)))
    return whole, Scores(*gathered)


def check_same_vocab(tokenizer: Any, model: ScoreModel, path: Path) -> None:
    """Refuse a reward or cost model whose vocabulary cannot read the policy's tokens."""
    if model.config.vocab_size < len(tokenizer):
        raise UserError(
            f"{path}: the model's vocabulary ({model.config.vocab_size}) is smaller than the policy's "
            f"tokenizer ({len(tokenizer)}); reward/cost models must share the policy's tokenizer"
        )


def frozen_score_model(path: Path, tokenizer: Any, ctx: DistributedContext) -> ScoreModel:
    """A reward or cost model to score with (eval mode, no gradients) on this process's device."""
    model = ScoreModel.from_pretrained(path).eval().requires_grad_(False)
    check_same_vocab(tokenizer, model, path)
    return model.to(ctx.device)
