"""What every language-model trainer shares: the options, and the run stack's pieces.

The pieces themselves (seeds, processes and strategies, optimiser and schedule, the data order,
checkpoints, metrics) live in `alignloop.runstack`, shared with the control trainers; they are
re-exported here under the names the trainers have always used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.runstack.batches import batch_indices, in_order, micro_batches, steps_per_epoch
from alignloop.runstack.checkpoint import Checkpointer, CheckpointError
from alignloop.runstack.distributed import (
    DistributedContext,
    autocast,
    bf16_available,
    init_distributed,
    set_threads,
    unwrap,
)
from alignloop.runstack.metrics import MetricsLogger, read_metrics
from alignloop.runstack.optim import Scheduler, clip_grad_norm, make_optimizer, make_scheduler
from alignloop.runstack.seeding import seed_everything

__all__ = [
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
    "in_order",
    "init_distributed",
    "make_optimizer",
    "make_scheduler",
    "micro_batches",
    "read_metrics",
    "seed_everything",
    "set_threads",
    "steps_per_epoch",
    "unwrap",
]


@dataclass(frozen=True)
class TrainCommon:
    """Options every trainer has."""

    seed: int = 0
    """Random seed (model init, data order, sampling)."""
    output_dir: Path = Path("runs/train")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    batch_size: int = 32
    """Examples per optimiser step across all processes (before accumulation splits it)."""
    grad_accum: int = 1
    """Split each batch into this many micro-batches, accumulating gradients."""
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
    """Length of the schedule (0 = the run's length); set it to stop early on the same schedule."""
    eval_every: int = 50
    """Evaluate every this many steps, and at the end (0 = only at the end)."""
    save_every: int = 100
    """Save a checkpoint every this many steps, and at the end (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    resume: bool = False
    """Continue from the newest checkpoint in output_dir/checkpoints."""
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    log_dir: Path | None = None
    """TensorBoard folder (default output_dir/tb)."""
    bf16: bool = False
    """bfloat16 autocast on a GPU; ignored (with a note) on CPU."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""
    progress: bool = True
    """Show a progress bar."""
