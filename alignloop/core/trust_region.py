"""Trust-region policy steps: conjugate gradient, Fisher-vector products, the CPO and PCPO steps,
the backtracking line search and the KL divergences they are measured with.

The trust-region learners (TRPO, Schulman et al. 2015; CPO, Achiam et al. 2017; PCPO, Yang et
al. 2020) linearise the objective and the cost around the current policy parameters theta_k
and bound the mean KL divergence to the current policy quadratically:

    max_x  g^T x    s.t.   c + b^T x <= 0,    0.5 x^T H x <= delta

with ``g`` the gradient of the reward surrogate (the ascent direction), ``b`` the gradient of the
cost surrogate, ``c = J_c - d`` how far the cost is over its limit (in the units of ``b^T x``),
``H`` the Fisher information (the Hessian of the mean KL at theta_k) and ``delta`` the target KL.
``H`` is never formed: `fisher_vector_product` gives ``v -> H v`` and `conjugate_gradient`
solves ``H x = g`` with it. From ``x_g = H^-1 g`` and ``x_b = H^-1 b`` the scalars

    q = g^T H^-1 g,    r = g^T H^-1 b,    s = b^T H^-1 b

decide the step (`cpo_step`, `pcpo_step`, `trpo_step`). Everything here works on flat vectors of
the policy's parameters (``torch.nn.utils.parameters_to_vector``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CPOStep",
    "assign_flat",
    "backtracking_line_search",
    "conjugate_gradient",
    "cpo_dual",
    "cpo_step",
    "fisher_vector_product",
    "flat_grad",
    "kl_categorical",
    "kl_diag_gaussian",
    "pcpo_step",
    "trpo_step",
]


def kl_diag_gaussian(mu_p: Tensor, log_std_p: Tensor, mu_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) between diagonal Gaussians, summed over the last (action) dimension:

        KL = sum_i log(sigma_q,i / sigma_p,i) + (sigma_p,i^2 + (mu_p,i - mu_q,i)^2) / (2 sigma_q,i^2) - 1/2

    ``mu_*`` (B, A); ``log_std_*`` (B, A) or (A,) (a state-independent std broadcasts); -> (B,).
    """
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    per_dim = log_std_q - log_std_p + (var_p + (mu_p - mu_q).pow(2)) / (2 * var_q) - 0.5  # (B, A)
    return per_dim.sum(-1)


def kl_categorical(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) between categoricals given by logits, ``(B, n), (B, n) -> (B,)``:
    ``sum_a p(a) (log p(a) - log q(a))``."""
    log_p, log_q = torch.log_softmax(logits_p, dim=-1), torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def flat_grad(
    output: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False, create_graph: bool = False
) -> Tensor:
    """The gradient of a scalar `output` with respect to `params`, as one flat vector (a
    parameter the output does not depend on contributes zeros)."""
    grads = torch.autograd.grad(
        output,
        list(params),
        retain_graph=retain_graph or create_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


@torch.no_grad()
def assign_flat(vector: Tensor, params: Sequence[Tensor]) -> None:
    """Copy a flat vector ``(P,)`` into `params` in place, in their order (the inverse of
    `flat_grad`'s layout).

    Each parameter keeps its own storage. torch's ``vector_to_parameters`` instead rebinds every
    parameter to a view of the vector, at whatever offset it falls: the CPU's matrix kernels can
    round differently for such a parameter than for a freshly allocated one, so a run resumed
    from a checkpoint (fresh parameters) drifted from the uninterrupted run (views) in the last
    bits, and then apart."""
    total = sum(p.numel() for p in params)
    if vector.numel() != total:
        raise ValueError(f"vector has {vector.numel()} elements, the parameters {total}")
    offset = 0
    for p in params:
        p.copy_(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def fisher_vector_product(
    mean_kl: Tensor, params: Sequence[Tensor], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with ``H`` the Hessian of `mean_kl` with respect to `params`.

    `mean_kl` is the mean over states of ``KL(pi_old(s) || pi_theta(s))`` built at theta = theta_old
    with pi_old detached, so its value and gradient are 0 and its Hessian is the Fisher
    information of the policy (Schulman 2016, "Optimizing Expectations", sec. 3.7). The gradient
    of the KL is taken once (with its graph); each product is one more backward pass,
    ``H v = d/dtheta (grad KL . v)``. The damping keeps the solve well posed where the Fisher
    is singular (OmniSafe's ``cg_damping``, 0.1)."""
    params = list(params)
    grad_kl = flat_grad(mean_kl, params, create_graph=True)  # (P,) carries its graph

    def product(v: Tensor) -> Tensor:
        hv = flat_grad(grad_kl @ v.detach(), params, retain_graph=True)
        return hv + damping * v

    return product


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, *, iters: int = 15, residual_tol: float = 1e-10
) -> Tensor:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given only ``v -> A v``
    (Hestenes and Stiefel 1952; Nocedal and Wright, "Numerical Optimization", Algorithm 5.2),
    from ``x = 0``, for at most `iters` iterations or until ``|r|^2 < residual_tol``:

        r = p = b;  repeat: alpha = r.r / p.Ap;  x += alpha p;  r -= alpha Ap;
                            p = r + (r_new.r_new / r.r) p

    In exact arithmetic it ends after at most ``len(b)`` iterations."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trpo_step(x_g: Tensor, q: float, target_kl: float) -> Tensor:
    """The step ``sqrt(2 delta / q) H^-1 g`` to the edge of the trust region
    ``0.5 x^T H x = delta`` (TRPO; Schulman et al. 2015, appendix C)."""
    return math.sqrt(2 * target_kl / max(q, 1e-12)) * x_g


