"""PPO and PPO-Lagrangian on control tasks: distributions, bootstrapping, learning, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import gymnasium as gym
import numpy as np
import pytest
import torch

from alignloop.config import parse
from alignloop.control.envs import ObsNormalizer, make_vec_env
from alignloop.control.nets import INITS, MLP, Actor, NetInit
from alignloop.control.ppo import PPOSettings, has_checkpoint, read_checkpoint, train_policy
from alignloop.control.rollouts import (
    Agent,
    Batch,
    Collector,
    Rollout,
    RolloutAdvantages,
    critic_optimizer,
    fit_critics,
    lagrangian_mix,
    rollout_advantages,
)
from alignloop.control.train import TrainConfig, train
from alignloop.errors import UserError
from alignloop.runstack.checkpoint import Checkpointer
from alignloop.runstack.layout import RunLayout
from alignloop.runstack.metrics import read_metrics

SMALL = PPOSettings(num_steps=1000, minibatch_size=250, cost_window=10)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gaussian_actor_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = Actor(3, gym.spaces.Box(-1, 1, shape=(2,)))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-0.3, 0.4]))
    obs = torch.randn(5, 3)
    actions, logp = actor.sample(obs)
    ref = torch.distributions.Normal(actor.net(obs), actor.log_std.exp())
    torch.testing.assert_close(logp, ref.log_prob(actions).sum(-1), rtol=1e-5, atol=1e-6)
    logp2, entropy = actor.evaluate(obs, actions)
    torch.testing.assert_close(logp2, logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, ref.entropy().sum(-1), rtol=1e-5, atol=1e-6)


def test_categorical_actor_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = Actor(3, gym.spaces.Discrete(4))
    obs = torch.randn(6, 3)
    actions, logp = actor.sample(obs)
    ref = torch.distributions.Categorical(logits=actor.net(obs))
    torch.testing.assert_close(logp, ref.log_prob(actions), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actor.evaluate(obs, actions)[1], ref.entropy(), rtol=1e-5, atol=1e-6)


def test_truncation_bootstraps_from_the_final_observation() -> None:
    """Slider episodes of 5 steps: at each truncation next_values_r must be V(final obs), where
    the final obs follows from the dynamics v' = v + 0.1 (clip(a) - v); elsewhere V(s_{t+1})."""
    torch.manual_seed(0)
    envs = make_vec_env("alignloop/Slider-v0", 2, max_episode_steps=5)
    collector = Collector(envs, norm_obs=False, cost_window=10)
    agent = Agent(1, envs.single_action_space, (8,))
    collector.reset([0, 1])
    ro = collector.collect(agent.actor.sample, 12, agent.values(with_cost=False))
    envs.close()
    assert ro.truncated.sum() == 4  # steps 5 and 10 of both envs
    with torch.no_grad():
        for t, i in zip(*np.nonzero(ro.truncated), strict=True):
            v = ro.raw_obs[t, i, 0]
            final = v + 0.1 * (np.clip(ro.actions[t, i, 0], -1, 1) - v)
            expected = agent.critic_r(torch.tensor([[final]], dtype=torch.float32)).item()
            assert ro.next_values_r[t, i] == pytest.approx(expected, rel=1e-5)
            assert ro.next_values_r[t, i] != pytest.approx(ro.values_r[t + 1, i], rel=1e-3)
            assert ro.next_raw_obs[t, i, 0] == pytest.approx(final, rel=1e-6)  # for off-policy learners
    inside = ~ro.truncated[:-1]
    np.testing.assert_array_equal(ro.next_values_r[:-1][inside], ro.values_r[1:][inside])
    np.testing.assert_array_equal(ro.next_raw_obs[:-1][inside], ro.raw_obs[1:][inside])


