"""PPO and PPO-Lagrangian on control tasks: distributions, bootstrapping, learning, resume, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from alignloop.config import parse
from alignloop.control.envs import make_vec_env
from alignloop.control.nets import Actor
from alignloop.control.ppo import (
    CHECKPOINT,
    Agent,
    Collector,
    PPOSettings,
    Rollout,
    TrainConfig,
    _gae,
    train,
    train_policy,
)

SMALL = PPOSettings(num_steps=1000, minibatch_size=250, checkpoint_every=0, cost_window=10)


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
    ro = collector.collect(agent, 12, with_cost=False)
    envs.close()
    assert ro.truncated.sum() == 4  # steps 5 and 10 of both envs
    with torch.no_grad():
        for t, i in zip(*np.nonzero(ro.truncated), strict=True):
            v = ro.raw_obs[t, i, 0]
            final = v + 0.1 * (np.clip(ro.actions[t, i, 0], -1, 1) - v)
            expected = agent.critic_r(torch.tensor([[final]], dtype=torch.float32)).item()
            assert ro.next_values_r[t, i] == pytest.approx(expected, rel=1e-5)
            assert ro.next_values_r[t, i] != pytest.approx(ro.values_r[t + 1, i], rel=1e-3)
    inside = ~ro.truncated[:-1]
    np.testing.assert_array_equal(ro.next_values_r[:-1][inside], ro.values_r[1:][inside])


def test_rollout_advantages_stop_at_a_termination_and_bootstrap_a_truncation() -> None:
    """`_gae`, what `ppo_update` runs on each stream, on a hand-built rollout of T = 4 steps of
    N = 2 envs: env 0 is cut by the time limit after step 1, env 1 terminates after step 2.

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
    ro = Rollout(
        obs=np.zeros((steps, envs, 1), np.float32),
        raw_obs=np.zeros((steps, envs, 1)),
        actions=np.zeros((steps, envs, 1), np.float32),
        logprobs=zeros.astype(np.float32),
        rewards=np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 0.0]]),
        costs=zeros,
        terminated=terminated,
        truncated=truncated,
        values_r=values,
        values_c=values,
    )
    next_values = np.array([[1.0, 2.0], [4.0, 2.0], [1.0, 2.0], [2.0, 2.0]], np.float32)
    adv, ret = _gae(ro.rewards, ro, ro.values_r, next_values, gamma=0.5, lam=0.5)
    expected = torch.tensor([[1.25, -1.3125], [3.0, -1.25], [3.5, -1.0], [4.0, -1.0]])  # (T, N)
    torch.testing.assert_close(adv, expected.reshape(-1), rtol=1e-6, atol=1e-6)  # time-major, as the rollout
    torch.testing.assert_close(ret, (expected + torch.from_numpy(values)).reshape(-1), rtol=1e-6, atol=1e-6)


def test_bad_input_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a short run each, so that a missing check fails this test in seconds instead of training
    short = dict(
        total_steps=64, out=tmp_path, progress=False, ppo=PPOSettings(num_steps=64, minibatch_size=64)
    )
    cfg = TrainConfig(env="HalfCheeta-v5", **short)  # type: ignore[arg-type]
    assert train(cfg) == 2
    assert "did you mean HalfCheetah-v5" in capsys.readouterr().err
    cfg = TrainConfig(env="InvertedPendulum-v5", cost="velocity", **short)  # type: ignore[arg-type]
    assert train(cfg) == 2
    assert "no velocity threshold for robot 'InvertedPendulum'" in capsys.readouterr().err
    cfg = TrainConfig(env="Hopper-v5", algo="ppo-lag", **short)  # type: ignore[arg-type]
    assert train(cfg) == 2
    assert "ppo-lag needs a cost" in capsys.readouterr().err
    cfg = TrainConfig(env="Hopper-v5", resume=True, **short)  # type: ignore[arg-type]
    assert train(cfg) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_cost_limit_zero_stays_finite(tmp_path: Path) -> None:
    s = PPOSettings(
        num_steps=200, minibatch_size=100, epochs=2, checkpoint_every=0, cost_limit=0.0, cost_window=2
    )
    stats = train_policy(tmp_path / "run", "SafeSliderVelocity-v0", None, True, 1200, 0, s, progress=False)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["train/lambda"] > 0  # every episode costs something under a random policy


