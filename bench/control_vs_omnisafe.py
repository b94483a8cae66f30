"""PPO-Lagrangian and CPO side by side with OmniSafe 0.5.0 on a navigation task.

For each (algorithm, seed) the two runs start at the same moment, each a process of one torch
thread, so both see the same machine load: alignloop's ``alignloop control train`` (its own
defaults, which are OmniSafe's settings for the navigation tasks) and OmniSafe's own ``PPOLag`` or
``CPO`` through ``omnisafe.Agent`` in its own environment (`bench/omnisafe_runner.py`, run by
``bench/.venv-omnisafe/bin/python``; `bench/setup_omnisafe.sh` builds it). Same task, env steps,
seed and cost limit (25). Measured per run:

- steps/s: env steps over the wall seconds of the whole process (start-up, rollouts and updates);
  the ratio alignloop / OmniSafe per pair and its median over the pairs;
- final return and cost: the mean undiscounted return and cost of the episodes of the last epoch
  (20,000 steps: 20 episodes of 1,000 steps). Both libraries log, per epoch, the running mean of
  their most recent episodes (the last 50 in both: OmniSafe's logger window, which alignloop's
  defaults for these algorithms copy as their J_c window); while that window still
  holds every episode so far, the mean of epoch k's episodes follows exactly from two successive
  running means (`epoch_means`); past it the logged window mean is used and the row says so;
- learning curves (those per-epoch means against env steps), mean and min-max over seeds, in
  one figure.

Results are saved after every finished pair, so a cut-short run keeps what finished.

    bench/setup_omnisafe.sh
    python bench/control_vs_omnisafe.py --steps 40000 --seeds 0 1 2
    python bench/control_vs_omnisafe.py --steps 4000 --steps-per-epoch 2000 --seeds 0  # smoke
    python bench/control_vs_omnisafe.py --report-only   # table and plot from the saved JSON
    python bench/control_vs_omnisafe.py --merge a.json b.json --out both.json   # one table and plot
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_common import markdown, save, summarise  # noqa: E402

BENCH = Path(__file__).resolve().parent
OMNISAFE_PYTHON = BENCH / ".venv-omnisafe" / "bin" / "python"
OMNISAFE_NAME = {"ppo-lag": "PPOLag", "cpo": "CPO"}
"""alignloop's ``--algo`` and OmniSafe's algorithm of the same name and settings."""
OMNISAFE_WINDOW = 50
"""Episodes in OmniSafe's logged running mean (``register_key('Metrics/EpRet', window_length=50)``);
alignloop's is its run's ``cost_window`` (`alignloop_window`), 50 by default for both algorithms."""
EPISODE_STEPS = 1000
COST_LIMIT = 25.0


def read_alignloop(path: Path) -> list[tuple[float, float, float]]:
    """(env steps, running return, running cost) per iteration of an alignloop ``metrics.jsonl``."""
    returns: dict[int, tuple[float, float]] = {}
    steps: dict[int, float] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "episode":
            returns[row["step"]] = (row["return"], row["cost"])
        elif row.get("split") == "time":
            steps[row["step"]] = row["env_steps"]
    return [(steps[i], *returns[i]) for i in sorted(returns) if i in steps]


def alignloop_window(run_dir: Path, algo: str) -> int:
    """Episodes in an alignloop run's logged running mean: its settings group's ``cost_window``,
    as its ``run.json`` records it."""
    config = json.loads((run_dir / "run.json").read_text())["config"]
    return int(config[algo.replace("-", "_")]["cost_window"])


def read_omnisafe(path: Path) -> list[tuple[float, float, float]]:
    """(env steps, running return, running cost) per epoch of an OmniSafe ``progress.csv``."""
    with path.open() as f:
        return [
            (float(r["TotalEnvSteps"]), float(r["Metrics/EpRet"]), float(r["Metrics/EpCost"]))
            for r in csv.DictReader(f)
        ]


def time_split(folder: Path, library: str) -> dict[str, float]:
    """Seconds of rollouts and of updates over the run, from the library's own per-epoch log."""
    if library == "alignloop":
        rows = [json.loads(x) for x in (folder / "alignloop" / "metrics.jsonl").read_text().splitlines()]
        times = [r for r in rows if r.get("split") == "time"]
        return {
            "rollout_seconds": sum(r["rollout_seconds"] for r in times),
            "update_seconds": sum(r["update_seconds"] for r in times),
        }
    with (folder / "omnisafe" / "progress.csv").open() as f:
        epochs = list(csv.DictReader(f))
    return {
        "rollout_seconds": sum(float(r["Time/Rollout"]) for r in epochs),
        "update_seconds": sum(float(r["Time/Update"]) for r in epochs),
    }