def test_per_step_normalisation_folds_each_step_in_before_the_policy_sees_it() -> None:
    """``norm_per_step`` (OmniSafe's rule): the observation stored at step t is what the policy
    saw, normalised by the statistics of steps 0..t; by default the first rollout is seen
    through mean 0 / variance 1 and the statistics move after it. Both fold in every step."""
    rollouts = {}
    for per_step in (False, True):
        torch.manual_seed(0)
        envs = make_vec_env("alignloop/Slider-v0", 2, max_episode_steps=5)
        collector = Collector(envs, norm_obs=True, cost_window=10, norm_per_step=per_step)
        agent = Agent(1, envs.single_action_space, (8,))
        collector.reset([0, 1])
        rollouts[per_step] = ro = collector.collect(agent.actor.sample, 7, agent.values(with_cost=False))
        envs.close()
        assert collector.obs_norm.mean == pytest.approx(ro.raw_obs.reshape(-1).mean(), rel=1e-6)
        assert collector.obs_norm.var == pytest.approx(ro.raw_obs.reshape(-1).var(), rel=1e-5)
    by_step = ObsNormalizer((1,))
    for t in range(7):
        by_step.update(rollouts[True].raw_obs[t])
        np.testing.assert_allclose(
            rollouts[True].obs[t], by_step.normalize(rollouts[True].raw_obs[t]), rtol=1e-6
        )
    np.testing.assert_allclose(rollouts[False].obs, rollouts[False].raw_obs, rtol=1e-6)  # mean 0, var 1
    assert not np.allclose(rollouts[True].obs, rollouts[True].raw_obs)


def _slider_rollout() -> tuple[Agent, Rollout, RolloutAdvantages]:
    """A small agent (seeded) and one 16-step rollout of 2 slider envs with its advantages."""
    torch.manual_seed(0)
    envs = make_vec_env("alignloop/Slider-v0", 2, max_episode_steps=20)
    collector = Collector(envs, norm_obs=True, cost_window=10)
    agent = Agent(1, envs.single_action_space, (8,))
    collector.reset([0, 1])
    ro = collector.collect(agent.actor.sample, 16, agent.values(with_cost=True))
    envs.close()
    return agent, ro, rollout_advantages(ro, ro.rewards, ro.costs, gamma=0.99, gae_lambda=0.95)


def test_critics_apart_steps_each_network_by_its_own_optimiser_and_stops_on_the_exact_kl() -> None:
    """``critics_apart`` (OmniSafe's PPO update): the critics move by their own Adam and the
    actor by its own, each clipped on its own; the early stop reads the exact mean KL over the
    rollout after each epoch, so a target of 0 stops after one epoch and a loose one runs them
    all; the reported KL is the actor's KL to the rollout's policy, worked out here again."""
    from alignloop.control.ppo import ppo_learner, ppo_update_apart

    agent, ro, adv = _slider_rollout()
    obs = torch.from_numpy(ro.obs).reshape(32, -1)
    old = tuple(x.detach().clone() for x in agent.actor.dist_params(obs))
    start = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    s = PPOSettings(critics_apart=True, epochs=5, minibatch_size=8, target_kl=0.0)
    learner = ppo_learner(agent, s, lagrangian=True)
    assert set(learner.optimizers) == {"actor", "critics"}
    actor_opt, critic_opt = learner.optimizers["actor"], learner.optimizers["critics"]
    assert {id(p) for g in actor_opt.param_groups for p in g["params"]} == {
        id(p) for p in agent.actor.parameters()
    }
    critics = [*agent.critic_r.parameters(), *agent.critic_c.parameters()]
    assert {id(p) for g in critic_opt.param_groups for p in g["params"]} == {id(p) for p in critics}
    assert critic_opt.param_groups[0]["weight_decay"] == 0.0  # the L2 term is in fit_critics' loss
    mixed = lagrangian_mix(adv, 0.5)
    metrics = ppo_update_apart(agent, actor_opt, critic_opt, ro, mixed, adv, s, np.random.default_rng(0))
    assert metrics["epochs_run"] == 1.0  # any movement is over a target of 0
    with torch.no_grad():
        kl = agent.actor.kl(old, agent.actor.dist_params(obs)).mean()
    assert metrics["kl"] == pytest.approx(float(kl), rel=1e-6) and metrics["kl"] > 0
    for name, value in agent.state_dict().items():  # every network moved
        if name.startswith(("actor.", "critic_r.", "critic_c.")) and value.dtype.is_floating_point:
            assert not torch.equal(value, start[name]), name
    loose = PPOSettings(critics_apart=True, epochs=3, minibatch_size=8, target_kl=10.0)
    metrics = ppo_update_apart(agent, actor_opt, critic_opt, ro, mixed, adv, loose, np.random.default_rng(0))
    assert metrics["epochs_run"] == 3.0


