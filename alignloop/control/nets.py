"""Small networks for control: the actor, the critics and the per-step reward/cost models.

The distributions are written out (log-density and entropy of a diagonal Gaussian, of a
categorical) rather than built as ``torch.distributions`` objects: the rollout calls the actor
once per environment step, where object construction and argument validation would cost more
than the network itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "Actor", "Critic", "CostModel", "StepModel"]

_LOG_2PI = math.log(2 * math.pi)


class MLP(nn.Module):
    """Linear layers with an activation between them; orthogonal init (gain sqrt 2 for hidden
    layers, ``out_gain`` for the last) and zero biases, as in the PPO baselines.

    ``forward`` applies the layers' weights with ``F.linear`` directly instead of calling each
    layer as a module: the rollout runs these nets once per environment step, where per-module
    call overhead would cost as much as the arithmetic."""

    def __init__(self, sizes: list[int], activation: str = "tanh", out_gain: float = 1.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        linears = [nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
        for i, layer in enumerate(linears):
            nn.init.orthogonal_(layer.weight, gain=out_gain if i == len(linears) - 1 else math.sqrt(2))
            nn.init.zeros_(layer.bias)
        self.layers = nn.ModuleList(linears)
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        self._params = [(layer.weight, layer.bias) for layer in linears]  # the same Parameter objects

    @property
    def last(self) -> nn.Linear:
        layer = self.layers[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        *hidden, (w_out, b_out) = self._params
        for w, b in hidden:
            x = self._act(F.linear(x, w, b))
        return F.linear(x, w_out, b_out)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "leaky_relu": F.leaky_relu}


class Actor(nn.Module):
    """pi(a | s): a diagonal Gaussian with a state-independent log std for Box actions, a
    categorical for Discrete actions."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        if isinstance(action_space, gym.spaces.Box):
            self.discrete = False
            out = int(np.prod(action_space.shape))
            self.log_std = nn.Parameter(torch.zeros(out))
        elif isinstance(action_space, gym.spaces.Discrete):
            self.discrete = True
            out = int(action_space.n)
        else:
            raise ValueError(f"action space {action_space} is not supported; use Box or Discrete")
        self.net = MLP([obs_dim, *hidden, out], out_gain=0.01)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Draw actions for ``obs`` (B, obs_dim); returns ``(actions, logprobs (B,))``. Box
        actions are (B, act_dim) and unclipped; discrete actions are (B,) int64."""
        out = self.net(obs)  # (B, act_dim) means or (B, n) logits
        if self.discrete:
            actions = torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)  # (B,)
            return actions, self._logprob(out, actions)
        noise = torch.randn_like(out)  # (B, act_dim)
        actions = out + self.log_std.exp() * noise
        # log N(a; mu, sigma) with z = (a - mu) / sigma = noise, summed over action dimensions
        logp = (-0.5 * noise.pow(2) - self.log_std).sum(-1) - 0.5 * _LOG_2PI * out.shape[-1]
        return actions, logp

    def mode(self, obs: Tensor) -> Tensor:
        """The most likely action (evaluation)."""
        out = self.net(obs)
        return out.argmax(dim=-1) if self.discrete else out

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probs and entropies ``(B,)`` of given ``actions`` under the current policy."""
        out = self.net(obs)
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)  # (B, n)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        else:
            entropy = (0.5 * (1.0 + _LOG_2PI) + self.log_std).sum().expand(out.shape[0])
        return self._logprob(out, actions), entropy

    def _logprob(self, out: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return torch.log_softmax(out, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - out) * torch.exp(-self.log_std)  # (B, act_dim)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * _LOG_2PI).sum(-1)  # (B,)


class Critic(nn.Module):
    """V(s): one value per observation, ``(B, obs_dim) -> (B,)``."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.net = MLP([obs_dim, *hidden, 1], out_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


class StepModel(nn.Module):
    """A learned per-step reward or cost r(s, a), ``(..., obs_dim), (..., act_dim) -> (...)``.

    Inputs are standardised with statistics of the data it was fitted on (``set_input_stats``),
    which are saved with it; a segment's score is the sum of its per-step outputs."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.net = MLP([obs_dim + act_dim, *hidden, 1], activation="leaky_relu", out_gain=1.0)
        self.in_mean: Tensor
        self.in_std: Tensor
        self.register_buffer("in_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("in_std", torch.ones(obs_dim + act_dim))

    def set_input_stats(self, obs: Tensor, actions: Tensor) -> None:
        x = torch.cat([obs, actions], dim=-1).reshape(-1, self.in_mean.shape[0])
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp(min=1e-3))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = (torch.cat([obs, actions], dim=-1) - self.in_mean) / self.in_std
        return self.net(x).squeeze(-1)


class CostModel(nn.Module):
    """An ensemble of per-step logits ``z_k(s, a)`` that the step is unsafe, each member with
    the ``threshold`` above which it counts a step as one unsafe step, chosen after each fit so
    that counting steps reproduces the teacher's segment labels
    (`alignloop.control.pbrl.count_threshold`). ``forward`` is the members' mean logit;
    `step_costs` counts a step when any member does (pessimistic: the policy cannot settle
    where only one member is wrong). Members and thresholds are saved with it."""

    def __init__(self, obs_dim: int, act_dim: int, members: int = 1, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.members = nn.ModuleList(StepModel(obs_dim, act_dim, hidden) for _ in range(members))
        self.threshold: Tensor
        self.register_buffer("threshold", torch.zeros(members))

    @property
    def models(self) -> list[StepModel]:
        return [member for member in self.members if isinstance(member, StepModel)]

    def set_input_stats(self, obs: Tensor, actions: Tensor) -> None:
        for member in self.models:
            member.set_input_stats(obs, actions)

    def member_logits(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``(..., D), (..., A) -> (K, ...)``: each member's logit."""
        return torch.stack([member(obs, actions) for member in self.models])

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        return self.member_logits(obs, actions).mean(0)

    def step_costs(self, obs: Tensor, actions: Tensor) -> Tensor:
        """1 for a step some member counts unsafe, 0 otherwise: ``(..., D), (..., A) -> (...)``."""
        z = self.member_logits(obs, actions)  # (K, ...)
        over = z > self.threshold.view(-1, *([1] * (z.dim() - 1)))
        return over.any(0).to(torch.float32)
