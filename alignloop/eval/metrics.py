"""Evaluation metrics on plain numbers, defined once in `alignloop.core.metrics` (so the
language-model trainers, which sit below `eval`, evaluate with the same definitions); imported
from here as before."""

from alignloop.core.metrics import (
    battles,
    mean_and_stderr,
    outcomes,
    unsafe_rate,
    win_rate,
    win_rate_matrix,
)

__all__ = ["battles", "mean_and_stderr", "outcomes", "unsafe_rate", "win_rate", "win_rate_matrix"]
