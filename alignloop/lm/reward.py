"""Reward model: learn what people prefer from choices, rankings and ratings (Plackett-Luce).

A `ScoreModel` scores each response at its last token. What it learns from comes from
`feedback.pairs.preference_rankings`: a `better` choice is a ranking of two, a ranking of k
candidates is kept whole, ratings become pairs (higher over lower in one aspect, within one
annotator's judgement: the order of the scores, not their level, which varies between
annotators). The loss is `core.losses.plackett_luce_loss(scores, ranks, mask, score_l2=...)`:
on pairs exactly Bradley-Terry, on a ranking of k its k - 1 choices, each candidate chosen
over those ranked below it. Plackett-Luce rather than every implied pair with Bradley-Terry:
it is the likelihood of the rankings under the same utility model (a ranking drawn by Gumbel
noise on the utilities, as the scripted teachers draw them), where the k(k-1)/2 implied pairs of
one ranking are not independent judgements and would count a ranking of 4 as 6 pairs, its
bottom pair as much as its top choice. Ties (a tied choice, "both bad", equal ranks or
scores) say nothing about the tied order and are left out or count for nothing; the count of
judgements that gave nothing is printed. Evaluation reports the held-out preference accuracy:
the share of implied pairs whose preferred response scores higher.

    alignloop train reward --model runs/sft/final --output-dir runs/reward
    alignloop train reward --train-file export.jsonl   # a platform export: choices, rankings, ratings
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.core.losses import plackett_luce_loss
from alignloop.feedback.pairs import RankedCandidates
from alignloop.lm.data import RankingCollator, check_batches, ranking_splits
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import load_score_model
from alignloop.lm.training import DistributedContext, TrainCommon, fit, prepare_model, save_final, start_run


@dataclass(frozen=True)
class RewardConfig(TrainCommon):
    """Reward model from choices, rankings and ratings (Plackett-Luce; Bradley-Terry on pairs)."""

    output_dir: Path = Path("runs/reward")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A causal-LM folder (e.g. the SFT model), a score-model folder, or "toy" (fresh tiny model)."""
    train_file: Path | None = None
    """Comparison file (PKU-SafeRLHF, HH-RLHF, prompt/chosen/rejected) or a platform export of
    judged items (choices, rankings of k, ratings); none = toy-world pairs."""
    eval_file: Path | None = None
    """Held-out preferences (none = the toy world's eval split, or eval_fraction of train_file)."""
    eval_fraction: float = 0.05
    """Share of train_file held out for evaluation when there is no eval_file."""
    skip_invalid: bool = False
    """Skip malformed rows of the data files (they are counted and reported)."""
    toy_train_size: int = 16000
    """Toy world: number of training pairs (fresh pairs beat repeated epochs here)."""
    toy_eval_size: int = 500
    """Toy world: number of held-out pairs."""
    max_length: int = 64
    """Longest prompt + response, in tokens."""
    score_l2: float = 0.001
    """Weight of the mean squared score (keeps scores near 0)."""
    lr: float = 2e-3
    """Peak learning rate."""
    batch_size: int = 64
    """Rankings (pairs) per optimiser step across all processes (before accumulation splits it)."""
    epochs: int = 1
    """Passes over the training data (ignored when max_steps > 0)."""


def ranking_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """End scores of every candidate in one (N, T) forward pass, placed as (B, K) (0 where a
    ranking has fewer candidates: `batch["mask"]` False)."""
    end_scores = model(batch["input_ids"], batch["attention_mask"]).end_scores  # (N,)
    B, K = batch["ranks"].shape
    flat = end_scores.new_zeros(B * K).scatter(0, batch["slots"], end_scores)  # (B * K,)
    return flat.view(B, K)


def implied_pair_scores(
    scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the better and the worse candidate of every implied pair (different ranks).
    scores, ranks, mask (B, K) -> (P,), (P,)"""
    better = mask[:, :, None] & mask[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])  # (B, K, K)
    b, i, j = better.nonzero(as_tuple=True)
    return scores[b, i], scores[b, j]


@torch.no_grad()
def evaluate(
    model: Any,
    rankings: list[RankedCandidates],
    collate: RankingCollator,
    ctx: DistributedContext,
    batch_size: int,
) -> dict[str, float]:
    """Held-out preference accuracy over the implied pairs (ties in score count half), their
    mean scores, and the Plackett-Luce loss."""
    model.eval()
    chosen, rejected, losses, counts = [], [], [], []
    for start in range(0, len(rankings), batch_size):
        batch = {k: v.to(ctx.device) for k, v in collate(rankings[start : start + batch_size]).items()}
        scores = ranking_scores(model, batch)
        loss, _ = plackett_luce_loss(scores, batch["ranks"], batch["mask"])
        losses.append(float(loss) * len(scores))
        counts.append(len(scores))
        c, r = implied_pair_scores(scores, batch["ranks"], batch["mask"])
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    c, r = torch.cat(chosen), torch.cat(rejected)
    accuracy = ((c > r).float() + 0.5 * (c == r).float()).mean()
    return {
        "accuracy": float(accuracy),
        "loss": sum(losses) / sum(counts),
        "chosen_score": float(c.mean()),
        "rejected_score": float(r.mean()),
        "score_std": float(torch.cat([c, r]).std()),
    }


def train(cfg: RewardConfig) -> int:
    files = {"--train-file": cfg.train_file, "--eval-file": cfg.eval_file}
    check_inputs(cfg.output_dir, files=files, models={"--model": (cfg.model, "any")})
    run = start_run(cfg, "train reward")
    model: Any
    tokenizer, model = load_score_model(cfg.model, cfg.seed)
    train_rankings, eval_rankings, left_out = ranking_splits(
        cfg.train_file,
        cfg.eval_file,
        eval_fraction=cfg.eval_fraction,
        skip_invalid=cfg.skip_invalid,
        toy_seed=cfg.seed,
        toy_train_size=cfg.toy_train_size,
        toy_eval_size=cfg.toy_eval_size,
    )
    if run.ctx.is_main and left_out:
        print(
            f"left out {left_out} judgements or pairs that say no preference (ties, both bad, equal scores)"
        )
    check_batches(
        len(train_rankings),
        cfg.batch_size,
        cfg.grad_accum,
        what="training judgements that say a preference",
        source=cfg.train_file,
        held_out=len(eval_rankings) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    collate = RankingCollator(tokenizer, cfg.max_length)
    model = prepare_model(model, run, cfg)

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        value, metrics = plackett_luce_loss(
            ranking_scores(model, batch), batch["ranks"], batch["mask"], score_l2=cfg.score_l2
        )
        return value, {"accuracy": metrics["rewards/accuracy"]}

    fit(
        run,
        model,
        train_rankings,
        collate=collate,
        loss=loss,
        weight=lambda batch: len(batch["ranks"]),  # the mean is over rankings
        evaluate=lambda model: evaluate(model, eval_rankings, collate, run.ctx, cfg.batch_size),
        options=cfg,
        description="reward model",
        shown=("loss", "accuracy"),
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    run.close()
    return 0
