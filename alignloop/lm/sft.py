"""Supervised fine-tuning: maximise the log-likelihood of target responses given prompts.

    loss = - sum_{response tokens} log pi(y_t | x, y_<t) / (number of response tokens in the batch)

Prompt tokens are context only (`response_mask`); the mean is over every response token of
the global batch, so gradient accumulation and several processes give the same update as
one big batch. Data: a supervised file (`prompt, response`) or a comparison file (its
`better` responses); without a file, the toy world's SFT corpus on a fresh tiny model.

    alignloop train sft --output-dir runs/sft --max-steps 600
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.feedback.schema import SupervisedPair
from alignloop.lm.data import SFTCollator, check_batches, load_supervised
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import load_causal_lm, load_tokenizer, position_ids_from_mask, token_logprobs
from alignloop.lm.toyworld import ToyWorld, build_policy, build_tokenizer
from alignloop.lm.training import DistributedContext, TrainCommon, fit, prepare_model, save_final, start_run


@dataclass(frozen=True)
class SFTConfig(TrainCommon):
    """Supervised fine-tuning of a causal language model."""

    output_dir: Path = Path("runs/sft")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A Hugging Face model folder, or "toy" for a fresh tiny model on the toy world's tokenizer."""
    train_file: Path | None = None
    """Supervised or comparison file (JSONL, JSON, Parquet, datasets folder); none = toy-world SFT data."""
    eval_file: Path | None = None
    """Held-out file (none = the toy world's eval split, or eval_fraction of train_file)."""
    eval_fraction: float = 0.05
    """Share of train_file held out for evaluation when there is no eval_file."""
    skip_invalid: bool = False
    """Skip malformed rows of the data files (they are counted and reported)."""
    toy_train_size: int = 4000
    """Toy world: number of training pairs."""
    toy_eval_size: int = 256
    """Toy world: number of held-out pairs."""
    max_length: int = 64
    """Longest prompt + response, in tokens."""
    lr: float = 3e-3
    """Peak learning rate."""
    batch_size: int = 64
    """Examples per optimiser step across all processes (before accumulation splits it)."""
    max_steps: int = 600
    """Stop after this many optimiser steps (0 = run `epochs`)."""
    disable_dropout: bool = False
    """Turn dropout off in the trained model (SFT keeps the model's own dropout by default)."""


def load_data(cfg: SFTConfig) -> tuple[list[SupervisedPair], list[SupervisedPair]]:
    if cfg.train_file is None:
        world = ToyWorld(seed=cfg.seed)
        return world.sft_data(cfg.toy_train_size, "train"), world.sft_data(cfg.toy_eval_size, "eval")
    train = load_supervised(cfg.train_file, skip_invalid=cfg.skip_invalid)
    if cfg.eval_file is not None:
        return train, load_supervised(cfg.eval_file, skip_invalid=cfg.skip_invalid)
    n_eval = max(1, int(len(train) * cfg.eval_fraction))
    return train[n_eval:], train[:n_eval]


def load_model(name: str, seed: int) -> tuple[Any, Any]:
    """(tokenizer, causal LM): "toy" builds a fresh tiny model, anything else is a folder."""
    if name == "toy":
        tokenizer = build_tokenizer()
        return tokenizer, build_policy(tokenizer, seed)
    return load_tokenizer(name), load_causal_lm(name)


def response_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the response tokens, and their count (scalars)."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids_from_mask(batch["attention_mask"]),
    ).logits  # (B, T, V)
    logps = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:])  # (B, T-1)
    mask = batch["response_mask"][:, 1:].float()  # True = response token
    return -(logps * mask).sum(), mask.sum()


@torch.no_grad()
def evaluate(
    model: Any, pairs: list[SupervisedPair], collate: SFTCollator, ctx: DistributedContext, batch_size: int
) -> dict[str, float]:
    """Mean per-token NLL and perplexity of the held-out responses (every process sees all)."""
    model.eval()
    nll, tokens = torch.zeros(()), torch.zeros(())
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(ctx.device) for k, v in collate(pairs[start : start + batch_size]).items()}
        b_nll, b_tokens = response_nll(model, batch)
        nll, tokens = nll + b_nll.cpu(), tokens + b_tokens.cpu()
    mean = float(nll / tokens.clamp(min=1))
    return {"loss": mean, "perplexity": float(torch.exp(torch.tensor(mean)))}


def train(cfg: SFTConfig) -> int:
    files = {"--train-file": cfg.train_file, "--eval-file": cfg.eval_file}
    check_inputs(cfg.output_dir, files=files, models={"--model": (cfg.model, "causal-lm")})
    run = start_run(cfg, "train sft")
    tokenizer, model = load_model(cfg.model, cfg.seed)
    train_pairs, eval_pairs = load_data(cfg)
    check_batches(
        len(train_pairs),
        cfg.batch_size,
        cfg.grad_accum,
        what="training pairs",
        source=cfg.train_file,
        held_out=len(eval_pairs) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    collate = SFTCollator(tokenizer, cfg.max_length)
    model = prepare_model(model, run, cfg)

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        nll, tokens = response_nll(model, batch)
        return nll / tokens.clamp(min=1), {}

    fit(
        run,
        model,
        train_pairs,
        collate=collate,
        loss=loss,
        weight=lambda batch: batch["response_mask"][:, 1:].sum(),  # the mean is over response tokens
        evaluate=lambda model: evaluate(model, eval_pairs, collate, run.ctx, cfg.batch_size),
        options=cfg,
        description="sft",
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    run.close()
    return 0
