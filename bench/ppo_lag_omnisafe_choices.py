"""PPO-Lagrangian on a navigation task with and without OmniSafe's three remaining choices.

alignloop's ``--algo ppo-lag`` defaults are OmniSafe 0.5.0's PPOLag settings except three
choices, which are options (`alignloop control train --help`):

- the multiplier moved by Adam at rate 0.035 (``--ppo-lag.lagrange-method adam
  --ppo-lag.lagrange-lr 0.035``) instead of the projected rule at 0.01 per unit of J_c - d;
- nn.Linear's own initialisation (``--ppo-lag.init pytorch``) instead of the orthogonal one;
- observation statistics folded in before every step (``--ppo-lag.norm-obs-per-step``) instead
  of after each rollout.

For each seed this runs alignloop with its defaults ("default"), alignloop with the three
choices ("OmniSafe's choices") and, when `bench/setup_omnisafe.sh` has built its environment,
OmniSafe's own PPOLag, two processes at a time (one torch thread each; speeds are not the point
here, `control_vs_omnisafe.py` measures them). A run whose folder already holds its finished
log is read, not run again, so a cut-short benchmark continues where it stopped. Reported per
run: the final return and cost by `control_vs_omnisafe.py`'s rule (the mean of the last 50
episodes once 50 have ended) and lambda at the end; learning curves in one figure.

    python bench/ppo_lag_omnisafe_choices.py --steps 200000 --seeds 0 1 2 --runs /tmp/plc \\
        --out bench/results/ppo_lag_omnisafe_choices.json
    python bench/ppo_lag_omnisafe_choices.py --no-omnisafe ...   # alignloop's two only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_vs_omnisafe import (  # noqa: E402
    BENCH,
    COST_LIMIT,
    OMNISAFE_PYTHON,
    OMNISAFE_WINDOW,
    alignloop_window,
    curve,
    draw,
    read_alignloop,
    read_omnisafe,
)

CHOICES = [
    *("--ppo-lag.lagrange-method", "adam", "--ppo-lag.lagrange-lr", "0.035"),
    *("--ppo-lag.init", "pytorch", "--ppo-lag.norm-obs-per-step"),
]
"""OmniSafe's three choices as alignloop flags."""
VARIANTS = {"default": [], "OmniSafe's choices": CHOICES}


def alignloop_command(env: str, seed: int, steps: int, out: Path, extra: list[str]) -> list[str]:
    return [
        *(sys.executable, "-m", "alignloop.cli", "control", "train", "--env", env, "--algo", "ppo-lag"),
        *("--seed", str(seed), "--total-env-steps", str(steps), "--ppo-lag.cost-limit", str(COST_LIMIT)),
        *("--ppo-lag.threads", "1", "--no-progress", "--output-dir", str(out), *extra),
    ]


def omnisafe_command(env: str, seed: int, steps: int, out: Path) -> list[str]:
    runner = str(BENCH / "omnisafe_runner.py")
    return [str(OMNISAFE_PYTHON), runner, "--algo", "PPOLag", "--env", env, "--seed", str(seed)] + [
        *("--steps", str(steps), "--out", str(out))
    ]


def finished(job: dict[str, Any], steps: int) -> bool:
    if job["library"] == "alignloop":
        log = job["out"] / "metrics.jsonl"
        rows = read_alignloop(log) if log.exists() else []
    else:
        log = job["out"] / "progress.csv"  # omnisafe_runner.py copies OmniSafe's log there
        rows = read_omnisafe(log) if log.exists() else []
    return bool(rows) and rows[-1][0] >= steps


