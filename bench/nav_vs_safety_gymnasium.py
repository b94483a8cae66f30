"""alignloop's navigation tasks against Safety-Gymnasium 1.0.0, task by task.

The reference runs unchanged in its own environment (pyenv's Python 3.10.13 with
``safety-gymnasium==1.0.0`` and its pins, built once by ``bench/setup_safety_gymnasium.sh``
into ``bench/.venv-safety-gymnasium``); every measurement is a fresh process of this script
(``--worker SPEC``) in one environment or the other, so the two never share an interpreter.
Compared, for every task id:

1. **spaces**: observation and action shapes, bounds and dtypes, the observation keys in
   order with their sizes, the episode length;
2. **layouts**: the reset observation of seeds 0-9 (a seed gives the same layout on both sides,
   so the observations must agree to rounding; the Car's accelerometer at reset is left out:
   it reads whether a wheel that rests exactly at distance 0 from the floor is in contact, which
   rounding decides), and the observation after 1, 5 and 20 steps of the same actions (this
   drifts: MuJoCo 2.3.3 and the installed MuJoCo integrate slightly differently);
3. **statistics**: per-step reward, per-step cost, the share of steps spent inside a hazard and
   the cost rate inside hazards, under a uniform random policy and a scripted target-seeking
   policy (reads the goal, box or circle lidar and steers towards it, blind to hazards), over
   paired episodes (the same seeds, hence the same layouts, and the same random actions on both
   sides). The tolerance of a metric is ``max(floor, 10% of the reference's mean)`` (floors:
   reward 0.002/step, cost and hazard share 0.01/step); it holds when the 95% confidence
   interval (t, paired episodes) of the difference reaches into +-tolerance, that is when the
   episodes give no evidence of a difference larger than the tolerance. Trajectories of the
   two engines part after tens of steps, so a robot that lingers in a hazard in one episode
   makes the interval wide: read the interval's half-width beside the verdict (a half-width
   above the tolerance means the episodes could not show a difference that small);
4. **speed**: reset and step time, interleaved process by process, as medians and ratios. The
   reference's reset is timed as shipped (it rebuilds the model from XML and decodes a 24 MB
   skybox) and with the skybox swapped for a gradient in the worker's memory (what the
   statistics runs use, to make 1,000 resets affordable; the skybox only colours the
   background).

    python bench/nav_vs_safety_gymnasium.py                              # every task (hours on 2 cores)
    python bench/nav_vs_safety_gymnasium.py --tasks SafetyPointGoal1-v0 --episodes 10 --steps 200

Results: bench/results/nav_vs_safety_gymnasium.json and .md (the tables of BENCHMARKS.md); every
finished worker is kept in .rows.jsonl, so the same command after an interruption goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE_VENV = HERE / ".venv-safety-gymnasium"
ROBOTS = ("Point", "Car")
TASKS = ("Goal", "Button", "Push", "Circle")
ALL_IDS = [f"Safety{r}{t}{lv}-v0" for r in ROBOTS for t in TASKS for lv in (0, 1, 2)]
BIN = 2 * math.pi / 16
HEADING = {"Point": 0.0, "Car": -math.pi / 2}  # the Car drives along its -y axis
FLOORS = {"reward": 0.002, "cost": 0.01, "hazard_share": 0.01}


# --------------------------------------------------------------------------- both sides
class Side:
    """One task on one side behind one interface: reset, step, the robot and the hazards."""

    def __init__(self, side: str, env_id: str, gradient_skybox: bool = True):
        self.side, self.robot = side, "Car" if "Car" in env_id else "Point"
        if side == "reference":
            import safety_gymnasium

            if gradient_skybox:
                _gradient_skybox()
            self.env = safety_gymnasium.make(env_id)
            space = self.env.unwrapped.obs_space_dict
            sizes = [(k, int(np.prod(space[k].shape))) for k in space]
        else:
            import gymnasium as gym

            import alignloop.control.nav  # noqa: F401 - registers the ids

            self.env = gym.make(env_id)
            sl = self.env.unwrapped.obs_slices
            sizes = [(k, s.stop - s.start) for k, s in sl.items()]
        self.sizes = sizes
        self.slices, start = {}, 0
        for key, size in sizes:
            self.slices[key] = slice(start, start + size)
            start += size

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.asarray(self.env.reset(seed=seed)[0], dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, float, bool, dict]:
        if self.side == "reference":
            obs, reward, cost, terminated, truncated, info = self.env.step(action)
        else:
            obs, reward, terminated, truncated, info = self.env.step(action)
            cost = info["cost"]
        return np.asarray(obs, dtype=np.float64), float(reward), float(cost), terminated or truncated, info

    def agent_xy(self) -> np.ndarray:
        if self.side == "reference":
            return np.asarray(self.env.unwrapped.task.agent.pos[:2])
        return self.env.unwrapped.agent_pos[:2]

    def hazards(self) -> tuple[np.ndarray, float] | None:
        """Hazard centres (H, 2) and radius, or None when hazards do not cost in this task."""
        if self.side == "reference":
            task = self.env.unwrapped.task
            hazards = getattr(task, "hazards", None)
            if hazards is None or not hazards.is_constrained:
                return None
            return np.array([p[:2] for p in hazards.pos]), float(hazards.size)
        base = self.env.unwrapped
        spec = base.task.find("hazards")
        if spec is None or not spec.constrained:
            return None
        return np.array([base.body_xy(f"hazard{i}") for i in range(spec.num)]), spec.size


def _gradient_skybox() -> None:
    """In this process only: the reference's world reads its 24 MB star skybox as a gradient."""
    import safety_gymnasium.world as world

    load = world.yaml.load

    def patched(stream: Any, Loader: Any) -> Any:  # noqa: N803 - yaml's keyword
        config = load(stream, Loader=Loader)
        if isinstance(config, dict) and "skybox" in config.get("textures", {}):
            config["textures"]["skybox"] = {
                "@type": "skybox", "@builtin": "gradient", "@rgb1": "0.4 0.6 0.8", "@rgb2": "0 0 0",
                "@width": "64", "@height": "64",
            }  # fmt: skip
        return config

    world.yaml.load = patched


