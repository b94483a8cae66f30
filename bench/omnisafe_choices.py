"""PPO-Lagrangian or CPO on a navigation task with and without OmniSafe's remaining choices.

alignloop's ``--algo ppo-lag`` and ``--algo cpo`` defaults are OmniSafe 0.5.0's PPOLag and CPO
settings except a few choices, which are options (`alignloop control train --help`):

- (PPO-Lag) the multiplier moved by Adam at rate 0.035 (``--ppo-lag.lagrange-method adam
  --ppo-lag.lagrange-lr 0.035``) instead of the projected rule at 0.01 per unit of J_c - d;
- nn.Linear's own initialisation (``--{algo}.init pytorch``) instead of the orthogonal one;
- observation statistics folded in before every step (``--{algo}.norm-obs-per-step``) instead
  of after each rollout;
- (PPO-Lag) its update: actor and critics stepped by separate optimisers, the early stop on the
  exact KL after each epoch (``--ppo-lag.critics-apart``; the "update" variant adds it to the
  choices above; CPO always fits its critics apart).

For each seed this runs alignloop with its defaults ("default"), alignloop with the choices
("OmniSafe's choices"; ``--variants`` picks) and, when `bench/setup_omnisafe.sh` has built its
environment, OmniSafe's own PPOLag or CPO, two processes at a time (one torch thread each;
speeds are not the point here, `control_vs_omnisafe.py` measures them). A run whose folder
already holds its finished log is read, not run again, so a cut-short benchmark continues where
it stopped; ``--report-only`` reads every folder as it stands (a run still going, or stopped,
counts to its last logged epoch, which the table's steps column gives). Reported per run: the
final return and cost by `control_vs_omnisafe.py`'s rule (the mean of the last 50 episodes once
50 have ended) and the Lagrange multiplier at the end (PPO-Lag); learning curves in one figure.

    python bench/omnisafe_choices.py --steps 200000 --seeds 0 1 2 --runs /tmp/plc \\
        --out bench/results/ppo_lag_omnisafe_choices.json
    python bench/omnisafe_choices.py --algo cpo --variants default ...   # CPO, its defaults only
    python bench/omnisafe_choices.py --no-omnisafe ...   # alignloop's runs only
    python bench/omnisafe_choices.py --variants update --lambda-lr 0.1 ...   # both multipliers at 0.1
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
    OMNISAFE_NAME,
    OMNISAFE_PYTHON,
    OMNISAFE_WINDOW,
    alignloop_window,
    curve,
    draw,
    read_alignloop,
    read_omnisafe,
)

LAMBDA_LR = 0.035
"""OmniSafe's PPOLag multiplier rate (its ``lambda_lr``); ``--lambda-lr`` sets another on both sides."""


def choices(algo: str, lambda_lr: float = LAMBDA_LR) -> list[str]:
    """OmniSafe's remaining choices for ``algo`` as alignloop flags (module docstring)."""
    common = [f"--{algo}.init", "pytorch", f"--{algo}.norm-obs-per-step"]
    if algo == "ppo-lag":
        return ["--ppo-lag.lagrange-method", "adam", "--ppo-lag.lagrange-lr", str(lambda_lr), *common]
    return common


VARIANTS = {"default": "default", "choices": "OmniSafe's choices", "update": "choices + OmniSafe's update"}
"""``--variants`` name -> the table's and the figure's name ("update": PPO-Lag only)."""
FLAGS = {
    "default": lambda algo, lambda_lr=LAMBDA_LR: [],
    "choices": choices,
    "update": lambda algo, lambda_lr=LAMBDA_LR: [*choices(algo, lambda_lr), f"--{algo}.critics-apart"],
}
"""``--variants`` name -> alignloop's flags for ``algo`` (and PPO-Lag's Adam multiplier rate)."""


def alignloop_command(algo: str, env: str, seed: int, steps: int, out: Path, extra: list[str]) -> list[str]:
    return [
        *(sys.executable, "-m", "alignloop.cli", "control", "train", "--env", env, "--algo", algo),
        *("--seed", str(seed), "--total-env-steps", str(steps), f"--{algo}.cost-limit", str(COST_LIMIT)),
        *(f"--{algo}.threads", "1", "--no-progress", "--output-dir", str(out), *extra),
    ]