def epoch_means(episodes: list[int], running: list[float], window: int) -> list[float]:
    """The mean of each epoch's own episodes from the running means logged after each epoch.

    ``episodes[k]`` episodes had ended after epoch k and ``running[k]`` is the mean of the last
    ``min(episodes[k], window)``. While the window holds them all, epoch k's episodes sum to
    ``episodes[k]·running[k] - episodes[k-1]·running[k-1]``; past it the window mean itself is
    returned (an average over the last ``window`` episodes)."""
    out, before_n, before_sum = [], 0, 0.0
    for n, mean in zip(episodes, running, strict=True):
        if n > window or n == before_n:
            out.append(mean)
        else:
            out.append((n * mean - before_sum) / (n - before_n))
        before_n, before_sum = n, n * mean
    return out


def curve(rows: list[tuple[float, float, float]], window: int) -> dict[str, Any]:
    """Per-epoch return and cost means (`epoch_means`) against env steps."""
    steps = [r[0] for r in rows]
    episodes = [int(s // EPISODE_STEPS) for s in steps]
    return {
        "steps": steps,
        "return": epoch_means(episodes, [r[1] for r in rows], window),
        "cost": epoch_means(episodes, [r[2] for r in rows], window),
        "exact": bool(episodes) and episodes[-1] <= window,
    }


def ratios(rows: list[dict[str, Any]]) -> list[float]:
    """alignloop's steps/s over OmniSafe's, per (algo, seed) pair, in the rows' order."""
    by_pair: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        by_pair.setdefault((r["algo"], r["seed"]), {})[r["library"]] = r["steps_per_second"]
    return [p["alignloop"] / p["omnisafe"] for p in by_pair.values() if len(p) == 2]


def commands(algo: str, env: str, seed: int, steps: int, per_epoch: int | None, folder: Path) -> dict:
    """The two processes of one pair."""
    ours = [
        *(sys.executable, "-m", "alignloop.cli", "control", "train"),
        *("--env", env, "--algo", algo, "--seed", str(seed), "--total-env-steps", str(steps)),
        *(f"--{algo}.cost-limit", str(COST_LIMIT), f"--{algo}.threads", "1"),
        *("--no-progress", "--output-dir", str(folder / "alignloop")),
    ]
    theirs = [
        *(str(OMNISAFE_PYTHON), str(BENCH / "omnisafe_runner.py"), "--algo", OMNISAFE_NAME[algo]),
        *("--env", env, "--seed", str(seed), "--steps", str(steps), "--out", str(folder / "omnisafe")),
    ]
    if per_epoch is not None:
        ours += [f"--{algo}.num-steps", str(per_epoch)]
        theirs += ["--steps-per-epoch", str(per_epoch)]
    return {"alignloop": ours, "omnisafe": theirs}


def run_pair(algo: str, env: str, seed: int, steps: int, per_epoch: int | None, folder: Path) -> list[dict]:
    """Start both runs at once, wait for both, and return one row per library."""
    folder.mkdir(parents=True, exist_ok=True)
    env_vars = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmds = commands(algo, env, seed, steps, per_epoch, folder)
    procs, ended, loads = {}, {}, []
    start = time.perf_counter()
    for lib, cmd in cmds.items():
        log = (folder / f"{lib}.log").open("w")
        procs[lib] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_vars)
    while len(ended) < len(procs):
        loads.append(os.getloadavg()[0])
        for lib, proc in procs.items():
            if lib not in ended and proc.poll() is not None:
                ended[lib] = time.perf_counter() - start
        time.sleep(2)
    rows = []
    for lib, proc in procs.items():
        if proc.returncode != 0:
            tail = (folder / f"{lib}.log").read_text()[-3000:]
            raise RuntimeError(f"{lib} {algo} seed {seed} failed ({proc.returncode}):\n{tail}")
        logged = (
            read_alignloop(folder / "alignloop" / "metrics.jsonl")
            if lib == "alignloop"
            else read_omnisafe(folder / "omnisafe" / "progress.csv")
        )
        window = alignloop_window(folder / "alignloop", algo) if lib == "alignloop" else OMNISAFE_WINDOW
        c = curve(logged, window)
        done = c["steps"][-1]
        rows.append(
            {
                "system": f"{algo} {lib}",
                "algo": algo,
                "library": lib,
                "seed": seed,
                "env": env,
                "steps": done,
                "seconds": ended[lib],
                "steps_per_second": done / ended[lib],
                "return": c["return"][-1],
                "cost": c["cost"][-1],
                "final_is_last_epoch": c["exact"],
                **time_split(folder, lib),
                "curve": c,
                "load_average": statistics.mean(loads),
                "command": [x.replace(f"{BENCH.parent}/", "") for x in cmds[lib]],
            }
        )
    return rows


def report(result: dict[str, Any], plot: Path) -> str:
    """The summary table (markdown) and the learning-curve figure."""
    rows = result["runs"]
    fields = ["return", "cost", "steps_per_second", "rollout_seconds", "update_seconds"]
    text = markdown(summarise(rows, "system", fields), "system", fields)
    for algo in dict.fromkeys(r["algo"] for r in rows):
        r = ratios([x for x in rows if x["algo"] == algo])
        if r:
            text += f"\n\n{algo}: steps/s ratio alignloop/OmniSafe per seed {[round(x, 2) for x in r]}"
            text += f", median {statistics.median(r):.2f}"
    loads = [x["load_average"] for x in rows]
    text += f"\n\nload average (1 min) during the runs: mean {statistics.mean(loads):.1f}"
    text += f", min {min(loads):.1f}, max {max(loads):.1f}"
    draw(rows, plot)
    return text


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    algos = list(dict.fromkeys(r["algo"] for r in rows))
    fig, axes = plt.subplots(2, len(algos), figsize=(5.5 * len(algos), 6.5), squeeze=False)
    for col, algo in enumerate(algos):
        right = 0.0  # the longest run's last step, so a shorter (cut-short) run does not crop the axis
        for lib, colour in (("alignloop", "tab:blue"), ("omnisafe", "tab:orange")):
            mine = [r["curve"] for r in rows if r["algo"] == algo and r["library"] == lib]
            if not mine:
                continue
            n = min(len(c["steps"]) for c in mine)
            x = np.array(mine[0]["steps"][:n])
            for row, key in enumerate(("return", "cost")):
                y = np.array([c[key][:n] for c in mine])
                ax = axes[row, col]
                seeds = f"{len(mine)} seed{'s' if len(mine) > 1 else ''}"
                label = f"{'alignloop' if lib == 'alignloop' else 'OmniSafe 0.5.0'} ({seeds})"
                mean = y.mean(0)
                spread = [mean - y.min(0), y.max(0) - mean]
                ax.errorbar(x, mean, yerr=spread, color=colour, marker="o", capsize=4, label=label)
                ax.fill_between(x, y.min(0), y.max(0), color=colour, alpha=0.2)
                right = max(right, float(x.max()))
                ax.set_xlim(0, right * 1.05)
        # a variant's name can be long: wrapped, so the title stays inside its column
        axes[0, col].set_title(textwrap.fill(f"{algo} on {rows[0]['env']}", 48), fontsize=10)
        axes[0, col].set_ylabel("episode return (epoch mean)")
        axes[1, col].set_ylabel("episode cost (epoch mean)")
        axes[1, col].axhline(COST_LIMIT, color="grey", linestyle="--", label="cost limit")
        axes[1, col].set_xlabel("env steps")
        axes[0, col].legend()
        axes[1, col].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--algos", nargs="+", default=list(OMNISAFE_NAME), choices=list(OMNISAFE_NAME))
    parser.add_argument("--steps", type=int, default=40_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="both sides (default: their own, 20000)"
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/control_vs_omnisafe"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/control_vs_omnisafe.json"))
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--report-only", action="store_true", help="table and plot of --out")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="results of separate runs (say one per algorithm) into --out",
    )
    args = parser.parse_args()
    plot = args.plot or args.out.with_suffix(".png")
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(path.read_text())["runs"]]
        save(args.out, rows, summarise(rows, "system", ["return", "cost", "steps_per_second"]))
        print(report(json.loads(args.out.read_text()), plot))
        return
    if args.report_only:
        result = json.loads(args.out.read_text())
        for r in result["runs"]:  # rows saved before the time split was recorded
            folder = args.runs / r["env"] / f"{r['algo']}-s{r['seed']}"
            if "update_seconds" not in r and folder.exists():
                r.update(time_split(folder, r["library"]))
        save(args.out, result["runs"], result["summary"])
        print(report(result, plot))
        return
    if not OMNISAFE_PYTHON.exists():
        raise SystemExit(f"{OMNISAFE_PYTHON} is missing: run bench/setup_omnisafe.sh first")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for algo in args.algos:
            folder = args.runs / args.env / f"{algo}-s{seed}"
            new = run_pair(algo, args.env, seed, args.steps, args.steps_per_epoch, folder)
            rows += new
            for r in new:
                print(json.dumps({k: v for k, v in r.items() if k not in ("curve", "command")}), flush=True)
            save(args.out, rows, summarise(rows, "system", ["return", "cost", "steps_per_second"]))
    print(report(json.loads(args.out.read_text()), plot))


if __name__ == "__main__":
    main()