def _bearing(lidar: np.ndarray) -> tuple[float, float] | None:
    """(bearing from the robot's x axis, reading) of the one object a lidar sees, or None."""
    i = int(np.argmax(lidar))
    if lidar[i] <= 0:
        return None
    alias = lidar[(i + 1) % 16] / lidar[i]  # the next bin holds alias * reading
    return (i + alias) * BIN, float(lidar[i])


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _drive(robot: str, beta: float, go: float) -> np.ndarray:
    """Turn towards bearing ``beta`` (from the heading) and move forward by ``go``."""
    turn = float(np.clip(3 * beta, -1, 1))
    forward = go * max(math.cos(beta), 0.0)
    if robot == "Point":
        return np.array([forward, turn])
    return np.clip([forward + turn, forward - turn], -1, 1)  # left, right wheel


def scripted(side: Side, task: str, obs: np.ndarray) -> np.ndarray:
    """Steer towards the goal (Goal, Button), the box (Push), or round the circle (Circle)."""
    heading = HEADING[side.robot]
    if task == "Circle":
        seen = _bearing(obs[side.slices["circle_lidar"]])
        if seen is None:
            return _drive(side.robot, 1.0, 0.0)
        angle, reading = seen
        dist = 6.0 * (1.0 - reading)  # the circle lidar reads (6 - d) / 6
        want = math.pi / 2 - float(np.clip(0.8 * (dist - 1.5), -1.0, 1.0))  # centre on the left
        return _drive(side.robot, _wrap(angle - heading - want), 1.0)
    target = "push_box_lidar" if task == "Push" else "goal_lidar"
    seen = _bearing(obs[side.slices[target]])
    if seen is None:
        return _drive(side.robot, 1.0, 0.0)  # turn on the spot until it is in view
    return _drive(side.robot, _wrap(seen[0] - heading), 1.0)


def _work_spaces(side: Side, spec: dict) -> dict:
    env = side.env
    out: dict[str, Any] = {
        "keys": side.sizes,
        "obs_shape": list(env.observation_space.shape),
        "obs_dtype": str(env.observation_space.dtype),
        "obs_low": env.observation_space.low.tolist(),
        "obs_high": env.observation_space.high.tolist(),
        "act_shape": list(env.action_space.shape),
        "act_dtype": str(env.action_space.dtype),
        "act_low": env.action_space.low.tolist(),
        "act_high": env.action_space.high.tolist(),
        "max_episode_steps": env.spec.max_episode_steps,
        "reset_obs": [side.reset(seed).tolist() for seed in range(spec["layout_seeds"])],
    }
    side.reset(0)
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 2))
    trajectory = []
    for a in actions:
        trajectory.append(side.step(a)[0].tolist())
    out["trajectory"] = [trajectory[0], trajectory[4], trajectory[19]]
    return out


