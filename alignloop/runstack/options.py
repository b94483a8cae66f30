"""The options every trainer has, spelled the same in every command.

`RunOptions` is the one place their names, defaults and ``--help`` texts are written; the
language-model trainers (`alignloop.lm.training.TrainCommon`) and the control trainers extend
it. A command keeps its old spellings working (`upgrade_args`, called by `alignloop.config.parse`
through the config's ``upgrade_args`` class method) with a deprecation note. How long a run is
stays the trainer's own (``--max-steps`` optimiser steps or iterations
for language models, ``--total-env-steps`` environment steps for control), and so does
``--eval-every``, which only the language-model trainers have.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ReportTo = Literal["tensorboard", "wandb", "none"]


@dataclass(frozen=True)
class RunOptions:
    """Options of every trainer's run."""

    output_dir: Path = Path("runs/run")
    """Run folder: run.json (the resolved options), metrics.jsonl, tb/, checkpoints/ and the result in final/."""
    seed: int = 0
    """Random seed: equal seeds give equal runs."""
    resume: bool = False
    """Continue the run in the output folder from its newest intact checkpoint; refused when
    there is none, or when an option that defines the model differs from the run's. Without it
    a run starts afresh and removes checkpoints an earlier run left in the folder."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk (a damaged newest one falls back to the one before)."""
    save_every: int = 100
    """Save a checkpoint every this many steps, and at the end (0 = only at the end)."""
    progress: bool = True
    """Show a progress bar."""
    report_to: tuple[ReportTo, ...] = ("tensorboard",)
    """Where metrics go besides metrics.jsonl: tensorboard (the run's tb/), wandb (Weights &
    Biases, the `alignloop[wandb]` extra; project $WANDB_PROJECT, default alignloop), both, or none."""


def upgrade_args(args: list[str], renamed: Mapping[str, str], prog: str) -> list[str]:
    """`args` with each deprecated flag of `renamed` (old -> new, as ``--total-steps``) spelled
    the new way, ``--old=value`` included; says so on stderr once per flag."""
    out, noted = [], set()
    for arg in args:
        flag, eq, value = arg.partition("=")
        new = renamed.get(flag)
        if new is None:
            out.append(arg)
            continue
        if flag not in noted:
            print(f"{prog}: {flag} is deprecated; use {new}", file=sys.stderr)
            noted.add(flag)
        out.append(f"{new}{eq}{value}")
    return out
