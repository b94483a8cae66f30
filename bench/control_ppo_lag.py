"""PPO-Lagrangian against unconstrained PPO on a velocity-constrained task.

Default: SafeHalfCheetahVelocity-v5 (HalfCheetah-v5, cost 1 per step above 3.2096 m/s, 1000-step
episodes), cost limit 25 per episode, PPO defaults of `alignloop.control.ppo.PPOSettings`
(those of SB3). Measured per run (a fresh process each): mean return and mean cost of the last
100 training episodes (true reward, true cost). Target: PPO-Lagrangian's final cost <= 25,
with unconstrained PPO beside it for contrast.

    python bench/control_ppo_lag.py --steps 1000000 --seeds 0 1 2
    python bench/control_ppo_lag.py --steps 100000 --seeds 0     # a short check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_common import (  # noqa: E402
    add_ppo_arguments,
    markdown,
    ppo_overrides,
    run_all,
    save,
    summarise,
)


def worker(spec: dict) -> dict:
    from alignloop.control.ppo import PPOSettings, train_policy

    settings = PPOSettings(cost_window=100, cost_limit=spec["cost_limit"], **spec.get("ppo", {}))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = train_policy(
            Path(tmp) / "run",
            spec["env"],
            None,
            spec["algo"] == "ppo-lag",
            spec["steps"],
            spec["seed"],
            settings,
            save_every=0,
            progress=False,
        )
        seconds = time.perf_counter() - start
    return {
        "return": stats["episode/return"],
        "cost": stats["episode/cost"],
        "lambda": stats["train/lambda"],
        "steps_per_second": stats["global_step"] / seconds,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="SafeHalfCheetahVelocity-v5")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/control_ppo_lag.json"))
    add_ppo_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps({**spec, **worker(spec)}))
        return
    specs = [
        {
            "algo": algo,
            "env": args.env,
            "steps": args.steps,
            "seed": seed,
            "cost_limit": args.cost_limit,
            "ppo": ppo_overrides(args),
        }
        for seed in args.seeds
        for algo in ("ppo-lag", "ppo")
    ]
    rows = run_all(__file__, specs, args.out)
    fields = ["return", "cost", "lambda", "seconds"]
    summary = summarise(rows, "algo", fields)
    save(args.out, rows, summary)
    print(markdown(summary, "algo", fields))


if __name__ == "__main__":
    main()