def _work_stats(side: Side, spec: dict) -> dict:
    task = next(t for t in TASKS if t in spec["env"])
    episodes = []
    for seed in spec["seeds"]:
        obs = side.reset(seed)
        rng = np.random.default_rng(1000 + seed)
        row = {
            "seed": seed,
            "steps": 0,
            "reward": 0.0,
            "cost": 0.0,
            "goals": 0,
            "inside": 0,
            "inside_cost": 0,
        }
        for _ in range(spec["steps"]):
            action = rng.uniform(-1, 1, 2) if spec["policy"] == "random" else scripted(side, task, obs)
            obs, reward, cost, done, info = side.step(action)
            row["steps"] += 1
            row["reward"] += reward
            row["cost"] += cost
            row["goals"] += int(bool(info.get("goal_met", False)))
            hazards = side.hazards()
            if hazards is not None:
                centres, size = hazards
                if np.min(np.hypot(*(centres - side.agent_xy()).T)) <= size:
                    row["inside"] += 1
                    row["inside_cost"] += int(cost > 0)
            if done:
                break
        episodes.append(row)
    return {"episodes": episodes}


def _work_speed(side: Side, spec: dict) -> dict:
    """Median reset time over ``resets`` seeded resets; mean time of ``steps`` random steps (an
    episode that ends is reset, untimed)."""
    resets = []
    for seed in range(spec["resets"]):
        tic = time.perf_counter()
        side.reset(seed)
        resets.append(time.perf_counter() - tic)
    actions = np.random.default_rng(0).uniform(-1, 1, (spec["steps"], 2))
    stepping = 0.0
    for a in actions:
        tic = time.perf_counter()
        done = side.step(a)[3]
        stepping += time.perf_counter() - tic
        if done:
            side.reset()
    return {"reset_s": float(np.median(resets)), "step_s": stepping / spec["steps"]}


def worker(spec: dict) -> dict:
    side = Side(spec["side"], spec["env"], gradient_skybox=spec.get("gradient_skybox", True))
    work = {"spaces": _work_spaces, "stats": _work_stats, "speed": _work_speed}[spec["kind"]]
    return {**spec, **work(side, spec)}


# --------------------------------------------------------------------------- orchestration
def _t975(n: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, n - 1))
    except ImportError:
        return 1.96


