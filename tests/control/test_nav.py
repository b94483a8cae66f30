"""Safety-Gymnasium's navigation tasks on gymnasium 1.x: every id, spaces, seeding, costs, goals,
buttons, the push box, the circle, observation layout, vector envs, clips.

Robots are placed by hand (`place`) to check a cost or a goal at a known position; other objects
are moved out of the way (`park`) where they could interfere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from alignloop.control.clips import render_clip, segment_states
from alignloop.control.envs import EnvSpecError, make_env, make_vec_env, resolve_env, step_costs
from alignloop.control.nav import NAV_IDS
from alignloop.control.nav.env import NavEnv
from alignloop.control.ppo import has_checkpoint

SENSORS = {
    "Point": ["accelerometer", "velocimeter", "gyro", "magnetometer"],
    "Car": ["accelerometer", "velocimeter", "gyro", "magnetometer", "ballangvel_rear", "ballquat_rear"],
}
LIDARS = {  # Safety-Gymnasium 1.0.0's observation keys after the sensors, in its order
    "Goal0": ["goal"],
    "Goal": ["goal", "hazards", "vases"],
    "Button0": ["buttons", "goal"],
    "Button": ["buttons", "goal", "hazards", "gremlins"],
    "Push0": ["goal", "push_box"],
    "Push": ["goal", "hazards", "pillars", "push_box"],
    "Circle0": ["circle"],
    "Circle": ["circle"],
}


def nav(env_id: str, **kwargs) -> NavEnv:
    env = gym.make(env_id, **kwargs).unwrapped
    assert isinstance(env, NavEnv)
    return env


def place(env: NavEnv, x: float, y: float, yaw: float = 0.0) -> None:
    """Put the robot at rest at (x, y) facing ``yaw``."""
    env.data.qpos[: env.scene.robot_nq] = env.model.qpos0[: env.scene.robot_nq]
    env.robot.place(env.data.qpos[: env.scene.robot_nq], x, y, yaw)
    env.data.qvel[:] = 0.0
    mujoco.mj_forward(env.model, env.data)


def park(env: NavEnv, *names: str) -> None:
    """Move objects far off the arena (fixed ones by body position, free ones by qpos)."""
    for k, name in enumerate(names):
        where = (8.0 + k, 8.0)
        if name in env.scene.qpos:
            adr = env.scene.qpos[name]
            env.data.qpos[adr : adr + 2] = where
        else:
            env.model.body_pos[env.scene.body[name], :2] = where
        if name in env.layout:
            env.layout[name] = np.array(where)
    mujoco.mj_forward(env.model, env.data)


@pytest.mark.slow
@pytest.mark.parametrize("robot", ["Point", "Car"])
def test_every_task_makes_steps_resets_renders_and_vectorises(robot: str) -> None:
    ids = [i for i in NAV_IDS if i.startswith(f"Safety{robot}")]
    assert len(ids) == 12
    for env_id in ids:
        task = env_id.removeprefix(f"Safety{robot}").removesuffix("-v0")
        keys = SENSORS[robot] + [f"{k}_lidar" for k in LIDARS.get(task, LIDARS[task[:-1]])]
        env = gym.make(env_id, render_mode="rgb_array", width=48, height=40)
        assert env.spec is not None and env.spec.max_episode_steps == (500 if "Circle" in task else 1000)
        assert list(env.unwrapped.obs_slices) == keys  # type: ignore[attr-defined]
        dim = 12 * (1 if robot == "Point" else 2) + 16 * (len(keys) - len(SENSORS[robot]))
        low, high = np.full(dim, -np.inf), np.full(dim, np.inf)
        for key, sl in env.unwrapped.obs_slices.items():  # type: ignore[attr-defined]
            if key.endswith("_lidar"):  # the reference's bounds: sensors unbounded, lidars in [0, 1]
                low[sl], high[sl] = 0.0, 1.0
        assert env.observation_space == gym.spaces.Box(low, high, (dim,), np.float64)
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float64)
        actions = np.random.default_rng(0).uniform(-1, 1, (3, 2))
        runs, costs = [], []
        for _ in range(2):  # the same seed and actions: the same episode
            rows = [env.reset(seed=0)[0]]
            for a in actions:
                obs, reward, terminated, truncated, info = env.step(a)
                assert np.isfinite(obs).all() and np.isfinite(reward)
                assert info["cost"] in (0.0, 1.0) and not (terminated or truncated)
                rows.append(obs)
                costs.append(info["cost"])
            runs.append(np.stack(rows))
        np.testing.assert_array_equal(runs[0], runs[1])
        assert not np.array_equal(env.reset(seed=1)[0], runs[0][0])  # another seed, another layout
        frame = env.render()
        assert frame.shape == (40, 48, 3) and frame.dtype == np.uint8 and frame.std() > 5  # type: ignore[union-attr]
        env.close()
        envs = make_vec_env(env_id, 2)
        obs, _ = envs.reset(seed=[0, 2])
        np.testing.assert_array_equal(obs[0], runs[0][0])
        obs, reward, terminated, truncated, info = envs.step(actions[:2])
        assert obs.shape == (2, dim) and set(step_costs(info, terminated | truncated)) <= {0.0, 1.0}
        np.testing.assert_array_equal(obs[0], runs[0][1])
        envs.close()
        envs = make_vec_env(env_id, 1, vectorization="async")  # one worker process: the same episode
        obs, _ = envs.reset(seed=[0])
        for t in range(2):
            obs, reward, terminated, truncated, info = envs.step(actions[t : t + 1])
        np.testing.assert_array_equal(obs[0], runs[0][2])
        assert step_costs(info, terminated | truncated)[0] == costs[1]
        envs.close()


def test_async_vector_envs_match_the_sync_ones() -> None:
    for env_id in ("SafetyPointGoal1-v0", "SafetyCarButton2-v0"):
        runs = []
        for mode in ("sync", "async"):
            envs = make_vec_env(env_id, 2, vectorization=mode)  # type: ignore[arg-type]
            obs, _ = envs.reset(seed=[4, 5])
            rows = [obs]
            for t in range(5):
                obs, *_ = envs.step(np.full((2, 2), 0.5 - 0.2 * t))
                rows.append(obs)
            envs.close()
            runs.append(np.stack(rows))
        np.testing.assert_array_equal(runs[0], runs[1])


def test_task_ids_resolve_to_their_own_cost() -> None:
    assert resolve_env("SafetyCarPush2-v0") == ("SafetyCarPush2-v0", "navigation", None)
    with pytest.raises(EnvSpecError, match="computes its own cost.*drop --cost velocity"):
        resolve_env("SafetyPointGoal1-v0", "velocity")
    with pytest.raises(EnvSpecError, match="belongs to the navigation tasks"):
        resolve_env("Hopper-v5", "navigation")
    with pytest.raises(EnvSpecError, match="did you mean SafetyPointGoal"):
        make_env("SafetyPointGoal-v0")


def test_same_seed_same_episode_and_the_reference_layout() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (25, 2))

    def episode(env: NavEnv, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, _ = env.reset(seed=seed)
        rows, rewards, costs = [obs], [], []
        for a in actions:
            obs, r, _, _, info = env.step(a)
            rows.append(obs)
            rewards.append(r)
            costs.append(info["cost"])
        return np.stack(rows), np.array(rewards), np.array(costs)

    a, b = nav("SafetyPointGoal1-v0"), nav("SafetyPointGoal1-v0")
    first = episode(a, 5)
    episode(a, 6)  # another layout in between leaves nothing behind
    for x, y in zip(first, episode(a, 5), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(first, episode(b, 5), strict=True):
        np.testing.assert_array_equal(x, y)
    a.reset(seed=5)
    b.reset(seed=6)
    assert not np.array_equal(a.layout["goal"], b.layout["goal"])
    # Safety-Gymnasium 1.0.0's layout for seed 0 (printed by the reference at full precision)
    a.reset(seed=0)
    np.testing.assert_array_equal(a.layout["agent"], [0.10738970864011455, 0.4734166060193228])
    np.testing.assert_array_equal(a.layout["hazard0"], [0.7701541005382346, 0.07628258814766786])
    np.testing.assert_array_equal(a.body_xy("goal"), [0.40782450838740103, -0.6921856790335202])
    car = nav("SafetyCarButton2-v0")
    car.reset(seed=7)
    np.testing.assert_array_equal(car.layout["agent"], [-0.056889415762884976, -1.382967853057501])
    assert car.rule.goal_button == 1  # type: ignore[attr-defined]
    np.testing.assert_array_equal(car.body_xy("goal"), [1.2945667657857594, 0.5182400770763347])
    # a reset without a seed continues the stream: the same second layout after the same first
    a.reset(seed=9)
    b.reset(seed=9)
    a.reset()
    b.reset()
    np.testing.assert_array_equal(a.layout["vase0"], b.layout["vase0"])


@pytest.mark.parametrize("robot", ["Point", "Car"])
def test_entering_a_hazard_costs_and_leaving_stops_the_cost(robot: str) -> None:
    env = nav(f"Safety{robot}Goal1-v0")
    env.reset(seed=2)
    park(env, *[f"hazard{i}" for i in range(1, 8)], "vase0", "goal")
    hx, hy = env.body_xy("hazard0")
    costs = []
    for dx in (0.6, 0.25, 0.15, 0.0, -0.15, -0.25, -0.6):  # across the hazard (radius 0.2)
        place(env, hx + dx, hy)
        info = env.step(np.zeros(2))[4]
        costs.append(info["cost"])
        assert info["cost_hazards"] == info["cost"]
    assert costs == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_driving_through_a_hazard_costs_while_inside() -> None:
    env = nav("SafetyPointGoal1-v0")
    env.reset(seed=2)
    park(env, *[f"hazard{i}" for i in range(1, 8)], "vase0", "goal")
    hx, hy = env.body_xy("hazard0")
    place(env, hx - 0.5, hy)  # facing the hazard along +x
    inside = []
    for _ in range(60):
        info = env.step(np.array([1.0, 0.0]))[4]
        dist = np.hypot(*(env.agent_pos[:2] - (hx, hy)))
        assert info["cost"] == float(dist <= 0.2)
        inside.append(info["cost"])
    runs = np.flatnonzero(np.diff(np.r_[0.0, inside, 0.0]))  # where the cost switches on and off
    assert len(runs) == 2 and runs[1] - runs[0] >= 3  # entered once, several steps inside, left


@pytest.mark.parametrize(
    ("env_id", "target", "others", "part", "costs"),
    [
        ("SafetyPointGoal2-v0", "vase0", [f"vase{i}" for i in range(1, 10)], "cost_vases_contact", True),
        ("SafetyPointGoal1-v0", "vase0", [], "cost_vases_contact", False),  # level 1: vases are free
        (
            "SafetyPointPush2-v0",
            "pillar0",
            ["pillar1", "pillar2", "pillar3", "push_box"],
            "cost_pillars",
            True,
        ),
    ],
)
def test_touching_a_vase_or_pillar_costs_where_the_level_constrains_it(
    env_id: str, target: str, others: list[str], part: str, costs: bool
) -> None:
    env = nav(env_id)
    env.reset(seed=2)
    spec = env.task.find("hazards")
    assert spec is not None
    park(env, *[f"hazard{i}" for i in range(spec.num)], "goal", *others)
    x, y = env.body_pos(target)[:2]
    place(env, x - 0.5, y)  # facing the object along +x, 0.5 m away: not touching yet
    rows = [env.step(np.array([1.0, 0.0]))[4] for _ in range(40)]  # drive into it
    assert rows[0]["cost"] == 0.0
    touched = [r.get(part, 0.0) for r in rows]
    if costs:
        assert sum(touched) >= 3 and all(r["cost"] == 1.0 for r in rows if r.get(part))
    else:
        assert part not in rows[0] and all(r["cost"] == 0.0 for r in rows)
        assert np.hypot(*(env.body_pos(target)[:2] - (x, y))) > 0.05  # it was touched: pushed away


@pytest.mark.parametrize("robot", ["Point", "Car"])
def test_reaching_the_goal_pays_the_bonus_and_moves_the_goal(robot: str) -> None:
    env = nav(f"Safety{robot}Goal1-v0")
    env.reset(seed=3)
    goal = env.body_xy("goal")
    last = env.rule.last  # type: ignore[attr-defined]
    place(env, *goal)
    obs, reward, terminated, _, info = env.step(np.zeros(2))
    dist = np.hypot(*(env.agent_pos[:2] - goal))  # to the old goal, after the step
    assert info["goal_met"] and not terminated
    assert reward == pytest.approx(last - dist + 1.0, rel=1e-12)  # distance decrease + the bonus
    new = env.body_xy("goal")
    assert np.hypot(*(new - env.agent_pos[:2])) >= 0.4 + 0.305  # the keep-outs of robot and goal
    for i in range(8):
        assert np.hypot(*(new - env.body_xy(f"hazard{i}"))) >= 0.18 + 0.305
    assert obs[env.obs_slices["goal_lidar"]].max() < 0.9  # the lidar sees the new, distant goal
    reward = env.step(np.zeros(2))[1]
    assert abs(reward) < 1e-3  # no second bonus


def test_pressing_the_goal_button_pays_and_a_wrong_button_costs() -> None:
    env = nav("SafetyPointButton1-v0")
    env.reset(seed=4)
    park(env, *[f"hazard{i}" for i in range(4)])
    for i in range(4):  # gremlins circle far away
        env._gremlin_centre[i, :2] = -8.0 - i, -8.0
        adr = env.scene.qpos[f"gremlin{i}"]
        env.data.qpos[adr : adr + 2] = env._gremlin_centre[i, :2]
    goal = env.rule.goal_button  # type: ignore[attr-defined]
    bx, by = env.body_xy(f"button{goal}")
    place(env, bx - 0.19, by)  # the sphere (radius 0.1) overlaps the button (radius 0.1)
    obs, reward, _, _, info = env.step(np.zeros(2))
    assert info["goal_met"] and reward > 0.9 and info["cost"] == 0.0
    assert np.all(obs[env.obs_slices["buttons_lidar"]] == 0.0)  # unseen for the next 10 steps
    buttons = np.stack([env.body_xy(f"button{i}") for i in range(4)])
    grid = np.stack(np.meshgrid(np.linspace(-1.2, 1.2, 13), np.linspace(-1.2, 1.2, 13)), -1).reshape(-1, 2)
    clear = grid[np.min(np.linalg.norm(grid[:, None] - buttons[None], axis=2), axis=1) > 0.35]
    place(env, *clear[0])  # off the buttons, so that the next goal is not pressed at once
    for _ in range(10):
        obs, _, _, _, info = env.step(np.zeros(2))
        assert info["cost"] == 0.0  # a press costs nothing during the delay
    assert obs[env.obs_slices["buttons_lidar"]].max() > 0.0
    wrong = next(i for i in range(4) if i != env.rule.goal_button)  # type: ignore[attr-defined]
    wx, wy = env.body_xy(f"button{wrong}")
    place(env, wx + 0.19, wy)
    info = env.step(np.zeros(2))[4]
    assert info["cost_buttons"] == 1.0 and info["cost"] == 1.0 and "goal_met" not in info


def test_pushing_the_box_into_the_goal() -> None:
    env = nav("SafetyPointPush1-v0")
    env.reset(seed=1)
    park(env, "hazard0", "hazard1", "pillar0")
    adr = env.scene.qpos["push_box"]
    env.data.qpos[adr : adr + 7] = [0.0, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0]
    env.place_goal(np.array([0.75, 0.0]))
    place(env, -0.45, 0.0)  # behind the box, facing it (+x)
    env.rule.remember(env)
    total, met = 0.0, False
    for _ in range(200):
        _, reward, _, _, info = env.step(np.array([1.0, 0.0]))
        total += reward
        if info.get("goal_met"):
            met = True
            break
    assert met, env.body_pos("push_box")
    assert reward > 1.0 and total > 1.4  # the bonus, and about 0.75 - 0.3 of box progress


def test_circle_reward_and_boundary_cost() -> None:
    env = nav("SafetyPointCircle1-v0")
    env.reset(seed=0)

    def reward_at(x: float, y: float, u: float, v: float, spin: float = 0.0) -> float:
        env.data.qpos[:3] = x, y, 0.0
        env.data.qvel[:3] = u, v, spin
        mujoco.mj_forward(env.model, env.data)
        return env.rule.reward(env, False)

    # on the circle: (1.2, 0.9), r = 1.5, moving (-0.3, 0.4): 0.1 (0.3 * 0.9 + 0.4 * 1.2) / 1.5 / 1 = 0.05;
    # the velocity is the body origin's (as the reference's Jacobian at the body frame): turning on the
    # spot does not change it, though it moves the centre of mass (the arrow sits 0.1 m ahead)
    assert reward_at(1.2, 0.9, -0.3, 0.4) == pytest.approx(0.05, rel=1e-12)
    assert reward_at(1.2, 0.9, -0.3, 0.4, spin=2.0) == pytest.approx(0.05, rel=1e-12)
    # inside: (0.6, 0.8), r = 1, moving (0, 1): 0.1 (0.6 / 1) / (1 + 0.5) = 0.04; backwards: -0.04
    assert reward_at(0.6, 0.8, 0.0, 1.0) == pytest.approx(0.04, rel=1e-12)
    assert reward_at(0.6, 0.8, 0.0, -1.0) == pytest.approx(-0.04, rel=1e-12)
    level2 = nav("SafetyPointCircle2-v0")
    level2.reset(seed=0)
    for x, y, cost1, cost2 in (
        (1.2, 0.0, 1.0, 1.0),
        (0.5, 0.0, 0.0, 0.0),
        (0.0, 1.2, 0.0, 1.0),
        (-1.2, 0.3, 1.0, 1.0),
    ):
        place(env, x, y)
        place(level2, x, y)
        assert env.step(np.zeros(2))[4]["cost"] == cost1, (x, y)
        assert level2.step(np.zeros(2))[4]["cost_out_of_boundary"] == cost2, (x, y)


def test_observation_layout_for_a_placed_goal() -> None:
    env = nav("SafetyPointGoal0-v0")
    env.reset(seed=0)
    env.place_goal(np.array([1.0, 0.5]))
    place(env, 0.0, 0.0, yaw=0.0)
    obs = env.step(np.zeros(2))[0]
    assert obs.shape == (28,)
    # goal at (1.0, 0.5) ahead-left: bins 0, 1, 2 as in test_nav_lidar (d = 1.118, alias 0.180669)
    lidar = np.zeros(16)
    lidar[[0, 1, 2]] = [0.5139844015388794, 0.627322003750035, 0.11333760221115562]
    np.testing.assert_allclose(obs[12:], lidar, rtol=1e-5, atol=1e-7)
    # at rest: gravity up the accelerometer, no velocity or spin, the field (0, -0.5, 0) in the frame
    np.testing.assert_allclose(obs[:12], [0, 0, 9.81, 0, 0, 0, 0, 0, 0, 0, -0.5, 0], atol=2e-2)
    np.testing.assert_allclose(obs[9:12], [0, -0.5, 0], atol=1e-9)
    place(env, 0.0, 0.0, yaw=np.pi / 2)  # turned left: the goal is now to the right (bins 12, 13, 14)
    obs = env.step(np.zeros(2))[0]
    lidar = np.roll(lidar, 12)
    np.testing.assert_allclose(obs[12:], lidar, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(obs[9:12], [-0.5, 0, 0], atol=1e-9)  # (-0.5 sin yaw, -0.5 cos yaw, 0)


def test_saved_states_carry_the_layout_and_render_to_clips(tmp_path: Path) -> None:
    env = make_env("SafetyPointGoal1-v0")
    env.reset(seed=8)
    env.action_space.seed(8)
    qpos, qvel = [], []
    for _ in range(12):
        env.step(env.action_space.sample())
        q, v = segment_states(env)
        qpos.append(q)
        qvel.append(v)
    base = env.unwrapped
    assert isinstance(base, NavEnv)
    assert qpos[0].shape == (base.model.nq + 2 * 9,) and qvel[0].shape == (base.model.nv,)
    other = nav("SafetyPointGoal1-v0")
    other.reset(seed=1)
    other.set_state(qpos[-1], qvel[-1])
    for name in ("goal", "hazard3", "vase0"):  # the other env now shows this episode's layout
        np.testing.assert_array_equal(other.body_pos(name), base.body_pos(name))
    path = render_clip(
        "SafetyPointGoal1-v0", np.stack(qpos), np.stack(qvel), tmp_path / "a.gif", width=64, height=48
    )
    again = render_clip(
        "SafetyPointGoal1-v0", np.stack(qpos), np.stack(qvel), tmp_path / "b.gif", width=64, height=48
    )
    assert path.read_bytes() == again.read_bytes()
    env.reset(seed=9)
    q, v = segment_states(env)
    elsewhere = render_clip("SafetyPointGoal1-v0", q[None], v[None], tmp_path / "c.gif", width=64, height=48)
    assert elsewhere.read_bytes() != path.read_bytes()


@pytest.mark.slow
def test_ppo_lagrangian_trains_on_a_navigation_task(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "alignloop.cli", "control", "train", "--env", "SafetyPointGoal1-v0",
        "--algo", "ppo-lag", "--total-env-steps", "512", "--ppo-lag.num-envs", "2", "--ppo-lag.num-steps", "256",
        "--ppo-lag.minibatch-size", "128", "--ppo-lag.epochs", "1", "--output-dir", str(run), "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert has_checkpoint(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and {"lambda", "cost_value_loss"} <= set(train[-1])  # a cost critic: the task's own cost
