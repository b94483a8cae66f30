"""Run a plan of language-model trainer runs in one torchrun launch, in order:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/lm/torchrun_plan.py PLAN.json

PLAN.json is a list of ``{"trainer": "sft", "options": {...}}``; each run is what
``alignloop train TRAINER`` runs, its config built from the options as ``--config`` would.
The process group is joined once, before the first run, so that no run leaves it (a launch
costs seconds of start-up; several runs share one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import torch

from alignloop.cli import COMMANDS, Command, _load
from alignloop.config import from_mapping


def trainer(name: str) -> tuple[type, Callable[[Any], int]]:
    """The config class and the function of ``alignloop train NAME``."""
    command = COMMANDS["train"].commands[name]  # type: ignore[union-attr]
    assert isinstance(command, Command), name
    return _load(command.config), _load(command.run)


def main() -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    for item in plan:
        config_cls, train = trainer(item["trainer"])
        assert train(from_mapping(config_cls, item["options"])) == 0, item
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