@pytest.mark.parametrize("max_grad_norm", [1e6, 0.05], ids=["unclipped", "clipped"])
def test_fit_critics_is_omnisafes_critic_step(max_grad_norm: float) -> None:
    """Three steps of `fit_critics` move both critics exactly as OmniSafe 0.5.0's critic update
    written out by hand: per critic its own Adam on mse + coef * sum of squared parameters,
    that critic's gradient clipped alone, then its step."""
    import copy

    agent, ro, adv = _slider_rollout()
    batch = Batch.of(ro)
    lr, coef = 3e-3, 0.01
    reference = [copy.deepcopy(agent.critic_r), copy.deepcopy(agent.critic_c)]
    targets = [adv.reward_returns, adv.cost_returns]
    reference_opts = [torch.optim.Adam(c.parameters(), lr=lr) for c in reference]
    opt = critic_optimizer(agent, lr)
    rows = [torch.arange(0, 16), torch.arange(16, 32), torch.arange(0, 32, 2)]
    for idx in rows:
        with torch.no_grad():
            half_mse = 0.5 * (agent.critic_r(batch.obs[idx]) - adv.reward_returns[idx]).pow(2).mean()
        losses = fit_critics(agent, opt, batch, adv, idx, coef, max_grad_norm)
        assert float(losses["value_loss"]) == pytest.approx(float(half_mse), rel=1e-6)
        assert set(losses) == {"value_loss", "cost_value_loss"}
        for critic, critic_opt, target in zip(reference, reference_opts, targets, strict=True):
            loss = torch.nn.functional.mse_loss(critic(batch.obs[idx]), target[idx])
            for param in critic.parameters():
                loss += param.pow(2).sum() * coef
            critic_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), max_grad_norm)
            critic_opt.step()
    for mine, theirs in zip((agent.critic_r, agent.critic_c), reference, strict=True):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_network_initialisations() -> None:
    """orthogonal: orthonormal weights at gain sqrt 2 (hidden) and ``out_gain`` (last), zero
    biases; pytorch: the layers exactly as ``nn.Linear`` built them (OmniSafe's)."""
    torch.manual_seed(3)
    net = MLP([5, 8, 2], out_gain=0.5)
    hidden, last = net.layers[0], net.last
    torch.testing.assert_close(hidden.weight.T @ hidden.weight, 2.0 * torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(last.weight @ last.weight.T, 0.25 * torch.eye(2), atol=1e-6, rtol=0)
    assert not any(layer.bias.any() for layer in net.layers)
    torch.manual_seed(3)
    net = MLP([5, 8, 2], out_gain=0.5, init="pytorch")
    torch.manual_seed(3)
    for layer, ref in zip(net.layers, [torch.nn.Linear(5, 8), torch.nn.Linear(8, 2)], strict=True):
        torch.testing.assert_close(layer.weight, ref.weight, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias, ref.bias, rtol=0, atol=0)
    assert get_args(NetInit) == tuple(INITS)  # the config's choices are the table's
    with pytest.raises(ValueError, match="init must be one of orthogonal, pytorch"):
        MLP([5, 2], init="xavier")  # type: ignore[arg-type]


def test_rollout_advantages_stop_at_a_termination_and_bootstrap_a_truncation() -> None:
    """`rollout_advantages` and `lagrangian_mix`, what the trainer runs on each rollout, on a
    hand-built one of T = 4 steps of N = 2 envs: env 0 is cut by the time limit after step 1,
    env 1 terminates after step 2. The cost stream is given the same numbers as the reward one.

    gamma = lam = 0.5 (gamma * lam = 0.25); delta_t = r_t + gamma (1 - term_t) V' - V(s_t).
    env 0: r = 1, 2, 3, 4; V = 1 everywhere; V' = 1, 4 (V(final obs) at the cut), 1, 2 (V(s_T))
      t=3: delta = 4 + 0.5 * 2 - 1 = 4                     A = 4
      t=2: delta = 3 + 0.5 * 1 - 1 = 2.5                   A = 2.5 + 0.25 * 4 = 3.5
      t=1: truncated, bootstraps V' = 4, carries nothing: delta = 2 + 2 - 1 = 3, A = 3
      t=0: delta = 0.5                                     A = 0.5 + 0.25 * 3 = 1.25
    (passing no truncation would carry: A_1 = 3 + 0.25 * 3.5 = 3.875, A_0 = 1.46875)
    env 1: r = 0, 0, 1, 0; V = 2 everywhere; V' = 2 (after the termination: the new episode's)
      t=3: delta = 0 + 1 - 2 = -1                          A = -1
      t=2: terminated, no bootstrap, no carry: delta = 1 - 2 = -1, A = -1
      t=1: delta = -1                                      A = -1 + 0.25 * -1 = -1.25
      t=0: delta = -1                                      A = -1 + 0.25 * -1.25 = -1.3125
    """
    steps, envs = 4, 2
    zeros = np.zeros((steps, envs))
    terminated, truncated = zeros.astype(bool), zeros.astype(bool)
    truncated[1, 0] = True
    terminated[2, 1] = True
    values = np.array([[1.0, 2.0]] * steps, np.float32)  # (T, N)
    rewards = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 0.0]])
    ro = Rollout(
        obs=np.zeros((steps, envs, 1), np.float32),
        raw_obs=np.zeros((steps, envs, 1)),
        actions=np.zeros((steps, envs, 1), np.float32),
        logprobs=zeros.astype(np.float32),
        rewards=rewards,
        costs=rewards,
        terminated=terminated,
        truncated=truncated,
        values_r=values,
        values_c=values,
    )
    ro.next_values_r = ro.next_values_c = np.array(
        [[1.0, 2.0], [4.0, 2.0], [1.0, 2.0], [2.0, 2.0]], np.float32
    )
    adv = rollout_advantages(ro, ro.rewards, ro.costs, gamma=0.5, gae_lambda=0.5)
    expected = torch.tensor([[1.25, -1.3125], [3.0, -1.25], [3.5, -1.0], [4.0, -1.0]]).reshape(-1)  # (T*N,)
    returns = expected + torch.from_numpy(values).reshape(-1)
    for a, r in ((adv.reward, adv.reward_returns), (adv.cost, adv.cost_returns)):
        torch.testing.assert_close(a, expected, rtol=1e-6, atol=1e-6)  # time-major, as the rollout
        torch.testing.assert_close(r, returns, rtol=1e-6, atol=1e-6)
    # the mix: reward advantages standardised, cost advantages centred, (A_r - lam A_c) / (1 + lam)
    standardised = (expected - expected.mean()) / expected.std()
    mixed = (standardised - 3.0 * (expected - expected.mean())) / 4.0
    torch.testing.assert_close(lagrangian_mix(adv, 3.0), mixed, rtol=1e-5, atol=1e-6)


