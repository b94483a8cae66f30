"""alignloop.core.segments by hand: the noisy-or segment logit and the step-counting threshold."""

from __future__ import annotations

import math

import torch

from alignloop.core.segments import count_threshold, segment_cost_logit


def test_segment_cost_logit_by_hand() -> None:
    # z = (0, 0): each step unsafe with p = 1/2; P(some step unsafe) = 1 - 1/4 = 3/4, logit = log 3
    # z = (-inf-ish, 2): P = sigmoid(2), logit = 2
    z = torch.tensor([[0.0, 0.0], [-30.0, 2.0]])
    torch.testing.assert_close(
        segment_cost_logit(z), torch.tensor([math.log(3.0), 2.0]), rtol=1e-5, atol=1e-5
    )
    # many very safe steps stay finite
    assert torch.isfinite(segment_cost_logit(torch.full((1, 50), -200.0))).all()


def test_count_threshold_by_hand() -> None:
    # pair 0: A = [-3, 1, 2] unsafe, B = [-3, -2, -1] safe and safer; pair 1: A = [0.5, -4, -4]
    # unsafe with one unsafe step and safer than B = [3, 2.5, 0.2], unsafe with three.
    # Counting steps with z > b matches every label exactly for b in [-1, 0.2): b >= -1 keeps
    # pair 0's B at 0, b < 0.2 gives pair 1's B three steps against A's one (b < 0.5 keeps A
    # unsafe); b in [0.2, 0.5) still orders pair 1 (2 > 1) -- the lowest best is the answer.
    z = torch.tensor([[[-3.0, 1.0, 2.0], [-3.0, -2.0, -1.0]], [[0.5, -4.0, -4.0], [3.0, 2.5, 0.2]]])
    is_safe = torch.tensor([[False, True], [False, False]])
    b = count_threshold(z, is_safe, torch.tensor([1, 0]), torch.tensor([True, True]))
    assert -1.0 <= b < 0.2, b
    # everything judged safe: no judged step may count, whatever its logit
    b = count_threshold(
        z, torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 0]), torch.tensor([False, False])
    )
    assert b >= 3.0, b
    # a tie asks for equal counts: two unsafe segments [2, 2, -5] and [2, -5, 2], not ranked
    z = torch.tensor([[[2.0, 2.0, -5.0], [2.0, -5.0, 2.0]]])
    b = count_threshold(z, torch.zeros(1, 2, dtype=torch.bool), torch.tensor([0]), torch.tensor([False]))
    assert -5.0 <= b < 2.0, b
