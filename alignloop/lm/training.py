"""What every language-model trainer shares: seeds, processes, optimiser and schedule,
deterministic batches, checkpoints that resume exactly, and metric logging.

No training math lives here (that is `alignloop.core`); these are the plain pieces each trainer
wires together top to bottom in its own file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from alignloop.errors import UserError

Scheduler = Literal["cosine", "linear", "constant"]
ReportTo = Literal["tensorboard", "wandb", "none"]


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
    report_to: tuple[ReportTo, ...] = ("tensorboard",)
    """Where metrics go besides metrics.jsonl: tensorboard (log_dir), wandb (Weights & Biases, the
    `alignloop[wandb]` extra; project $WANDB_PROJECT, default alignloop), both, or none."""


# ------------------------------------------------------------------------ seeds and processes
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistributedContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel when several processes run, else as is."""
        model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_reduce_mean(self, value: torch.Tensor | float) -> Any:
        """Mean over processes (a float in, a float out; a tensor in, a tensor out)."""
        if not self.distributed:
            return value
        t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        t = t.to(self.device, torch.float64 if t.is_floating_point() else t.dtype)
        torch.distributed.all_reduce(t)
        t /= self.world_size
        return t.to(value.dtype) if isinstance(value, torch.Tensor) else float(t)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return value
        t = value.detach().clone().to(self.device)
        torch.distributed.all_reduce(t)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed() -> DistributedContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; join a process group (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, device)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def set_threads(threads: int) -> None:
    """Set torch's CPU threads when asked (0 = keep the default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def bf16_available(ctx: DistributedContext, bf16: bool) -> bool:
    """Whether bf16 autocast will be used; says so once when asked for but unavailable."""
    usable = ctx.device.type == "cuda" and torch.cuda.is_bf16_supported()
    if bf16 and not usable and ctx.is_main:
        print("bf16: needs a CUDA device with bfloat16 support; training in float32")
    return bf16 and usable


def autocast(ctx: DistributedContext, bf16: bool) -> Any:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""
    enabled = bf16 and ctx.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------ optimiser and schedule
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


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: Scheduler,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine or linear decay to `min_lr_ratio` of the
    peak at `total_steps`, or constant."""
    schedules = ("cosine", "linear", "constant")
    if kind not in schedules:
        raise ValueError(f"scheduler: {kind!r} is not one of {', '.join(schedules)}")

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (when max_norm > 0); return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# ------------------------------------------------------------------------ data order
def batch_indices(
    n_items: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This process's share of each global batch of one epoch, shuffled by (seed, epoch).

    The order depends only on the arguments, so a resumed run skips the batches already
    done and sees exactly the same data. Each global batch of `batch_size` is split across
    processes; the last incomplete batch is dropped.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_items, generator=g).tolist()
    per_rank = batch_size // world_size
    return [
        order[start + rank * per_rank : start + (rank + 1) * per_rank]
        for start in range(0, n_items - batch_size + 1, batch_size)
    ]


def micro_batches(indices: list[int], grad_accum: int) -> list[list[int]]:
    """Split one batch's indices into `grad_accum` micro-batches (as equal as possible)."""
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    size = math.ceil(len(indices) / grad_accum)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    return n_items // batch_size