def test_bad_input_fails_before_training(tmp_path: Path) -> None:
    # a short run each, so that a missing check fails this test in seconds instead of training
    short = dict(total_env_steps=64, output_dir=tmp_path / "run", progress=False)
    tiny = PPOSettings(num_steps=64, minibatch_size=64)
    cfg = TrainConfig(env="HalfCheeta-v5", ppo=tiny, **short)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="did you mean HalfCheetah-v5"):
        train(cfg)
    cfg = TrainConfig(env="InvertedPendulum-v5", cost="velocity", ppo=tiny, **short)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no velocity threshold for robot 'InvertedPendulum'"):
        train(cfg)
    cfg = TrainConfig(env="Hopper-v5", algo="ppo-lag", ppo_lag=tiny, **short)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="ppo-lag needs a cost"):
        train(cfg)
    cfg = TrainConfig(env="Hopper-v5", resume=True, ppo=tiny, **short)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no checkpoint"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_cost_limit_zero_stays_finite(tmp_path: Path) -> None:
    s = PPOSettings(num_steps=200, minibatch_size=100, epochs=2, cost_limit=0.0, cost_window=2)
    stats = train_policy(
        tmp_path / "run", "SafeSliderVelocity-v0", None, True, 1200, 0, s, save_every=0, progress=False
    )
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["train/lambda"] > 0  # every episode costs something under a random policy