@pytest.mark.slow
def test_ppo_solves_inverted_pendulum(tmp_path: Path) -> None:
    """Random policy: about 5-10 steps balanced. Solved: 1000."""
    s = PPOSettings(num_steps=1000, minibatch_size=250, lr=1e-3, checkpoint_every=0, cost_window=10)
    stats = train_policy(tmp_path / "ip", "InvertedPendulum-v5", None, False, 20_000, 0, s, progress=False)
    assert stats["episode/return"] > 300, stats


@pytest.mark.slow
def test_ppo_solves_cartpole_with_discrete_actions(tmp_path: Path) -> None:
    """Random policy: about 22. Max: 500."""
    stats = train_policy(tmp_path / "cp", "CartPole-v1", None, False, 20_000, 0, SMALL, progress=False)
    assert stats["episode/return"] > 150, stats


@pytest.mark.slow
def test_lagrangian_keeps_cost_within_limit_where_ppo_does_not(tmp_path: Path) -> None:
    """SafeSliderVelocity: full speed earns ~190 per 200-step episode and costs ~190; the
    limit is 20. Final cost = mean over the last 10 episodes."""
    lag = PPOSettings(
        num_steps=1000,
        minibatch_size=250,
        checkpoint_every=0,
        cost_window=10,
        cost_limit=20.0,
        lagrange_lr=0.1,
    )
    plain = train_policy(
        tmp_path / "ppo", "SafeSliderVelocity-v0", None, False, 20_000, 0, lag, progress=False
    )
    constrained = train_policy(
        tmp_path / "lag", "SafeSliderVelocity-v0", None, True, 20_000, 0, lag, progress=False
    )
    assert plain["episode/cost"] > 100, plain
    assert constrained["episode/cost"] <= 20.0, constrained
    assert constrained["episode/return"] > 20.0, constrained  # it still moves forward


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignloop.cli", "control", *args]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    """Both runs checkpoint (and re-seed their envs) every 2 iterations; one, in a subprocess,
    is killed (SIGKILL) right after its first checkpoint, then resumed. Final weights, optimiser
    moments, lambda, normaliser and episode records must be bit-identical."""
    common = [
        "--env",
        "SafeSliderVelocity-v0",
        "--algo",
        "ppo-lag",
        "--total-steps",
        "4000",
        "--out",
        str(tmp_path),
    ]
    common += ["--ppo.num-steps", "200", "--ppo.minibatch-size", "100", "--ppo.epochs", "2"]
    common += ["--ppo.checkpoint-every", "2", "--ppo.cost-limit", "5", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert (
        train(parse(TrainConfig, [*common, "--name", "full"], prog="train")) == 0
    )  # uninterrupted, in-process
    proc = subprocess.Popen(
        _cli("train", *common, "--name", "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = tmp_path / "cut" / CHECKPOINT
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done = torch.load(ckpt, weights_only=True)["iteration"]
    assert done < 20, "the run finished before it could be killed"
    assert train(parse(TrainConfig, [*common, "--name", "cut", "--resume"], prog="train")) == 0
    full = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    cut = torch.load(ckpt, weights_only=True)
    assert cut["iteration"] == full["iteration"] == 20
    for key in full["agent"]:
        assert torch.equal(full["agent"][key], cut["agent"][key]), key
    for a, b in zip(full["optimizer"]["state"].values(), cut["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert full["lagrange"] == cut["lagrange"]
    assert torch.equal(full["obs_norm"]["mean"], cut["obs_norm"]["mean"])
    assert full["returns"] == cut["returns"] and full["costs"] == cut["costs"]


@pytest.mark.slow
def test_cli_train_then_eval_writes_video(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    args = ["--env", "InvertedPendulum-v5", "--total-steps", "400", "--out", str(tmp_path), "--name", "ip"]
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
        s = PPOSettings(
            num_envs=2, vectorization=mode, num_steps=100, minibatch_size=50, epochs=2, checkpoint_every=0
        )  # type: ignore[arg-type]
        train_policy(tmp_path / mode, "SafeSliderVelocity-v0", None, True, 400, 3, s, progress=False)
        results.append(torch.load(tmp_path / mode / CHECKPOINT, weights_only=True))
    sync, async_ = results
    for key in sync["agent"]:
        assert torch.equal(sync["agent"][key], async_["agent"][key]), key
    assert sync["costs"] == async_["costs"] and sync["lagrange"] == async_["lagrange"]