def run_jobs(jobs: list[dict[str, Any]], parallel: int) -> None:
    """Run the jobs' commands, `parallel` at a time; a failed one stops the benchmark with its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="egl")
    waiting, running = list(jobs), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            job["out"].parent.mkdir(parents=True, exist_ok=True)
            log = job["out"].with_suffix(".log").open("w")
            running[id(job)] = (
                job,
                subprocess.Popen(job["command"], stdout=log, stderr=subprocess.STDOUT, env=env),
            )
            print(f"started {job['name']}", flush=True)
        for key, (job, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode != 0:
                tail = job["out"].with_suffix(".log").read_text()[-3000:]
                raise SystemExit(f"{job['name']} failed ({proc.returncode}):\n{tail}")
            print(f"finished {job['name']}", flush=True)
        time.sleep(2)


def result_row(job: dict[str, Any]) -> dict[str, Any]:
    if job["library"] == "alignloop":
        c = curve(read_alignloop(job["out"] / "metrics.jsonl"), alignloop_window(job["out"], "ppo-lag"))
        lams = [json.loads(x).get("lambda") for x in (job["out"] / "metrics.jsonl").read_text().splitlines()]
        lam = [x for x in lams if x is not None][-1]
    else:
        log = job["out"] / "progress.csv"
        c = curve(read_omnisafe(log), OMNISAFE_WINDOW)
        with log.open() as f:
            lam = float(list(csv.DictReader(f))[-1]["Metrics/LagrangeMultiplier"])
    return {
        "algo": job["variant"],  # the figure's column
        "library": job["library"],
        "seed": job["seed"],
        "env": job["env"],
        "return": c["return"][-1],
        "cost": c["cost"][-1],
        "lambda": lam,
        "curve": c,
        "command": [x.replace(f"{BENCH.parent}/", "") for x in job["command"]],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | seed | final return | final cost (limit 25) | lambda at the end |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lam = "" if r["lambda"] is None else f"{r['lambda']:.3f}"
        name = f"{r['library']}, {r['algo']}" if r["library"] == "alignloop" else "OmniSafe 0.5.0 PPOLag"
        lines.append(f"| {name} | {r['seed']} | {r['return']:.2f} | {r['cost']:.1f} | {lam} |")
    for name in dict.fromkeys((r["library"], r["algo"]) for r in rows):
        mine = [r for r in rows if (r["library"], r["algo"]) == name]
        ret, cost = (statistics.median(r[k] for r in mine) for k in ("return", "cost"))
        lines.append(
            f"| median, {name[0]} {name[1] if name[0] == 'alignloop' else ''} | | {ret:.2f} | {cost:.1f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/ppo_lag_omnisafe_choices"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ppo_lag_omnisafe_choices.json"))
    parser.add_argument("--parallel", type=int, default=2, help="processes at a time")
    parser.add_argument("--no-omnisafe", action="store_true", help="alignloop's two variants only")
    parser.add_argument("--omnisafe-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    args = parser.parse_args()
    if not args.no_omnisafe and not OMNISAFE_PYTHON.exists():
        raise SystemExit(
            f"{OMNISAFE_PYTHON} is missing: run bench/setup_omnisafe.sh first, or pass --no-omnisafe"
        )
    jobs = []
    for seed in args.seeds:
        for variant, extra in VARIANTS.items():
            out = args.runs / args.env / f"alignloop-{'default' if not extra else 'choices'}-s{seed}"
            command = alignloop_command(args.env, seed, args.steps, out, extra)
            jobs.append(
                dict(
                    name=f"alignloop {variant} s{seed}",
                    library="alignloop",
                    variant=variant,
                    seed=seed,
                    env=args.env,
                    out=out,
                    command=command,
                )
            )
        if not args.no_omnisafe and seed in (args.omnisafe_seeds or args.seeds):
            out = args.runs / args.env / f"omnisafe-s{seed}"
            command = omnisafe_command(args.env, seed, args.steps, out)
            jobs.append(
                dict(
                    name=f"OmniSafe s{seed}",
                    library="omnisafe",
                    variant="default",
                    seed=seed,
                    env=args.env,
                    out=out,
                    command=command,
                )
            )
    run_jobs([j for j in jobs if not finished(j, args.steps)], args.parallel)
    rows = [result_row(j) for j in jobs]
    # OmniSafe's runs appear in both columns of the figure, beside each alignloop variant
    figure_rows = rows + [
        dict(r, algo=v) for r in rows if r["library"] == "omnisafe" for v in VARIANTS if v != "default"
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    draw(figure_rows, args.out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
