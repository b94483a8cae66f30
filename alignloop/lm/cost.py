"""Cost model: learn what people judge unsafe from `safer` and `is_safe` (Safe RLHF).

A `ScoreModel` scores each response at its last token; the loss is
`core.losses.cost_model_loss(c_unsafer, c_safer, s_unsafer, s_safer, score_l2=...)` with the
safety sign s = +1 for a response labelled unsafe, -1 for a safe one, so cost 0 is the
safe/unsafe boundary. Pairs without both `is_safe` flags are left out and counted; a tie in
`safer` keeps its two sign terms (`ranked` False, `feedback.pairs`). Evaluation reports the sign accuracy (cost > 0 exactly for the responses labelled
unsafe, over every held-out response) and the pairwise accuracy (c_unsafer > c_safer).

    alignloop train cost --model runs/sft/final --output-dir runs/cost
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.core.losses import cost_model_loss
from alignloop.feedback.schema import Comparison
from alignloop.lm.data import PreferenceCollator, check_batches, comparison_splits, safety_judged
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import load_score_model
from alignloop.lm.training import DistributedContext, TrainCommon, fit, prepare_model, save_final, start_run


@dataclass(frozen=True)
class CostConfig(TrainCommon):
    """Cost model from safety judgements (Safe RLHF cost loss on `safer` and `is_safe`)."""

    output_dir: Path = Path("runs/cost")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A causal-LM folder (e.g. the SFT model), a score-model folder, or "toy" (fresh tiny model)."""
    train_file: Path | None = None
    """PKU-SafeRLHF comparison file (needs `safer` and `is_safe`); none = toy-world pairs."""
    eval_file: Path | None = None
    """Held-out comparisons (none = the toy world's eval split, or eval_fraction of train_file)."""
    eval_fraction: float = 0.05
    """Share of train_file held out for evaluation when there is no eval_file."""
    skip_invalid: bool = False
    """Skip malformed rows of the data files (they are counted and reported)."""
    toy_train_size: int = 4000
    """Toy world: number of training pairs."""
    toy_eval_size: int = 500
    """Toy world: number of held-out pairs."""
    max_length: int = 64
    """Longest prompt + response, in tokens."""
    score_l2: float = 0.001
    """Weight of the mean squared score (keeps scores near 0)."""
    lr: float = 1e-3
    """Peak learning rate."""
    epochs: int = 2
    """Passes over the training data (ignored when max_steps > 0)."""


def pair_scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """End scores of the chosen (safer) and rejected (less safe) responses, in one (2B, T)
    forward pass.  (B,), (B,)"""
    input_ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, T)
    attention_mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    end_scores = model(input_ids, attention_mask).end_scores  # (2B,)
    B = batch["chosen_input_ids"].shape[0]
    return end_scores[:B], end_scores[B:]


def safety_signs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(unsafer_sign, safer_sign): +1 where labelled unsafe, -1 where safe.  (B,), (B,)"""
    unsafer_sign = 1.0 - 2.0 * batch["rejected_safe"].float()
    safer_sign = 1.0 - 2.0 * batch["chosen_safe"].float()
    return unsafer_sign, safer_sign


@torch.no_grad()
def evaluate(
    model: Any, pairs: list[Comparison], collate: PreferenceCollator, ctx: DistributedContext, batch_size: int
) -> dict[str, float]:
    """Held-out sign accuracy, pairwise accuracy, mean costs of safe and unsafe responses, loss."""
    model.eval()
    safer, unsafer, safer_sign, unsafer_sign, ranked = [], [], [], [], []
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(ctx.device) for k, v in collate(pairs[start : start + batch_size]).items()}
        c_safer, c_unsafer = pair_scores(model, batch)
        s_unsafer, s_safer = safety_signs(batch)
        safer.append(c_safer.cpu())
        unsafer.append(c_unsafer.cpu())
        safer_sign.append(s_safer.cpu())
        unsafer_sign.append(s_unsafer.cpu())
        ranked.append(batch["ranked"].cpu())
    c_s, c_u, s_s, s_u = (torch.cat(x) for x in (safer, unsafer, safer_sign, unsafer_sign))
    ranked_all = torch.cat(ranked)
    loss, _ = cost_model_loss(c_u, c_s, s_u, s_s, ranked=ranked_all)
    costs, signs = torch.cat([c_s, c_u]), torch.cat([s_s, s_u])  # (2N,)
    unsafe = signs > 0
    return {
        "sign_accuracy": float(((costs > 0) == unsafe).float().mean()),
        "pair_accuracy": float((c_u > c_s)[ranked_all].float().mean()) if ranked_all.any() else 0.0,
        "loss": float(loss),
        "unsafe_cost": float(costs[unsafe].mean()) if unsafe.any() else 0.0,
        "safe_cost": float(costs[~unsafe].mean()) if (~unsafe).any() else 0.0,
    }


def train(cfg: CostConfig) -> int:
    files = {"--train-file": cfg.train_file, "--eval-file": cfg.eval_file}
    check_inputs(cfg.output_dir, files=files, models={"--model": (cfg.model, "any")})
    run = start_run(cfg, "train cost")
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
    train_pairs, train_left = safety_judged(train_all)
    eval_pairs, eval_left = safety_judged(eval_all)
    if run.ctx.is_main and (train_left or eval_left):
        print(f"left out {train_left} training and {eval_left} held-out pairs without safety judgements")
    check_batches(
        len(train_pairs),
        cfg.batch_size,
        cfg.grad_accum,
        what="training pairs with safety labels",
        source=cfg.train_file,
        held_out=len(eval_all) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    collate = PreferenceCollator(tokenizer, cfg.max_length, by="safer")
    model = prepare_model(model, run, cfg)

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        c_safer, c_unsafer = pair_scores(model, batch)
        s_unsafer, s_safer = safety_signs(batch)
        value, _ = cost_model_loss(
            c_unsafer, c_safer, s_unsafer, s_safer, ranked=batch["ranked"], score_l2=cfg.score_l2
        )
        right = torch.cat([c_safer * s_safer, c_unsafer * s_unsafer]) > 0  # the sign matches the label
        return value, {"sign_accuracy": right.float().mean()}

    fit(
        run,
        model,
        train_pairs,
        collate=collate,
        loss=loss,
        weight=lambda batch: len(batch["chosen_input_ids"]),  # the mean is over pairs
        evaluate=lambda model: evaluate(model, eval_pairs, collate, run.ctx, cfg.batch_size),
        options=cfg,
        description="cost model",
        shown=("loss", "sign_accuracy"),
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    run.close()
    return 0