# ------------------------------------------------------------------------ checkpoints
def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Checkpoints in `run_dir/checkpoints/step_XXXXXXXX/state.pt`, written atomically.

    A checkpoint holds model, optimiser and scheduler states, every process's RNG states and
    whatever the trainer puts in `extra` (its data position: epoch and batch). It is written to
    a temporary folder and renamed into place, so a run killed mid-save leaves the previous
    checkpoint intact. Under several processes every one must call `save` (RNG states are
    gathered); only the main process writes.
    """

    def __init__(self, run_dir: str | Path, keep: int = 2, ctx: DistributedContext | None = None):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.ctx = ctx or DistributedContext()

    def save(
        self,
        step: int,
        models: dict[str, nn.Module],
        optimizers: dict[str, Any] | None = None,
        schedulers: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path | None:
        rng_states = self.ctx.gather_objects(_rng_state())
        final = self.dir / f"step_{step:08d}"
        if self.ctx.is_main:
            state = {
                "step": step,
                "models": {k: unwrap(m).state_dict() for k, m in models.items()},
                "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
                "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
                "rng": rng_states,
                "world_size": self.ctx.world_size,
                "extra": extra or {},
            }
            tmp = self.dir / f".tmp_step_{step:08d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save(state, tmp / "state.pt")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.all()[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
        return final if self.ctx.is_main else None

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("step_*") if (p / "state.pt").is_file())

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def load(
        self,
        path: str | Path,
        models: dict[str, nn.Module],
        optimizers: dict[str, Any] | None = None,
        schedulers: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Restore states in place (and this process's RNG); return (step, extra)."""
        file = Path(path) / "state.pt"
        try:
            state = torch.load(file, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
            raise UserError(f"{file}: the checkpoint is damaged and cannot be read ({reason})") from exc
        for k, m in models.items():
            try:
                unwrap(m).load_state_dict(state["models"][k])
            except RuntimeError as exc:  # another architecture or size than the run was started with
                raise UserError(
                    f"--resume: {file} holds a model of another shape than --model gives "
                    f"({str(exc).splitlines()[-1].strip()}); resume with the run's own options, or "
                    "start afresh in another --output-dir"
                ) from exc
        for k, o in (optimizers or {}).items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in (schedulers or {}).items():
            s.load_state_dict(state["schedulers"][k])
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"{path}: saved by {state['world_size']} process(es), resumed with {self.ctx.world_size}"
            )
        _set_rng_state(state["rng"][self.ctx.rank])
        return int(state["step"]), dict(state["extra"])


# ------------------------------------------------------------------------ metrics
def check_report_to(report_to: tuple[str, ...] | list[str]) -> None:
    """A `UserError` for `--report-to` values that cannot be used: none with others, wandb missing."""
    if "none" in report_to and len(report_to) > 1:
        raise UserError(f"--report-to {' '.join(report_to)}: none means no other sink; give it alone")
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError(
                "--report-to wandb needs the wandb package: pip install 'alignloop[wandb]'"
            ) from None


class WandbSink:
    """Metrics to Weights & Biases: one wandb run per run folder, continued when the run resumes
    (its id is kept in `run_dir/wandb-run-id`). `WANDB_MODE=offline` keeps it on disk."""

    def __init__(self, run_dir: str | Path, name: str):
        import wandb

        id_file = Path(run_dir) / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        project = os.environ.get("WANDB_PROJECT", "alignloop")
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Metrics to TensorBoard and `run_dir/metrics.jsonl` (one JSON line per call), plus a
    rich progress bar. Only the main process writes; on resume, lines past the checkpoint's
    step are dropped so the file reads as one uninterrupted run."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int | None = None,
        log_dir: str | Path | None = None,
        enabled: bool = True,
        progress: bool = True,
        resume_step: int | None = None,
        description: str = "training",
        report_to: tuple[str, ...] | list[str] = ("tensorboard",),
    ):
        check_report_to(report_to)
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer: Any = None
        self._wandb: WandbSink | None = None
        self._progress: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.is_file():
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir or Path(run_dir) / "tb"))
        if "wandb" in report_to:
            self._wandb = WandbSink(run_dir, Path(run_dir).name)
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                description, total=total_steps, completed=resume_step or 0, info=""
            )

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        """Record `metrics` (floats or 0-d tensors) at `step` under `split`."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in values.items()}, step)

    def advance(self, step: int, info: str = "") -> None:
        """Move the progress bar to `step`, with a short status text."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path, split: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of a run's metrics.jsonl (optionally one split)."""
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if split is None or record["split"] == split:
            yield record
