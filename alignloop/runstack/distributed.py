"""The process group, the data-parallel strategies and mixed precision.

`init_distributed` reads torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the
process group (gloo on CPU, NCCL on CUDA); a single process needs nothing. `wrap_model` applies
a strategy from `STRATEGIES` when several processes run:

- ``ddp``: every process holds the whole model; gradients are all-reduced (DistributedDataParallel);
- ``fsdp``: parameters, gradients and optimiser state are sharded with PyTorch's FSDP2
  (`fully_shard`): each transformer block is gathered for its forward and backward and freed
  again (like DeepSpeed ZeRO-3);
- ``fsdp-grad-op``: the same shards, but gathered parameters are kept from forward to
  backward (only gradients and optimiser state stay sharded: ZeRO-2), one all-gather less.

Checkpoints stay plain: `checkpoint_states` hands `Checkpointer` a `FullState` for a sharded
model and its optimiser, which gathers full tensors on the main process when saving and gives
each process its shard back when loading, so a checkpoint is the same whatever the strategy.
Nothing here imports transformers: the FSDP units are the classes a model names in its
``_no_split_modules`` attribute (every Hugging Face model lists its decoder block there).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from alignloop.errors import UserError

Strategy = Literal["ddp", "fsdp", "fsdp-grad-op"]


@dataclass
class DistributedContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    """Whether `init_distributed` created the process group (then `close` destroys it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model on this process's device, in DistributedDataParallel when several run."""
        return wrap_model(model, self, "ddp")

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
        """Sum over processes (on this process's device)."""
        if not self.distributed:
            return value
        t = value.detach().clone().to(self.device)
        torch.distributed.all_reduce(t)
        return t

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        """Every process's tensor (all of the same shape), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return value
        local = value.detach().contiguous().to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.cat(parts).to(value.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's picklable object, in rank order (on every process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on at least one."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def init_distributed() -> DistributedContext:
    """This process's context from torchrun's environment; joins the process group (gloo on CPU,
    nccl on CUDA) unless one is already up, so that several trainers can run in one launch."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    return DistributedContext(rank, world_size, local_rank, device, owns)


def set_threads(threads: int) -> None:
    """Set torch's CPU threads when asked (0 = keep the default)."""
    if threads > 0:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------ strategies
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (an FSDP2 model is its own module)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` is sharded with FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def _replicate(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard_model(model: nn.Module, reshard_after_forward: bool = True) -> nn.Module:
    """Shard `model` in place across the process group with FSDP2 and return it.

    The units are the modules whose class is named in the ``_no_split_modules`` of the model or
    of one of its submodules (a Hugging Face model lists its decoder block there; a score model
    finds it on its backbone); the root, which keeps what is left (embeddings, final norm,
    heads), is sharded last. ``reshard_after_forward=True`` frees each block's gathered
    parameters after its forward (ZeRO-3); False keeps them until the backward (ZeRO-2).
    """
    from torch.distributed.fsdp import fully_shard

    block_names: set[str] = set()
    for module in model.modules():
        block_names |= set(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise UserError(
            f"--strategy fsdp: {type(model).__name__} names no transformer block class in "
            "_no_split_modules, so it cannot be sharded; use --strategy ddp"
        )
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


STRATEGIES: dict[str, Callable[[nn.Module, DistributedContext], nn.Module]] = {
    "ddp": _replicate,
    "fsdp": lambda model, ctx: shard_model(model, reshard_after_forward=True),
    "fsdp-grad-op": lambda model, ctx: shard_model(model, reshard_after_forward=False),
}
"""How several processes share a model (the module docstring); one process uses none."""


def wrap_model(model: nn.Module, ctx: DistributedContext, strategy: str) -> nn.Module:
    """`model` on this process's device under `strategy` when several processes run, else as is."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    model.to(ctx.device)
    if not ctx.distributed:
        return model
    return STRATEGIES[strategy](model, ctx)


@contextlib.contextmanager
def gradient_sync(models: Iterable[nn.Module], ctx: DistributedContext, sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for micro-batches before the last one (``sync=False``).
    FSDP models reduce their gradient shards every micro-batch."""
    with contextlib.ExitStack() as stack:
        if ctx.distributed and not sync:
            for model in models:
                if not is_sharded(model) and hasattr(model, "no_sync"):
                    stack.enter_context(model.no_sync())  # type: ignore[operator]
        yield


class FullState:
    """The full state of an FSDP-sharded model (or of its optimiser, when one is given) with
    the ``state_dict`` / ``load_state_dict`` interface `Checkpointer` expects.

    `gather()` is a collective: every process calls it before ``state_dict()`` (the
    checkpointer does); the full tensors land on the main process, on the CPU.
    ``load_state_dict`` takes a full state on every process and keeps each process's shard.
    """

    def __init__(self, model: nn.Module, optimizer: Any = None):
        self.model, self.optimizer = model, optimizer
        self._state: dict[str, Any] | None = None

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def gather(self) -> FullState:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        if self.optimizer is None:
            self._state = get_model_state_dict(self.model, options=self._options())
        else:
            self._state = get_optimizer_state_dict(self.model, self.optimizer, options=self._options())
        return self

    def state_dict(self) -> dict[str, Any]:
        if self._state is None:
            raise RuntimeError("FullState.gather() must run on every process before state_dict()")
        state, self._state = self._state, None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        if self.optimizer is None:
            set_model_state_dict(self.model, state, options=self._options())
        else:
            set_optimizer_state_dict(self.model, self.optimizer, state, options=self._options())


def checkpoint_states(
    models: dict[str, nn.Module], optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What `Checkpointer` saves and loads for `models` and `optimizers` (each optimiser with the
    model it updates): the objects themselves, or a `FullState` for a sharded model and its
    optimiser."""
    saved_models = {k: FullState(m) if is_sharded(m) else m for k, m in models.items()}
    saved_optimizers = {k: FullState(m, opt) if is_sharded(m) else opt for k, (m, opt) in optimizers.items()}
    return saved_models, saved_optimizers


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's full state on the main process (None elsewhere); a collective under FSDP."""
    if is_sharded(model):
        state = FullState(model).gather().state_dict()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return state if rank == 0 else None
    return unwrap(model).state_dict()


# ------------------------------------------------------------------------ precision
def bf16_available(ctx: DistributedContext, bf16: bool) -> bool:
    """Whether bf16 autocast will be used; says once (on stderr) when it is asked for but the
    device cannot, and training goes on in float32."""
    usable = ctx.device.type == "cuda" and torch.cuda.is_bf16_supported()
    if bf16 and not usable and ctx.is_main:
        print("--bf16: needs a CUDA device with bfloat16 support; training in float32", file=sys.stderr)
    return bf16 and usable


def autocast(ctx: DistributedContext, bf16: bool) -> Any:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""
    enabled = bf16 and ctx.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=enabled)