@pytest.mark.slow
def test_ppo_solves_inverted_pendulum(tmp_path: Path) -> None:
    """Random policy: about 5-10 steps balanced. Solved: 1000."""
    s = PPOSettings(num_steps=1000, minibatch_size=250, lr=1e-3, cost_window=10)
    stats = train_policy(
        tmp_path / "ip", "InvertedPendulum-v5", None, False, 20_000, 0, s, save_every=0, progress=False
    )
    assert stats["episode/return"] > 300, stats


@pytest.mark.slow
def test_ppo_solves_cartpole_with_discrete_actions(tmp_path: Path) -> None:
    """Random policy: about 22. Max: 500."""
    stats = train_policy(
        tmp_path / "cp", "CartPole-v1", None, False, 20_000, 0, SMALL, save_every=0, progress=False
    )
    assert stats["episode/return"] > 150, stats


@pytest.mark.slow
def test_lagrangian_keeps_cost_within_limit_where_ppo_does_not(tmp_path: Path) -> None:
    """SafeSliderVelocity: full speed earns ~190 per 200-step episode and costs ~190; the
    limit is 20. Final cost = mean over the last 10 episodes."""
    lag = PPOSettings(
        num_steps=1000,
        minibatch_size=250,
        cost_window=10,
        cost_limit=20.0,
        lagrange_lr=0.1,
    )
    plain = train_policy(
        tmp_path / "ppo", "SafeSliderVelocity-v0", None, False, 20_000, 0, lag, save_every=0, progress=False
    )
    constrained = train_policy(
        tmp_path / "lag", "SafeSliderVelocity-v0", None, True, 20_000, 0, lag, save_every=0, progress=False
    )
    assert plain["episode/cost"] > 100, plain
    assert constrained["episode/cost"] <= 20.0, constrained
    assert constrained["episode/return"] > 20.0, constrained  # it still moves forward


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignloop.cli", "control", *args]


