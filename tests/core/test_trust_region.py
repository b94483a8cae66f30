"""Trust-region math against values worked out by hand, scipy's solvers and torch's KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from alignloop.core.trust_region import (
    assign_flat,
    backtracking_line_search,
    conjugate_gradient,
    cpo_dual,
    cpo_step,
    fisher_vector_product,
    kl_categorical,
    kl_diag_gaussian,
    pcpo_step,
    trpo_step,
)

RTOL = 1e-5


def close(
    actual: torch.Tensor | float, expected: torch.Tensor | list[float] | float, rtol: float = RTOL
) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=1e-7,
    )


# --------------------------------------------------------------------------- KL divergences


def test_kl_between_diagonal_gaussians_by_hand_and_against_torch() -> None:
    # dim 1: p = N(0, 1), q = N(1, 2): log 2 + (1 + 1) / (2 * 4) - 1/2 = 0.693147 + 0.25 - 0.5 = 0.443147
    # dim 2: p = q = N(0.5, e^0.3): 0
    mu_p, log_std_p = torch.tensor([[0.0, 0.5]]), torch.tensor([[0.0, 0.3]])
    mu_q, log_std_q = torch.tensor([[1.0, 0.5]]), torch.tensor([[math.log(2.0), 0.3]])
    close(kl_diag_gaussian(mu_p, log_std_p, mu_q, log_std_q), [0.4431471805599453])
    torch.manual_seed(0)
    mu_p, mu_q = torch.randn(5, 3), torch.randn(5, 3)
    log_std_p, log_std_q = torch.randn(3) * 0.3, torch.randn(5, 3) * 0.3  # a shared std broadcasts
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_p, log_std_p.exp()), torch.distributions.Normal(mu_q, log_std_q.exp())
    ).sum(-1)
    torch.testing.assert_close(kl_diag_gaussian(mu_p, log_std_p, mu_q, log_std_q), ref, rtol=RTOL, atol=1e-6)


def test_kl_between_categoricals_by_hand_and_against_torch() -> None:
    # p = (1/2, 1/2), q = (1/4, 3/4): 0.5 log(0.5 / 0.25) + 0.5 log(0.5 / 0.75) = 0.143841
    logits_p, logits_q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    close(kl_categorical(logits_p, logits_q), [0.14384103622589042])
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=a), torch.distributions.Categorical(logits=b)
    )
    torch.testing.assert_close(kl_categorical(a, b), ref, rtol=RTOL, atol=1e-6)


# --------------------------------------------------------------------------- conjugate gradient


def test_assign_flat_copies_in_place_in_order() -> None:
    """[1..6] into a (2, 2) weight and a (2,) bias: [[1, 2], [3, 4]] and [5, 6], each parameter
    in its own storage still (a resumed run's parameters are fresh allocations, and a view into
    the vector rounds differently in the CPU's kernels)."""
    weight, bias = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    where = (weight.data_ptr(), bias.data_ptr())
    assign_flat(torch.arange(1.0, 7.0), [weight, bias])
    assert torch.equal(weight.data, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(bias.data, torch.tensor([5.0, 6.0]))
    assert (weight.data_ptr(), bias.data_ptr()) == where
    with pytest.raises(ValueError, match="7 elements, the parameters 6"):
        assign_flat(torch.zeros(7), [weight, bias])


def test_conjugate_gradient_by_hand() -> None:
    # A = [[4, 1], [1, 3]], b = (1, 2): A^-1 = [[3, -1], [-1, 4]] / 11, x = (1/11, 7/11);
    # CG is exact after 2 iterations on a 2 x 2 system.
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 2.0], dtype=torch.float64), iters=2)
    close(x, [1 / 11, 7 / 11])
    # one iteration: r = p = b, alpha = b.b / b.Ab = 5 / (1*6 + 2*7) = 5 / 20, x = b / 4
    x1 = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 2.0], dtype=torch.float64), iters=1)
    close(x1, [0.25, 0.5])


