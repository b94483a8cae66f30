"""Reward model: learn what people prefer from `better` judgements (Bradley-Terry).

A `ScoreModel` scores each response at its last token; the loss is
`core.losses.bradley_terry_loss(r_chosen, r_rejected, score_l2=...)`. Ties (`better` null) are
left out and counted. Evaluation reports the held-out preference accuracy: the share of pairs
whose preferred response scores higher.

    alignloop train reward --model runs/sft/final --output-dir runs/reward
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.core.losses import bradley_terry_loss
from alignloop.feedback.schema import Comparison
from alignloop.lm.data import PreferenceCollator, check_batches, comparison_splits, preferred_pairs
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import load_score_model
from alignloop.lm.training import DistributedContext, TrainCommon, fit, prepare_model, save_final, start_run


@dataclass(frozen=True)
class RewardConfig(TrainCommon):
    """Reward model from preference pairs (Bradley-Terry on `better`)."""

    output_dir: Path = Path("runs/reward")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A causal-LM folder (e.g. the SFT model), a score-model folder, or "toy" (fresh tiny model)."""
    train_file: Path | None = None
    """Comparison file (PKU-SafeRLHF, HH-RLHF, prompt/chosen/rejected); none = toy-world pairs."""
    eval_file: Path | None = None
    """Held-out comparisons (none = the toy world's eval split, or eval_fraction of train_file)."""
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
    """Pairs per optimiser step across all processes (before accumulation splits it)."""
    epochs: int = 1
    """Passes over the training data (ignored when max_steps > 0)."""


def pair_scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """End scores of the chosen and rejected responses, in one (2B, T) forward pass.  (B,), (B,)"""
    input_ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, T)
    attention_mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    end_scores = model(input_ids, attention_mask).end_scores  # (2B,)
    B = batch["chosen_input_ids"].shape[0]
    return end_scores[:B], end_scores[B:]


@torch.no_grad()
def evaluate(
    model: Any, pairs: list[Comparison], collate: PreferenceCollator, ctx: DistributedContext, batch_size: int
) -> dict[str, float]:
    """Held-out preference accuracy (ties in score count half), mean scores and loss."""
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(ctx.device) for k, v in collate(pairs[start : start + batch_size]).items()}
        c, r = pair_scores(model, batch)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    c, r = torch.cat(chosen), torch.cat(rejected)
    loss, _ = bradley_terry_loss(c, r)
    accuracy = ((c > r).float() + 0.5 * (c == r).float()).mean()
    return {
        "accuracy": float(accuracy),
        "loss": float(loss),
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
    train_all, eval_all = comparison_splits(
        cfg.train_file,
        cfg.eval_file,
        eval_fraction=cfg.eval_fraction,
        skip_invalid=cfg.skip_invalid,
        toy_seed=cfg.seed,
        toy_train_size=cfg.toy_train_size,
        toy_eval_size=cfg.toy_eval_size,
    )
    train_pairs, train_ties = preferred_pairs(train_all, "better")
    eval_pairs, eval_ties = preferred_pairs(eval_all, "better")
    if run.ctx.is_main and (train_ties or eval_ties):
        print(f"left out {train_ties} training and {eval_ties} held-out pairs without a `better` choice")
    check_batches(
        len(train_pairs),
        cfg.batch_size,
        cfg.grad_accum,
        what="training pairs with a `better` choice",
        source=cfg.train_file,
        held_out=len(eval_all) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    collate = PreferenceCollator(tokenizer, cfg.max_length, by="better")
    model = prepare_model(model, run, cfg)

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        chosen, rejected = pair_scores(model, batch)
        value, _ = bradley_terry_loss(chosen, rejected, score_l2=cfg.score_l2)
        return value, {"accuracy": (chosen > rejected).float().mean()}

    fit(
        run,
        model,
        train_pairs,
        collate=collate,
        loss=loss,
        weight=lambda batch: len(batch["chosen_input_ids"]),  # the mean is over pairs
        evaluate=lambda model: evaluate(model, eval_pairs, collate, run.ctx, cfg.batch_size),
        options=cfg,
        description="reward model",
        shown=("loss", "accuracy"),
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    run.close()
    return 0
