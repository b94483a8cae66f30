"""Train OmniSafe 0.5.0's PPOLag or CPO through its own API; run by its own venv's Python.

Used by `bench/control_vs_omnisafe.py` (never imports alignloop)::

    bench/.venv-omnisafe/bin/python bench/omnisafe_runner.py --algo PPOLag --seed 0 \
        --steps 200000 --out /tmp/run

OmniSafe's own defaults for the task, except: ``total_steps`` (the run's length), one torch
thread, the cost limit (25, already its default), the log folder, and ``steps_per_epoch``
only when ``--steps-per-epoch`` is given (the bench then sets the same on alignloop's side), and
PPOLag's multiplier rate (``lambda_lr``, 0.035) only when ``--lambda-lr`` is given.
Its per-epoch ``progress.csv`` is copied to ``OUT/progress.csv``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def custom_cfgs(
    algo: str, seed: int, steps: int, out: Path, steps_per_epoch: int | None, lambda_lr: float | None = None
) -> dict:
    """OmniSafe's ``custom_cfgs`` for one run (keys as in its ``configs/on-policy/*.yaml``)."""
    cfgs: dict = {
        "seed": seed,
        "train_cfgs": {"total_steps": steps, "torch_threads": 1, "device": "cpu"},
        "logger_cfgs": {"log_dir": str(out / "omnisafe")},
    }
    if algo == "PPOLag":
        cfgs["lagrange_cfgs"] = {"cost_limit": 25.0}
        if lambda_lr is not None:
            cfgs["lagrange_cfgs"]["lambda_lr"] = lambda_lr
    else:
        cfgs["algo_cfgs"] = {"cost_limit": 25.0}
    if steps_per_epoch is not None:
        cfgs.setdefault("algo_cfgs", {})["steps_per_epoch"] = steps_per_epoch
    return cfgs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algo", choices=["PPOLag", "CPO"], required=True)
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lambda-lr", type=float, default=None, help="PPOLag's lambda_lr (default 0.035)")
    args = parser.parse_args()
    if args.lambda_lr is not None and args.algo != "PPOLag":
        parser.error("--lambda-lr is PPOLag's (CPO has no multiplier)")

    import omnisafe

    args.out.mkdir(parents=True, exist_ok=True)
    cfgs = custom_cfgs(args.algo, args.seed, args.steps, args.out, args.steps_per_epoch, args.lambda_lr)
    agent = omnisafe.Agent(args.algo, args.env, custom_cfgs=cfgs)
    agent.learn()
    found = sorted((args.out / "omnisafe").rglob("progress.csv"))
    if not found:
        raise SystemExit(f"omnisafe_runner: no progress.csv under {args.out / 'omnisafe'}")
    shutil.copy(found[-1], args.out / "progress.csv")


if __name__ == "__main__":
    main()