def _paired(ours: list[float], ref: list[float]) -> dict[str, float]:
    delta = np.asarray(ours) - np.asarray(ref)
    n = len(delta)
    half = _t975(n) * float(np.std(delta, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {
        "ours": float(np.mean(ours)),
        "ref": float(np.mean(ref)),
        "delta": float(np.mean(delta)),
        "ci": half,
    }


def compare_stats(ours: dict, ref: dict) -> dict[str, Any]:
    """Paired per-episode metrics of one (task, policy) and whether each holds its tolerance."""
    a = {e["seed"]: e for e in ours["episodes"]}
    b = {e["seed"]: e for e in ref["episodes"]}
    seeds = sorted(set(a) & set(b))
    metrics = {
        "reward": lambda e: e["reward"] / e["steps"],
        "cost": lambda e: e["cost"] / e["steps"],
        "hazard_share": lambda e: e["inside"] / e["steps"],
    }
    out: dict[str, Any] = {"episodes": len(seeds)}
    for name, f in metrics.items():
        m = _paired([f(a[s]) for s in seeds], [f(b[s]) for s in seeds])
        m["tol"] = max(FLOORS[name], 0.1 * abs(m["ref"]))
        m["holds"] = abs(m["delta"]) - m["ci"] <= m["tol"]  # the CI reaches into +-tol
        out[name] = m
    for label, eps in (("ours", a), ("ref", b)):
        inside = sum(eps[s]["inside"] for s in seeds)
        out[f"inside_cost_rate_{label}"] = (
            sum(eps[s]["inside_cost"] for s in seeds) / inside if inside else None
        )
        out[f"goals_{label}"] = sum(eps[s]["goals"] for s in seeds) / len(seeds)
    return out


def compare_spaces(ours: dict, ref: dict) -> dict[str, Any]:
    fields = (
        "keys",
        "obs_shape",
        "obs_dtype",
        "obs_low",
        "obs_high",
        "act_shape",
        "act_dtype",
        "act_low",
        "act_high",
    )
    same = {f: ours[f] == ref[f] for f in fields}
    same["max_episode_steps"] = ours["max_episode_steps"] == ref["max_episode_steps"]
    keep = np.ones(len(ours["reset_obs"][0]), dtype=bool)
    if "Car" in ours["env"]:
        keep[:3] = False  # the accelerometer at reset (see the module docstring)
    reset = np.abs(np.array(ours["reset_obs"]) - np.array(ref["reset_obs"]))
    drift = np.abs(np.array(ours["trajectory"]) - np.array(ref["trajectory"]))  # (3, D)
    lidar = np.zeros(drift.shape[1], dtype=bool)
    start = 0
    for key, size in ours["keys"]:
        lidar[start : start + size] = key.endswith("_lidar")
        start += size
    return {
        "spaces_equal": all(same.values()),
        "differing": [f for f, ok in same.items() if not ok],
        "reset_max_diff": float(reset[:, keep].max()),
        "car_reset_accelerometer_max_diff": float(reset[:, ~keep].max()) if (~keep).any() else None,
        "after_1_5_20_steps_max_diff": drift.max(axis=1).tolist(),
        "lidar_after_1_5_20_steps_max_diff": drift[:, lidar].max(axis=1).tolist(),
    }


def run(specs: list[dict], jobs: int, cache: Path) -> list[dict]:
    """Every spec's worker row, ``jobs`` at a time; finished rows are appended to ``cache`` (JSON
    lines) and a spec found there is not run again, so a long run that stops loses nothing."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(HERE))
    from control_common import run_worker

    ref_python = str(REFERENCE_VENV / "bin" / "python")
    done: dict[str, dict] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    lock = threading.Lock()

    def one(spec: dict, key: str) -> dict:
        if key in done:
            return done[key]
        python = ref_python if spec["side"] == "reference" else sys.executable
        row = {**run_worker(str(Path(__file__).resolve()), spec, python=python), "key": key}
        with lock, cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"done {spec['kind']} {spec['side']} {spec['env']} {spec.get('policy', '')}", flush=True)
        return row

    keys, seen = [], {}  # a spec's key: the spec and which repeat of it this is
    for spec in specs:
        text = json.dumps(spec, sort_keys=True)
        seen[text] = seen.get(text, 0) + 1
        keys.append(f"{text}#{seen[text]}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, specs, keys))


def markdown(report: dict) -> str:
    lines = ["| task | spaces equal | reset obs max diff (10 seeds) | obs diff after 1 / 5 / 20 steps "
             "| lidar diff after 1 / 5 / 20 steps |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for env_id, s in report["spaces"].items():
        diffs = " / ".join(f"{d:.0e}" for d in s["after_1_5_20_steps_max_diff"])
        lidar = " / ".join(f"{d:.0e}" for d in s["lidar_after_1_5_20_steps_max_diff"])
        equal = "yes" if s["spaces_equal"] else "no: " + ", ".join(s["differing"])
        lines.append(f"| {env_id} | {equal} | {s['reset_max_diff']:.0e} | {diffs} | {lidar} |")
    lines += ["", "| task | policy | episodes | reward/step: ours, ref, diff [95% CI] | cost/step: ours, ref, diff [95% CI] "
              "| hazard share: diff [95% CI] | cost rate in hazards: ours, ref | goals/episode: ours, ref | holds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for key, s in report["stats"].items():
        env_id, policy = key.split(" ")

        def cell(m: dict, digits: int = 4) -> str:
            return f"{m['ours']:.{digits}f}, {m['ref']:.{digits}f}, {m['delta']:+.{digits}f} [±{m['ci']:.{digits}f}]"

        rate = [s[f"inside_cost_rate_{x}"] for x in ("ours", "ref")]
        rates = (
            "-"
            if rate[0] is None and rate[1] is None
            else ", ".join("-" if r is None else f"{r:.3f}" for r in rate)
        )
        holds = all(s[m]["holds"] for m in ("reward", "cost", "hazard_share"))
        failed = [m for m in ("reward", "cost", "hazard_share") if not s[m]["holds"]]
        lines.append(
            f"| {env_id} | {policy} | {s['episodes']} | {cell(s['reward'])} | {cell(s['cost'], 3)} | "
            f"{s['hazard_share']['delta']:+.3f} [±{s['hazard_share']['ci']:.3f}] | {rates} | "
            f"{s['goals_ours']:.2f}, {s['goals_ref']:.2f} | {'yes' if holds else 'no: ' + ', '.join(failed)} |"
        )
    lines += ["", "| task | reset: ours | reset: ref (as shipped) | reset: ref (gradient skybox) | step: ours | step: ref "
              "| step speed-up | reset speed-up (as shipped) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for env_id, s in report["speed"].items():
        lines.append(
            f"| {env_id} | {s['reset_ours'] * 1e3:.1f} ms | {s['reset_ref'] * 1e3:.0f} ms | {s['reset_ref_fast'] * 1e3:.0f} ms | "
            f"{s['step_ours'] * 1e3:.2f} ms | {s['step_ref'] * 1e3:.2f} ms | {s['step_ref'] / s['step_ours']:.1f}x | "
            f"{s['reset_ref'] / s['reset_ours']:.0f}x |"
        )
    return "\n".join(lines)


def _median(rows: list[dict], side: str, gradient_skybox: bool, key: str) -> float:
    return float(
        np.median([r[key] for r in rows if r["side"] == side and r["gradient_skybox"] == gradient_skybox])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", nargs="+", default=ALL_IDS, help="task ids (default: all 24)")
    parser.add_argument("--episodes", type=int, default=16, help="paired episodes per task and policy")
    parser.add_argument("--steps", type=int, default=300, help="steps per statistics episode (at most)")
    parser.add_argument(
        "--speed-rounds", type=int, default=2, help="interleaved speed runs per side and task"
    )
    parser.add_argument("--speed-steps", type=int, default=1000, help="timed steps per speed run")
    parser.add_argument("--jobs", type=int, default=2, help="workers at a time")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "nav_vs_safety_gymnasium.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    subprocess.run(["bash", str(HERE / "setup_safety_gymnasium.sh"), str(REFERENCE_VENV)], check=True)
    seeds = list(range(100, 100 + args.episodes))
    specs: list[dict] = []
    for env_id in args.tasks:
        for side in ("alignloop", "reference"):  # interleaved: each pair runs side by side
            specs.append({"kind": "spaces", "side": side, "env": env_id, "layout_seeds": 10})
        for policy in ("random", "scripted"):
            for side in ("alignloop", "reference"):
                specs.append({"kind": "stats", "side": side, "env": env_id, "policy": policy, "seeds": seeds,
                              "steps": args.steps})  # fmt: skip
        for _ in range(args.speed_rounds):
            for side, fast in (("alignloop", True), ("reference", False), ("reference", True)):
                specs.append({"kind": "speed", "side": side, "env": env_id, "resets": 2,
                              "steps": args.speed_steps, "gradient_skybox": fast})  # fmt: skip
    rows = run(specs, args.jobs, args.out.with_suffix(".rows.jsonl"))
    report: dict[str, Any] = {
        "spaces": {},
        "stats": {},
        "speed": {},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for env_id in args.tasks:
        mine = [r for r in rows if r["env"] == env_id]
        pick = {(r["kind"], r["side"], r.get("policy")): r for r in mine if r["kind"] != "speed"}
        report["spaces"][env_id] = compare_spaces(
            pick[("spaces", "alignloop", None)], pick[("spaces", "reference", None)]
        )
        for policy in ("random", "scripted"):
            report["stats"][f"{env_id} {policy}"] = compare_stats(
                pick[("stats", "alignloop", policy)], pick[("stats", "reference", policy)]
            )
        speed = [r for r in mine if r["kind"] == "speed"]
        report["speed"][env_id] = {
            "reset_ours": _median(speed, "alignloop", True, "reset_s"),
            "step_ours": _median(speed, "alignloop", True, "step_s"),
            "reset_ref": _median(speed, "reference", False, "reset_s"),
            "reset_ref_fast": _median(speed, "reference", True, "reset_s"),
            "step_ref": _median(speed, "reference", False, "step_s"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bulky = ("reset_obs", "trajectory", "obs_low", "obs_high", "key")  # compared above; kept in .rows.jsonl
    slim = [{k: v for k, v in r.items() if k not in bulky} for r in rows]
    args.out.write_text(json.dumps({"report": report, "runs": slim}, indent=1))
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