def cpo_dual(q: float, r: float, s: float, c: float, target_kl: float) -> tuple[float, float]:
    """The optimal dual variables ``(lambda, nu)`` of the linearised CPO problem (module
    docstring) when the constraint's boundary meets the trust region (Achiam et al. 2017,
    Theorem 2 and appendix 10.2; here for the ascent direction ``g``). Minimising the dual

        D(lambda, nu) = (q - 2 nu r + nu^2 s) / (2 lambda) + lambda delta - nu c

    over ``nu >= 0`` gives ``nu = max(0, (r + lambda c) / s)``, and over ``lambda > 0``:

    - where ``r + lambda c > 0`` (the constraint binds): maximise
      ``f_a = -(A / lambda + B lambda) / 2 + r c / s`` with ``A = q - r^2 / s``,
      ``B = 2 delta - c^2 / s``: ``lambda_a = sqrt(A / B)``;
    - where ``r + lambda c <= 0`` (it does not): maximise
      ``f_b = -(q / lambda + 2 delta lambda) / 2``: ``lambda_b = sqrt(q / (2 delta))``;

    each projected onto its own interval of lambda (split at ``-r / c``); the better of the two
    wins. The paper states ``nu = (lambda c - r) / s`` for the gradient of the loss (the descent
    direction, whose ``r`` has the opposite sign), as the authors' code
    (safety-starter-agents) computes it; OmniSafe 0.5.0 takes ``r`` from the ascent direction but
    keeps the descent formula.

    Only for the two cases with ``B >= 0`` (`cpo_step` cases 1 and 2)."""
    eps = 1e-12
    a_coef, b_coef = q - r * r / s, 2 * target_kl - c * c / s
    lam_a = math.sqrt(max(a_coef, 0.0) / max(b_coef, eps))
    lam_b = math.sqrt(q / (2 * target_kl))
    split = -r / c if c != 0 else math.inf  # r + lambda c changes sign here
    if c < 0:  # binding for lambda < split, free above it
        binding, free = (0.0, split), (max(split, 0.0), math.inf)
    elif c > 0:  # binding above the split, free below it
        binding, free = (max(split, 0.0), math.inf), (0.0, max(split, 0.0))
    else:  # c == 0: binding everywhere when r > 0, nowhere otherwise
        binding, free = ((0.0, math.inf), (0.0, 0.0)) if r > 0 else ((0.0, 0.0), (0.0, math.inf))

    def f_a(lam: float) -> float:
        return -0.5 * (a_coef / max(lam, eps) + b_coef * lam) + r * c / s

    def f_b(lam: float) -> float:
        return -0.5 * (q / max(lam, eps) + 2 * target_kl * lam)

    candidates = []
    if binding[1] > binding[0]:
        lam = min(max(lam_a, binding[0]), binding[1])
        candidates.append((f_a(lam), lam))
    if free[1] > free[0]:
        lam = min(max(lam_b, free[0]), free[1])
        candidates.append((f_b(lam), lam))
    _, lam = max(candidates)
    lam = max(lam, eps)  # lambda_a = 0 only when g and b are parallel (A = 0)
    nu = max(0.0, (r + lam * c) / s)
    return lam, nu


