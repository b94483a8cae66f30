"""The one training loop of the supervised language-model trainers, and what every LM trainer shares.

`alignloop.runstack` holds the pieces (run folder, processes and strategies, checkpoints,
metrics, resume); this module puts them together for language models:

- `TrainCommon`: the options every LM trainer has (on top of `RunOptions`);
- `start_run`: threads, seeds and `Run.start` (the ``--resume`` rule, run.json);
- `prepare_model`: dropout off, LoRA, gradient checkpointing, then DDP or FSDP;
- `fit`: the supervised loop SFT, the reward and cost models, DPO and the aligner share. A
  trainer gives it its examples, its collate function, its loss and its evaluation; the loop
  does the rest: the data order (shuffled by seed and epoch, or in file order), micro-batches,
  the loss averaged over the global batch, clipping, the schedule, evaluation, checkpoints,
  metrics and exact resume;
- `save_final`: the trained model as a plain Hugging Face folder (LoRA merged, FSDP gathered).

The loss a trainer returns is a mean over the "units" of its micro-batch (pairs, or response
tokens), and ``weight(batch)`` says how many units the micro-batch has. The loop scales each
micro-batch by its share of the units of the whole global batch (all micro-batches of all
processes), so one process, N processes and gradient accumulation make the same update up to
float rounding, whatever the padding.

A step of the progress bar, the metrics and ``--max-steps`` is one optimiser step. The
learning-rate schedule is ``--total-steps`` long, or the run's length; a resume that would
change that length is refused unless ``--total-steps`` says (`runstack.run.check_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignloop.errors import UserError
from alignloop.runstack.batches import batch_indices, in_order, micro_batches, steps_per_epoch
from alignloop.runstack.checkpoint import Checkpointer, CheckpointError
from alignloop.runstack.distributed import (
    DistributedContext,
    Strategy,
    autocast,
    bf16_available,
    checkpoint_states,
    full_model_state,
    gradient_sync,
    init_distributed,
    is_sharded,
    set_threads,
    unwrap,
    wrap_model,
)
from alignloop.runstack.metrics import MetricsLogger, check_report_to, read_metrics
from alignloop.runstack.optim import Scheduler, clip_grad_norm, make_optimizer, make_scheduler
from alignloop.runstack.options import RunOptions
from alignloop.runstack.run import Run
from alignloop.runstack.seeding import seed_everything

__all__ = [
    "MODEL_OPTIONS",
    "CheckpointError",
    "Checkpointer",
    "DistributedContext",
    "MetricsLogger",
    "Scheduler",
    "TrainCommon",
    "autocast",
    "batch_indices",
    "bf16_available",
    "clip_grad_norm",
    "disable_dropout",
    "fit",
    "in_order",
    "init_distributed",
    "make_optimizer",
    "make_scheduler",
    "micro_batches",
    "prepare_model",
    "read_metrics",
    "save_final",
    "seed_everything",
    "set_threads",
    "start_run",
    "steps_per_epoch",
    "unwrap",
]

MODEL_OPTIONS = ("model", "ref_model", "policy", "reward_model", "cost_model", "lora_r", "lora_alpha")
"""Options that define what a language-model run trains; a resume must not change them."""

Batch = dict[str, Tensor]
Loss = Callable[[nn.Module, Batch], tuple[Tensor, dict[str, Any]]]


@dataclass(frozen=True)
class TrainCommon(RunOptions):
    """Options every language-model trainer has."""

    output_dir: Path = Path("runs/train")
    """Run folder: run.json, checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    batch_size: int = 32
    """Examples per optimiser step across all processes (before accumulation splits it)."""
    grad_accum: int = 1
    """Split each process's share of a batch into this many micro-batches, accumulating gradients."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    warmup_steps: int = 10
    """Linear warm-up steps before the schedule."""
    scheduler: Scheduler = "cosine"
    """Learning-rate schedule after warm-up."""
    epochs: int = 1
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run `epochs`)."""
    total_steps: int = 0
    """Length of the learning-rate schedule (0 = the run's length); set it to stop early on the
    same schedule, or to extend a finished run (a resume that changes the length needs it)."""
    eval_every: int = 50
    """Evaluate every this many steps, and at the end (0 = only at the end)."""
    shuffle: bool = True
    """Shuffle the training data each epoch (False: file order, e.g. for benchmarks)."""
    strategy: Strategy = "ddp"
    """With several processes (torchrun): replicate the model (ddp), shard parameters,
    gradients and optimiser state (fsdp, like ZeRO-3), or gradients and optimiser state only
    (fsdp-grad-op, like ZeRO-2)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, more compute)."""
    disable_dropout: bool = True
    """Turn dropout off in the trained model (keeps runs reproducible; RLHF and DPO expect it)."""
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    log_dir: Path | None = None
    """TensorBoard folder (default output_dir/tb)."""
    bf16: bool = False
    """bfloat16 autocast on a GPU that supports it; on CPU a note says so and training runs in float32."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""


# ------------------------------------------------------------------------ set-up
def start_run(cfg: TrainCommon, command: str, seed_offset: int = 0) -> Run:
    """Threads, the process group, seeds (``seed + seed_offset``) and `Run.start`."""
    check_report_to(cfg.report_to)
    set_threads(cfg.threads)
    ctx = init_distributed()
    if cfg.batch_size % ctx.world_size:
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world_size} processes; "
            "choose a multiple of the process count"
        )
    seed_everything(cfg.seed + seed_offset)
    return Run.start(
        cfg.output_dir,
        command=command,
        config=cfg,
        resume=cfg.resume,
        keep_checkpoints=cfg.keep_checkpoints,
        must_match=MODEL_OPTIONS,
        ctx=ctx,
    )


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: `nn.Dropout` modules and attention dropout rates."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0  # type: ignore[assignment]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Hugging Face gradient checkpointing (non-reentrant) on a causal LM or a score model's backbone."""
    target: Any = getattr(model, "backbone", model)
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(target, "gradient_checkpointing_enable"):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise UserError(f"--gradient-checkpointing: {type(target).__name__} does not support it")
    if getattr(target, "config", None) is not None:
        target.config.use_cache = False