def test_conjugate_gradient_matches_scipy() -> None:
    from scipy.sparse.linalg import cg

    rng = np.random.default_rng(0)
    m = rng.normal(size=(20, 20))
    a = m @ m.T + 20 * np.eye(20)  # symmetric positive definite, well conditioned
    b = rng.normal(size=20)
    expected, info = cg(a, b, rtol=1e-12, maxiter=200)
    assert info == 0
    a_t = torch.from_numpy(a)
    x = conjugate_gradient(lambda v: a_t @ v, torch.from_numpy(b), iters=20, residual_tol=1e-20)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-6)


# --------------------------------------------------------------------------- Fisher-vector products


def test_fisher_vector_product_of_a_gaussian_policy_by_hand() -> None:
    """mu(s) = w * x(s), a state-independent log std ls, two states x = 1 and x = 2, at
    w = 0.7, ls = 0.5. KL(N(mu0, sigma0) || N(w x, e^ls)) has, at theta_0, the Hessian
    d2/dw2 = mean(x^2) / sigma^2 = 2.5 / e, d2/dls2 = 2, and no cross term. With v = (1, 1) and
    damping 0.1: Hv = (2.5 / e + 0.1, 2 + 0.1) = (1.019699, 2.1)."""
    w = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    ls = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    mu = w * x  # (2, 1)
    kl = kl_diag_gaussian(mu.detach(), ls.detach(), mu, ls).mean()
    fvp = fisher_vector_product(kl, [w, ls], damping=0.1)
    close(fvp(torch.tensor([1.0, 1.0], dtype=torch.float64)), [2.5 / math.e + 0.1, 2.1])
    close(fvp(torch.tensor([2.0, 0.0], dtype=torch.float64)), [2 * 2.5 / math.e + 0.2, 0.0])  # reusable


def test_fisher_vector_product_of_a_categorical_policy_by_hand() -> None:
    """Logits z = log(1, 2, 3) (p = (1/6, 2/6, 3/6)): the Fisher of the logits is
    diag(p) - p p^T. With v = (1, 0, -1): p * v = (1/6, 0, -1/2), p.v = -1/3, so
    Fv = p * v - p (p.v) = (1/6 + 1/18, 2/18, -1/2 + 3/18) = (4/18, 2/18, -6/18)."""
    z = nn.Parameter(torch.log(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)))
    kl = kl_categorical(z.detach(), z).mean()
    fvp = fisher_vector_product(kl, [z], damping=0.0)
    close(fvp(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)), [4 / 18, 2 / 18, -6 / 18])


def test_fisher_vector_product_matches_the_full_hessian_of_a_network() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    log_std = nn.Parameter(torch.tensor([0.1, -0.2], dtype=torch.float64))
    params = [*net.parameters(), log_std]
    obs = torch.randn(6, 3, dtype=torch.float64)
    flat0 = torch.nn.utils.parameters_to_vector(params).detach()

    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, _unflatten(net, flat[:-2]), (obs,))
        return kl_diag_gaussian(net(obs).detach(), log_std.detach(), out, flat[-2:]).mean()

    hessian = torch.autograd.functional.hessian(mean_kl, flat0)
    kl = kl_diag_gaussian(net(obs).detach(), log_std.detach(), net(obs), log_std).mean()
    v = torch.randn(flat0.numel(), dtype=torch.float64)
    torch.testing.assert_close(fisher_vector_product(kl, params, 0.01)(v), hessian @ v + 0.01 * v)