def omnisafe_command(
    algo: str, env: str, seed: int, steps: int, out: Path, lambda_lr: float = LAMBDA_LR
) -> list[str]:
    runner = str(BENCH / "omnisafe_runner.py")
    name = OMNISAFE_NAME[algo]
    rate = ["--lambda-lr", str(lambda_lr)] if lambda_lr != LAMBDA_LR else []
    return [str(OMNISAFE_PYTHON), runner, "--algo", name, "--env", env, "--seed", str(seed)] + [
        *("--steps", str(steps), "--out", str(out), *rate)
    ]


def read_rows(job: dict[str, Any]) -> list[tuple[float, float, float]]:
    """The run's logged (env steps, running return, running cost), [] before its first epoch."""
    if job["library"] == "alignloop":
        log = job["out"] / "metrics.jsonl"
        return read_alignloop(log) if log.exists() else []
    found = [job["out"] / "progress.csv"]  # omnisafe_runner.py copies OmniSafe's log there at the end
    found += sorted((job["out"] / "omnisafe").rglob("progress.csv"))  # written per epoch meanwhile
    log = next((f for f in found if f.exists()), None)
    return read_omnisafe(log) if log is not None else []


def finished(job: dict[str, Any], steps: int) -> bool:
    rows = read_rows(job)
    return bool(rows) and rows[-1][0] >= steps


def log_path(job: dict[str, Any]) -> Path:
    """The run's console log, beside its folder (the folder's name may hold a dot: ``-lr0.1-``)."""
    return job["out"].parent / f"{job['out'].name}.log"


def run_jobs(jobs: list[dict[str, Any]], parallel: int) -> None:
    """Run the jobs' commands, `parallel` at a time; a failed one stops the benchmark with its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="egl")
    waiting, running = list(jobs), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            job["out"].parent.mkdir(parents=True, exist_ok=True)
            log = log_path(job).open("w")
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
                tail = log_path(job).read_text()[-3000:]
                raise SystemExit(f"{job['name']} failed ({proc.returncode}):\n{tail}")
            print(f"finished {job['name']}", flush=True)
        time.sleep(2)


def result_row(job: dict[str, Any]) -> dict[str, Any] | None:
    """The run's final figures, or None when it has not logged an epoch yet."""
    rows = read_rows(job)
    if not rows:
        return None
    lam = None
    if job["library"] == "alignloop":
        c = curve(rows, alignloop_window(job["out"], job["algo"]))
        if job["algo"] == "ppo-lag":  # CPO logs a lambda of 0: it has no multiplier
            lines = (job["out"] / "metrics.jsonl").read_text().splitlines()
            lams = [json.loads(x).get("lambda") for x in lines]
            lam = next((x for x in reversed(lams) if x is not None), None)
    else:
        c = curve(rows, OMNISAFE_WINDOW)
        log = job["out"] / "progress.csv"
        log = log if log.exists() else sorted((job["out"] / "omnisafe").rglob("progress.csv"))[0]
        with log.open() as f:
            value = list(csv.DictReader(f))[-1].get("Metrics/LagrangeMultiplier")
        lam = None if value is None else float(value)
    return {
        "algo": job["variant"],  # the figure's column
        "learner": job["algo"],
        "library": job["library"],
        "seed": job["seed"],
        "env": job["env"],
        "steps": c["steps"][-1],
        "return": c["return"][-1],
        "cost": c["cost"][-1],
        "lambda": lam,
        "curve": c,
        "command": [x.replace(f"{BENCH.parent}/", "") for x in job["command"]],
    }


def at_steps(row: dict[str, Any], steps: float) -> tuple[float, float]:
    """The run's (return, cost) at its last logged epoch at or before ``steps``."""
    c = row["curve"]
    i = max(k for k, x in enumerate(c["steps"]) if x <= steps)
    return c["return"][i], c["cost"][i]


