"""The order in which a run sees its data, the same whatever the process count.

Every function depends only on its arguments, so a resumed run skips the batches already done
and sees exactly the data an uninterrupted run sees, and N processes together see the batches
one process sees.
"""

from __future__ import annotations

import math

import torch


def batch_indices(
    n_items: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This process's share of each global batch of one epoch, shuffled by (seed, epoch).

    Each global batch of `batch_size` is split across processes (rank r takes the r-th slice);
    the last incomplete batch is dropped.
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


def in_order(n_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Batches in file order (no shuffling), split across processes like `batch_indices`."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
    per_rank = batch_size // world_size
    return [
        list(range(start + rank * per_rank, start + (rank + 1) * per_rank))
        for start in range(0, n_items - batch_size + 1, batch_size)
    ]


def micro_batches(indices: list[int], grad_accum: int) -> list[list[int]]:
    """Split one batch's indices into `grad_accum` micro-batches (as equal as possible)."""
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    size = math.ceil(len(indices) / grad_accum)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Whole global batches in one pass over `n_items`."""
    return n_items // batch_size
