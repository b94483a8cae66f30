"""AdamW with the usual parameter groups, the learning-rate schedule, gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

Scheduler = Literal["cosine", "linear", "constant"]
SCHEDULERS = ("cosine", "linear", "constant")


def make_optimizer(
    model: nn.Module | Iterable[nn.Module],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D)."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def schedule_factor(
    step: int, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The learning rate at `step` as a share of the peak: linear warm-up over `warmup_steps`,
    then cosine or linear decay to `min_lr_ratio` at `total_steps`, or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: Scheduler,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """`schedule_factor` as a torch scheduler (one `step()` per optimiser step)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler: {kind!r} is not one of {', '.join(SCHEDULERS)}")

    def factor(step: int) -> float:
        return schedule_factor(step, kind, warmup_steps, total_steps, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (when max_norm > 0); return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
