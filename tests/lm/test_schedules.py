"""The trainers' learning-rate schedules by hand: linear warm-up, then linear or no decay
(the cosine one is in test_sft.py)."""

from __future__ import annotations

import pytest
import torch

from alignloop.lm.training import make_scheduler


def _rates(kind: str, min_lr_ratio: float = 0.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, kind, warmup_steps=2, total_steps=6, min_lr_ratio=min_lr_ratio)  # type: ignore[arg-type]
    rates = []
    for _ in range(7):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_linear_decay_after_warm_up() -> None:
    # warm-up (s + 1) / 2 for s < 2; then 1 - (s - 2) / 4: s=2 1, s=3 0.75, s=4 0.5, s=5 0.25, s=6 0
    assert _rates("linear") == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0], rel=1e-6, abs=1e-12)
    # to a floor of 0.2 of the peak: 0.2 + 0.8 * (1 - (s - 2) / 4)
    assert _rates("linear", 0.2) == pytest.approx([0.5, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2], rel=1e-6)


def test_constant_after_warm_up() -> None:
    assert _rates("constant") == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], rel=1e-6)


def test_unknown_schedule_names_the_choices() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="'step' is not one of cosine, linear, constant"):
        make_scheduler(opt, "step", warmup_steps=0, total_steps=1)  # type: ignore[arg-type]
