"""Supervised fine-tuning: maximise the log-likelihood of target responses given prompts.

    loss = - sum_{response tokens} log pi(y_t | x, y_<t) / (number of response tokens in the batch)

Prompt tokens are context only (`response_mask`); the mean is over every response token of
the global batch, so gradient accumulation and several processes give the same update as
one big batch. Data: a supervised file (`prompt, response`) or a comparison file (its
`better` responses); without a file, the toy world's SFT corpus on a fresh tiny model.

    alignloop train sft --output-dir runs/sft --max-steps 600
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.feedback.schema import SupervisedPair
from alignloop.lm.data import SFTCollator, check_batches, load_supervised
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import (
    apply_lora,
    load_causal_lm,
    load_tokenizer,
    merge_lora,
    position_ids_from_mask,
    token_logprobs,
)
from alignloop.lm.toyworld import ToyWorld, build_policy, build_tokenizer
from alignloop.lm.training import (
    Checkpointer,
    DistributedContext,
    MetricsLogger,
    TrainCommon,
    autocast,
    batch_indices,
    bf16_available,
    clip_grad_norm,
    init_distributed,
    make_optimizer,
    make_scheduler,
    micro_batches,
    seed_everything,
    set_threads,
    unwrap,
)


@dataclass(frozen=True)
class SFTConfig(TrainCommon):
    """Supervised fine-tuning of a causal language model."""

    output_dir: Path = Path("runs/sft")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A Hugging Face model folder, or "toy" for a fresh tiny model on the toy world's tokenizer."""
    train_file: Path | None = None
    """Supervised or comparison file (JSONL, JSON, CSV, Parquet, datasets folder); none = toy-world SFT data."""
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
    ctx = init_distributed()
    set_threads(cfg.threads)
    bf16 = bf16_available(ctx, cfg.bf16)
    seed_everything(cfg.seed)
    model: Any
    tokenizer, model = load_model(cfg.model, cfg.seed)
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    train_pairs, eval_pairs = load_data(cfg)
    collate = SFTCollator(tokenizer, cfg.max_length)

    model = ctx.wrap(model)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    per_epoch = check_batches(
        len(train_pairs),
        cfg.batch_size,
        cfg.grad_accum,
        what="training pairs",
        source=cfg.train_file,
        held_out=len(eval_pairs) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    n_steps = cfg.max_steps or cfg.epochs * per_epoch
    scheduler = make_scheduler(optimizer, cfg.scheduler, cfg.warmup_steps, cfg.total_steps or n_steps)
    checkpointer = Checkpointer(cfg.output_dir, cfg.keep_checkpoints, ctx)
    step = 0
    latest = checkpointer.latest() if cfg.resume else None
    if latest is not None:
        step, _ = checkpointer.load(latest, {"model": model}, {"opt": optimizer}, {"sched": scheduler})
    logger = MetricsLogger(
        cfg.output_dir,
        total_steps=n_steps,
        log_dir=cfg.log_dir,
        enabled=ctx.is_main,
        progress=cfg.progress,
        resume_step=step if latest is not None else None,
        description="sft",
        report_to=cfg.report_to,
    )

    with logger:
        while step < n_steps:
            epoch, done = divmod(step, per_epoch)
            batches = batch_indices(
                len(train_pairs),
                cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
            for indices in batches[done:]:
                model.train()
                micro = [
                    collate([train_pairs[i] for i in part]) for part in micro_batches(indices, cfg.grad_accum)
                ]
                # normalise by the response tokens of the whole global batch (all processes)
                n_tokens = ctx.all_reduce_sum(
                    sum((m["response_mask"][:, 1:].sum() for m in micro), torch.tensor(0))
                )
                total_nll = 0.0
                for i, batch in enumerate(micro):
                    batch = {k: v.to(ctx.device) for k, v in batch.items()}
                    sync = i == len(micro) - 1 or not ctx.distributed
                    with contextlib.nullcontext() if sync else model.no_sync(), autocast(ctx, bf16):
                        nll, _ = response_nll(model, batch)
                        # DDP averages gradients over processes, hence * world_size
                        (nll * ctx.world_size / n_tokens.clamp(min=1)).backward()
                    total_nll += float(nll.detach())
                grad_norm = clip_grad_norm(model, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                loss = ctx.all_reduce_mean(total_nll) * ctx.world_size / max(1, int(n_tokens))
                logger.log(step, {"loss": loss, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]})
                logger.advance(step, f"loss {loss:.3f}")
                if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == n_steps:
                    metrics = evaluate(model, eval_pairs, collate, ctx, cfg.batch_size)
                    logger.log(step, metrics, split="eval")
                if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == n_steps:
                    checkpointer.save(step, {"model": model}, {"opt": optimizer}, {"sched": scheduler})
                if step >= n_steps:
                    break

    if ctx.is_main:
        final = merge_lora(unwrap(model))
        final.save_pretrained(str(cfg.output_dir / "final"))
        tokenizer.save_pretrained(str(cfg.output_dir / "final"))
    ctx.barrier()
    ctx.close()
    return 0
