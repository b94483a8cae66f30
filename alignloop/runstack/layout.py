"""The run folder, defined once.

Every trainer writes the same layout under its ``--output-dir``::

    run.json           the resolved configuration the run was started (or last resumed) with
    metrics.jsonl      one JSON line per logged record: {"step", "split", name: value, ...}
    tb/                TensorBoard events
    checkpoints/
      step_00000040/   one checkpoint: state.pt (tensors and plain values), meta.json (step,
                       process count, the trainer's extra state as JSON) and manifest.json
                       (size and SHA-256 of both, written last: its presence marks a complete
                       checkpoint)
    final/             the trained model (language models: a Hugging Face folder)

Code that needs one of these paths asks `RunLayout`; nothing else spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUN_CONFIG = "run.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
FINAL = "final"
CHECKPOINT_PREFIX = "step_"
STATE = "state.pt"
META = "meta.json"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp_"


@dataclass(frozen=True)
class RunLayout:
    """Where a run keeps each of its files (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.root / FINAL

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint taken after `step` steps."""
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def checkpoint_tmp(self, step: int) -> Path:
        """Where the checkpoint of `step` is written before it is renamed into place."""
        return self.checkpoints / f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step:08d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Every checkpoint folder (complete or not, never a temporary one), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
        return sorted(found, key=lambda p: p.name)

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        """The step a checkpoint folder is named after."""
        return int(Path(path).name.removeprefix(CHECKPOINT_PREFIX))