def prepare_model(model: nn.Module, run: Run, cfg: TrainCommon, lora: bool = True) -> nn.Module:
    """The model ready to train under `cfg`: dropout off (``--disable-dropout``), LoRA
    adapters (``--lora-r``; not with ``lora=False``, e.g. for PPO's critics), gradient
    checkpointing, then on this process's device under ``--strategy`` when several processes run."""
    from alignloop.lm.models import apply_lora

    if cfg.disable_dropout:
        disable_dropout(model)
    if lora and cfg.lora_r > 0:
        if run.ctx.distributed and cfg.strategy != "ddp":
            raise UserError(
                f"--strategy {cfg.strategy} with --lora-r {cfg.lora_r} is not supported; use --strategy ddp "
                "with LoRA (the frozen base model is then the only full copy, the adapters are small)"
            )
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return wrap_model(model, run.ctx, cfg.strategy)


# ------------------------------------------------------------------------ the loop
def fit(
    run: Run,
    model: nn.Module,
    examples: Sequence[Any],
    *,
    collate: Callable[[list[Any]], Batch],
    loss: Loss,
    weight: Callable[[Batch], Any],
    evaluate: Callable[[nn.Module], dict[str, float]],
    options: TrainCommon,
    description: str,
    shown: Sequence[str] = ("loss",),
    evaluate_first: bool = False,
) -> int:
    """Train `model` (from `prepare_model`) on `examples`; returns the steps done.

    ``loss(model, batch) -> (mean loss, metrics)`` over the micro-batch's units, of which
    ``weight(batch)`` counts; ``evaluate(model)`` gives the held-out metrics (called on every
    process). `shown` are the metrics on the progress bar; `evaluate_first` also evaluates the
    starting model (step 0) of a fresh run.
    """
    ctx, o = run.ctx, options
    from alignloop.lm.data import check_batches  # the trainers call it first, naming their file

    per_epoch = check_batches(
        len(examples), o.batch_size, o.grad_accum, what="training examples", source=None
    )
    n_steps = o.max_steps or o.epochs * per_epoch
    schedule_steps = o.total_steps or n_steps
    optimizer = make_optimizer(model, o.lr, o.weight_decay)
    scheduler = make_scheduler(optimizer, o.scheduler, o.warmup_steps, schedule_steps)
    models, optimizers = checkpoint_states({"model": model}, {"opt": (model, optimizer)})
    step, extra = run.restore_checked(
        models,
        optimizers,
        {"sched": scheduler},
        schedule_steps=schedule_steps,
        explicit=o.total_steps > 0,
        constant=o.scheduler == "constant",  # its warm-up does not depend on the length either
    )
    bf16 = bf16_available(ctx, o.bf16)
    logger = run.logger(
        total_steps=n_steps,
        description=description,
        resume_step=step,
        progress=o.progress,
        log_dir=o.log_dir,
        report_to=o.report_to,
    )

    def held_out() -> dict[str, float]:
        with autocast(ctx, bf16):
            return evaluate(model)

    with logger:
        if evaluate_first and step == 0:
            logger.log(0, held_out(), split="eval")
        while step < n_steps:
            epoch, done = divmod(step, per_epoch)
            if o.shuffle:
                order = batch_indices(
                    len(examples),
                    o.batch_size,
                    seed=o.seed,
                    epoch=epoch,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                )
            else:
                order = in_order(len(examples), o.batch_size, ctx.rank, ctx.world_size)
            for indices in order[done:]:
                model.train()
                batches = [
                    collate([examples[i] for i in part]) for part in micro_batches(indices, o.grad_accum)
                ]
                weights = [float(weight(b)) for b in batches]
                # every unit of the global batch counts once: micro-batches of all processes
                total = float(ctx.all_reduce_sum(torch.tensor(sum(weights), dtype=torch.float64)))
                sums: dict[str, float] = {}
                for i, batch in enumerate(batches):
                    batch = {k: v.to(ctx.device) for k, v in batch.items()}
                    with gradient_sync([model], ctx, sync=i == len(batches) - 1), autocast(ctx, bf16):
                        value, metrics = loss(model, batch)
                        # DDP and FSDP average gradients over processes, hence * world_size
                        (value * (weights[i] * ctx.world_size / max(total, 1.0))).backward()
                    for key, v in {"loss": value, **metrics}.items():
                        v = v.detach() if isinstance(v, Tensor) else v
                        sums[key] = sums.get(key, 0.0) + float(v) * weights[i]
                grad_norm = clip_grad_norm(model, o.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                reduced = ctx.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
                logged = {k: float(v) / max(total, 1.0) for k, v in zip(sums, reduced.tolist(), strict=True)}
                logged.update(grad_norm=grad_norm, lr=float(scheduler.get_last_lr()[0]))
                logger.log(step, logged)
                logger.advance(step, "  ".join(f"{k} {logged[k]:.3f}" for k in shown))
                if (o.eval_every > 0 and step % o.eval_every == 0) or step == n_steps:
                    logger.log(step, held_out(), split="eval")
                if (o.save_every > 0 and step % o.save_every == 0) or step == n_steps:
                    extra = {"schedule_steps": schedule_steps}
                    run.checkpointer.save(step, models, optimizers, {"sched": scheduler}, extra)
                if step >= n_steps:
                    break
    return step


# ------------------------------------------------------------------------ the result
def save_final(model: nn.Module, tokenizer: Any, path: Path, ctx: DistributedContext) -> None:
    """The trained model as a plain Hugging Face folder with its tokenizer: LoRA adapters
    merged, FSDP shards gathered (every process takes part), a score model with its head."""
    from alignloop.lm.models import ScoreModel, merge_lora

    state = full_model_state(model) if is_sharded(model) else None  # a collective under FSDP
    if ctx.is_main:
        plain: Any = unwrap(model)
        if state is not None:
            plain = _rebuilt(plain, state)
        if isinstance(plain, ScoreModel):
            plain.save_pretrained(path, tokenizer=tokenizer)
        else:
            merge_lora(plain).save_pretrained(str(path))
            tokenizer.save_pretrained(str(path))
    ctx.barrier()


def _rebuilt(sharded: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """An unsharded copy of an FSDP model (a causal LM or a score model) holding `state`."""
    from transformers import AutoModel, AutoModelForCausalLM

    from alignloop.lm.models import ScoreModel

    if isinstance(sharded, ScoreModel):
        plain: nn.Module = ScoreModel(
            AutoModel.from_config(sharded.config), sharded.score_head.bias is not None
        )
    else:
        plain = AutoModelForCausalLM.from_config(sharded.config)  # type: ignore[arg-type]
    plain.load_state_dict(state)
    return plain