@dataclass(frozen=True)
class CPOStep:
    """A CPO step and how it was found (for logging)."""

    direction: Tensor
    """The full step x (P,), before the line search."""
    case: int
    """4: no cost gradient, feasible; 3: the whole trust region is feasible (both TRPO steps);
    2: feasible, the constraint cuts the trust region; 1: infeasible but recoverable (both from
    the dual); 0: infeasible, the trust region does not reach the feasible half-space (recovery)."""
    lam: float
    nu: float


def cpo_step(
    x_g: Tensor, x_b: Tensor, q: float, r: float, s: float, c: float, b_norm_sq: float, target_kl: float
) -> CPOStep:
    """The CPO step (Achiam et al. 2017, sec. 6.1 and Algorithm 1) from ``x_g = H^-1 g``,
    ``x_b = H^-1 b``, ``q, r, s`` (module docstring), the violation ``c`` and ``b^T b``:

    - case 4, ``b^T b <= 1e-8`` and ``c < 0``: the TRPO step;
    - case 3, ``c < 0`` and ``B = 2 delta - c^2 / s < 0``: the TRPO step (the constraint's
      boundary lies outside the trust region);
    - cases 2 (``c < 0``) and 1 (``c >= 0``) with ``B >= 0``: ``x = (x_g - nu x_b) / lambda`` with
      `cpo_dual`'s ``(lambda, nu)``;
    - case 0, ``c >= 0`` and ``B < 0``: the recovery step ``x = -sqrt(2 delta / s) x_b``, which
      only lowers the cost, to the edge of the trust region.

    The thresholds and case numbers are those of the authors' code (safety-starter-agents)."""
    if b_norm_sq <= 1e-8 and c < 0:
        return CPOStep(trpo_step(x_g, q, target_kl), 4, math.sqrt(q / (2 * target_kl)), 0.0)
    b_coef = 2 * target_kl - c * c / s
    if c < 0 and b_coef < 0:
        return CPOStep(trpo_step(x_g, q, target_kl), 3, math.sqrt(q / (2 * target_kl)), 0.0)
    if b_coef >= 0:
        lam, nu = cpo_dual(q, r, s, c, target_kl)
        return CPOStep((x_g - nu * x_b) / lam, 2 if c < 0 else 1, lam, nu)
    nu = math.sqrt(2 * target_kl / s)
    return CPOStep(-nu * x_b, 0, 0.0, nu)


def pcpo_step(
    x_g: Tensor,
    x_b: Tensor,
    b: Tensor,
    q: float,
    r: float,
    s: float,
    c: float,
    target_kl: float,
    projection: Literal["kl", "l2"] = "kl",
) -> Tensor:
    """The PCPO step (Yang et al. 2020, "Projection-Based Constrained Policy Optimization",
    eq. 7): the TRPO reward step ``x_r = sqrt(2 delta / q) H^-1 g``, then its projection onto the
    linearised constraint ``c + b^T x <= 0`` in the metric ``L``:

        x = x_r - max(0, (b^T x_r + c) / (b^T L^-1 b)) L^-1 b

    ``projection="kl"``: ``L = H`` (``b^T x_r = sqrt(2 delta / q) r``, ``b^T H^-1 b = s``,
    ``L^-1 b = x_b``); ``"l2"``: ``L = I`` (``b^T b``, ``b``). OmniSafe 0.5.0's PCPO takes the
    reward step along ``H x_g`` (that is ``g``) instead of ``x_g``; this follows the paper."""
    x_r = trpo_step(x_g, q, target_kl)
    alpha = math.sqrt(2 * target_kl / max(q, 1e-12))
    if projection == "kl":
        violation = alpha * r + c
        return x_r - max(0.0, violation / max(s, 1e-12)) * x_b
    if projection == "l2":
        violation = float(b @ x_r) + c
        return x_r - max(0.0, violation / max(float(b @ b), 1e-12)) * b
    raise ValueError(f"projection must be 'kl' or 'l2', got {projection!r}")


def backtracking_line_search(
    full_step: Tensor, accept: Callable[[Tensor], bool], *, shrink: float = 0.8, max_steps: int = 15
) -> tuple[Tensor, int]:
    """The first of ``full_step * shrink^j``, ``j = 0 .. max_steps - 1``, that `accept` takes
    (the trust-region line search of TRPO and CPO: `accept` applies the step and checks the KL,
    the surrogate and the cost); returns ``(step, j + 1)``, or ``(zeros, 0)`` when none is
    accepted (the policy then stays where it was)."""
    if not 0 < shrink < 1:
        raise ValueError(f"shrink must be in (0, 1), got {shrink}")
    for j in range(max_steps):
        step = full_step * shrink**j
        if accept(step):
            return step, j + 1
    return torch.zeros_like(full_step), 0