def table(rows: list[dict[str, Any]]) -> str:
    """One row per run, then the median of each kind of run; when the runs stopped at different
    steps (one still going, or cut short), each also at the steps every run reached."""
    common = min(r["steps"] for r in rows)
    ragged = any(r["steps"] != common for r in rows)
    extra = f" return / cost at {common:,.0f} steps |" if ragged else ""
    lines = [
        "| run | seed | env steps | final return | final cost (limit 25) | lambda at the end |" + extra,
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if ragged else ""),
    ]

    def name(r: dict[str, Any]) -> str:
        learner = OMNISAFE_NAME[r["learner"]]
        return (
            f"alignloop {r['learner']}, {r['algo']}"
            if r["library"] == "alignloop"
            else f"OmniSafe 0.5.0 {learner}{r['algo'].removeprefix('default')}"
        )

    for r in rows:
        lam = "" if r["lambda"] is None else f"{r['lambda']:.3f}"
        line = (
            f"| {name(r)} | {r['seed']} | {r['steps']:,.0f} | {r['return']:.2f} | {r['cost']:.1f} | {lam} |"
        )
        if ragged:
            line += " {:.2f} / {:.1f} |".format(*at_steps(r, common))
        lines.append(line)
    for run in dict.fromkeys(name(r) for r in rows):
        mine = [r for r in rows if name(r) == run]
        ret, cost = (statistics.median(r[k] for r in mine) for k in ("return", "cost"))
        line = f"| median, {run} | | | {ret:.2f} | {cost:.1f} | |"
        if ragged:
            ret, cost = (statistics.median(at_steps(r, common)[k] for r in mine) for k in (0, 1))
            line += f" {ret:.2f} / {cost:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algo", choices=sorted(OMNISAFE_NAME), default="ppo-lag")
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default", "choices"])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/omnisafe_choices"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ppo_lag_omnisafe_choices.json"))
    parser.add_argument("--parallel", type=int, default=2, help="processes at a time")
    parser.add_argument("--no-omnisafe", action="store_true", help="alignloop's runs only")
    parser.add_argument("--omnisafe-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument(
        "--lambda-lr",
        type=float,
        default=LAMBDA_LR,
        help="PPO-Lag's Adam multiplier rate on both sides (OmniSafe's lambda_lr; the choices' "
        "--ppo-lag.lagrange-lr); runs at another rate than 0.035 get their own folders",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the table and figure of the folders as they stand",
    )
    args = parser.parse_args()
    if args.algo != "ppo-lag" and "update" in args.variants:
        parser.error("--variants update is PPO-Lag's (CPO always fits its critics apart)")
    rate = "" if args.lambda_lr == LAMBDA_LR else f"-lr{args.lambda_lr:g}"
    label = f", lambda_lr {args.lambda_lr:g}" if rate else ""  # in the table's and figure's names
    if rate and (args.algo != "ppo-lag" or "default" in args.variants):
        parser.error(
            "--lambda-lr is the Adam rate of PPO-Lag's choices; drop it, or pass --algo ppo-lag "
            "with --variants choices and/or update (the defaults use the projected rule)"
        )
    if not args.no_omnisafe and not args.report_only and not OMNISAFE_PYTHON.exists():
        raise SystemExit(
            f"{OMNISAFE_PYTHON} is missing: run bench/setup_omnisafe.sh first, or pass --no-omnisafe"
        )
    folder = args.runs / args.env if args.algo == "ppo-lag" else args.runs / args.env / args.algo
    jobs = []
    for seed in args.seeds:
        for variant in args.variants:
            out = folder / f"alignloop-{variant}{rate}-s{seed}"
            extra = FLAGS[variant](args.algo, args.lambda_lr)
            jobs.append(
                dict(
                    name=f"alignloop {args.algo} {variant} s{seed}",
                    library="alignloop",
                    algo=args.algo,
                    variant=VARIANTS[variant] + label,
                    seed=seed,
                    env=args.env,
                    out=out,
                    command=alignloop_command(args.algo, args.env, seed, args.steps, out, extra),
                )
            )
        if not args.no_omnisafe and seed in (args.omnisafe_seeds or args.seeds):
            out = folder / f"omnisafe{rate}-s{seed}"
            jobs.append(
                dict(
                    name=f"OmniSafe {OMNISAFE_NAME[args.algo]}{rate} s{seed}",
                    library="omnisafe",
                    algo=args.algo,
                    variant="default" + label,
                    seed=seed,
                    env=args.env,
                    out=out,
                    command=omnisafe_command(args.algo, args.env, seed, args.steps, out, args.lambda_lr),
                )
            )
    if not args.report_only:
        run_jobs([j for j in jobs if not finished(j, args.steps)], args.parallel)
    rows = [row for row in map(result_row, jobs) if row is not None]
    if not rows:
        raise SystemExit(f"no run under {folder} has logged an epoch yet")
    # OmniSafe's runs appear in every column of the figure, beside each alignloop variant
    shown = [VARIANTS[v] + label for v in args.variants]
    figure_rows = [dict(r, algo=f"{args.algo}, {r['algo']}") for r in rows if r["library"] == "alignloop"]
    figure_rows += [
        dict(r, algo=f"{args.algo}, {v}") for r in rows if r["library"] == "omnisafe" for v in shown
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    draw(figure_rows, args.out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