def _unflatten(net: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in net.named_parameters():
        out[name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


# --------------------------------------------------------------------------- CPO


def _identity_problem(g: list[float], b: list[float]) -> tuple[torch.Tensor, ...]:
    """H = I: x_g = g, x_b = b, q = g.g, r = g.b, s = b.b."""
    gt, bt = torch.tensor(g, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return gt, bt, float(gt @ gt), float(gt @ bt), float(bt @ bt)


def test_cpo_case_2_the_constraint_cuts_the_trust_region() -> None:
    """max x1 + x2 s.t. -0.2 + x2 <= 0, 0.5 |x|^2 <= 0.5: x = (sqrt(1 - 0.04), 0.2) = (0.979796, 0.2).
    q = 2, r = 1, s = 1, A = q - r^2/s = 1, B = 2 delta - c^2 / s = 0.96; the constraint binds for
    lambda < -r/c = 5: lambda_a = sqrt(A / B) = 1.020621 (f_a = -1.179796) beats lambda_b = 5
    (f_b = -2.7); nu = r + lambda c = 1 - 0.204124 = 0.795876."""
    g, b, q, r, s = _identity_problem([1.0, 1.0], [0.0, 1.0])
    lam, nu = cpo_dual(q, r, s, -0.2, 0.5)
    close(lam, 1.0206207261596576)
    close(nu, 0.7958758547680684)
    step = cpo_step(g, b, q, r, s, -0.2, float(b @ b), 0.5)
    assert step.case == 2
    close(step.direction, [0.9797958971132712, 0.2])


def test_cpo_case_1_recovers_from_an_infeasible_policy() -> None:
    """c = 0.5 > 0, B = 1 - 0.25 = 0.75 >= 0: max x1 + x2 s.t. x2 <= -0.5, |x|^2 <= 1 gives
    x = (0.866025, -0.5); lambda = sqrt(A / B) = sqrt(1 / 0.75) = 1.154701, nu = 1 + 0.5 lambda = 1.577350."""
    g, b, q, r, s = _identity_problem([1.0, 1.0], [0.0, 1.0])
    step = cpo_step(g, b, q, r, s, 0.5, 1.0, 0.5)
    assert step.case == 1
    close(step.lam, 1.1547005383792515)
    close(step.nu, 1.5773502691896257)
    close(step.direction, [0.8660254037844387, -0.5])


def test_cpo_takes_the_trpo_step_when_the_constraint_does_not_bind() -> None:
    g, b, q, r, s = _identity_problem([1.0, 1.0], [0.0, 1.0])
    # case 3: c = -2, B = 1 - 4 < 0: the trust region lies inside the feasible set: x = g / sqrt(2)
    step = cpo_step(g, b, q, r, s, -2.0, 1.0, 0.5)
    assert (step.case, step.nu) == (3, 0.0)
    close(step.direction, [0.7071067811865476, 0.7071067811865476])
    # case 4: no cost gradient and feasible
    zero = torch.zeros(2, dtype=torch.float64)
    step = cpo_step(g, zero, q, 0.0, 0.0, -0.1, 0.0, 0.5)
    assert step.case == 4
    close(step.direction, [0.7071067811865476, 0.7071067811865476])
    # case 2 with a free optimum: g = (1, 0.1), c = -0.2: the TRPO step (0.995037, 0.0995037) is
    # feasible (-0.2 + 0.0995 < 0): q = 1.01, r = 0.1, A = 1, B = 0.96, split at -r/c = 0.5:
    # f_a(0.5) = -0.5 (2 + 0.48) - 0.02 = -1.26 < f_b(sqrt(1.01)) = -1.004988, so nu = 0
    g, b, q, r, s = _identity_problem([1.0, 0.1], [0.0, 1.0])
    step = cpo_step(g, b, q, r, s, -0.2, 1.0, 0.5)
    assert step.case == 2 and step.nu == 0.0
    close(step.direction, trpo_step(g, q, 0.5))
    close(step.direction, [1 / math.sqrt(1.01), 0.1 / math.sqrt(1.01)])


def test_cpo_case_0_steps_only_down_the_cost() -> None:
    """c = 2, B = 1 - 4 < 0: no feasible point in the trust region: x = -sqrt(2 delta / s) x_b = (0, -1)."""
    g, b, q, r, s = _identity_problem([1.0, 1.0], [0.0, 1.0])
    step = cpo_step(g, b, q, r, s, 2.0, 1.0, 0.5)
    assert step.case == 0
    close(step.direction, [0.0, -1.0])


@pytest.mark.parametrize("seed", range(6))
def test_cpo_step_solves_the_linearised_problem_like_scipy(seed: int) -> None:
    """Random H (SPD), g, b, c where the constraint's boundary meets the trust region: the step
    equals SLSQP's solution of max g.x s.t. c + b.x <= 0, 0.5 x H x <= delta."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    m = rng.normal(size=(4, 4))
    h = m @ m.T + np.eye(4)
    g, b = rng.normal(size=4), rng.normal(size=4)
    delta = 0.05
    h_inv = np.linalg.inv(h)
    q, r, s = g @ h_inv @ g, g @ h_inv @ b, b @ h_inv @ b
    c = rng.uniform(-0.9, 0.9) * math.sqrt(2 * delta * s)  # |c| < sqrt(2 delta s): B > 0
    step = cpo_step(torch.from_numpy(h_inv @ g), torch.from_numpy(h_inv @ b), q, r, s, c, b @ b, delta)
    assert step.case in (1, 2)
    ref = minimize(
        lambda x: -g @ x,
        np.zeros(4),
        jac=lambda x: -g,
        constraints=[
            {"type": "ineq", "fun": lambda x: -(c + b @ x), "jac": lambda x: -b},
            {"type": "ineq", "fun": lambda x: delta - 0.5 * x @ h @ x, "jac": lambda x: -h @ x},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert ref.success, ref.message
    np.testing.assert_allclose(step.direction.numpy(), ref.x, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- PCPO


def test_pcpo_projections_by_hand() -> None:
    """H = diag(1, 4), g = (1, 1), b = (1, 1), c = -0.5, delta = 0.5. x_g = (1, 0.25), q = 1.25,
    x_b = (1, 0.25), r = 1.25, s = 1.25, b.b = 2; x_r = sqrt(1 / 1.25) x_g = (0.894427, 0.223607),
    b.x_r + c = 1.118034 - 0.5 = 0.618034.
    KL: x = x_r - (0.618034 / s) x_b = x_r - 0.494427 (1, 0.25) = (0.4, 0.1);
    L2: x = x_r - (0.618034 / 2) b = (0.585410, -0.085410). Both end on b.x + c = 0."""
    g = b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x_g = x_b = torch.tensor([1.0, 0.25], dtype=torch.float64)
    kl = pcpo_step(x_g, x_b, b, 1.25, 1.25, 1.25, -0.5, 0.5, "kl")
    close(kl, [0.4, 0.1])
    l2 = pcpo_step(x_g, x_b, b, 1.25, 1.25, 1.25, -0.5, 0.5, "l2")
    close(l2, [0.5854101966249685, -0.0854101966249685])
    assert float(g @ kl) < float(g @ trpo_step(x_g, 1.25, 0.5))
    # a feasible reward step is left alone: c = -2
    close(pcpo_step(x_g, x_b, b, 1.25, 1.25, 1.25, -2.0, 0.5, "kl"), trpo_step(x_g, 1.25, 0.5))
    with pytest.raises(ValueError, match="projection"):
        pcpo_step(x_g, x_b, b, 1.25, 1.25, 1.25, -0.5, 0.5, "l1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- line search


def test_backtracking_line_search_by_hand() -> None:
    """Full step (1, 2) (norm 2.236); accepted once its norm is below 1: 0.8^j * 2.236 < 1 first
    at j = 4 (0.4096 * 2.236 = 0.916), the 5th try."""
    full = torch.tensor([1.0, 2.0])
    step, tries = backtracking_line_search(full, lambda x: bool(x.norm() < 1), shrink=0.8, max_steps=10)
    assert tries == 5
    close(step, [0.4096, 0.8192])
    step, tries = backtracking_line_search(full, lambda x: bool(x.norm() < 1), shrink=0.8, max_steps=4)
    assert tries == 0 and torch.equal(step, torch.zeros(2))
    with pytest.raises(ValueError, match="shrink"):
        backtracking_line_search(full, lambda x: True, shrink=1.0)