def final_state(run_dir: Path) -> tuple[int, dict, dict]:
    """(step, state, extra) of a run's newest checkpoint."""
    state, extra = read_checkpoint(run_dir)
    return RunLayout(run_dir).checkpoint_step(Checkpointer(run_dir).latest()), state, extra  # type: ignore[arg-type]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    """Both runs checkpoint (and re-seed their envs) every 2 iterations; one, in a subprocess,
    is killed (SIGKILL) right after its first checkpoint, then resumed. Final weights, optimiser
    moments, lambda, normaliser and episode records must be bit-identical, and metrics.jsonl
    reads as one run."""
    common = ["--env", "SafeSliderVelocity-v0", "--algo", "ppo-lag", "--total-env-steps", "4000"]
    common += ["--ppo-lag.num-steps", "200", "--ppo-lag.minibatch-size", "100", "--ppo-lag.epochs", "2"]
    common += ["--save-every", "2", "--ppo-lag.cost-limit", "5", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train(parse(TrainConfig, [*common, "--output-dir", str(full)], prog="train")) == 0  # in-process
    proc = subprocess.Popen(
        _cli("train", *common, "--output-dir", str(cut)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not has_checkpoint(cut) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done, _, _ = final_state(cut)
    assert done < 20, "the run finished before it could be killed"
    assert train(parse(TrainConfig, [*common, "--output-dir", str(cut), "--resume"], prog="train")) == 0
    (step_a, a, extra_a), (step_b, b, extra_b) = final_state(full), final_state(cut)
    assert step_a == step_b == 20
    for key in a["models"]["agent"]:
        assert torch.equal(a["models"]["agent"][key], b["models"]["agent"][key]), key
    moments_a, moments_b = a["optimizers"]["opt"]["state"].values(), b["optimizers"]["opt"]["state"].values()
    for x, y in zip(moments_a, moments_b, strict=True):
        assert torch.equal(x["exp_avg"], y["exp_avg"])
    assert extra_a["lagrange"] == extra_b["lagrange"]
    assert torch.equal(a["states"]["obs_norm"]["mean"], b["states"]["obs_norm"]["mean"])
    assert extra_a["returns"] == extra_b["returns"] and extra_a["costs"] == extra_b["costs"]
    assert [r["step"] for r in read_metrics(cut, "train")] == list(range(1, 21))
    assert [r["lambda"] for r in read_metrics(cut, "train")] == [
        r["lambda"] for r in read_metrics(full, "train")
    ]


def test_old_spellings_of_options_still_work_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    old = ["--out", "runs/x", "--name", "mine", "--total-steps", "5000", "--ppo.checkpoint-every=3"]
    cfg = parse(TrainConfig, old, prog="alignloop control train")
    assert (cfg.run_dir(), cfg.total_env_steps, cfg.save_every) == (Path("runs/x/mine"), 5000, 3)
    err = capsys.readouterr().err
    assert "--total-steps is deprecated; use --total-env-steps" in err
    assert "--ppo.checkpoint-every is deprecated; use --save-every" in err
    assert "--out and --name are deprecated; use --output-dir DIR/NAME" in err
    cfg = parse(TrainConfig, ["--out", "runs/y", "--env", "Walker2d-v5", "--seed", "3"], prog="train")
    assert cfg.run_dir() == Path("runs/y/Walker2d-v5-ppo-s3")
    assert parse(TrainConfig, [], prog="train").run_dir() == Path("runs/control/Hopper-v5-ppo-s0")


@pytest.mark.slow
def test_cli_train_then_eval_writes_video(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    args = ["--env", "InvertedPendulum-v5", "--total-env-steps", "400", "--output-dir", str(tmp_path / "ip")]
    args += ["--ppo.num-steps", "200", "--ppo.minibatch-size", "100", "--ppo.epochs", "1", "--no-progress"]
    result = subprocess.run(_cli("train", *args), env=env, timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["run_dir"] == str(tmp_path / "ip")
    assert (tmp_path / "ip" / "tb").is_dir()
    result = subprocess.run(
        _cli("eval", str(tmp_path / "ip"), "--episodes", "2", "--video-steps", "20"),
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "ip" / "eval.json").read_text())
    assert report["episodes"] == 2 and len(report["returns"]) == 2 and report["return_mean"] > 0
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "ip" / "eval.gif")
    assert frames.shape[0] == 20 and frames.std() > 0  # a real rendering, not a blank image
    bad = subprocess.run(
        _cli("train", "--env", "Hoper-v5"), env=env, timeout=300, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "did you mean Hopper-v5" in bad.stderr


def test_async_and_sync_vector_envs_train_the_same_policy(tmp_path: Path) -> None:
    """Two envs, two iterations: stepping them in subprocesses changes nothing."""
    results = []
    for mode in ("sync", "async"):
        s = PPOSettings(num_envs=2, vectorization=mode, num_steps=100, minibatch_size=50, epochs=2)  # type: ignore[arg-type]
        train_policy(
            tmp_path / mode, "SafeSliderVelocity-v0", None, True, 400, 3, s, save_every=0, progress=False
        )
        results.append(read_checkpoint(tmp_path / mode))
    (sync, sync_extra), (async_, async_extra) = results
    for key in sync["models"]["agent"]:
        assert torch.equal(sync["models"]["agent"][key], async_["models"]["agent"][key]), key
    assert sync_extra["costs"] == async_extra["costs"] and sync_extra["lagrange"] == async_extra["lagrange"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, capsys) -> None:
    """A control run stopped after 3 iterations whose newest checkpoint is then truncated
    resumes from the one before (saying which file is damaged) and still ends exactly where an
    uninterrupted run ends."""
    s = PPOSettings(num_steps=100, minibatch_size=50, epochs=1, cost_window=5)
    args = ("SafeSliderVelocity-v0", None, True)
    options = dict(save_every=1, keep_checkpoints=3, progress=False)
    train_policy(tmp_path / "whole", *args, 400, 0, s, **options)
    train_policy(tmp_path / "cut", *args, 300, 0, s, **options)
    state = RunLayout(tmp_path / "cut").checkpoint(3) / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    train_policy(tmp_path / "cut", *args, 400, 0, s, resume=True, **options)
    err = capsys.readouterr().err
    assert f"{state}: truncated" in err and "step_00000002 (step 2)" in err
    (step_a, a, extra_a), (step_b, b, extra_b) = (
        final_state(tmp_path / "whole"),
        final_state(tmp_path / "cut"),
    )
    assert step_a == step_b == 4 and extra_a["lagrange"] == extra_b["lagrange"]
    for key in a["models"]["agent"]:
        assert torch.equal(a["models"]["agent"][key], b["models"]["agent"][key]), key


def test_resuming_with_another_task_or_update_is_refused_naming_the_option(tmp_path: Path) -> None:
    from alignloop.errors import UserError

    s = PPOSettings(num_steps=100, minibatch_size=50, epochs=1)
    train_policy(tmp_path, "SafeSliderVelocity-v0", None, True, 100, 0, s, progress=False)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"] == "control train" and record["config"]["env"] == "SafeSliderVelocity-v0"
    with pytest.raises(UserError, match=r"--env 'SafeSliderVelocity-v0' -> 'alignloop/Slider-v0'"):
        train_policy(tmp_path, "alignloop/Slider-v0", None, False, 200, 0, s, resume=True, progress=False)
    # the update's optimisers are part of the run: changing critics_apart is refused before
    # run.json is rewritten, so the run still resumes with its own options
    saved = (tmp_path / "run.json").read_text()
    apart = dataclasses.replace(s, critics_apart=True)
    with pytest.raises(UserError, match=r"--ppo\.critics-apart False -> True"):
        train_policy(
            tmp_path, "SafeSliderVelocity-v0", None, True, 200, 0, apart, resume=True, progress=False
        )
    assert (tmp_path / "run.json").read_text() == saved
    train_policy(tmp_path, "SafeSliderVelocity-v0", None, True, 200, 0, s, resume=True, progress=False)


def test_a_run_folder_of_the_older_layout_can_still_be_evaluated(tmp_path: Path) -> None:
    """Before the run stack a control run kept one checkpoint.pt; evaluation still reads it."""
    import gymnasium as gym

    from alignloop.control.evaluate import evaluate_policy
    from alignloop.control.ppo import LEGACY_CHECKPOINT

    torch.manual_seed(0)
    agent = Agent(1, gym.spaces.Box(-1, 1, shape=(1,)), (8,))
    norm = {
        "mean": torch.zeros(1, dtype=torch.float64),
        "var": torch.ones(1, dtype=torch.float64),
        "count": 1.0,
    }
    old = {"agent": agent.state_dict(), "obs_norm": norm, "env": "alignloop/Slider-v0", "cost": None,
           "hidden": [8], "norm_obs": True, "max_episode_steps": 20, "iteration": 3}  # fmt: skip
    torch.save(old, tmp_path / LEGACY_CHECKPOINT)
    returns, costs, _ = evaluate_policy(tmp_path, episodes=2, seed=0)
    assert len(returns) == 2 and costs == [0.0, 0.0]
    _, extra = read_checkpoint(tmp_path)
    assert extra["iteration"] == 3
