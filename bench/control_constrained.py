"""Every learner of `alignloop control train` on one safe task, side by side.

Default: SafetyPointGoal1-v0 when the navigation tasks are installed, else
SafeHalfCheetahVelocity-v5 (HalfCheetah-v5, cost 1 per step above 3.2096 m/s, 1000-step
episodes); cost limit 25 per episode; each algorithm's own defaults (`alignloop control train
--help`: OmniSafe 0.5.0's reference settings for PPO-Lagrangian, CPO, PCPO, FOCOPS and CUP, the
SAC paper's for SAC), except what ``--set`` overrides. Measured per run (a fresh process each,
algorithms interleaved seed by seed):

- return, cost: mean undiscounted return and cost of the last episodes the learner kept
  (``cost_window``: 100 on-policy, 10 for SAC), true reward and true cost;
- steps/s: environment steps over the wall time of training (imports and env creation
  excluded; rollouts and updates included).

    python bench/control_constrained.py --steps 200000 --seeds 0 1 2
    python bench/control_constrained.py --algos ppo-lag cpo --steps 100000 --set num_steps=4000
    python bench/control_constrained.py --algos sac sac-lag --steps 20000 --set learning_starts=5000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_common import markdown, run_all, save, summarise  # noqa: E402

ALGOS = ["ppo", "ppo-lag", "cpo", "pcpo", "focops", "cup", "sac", "sac-lag"]


def default_env() -> str:
    import gymnasium as gym

    import alignloop.control.envs  # noqa: F401 - registers the tasks alignloop has

    return "SafetyPointGoal1-v0" if "SafetyPointGoal1-v0" in gym.registry else "SafeHalfCheetahVelocity-v5"


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from alignloop.control.onpolicy import model_options
    from alignloop.control.train import ALGORITHMS, TrainConfig, check_config

    torch.set_num_threads(1)
    algo = ALGORITHMS[spec["algo"]]
    with tempfile.TemporaryDirectory() as tmp:
        base = getattr(TrainConfig(), algo.group)
        names = {f.name for f in dataclasses.fields(base)}
        chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["set"].items() if k in names}
        settings = dataclasses.replace(base, cost_limit=spec["cost_limit"], **chosen)
        cfg = TrainConfig(
            env=spec["env"],
            algo=spec["algo"],
            total_env_steps=spec["steps"],
            seed=spec["seed"],
            output_dir=Path(tmp) / "run",
            save_every=0,
            progress=False,
            **{algo.group: settings},
        )
        _, s, saute = check_config(cfg, cfg.run_dir())
        start = time.perf_counter()
        stats = algo.train(
            cfg.run_dir(),
            cfg.env,
            cfg.cost,
            cfg.total_env_steps,
            cfg.seed,
            s,
            algo=cfg.algo,
            save_every=0,
            progress=False,
            config=cfg,
            must_match=model_options(algo.group),
            saute=saute,
        )
        seconds = time.perf_counter() - start
    return {
        "return": stats.get("episode/return", float("nan")),
        "cost": stats.get("episode/cost", float("nan")),
        "lambda": stats["train/lambda"],
        "steps": stats["global_step"],
        "steps_per_second": stats["global_step"] / seconds,
        "seconds": seconds,
    }


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs (values read as JSON where they parse, else as text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[name.replace("-", "_")] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=None, help="task (default: SafetyPointGoal1-v0 if present)")
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument(
        "--set", nargs="*", default=[], help="settings for every algorithm that has them: name=value"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", type=Path, default=Path("bench/results/control_constrained.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps({**spec, **worker(spec)}))
        return
    env = args.env or default_env()
    specs = [
        {
            "algo": algo,
            "env": env,
            "steps": args.steps,
            "seed": seed,
            "cost_limit": args.cost_limit,
            "set": parse_sets(args.set),
        }
        for seed in args.seeds
        for algo in args.algos
    ]
    rows = run_all(__file__, specs, args.out, jobs=args.jobs)
    fields = ["return", "cost", "steps_per_second", "lambda"]
    summary = summarise(rows, "algo", fields)
    save(args.out, rows, summary)
    print(markdown(summary, "algo", fields))


if __name__ == "__main__":
    main()
