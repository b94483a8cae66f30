"""Small networks for control: the actors, the critics and the per-step reward/cost models.

The distributions are written out (log-density and entropy of a diagonal Gaussian, of a
categorical) rather than built as ``torch.distributions`` objects: the rollout calls the actor
once per environment step, where object construction and argument validation would cost more
than the network itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignloop.core.offpolicy import squashed_gaussian_logprob
from alignloop.core.trust_region import kl_categorical, kl_diag_gaussian

__all__ = [
    "ACTORS",
    "INITS",
    "MLP",
    "NetInit",
    "Actor",
    "Critic",
    "CostModel",
    "QEnsemble",
    "SquashedGaussianActor",
    "StepModel",
]

_LOG_2PI = math.log(2 * math.pi)


def orthogonal_init(linears: list[nn.Linear], out_gain: float) -> None:
    """Orthogonal weights (gain sqrt 2 for hidden layers, ``out_gain`` for the last) and zero
    biases, as in the PPO baselines."""
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=out_gain if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)


def pytorch_init(linears: list[nn.Linear], out_gain: float) -> None:
    """``nn.Linear``'s own initialisation, left as constructed (``kaiming_uniform`` weights with
    ``a = sqrt 5``, uniform biases), as OmniSafe's networks; ``out_gain`` does not apply."""


NetInit = Literal["orthogonal", "pytorch"]
"""The name of a network initialisation (a config's ``init``)."""

INITS: dict[str, Callable[[list[nn.Linear], float], None]] = {
    "orthogonal": orthogonal_init,
    "pytorch": pytorch_init,
}
"""``init(linears, out_gain)`` by name: how `MLP` initialises its layers."""


class MLP(nn.Module):
    """Linear layers with an activation between them, initialised by ``INITS[init]`` (by
    default orthogonally, as in the PPO baselines).

    ``forward`` applies the layers' weights with ``F.linear`` directly instead of calling each
    layer as a module: the rollout runs these nets once per environment step, where per-module
    call overhead would cost as much as the arithmetic."""

    def __init__(
        self, sizes: list[int], activation: str = "tanh", out_gain: float = 1.0, init: NetInit = "orthogonal"
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        linears = [nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
        INITS[init](linears, out_gain)
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


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "relu": F.relu,
}


class Actor(nn.Module):
    """pi(a | s): a diagonal Gaussian with a state-independent log std for Box actions, a
    categorical for Discrete actions."""

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.Space,
        hidden: tuple[int, ...] = (64, 64),
        init: NetInit = "orthogonal",
    ):
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
        self.net = MLP([obs_dim, *hidden, out], out_gain=0.01, init=init)

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

    def dist_params(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """What pi(. | s) is, for `kl`: ``(means (B, A), log std (A,))`` for Box actions,
        ``(logits (B, n), an empty tensor)`` for Discrete ones."""
        out = self.net(obs)
        return out, (out.new_zeros(0) if self.discrete else self.log_std)

    @staticmethod
    def rows(p: tuple[Tensor, Tensor], idx: Tensor) -> tuple[Tensor, Tensor]:
        """Rows `idx` of `dist_params` (a state-independent log std is shared by all rows)."""
        return p[0][idx], p[1]

    def kl(self, p: tuple[Tensor, Tensor], q: tuple[Tensor, Tensor]) -> Tensor:
        """KL(p || q) per state, ``(B,)``, of two `dist_params` of this actor."""
        if self.discrete:
            return kl_categorical(p[0], q[0])
        return kl_diag_gaussian(p[0], p[1], q[0], q[1])

    def _logprob(self, out: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return torch.log_softmax(out, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - out) * torch.exp(-self.log_std)  # (B, act_dim)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * _LOG_2PI).sum(-1)  # (B,)


class Critic(nn.Module):
    """V(s): one value per observation, ``(B, obs_dim) -> (B,)``."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...] = (64, 64), init: NetInit = "orthogonal"):
        super().__init__()
        self.net = MLP([obs_dim, *hidden, 1], out_gain=1.0, init=init)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


class SquashedGaussianActor(nn.Module):
    """SAC's policy: ``a = low + (tanh(u) + 1) (high - low) / 2`` with ``u ~ N(mu(s), sigma(s))``,
    mean and log std from one network (Haarnoja et al. 2018), log std clamped to [-20, 2]."""

    LOG_STD_RANGE = (-20.0, 2.0)

    def __init__(self, obs_dim: int, action_space: gym.spaces.Box, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.act_dim = int(np.prod(action_space.shape))
        self.net = MLP([obs_dim, *hidden, 2 * self.act_dim], activation="relu", out_gain=0.01)
        low, high = np.asarray(action_space.low, np.float32), np.asarray(action_space.high, np.float32)
        self.scale: Tensor
        self.offset: Tensor
        self.register_buffer("scale", torch.from_numpy((high - low) / 2).reshape(-1))
        self.register_buffer("offset", torch.from_numpy((high + low) / 2).reshape(-1))

    def _gaussian(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(obs).split(self.act_dim, dim=-1)  # (B, A) each
        return mu, log_std.clamp(*self.LOG_STD_RANGE)

    def rsample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised actions ``(B, A)`` in the action bounds and their log-probs ``(B,)``."""
        mu, log_std = self._gaussian(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        return self.offset + self.scale * torch.tanh(u), squashed_gaussian_logprob(u, mu, log_std)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The collector's `Sample` (same as `rsample`; called without gradient there)."""
        return self.rsample(obs)

    def mode(self, obs: Tensor) -> Tensor:
        """The action of the Gaussian's mean (evaluation)."""
        return self.offset + self.scale * torch.tanh(self._gaussian(obs)[0])


class QEnsemble(nn.Module):
    """K independent Q critics evaluated as one batched network: ``(B, obs_dim), (B, act_dim) ->
    (K, B)`` (SAC's twin critics, and SAC-Lagrangian's cost critic as a third member). Each layer
    is one batched matrix product over the members (``torch.baddbmm``), so K critics cost about
    what one does on a small machine; each member starts as `MLP` does (orthogonal weights, zero
    biases) and sees its own gradient only."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = torch.empty(members, n_in, n_out)
            for k in range(members):  # (n_out, n_in) orthogonal, as nn.Linear's weight, transposed
                w[k] = nn.init.orthogonal_(
                    torch.empty(n_out, n_in), gain=1.0 if i == len(sizes) - 2 else math.sqrt(2)
                ).T
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, n_out)))
        self.members = members

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([obs, actions], dim=-1).expand(self.members, -1, -1)  # (K, B, D)
        *hidden, last = list(zip(self.weights, self.biases, strict=True))
        for w, b in hidden:
            x = F.relu(torch.baddbmm(b, x, w))  # (K, B, H)
        w, b = last
        return torch.baddbmm(b, x, w).squeeze(-1)  # (K, B)


ACTORS: dict[str, type[Actor] | type[SquashedGaussianActor]] = {
    cls.__name__: cls for cls in (Actor, SquashedGaussianActor)
}
"""The policies a checkpoint names (its ``extra["actor"]``), to rebuild them for evaluation."""


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
    (`alignloop.core.segments.count_threshold`). ``forward`` is the members' mean logit;
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
