"""Which pairs are worth a person's time: uncertainty scores of the reward and cost models.

Active query selection in the spirit of Christiano et al. 2017 (ask where the reward model is
unsure) extended to the Safe RLHF pair of models: a pair is worth asking when the reward model
cannot rank its two responses, or the cost model cannot tell whether one of them is safe.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sign_uncertainty(cost: Tensor) -> Tensor:
    """How unsure a cost score is of its safety sign, ``1 - |2 sigmoid(c) - 1|``, elementwise in
    [0, 1]: 1 on the safe/unsafe boundary c = 0, towards 0 far from it."""
    return 1.0 - (2.0 * torch.sigmoid(cost) - 1.0).abs()


def item_disagreement(rewards: Tensor, costs: Tensor | None = None) -> Tensor:
    """Item scores in [0, 1] from the end rewards and end costs of an item's K candidates,
    each (N, K): the mean over its K(K-1)/2 pairs of the reward model's uncertainty on their
    order, ``1 - |2 sigmoid(r_i - r_j) - 1|``, averaged with the cost model's largest
    `sign_uncertainty` over the candidates (without costs, the reward part alone). Returns (N,).
    """
    i, j = torch.triu_indices(rewards.shape[1], rewards.shape[1], offset=1)
    u_reward = sign_uncertainty(rewards[:, i] - rewards[:, j]).mean(1)  # (N,) the same form, on margins
    if costs is None:
        return u_reward
    return (u_reward + sign_uncertainty(costs).max(1).values) / 2.0


def pair_disagreement(r_a: Tensor, r_b: Tensor, c_a: Tensor, c_b: Tensor) -> Tensor:
    """`item_disagreement` of pairs, from end rewards and costs of responses A and B, each (N,):
    the mean of the reward model's uncertainty on the order (1 at P(A > B) = 1/2, 0 when
    certain) and the cost model's largest `sign_uncertainty` over c in {c_a, c_b} (cost 0 is
    the safe/unsafe boundary). Returns (N,).
    """
    return item_disagreement(torch.stack([r_a, r_b], 1), torch.stack([c_a, c_b], 1))
