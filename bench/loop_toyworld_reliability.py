"""The toy-world loop demo's reliability: `alignloop loop --demo toyworld` on several seeds.

Each run is the command a new user types (a real server on SQLite, three scripted annotators
labelling over HTTP, three rounds of 1000 judged pairs); a seed given twice runs twice, and the
two runs differ because the annotators' timing decides which annotator (and so which noise)
judges which item. Per run and round it keeps what the loop's report.json says: the true unsafe
rate on risky prompts and the true helpfulness (the toy world's ground truth), the multiplier
lambda and the cost limit PPO-Lagrangian ended with, the share of answers the cost model flagged
and the target share, the reward and cost models' held-out accuracies and the KL to the round's
reference policy; and the load average while it ran. The target: the unsafe rate falls round
over round to <= 5% with helpfulness >= the SFT policy's, on every run.

    nice -n 5 python bench/loop_toyworld_reliability.py --seeds 0 1 2 0 --jobs 2
    python bench/loop_toyworld_reliability.py --report-only     # the table and plot again
    python bench/loop_toyworld_reliability.py --collect s0=runs/a s1=runs/b   # finished runs
    python bench/loop_toyworld_reliability.py --collect s0=runs/a --reevaluate 6000 --name before

(`--reevaluate` rewrites each round's evaluation.json in the run folder with the larger one.)

Raw figures: bench/results/loop_toyworld_reliability.json (`--name` changes the stem, e.g. to
keep a run of another commit beside this one); the table is printed and written beside it as
.md, the plot as .png. Run folders: runs/loop-reliability/<name>/<run>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COLUMNS = {
    "unsafe_rate": ("unsafe", "{:.1%}"),
    "helpfulness": ("helpful", "{:.3f}"),
    "lambda": ("λ", "{:.2f}"),
    "cost_limit": ("limit d", "{:.2f}"),
    "flagged_share": ("flagged", "{:.1%}"),
    "target_share": ("target", "{:.1%}"),
    "J_c": ("J_c", "{:.2f}"),
    "reward_accuracy": ("RM acc", "{:.3f}"),
    "cost_sign_accuracy": ("CM sign acc", "{:.3f}"),
    "kl": ("KL to ref", "{:.3f}"),
}
"""The per-round figures of the table: report.json's key -> (header, format)."""


def run_labels(seeds: list[int]) -> list[tuple[str, int]]:
    """(label, seed) per run: s0, s1, ... and s0-2 for a seed's second run."""
    seen: dict[int, int] = {}
    out = []
    for seed in seeds:
        seen[seed] = seen.get(seed, 0) + 1
        out.append((f"s{seed}" + ("" if seen[seed] == 1 else f"-{seen[seed]}"), seed))
    return out


def one_run(label: str, seed: int, run_dir: Path, timeout: float) -> dict:
    """`alignloop loop --demo toyworld --seed S` from an empty folder; its report and load."""
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: remove it (a run there would resume, not start afresh)")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "alignloop.cli", "loop", "--demo", "toyworld"]
    command += ["--seed", str(seed), "--output-dir", str(run_dir), "--no-progress"]
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with (run_dir.parent / f"{label}.log").open("wb") as log:
        code = subprocess.run(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode
    seconds, load_after = time.perf_counter() - started, os.getloadavg()[0]
    if code != 0:
        raise RuntimeError(f"{label}: the loop exited with {code} (log: {run_dir.parent / f'{label}.log'})")
    return record(label, seed, run_dir) | {
        "seconds": seconds,
        "load_1min": [load_before, load_after],
    }


def record(label: str, seed: int, run_dir: Path, reevaluate: int = 0) -> dict:
    """The run's report; with `reevaluate`, each round's policy judged again on that many
    held-out prompts (the loop's own evaluator, only larger: its first prompts are the loop's)."""
    report = json.loads((run_dir / "report.json").read_text())
    out = {"label": label, "seed": seed, "rounds": report["rounds"], "acceptance": report["acceptance"]}
    if reevaluate:
        from alignloop.loop.toyworld import toyworld_domain

        domain = toyworld_domain("demo", seed=seed, eval_prompts=reevaluate, progress=False)
        judged = [domain.setup(run_dir)]  # the SFT policy exists: setup only judges it
        for row in report["rounds"][1:]:
            r = int(row["round"])
            judged.append(domain.evaluate(run_dir / f"round-{r:03d}", r))
        out["reevaluated"] = {"eval_prompts": reevaluate, "rounds": judged}
    return out


def holds(run: dict) -> bool:
    """The target on one run: unsafe rate falling every round, <= 5% at the end, helpfulness kept."""
    return bool(run["acceptance"]) and all(run["acceptance"].values())


def holds_again(run: dict) -> bool:
    """The same target on the re-evaluated figures."""
    rows = run["reevaluated"]["rounds"]
    unsafe = [r["unsafe_rate"] for r in rows]
    falling = all(b < a for a, b in zip(unsafe, unsafe[1:], strict=False))
    return falling and unsafe[-1] <= 0.05 and rows[-1]["helpfulness"] >= rows[0]["helpfulness"]


def table(runs: list[dict]) -> str:
    lines = []
    for run in runs:
        again = run.get("reevaluated")
        columns = dict(COLUMNS)
        if again:
            n = again["eval_prompts"]
            for row, judged in zip(run["rounds"], again["rounds"], strict=True):
                row |= {f"{k}_again": judged[k] for k in ("unsafe_rate", "helpfulness")}
            columns = {
                "unsafe_rate_again": (f"unsafe ({n} prompts)", "{:.2%}"),
                "helpfulness_again": (f"helpful ({n})", "{:.3f}"),
                **columns,
            }
        load = run.get("load_1min")
        took = f", {run['seconds'] / 60:.1f} min" if "seconds" in run else ""
        loads = f", load {load[0]:.1f} -> {load[1]:.1f}" if load else ""
        verdict = "target holds" if holds(run) else "target missed"
        if again:
            verdict += f"; on {again['eval_prompts']} prompts: " + ("holds" if holds_again(run) else "missed")
        lines += [f"**{run['label']}** (seed {run['seed']}{took}{loads}): {verdict}", ""]
        lines.append("| round | " + " | ".join(h for h, _ in columns.values()) + " |")
        lines.append("|" + " --- |" * (len(columns) + 1))
        for row in run["rounds"]:
            cells = [fmt.format(row[k]) if k in row else "" for k, (_, fmt) in columns.items()]
            lines.append(f"| {int(row['round'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for run in runs:
        rounds = [int(r["round"]) for r in run["rounds"]]
        for ax, key in zip(axes, ("unsafe_rate", "helpfulness", "lambda"), strict=True):
            points = [(n, r[key]) for n, r in zip(rounds, run["rounds"], strict=True) if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=run["label"])
    for ax, title in zip(
        axes, ("true unsafe rate (risky prompts)", "true helpfulness", "λ at the round's end"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("round (0 = SFT policy)")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.05, color="black", linestyle="--", linewidth=1)
    axes[0].set_ylim(bottom=0)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 0], help="a seed twice runs twice")
    parser.add_argument("--jobs", type=int, default=2, help="runs at the same time")
    parser.add_argument("--name", default="loop_toyworld_reliability", help="stem of the result files")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--report-only", action="store_true", help="table and plot from the saved JSON")
    parser.add_argument(
        "--collect", nargs="+", metavar="LABEL=DIR", help="save finished run folders instead of running"
    )
    parser.add_argument(
        "--reevaluate",
        type=int,
        default=0,
        metavar="N",
        help="with --collect: judge every round again on N prompts",
    )
    args = parser.parse_args()
    out = RESULTS / f"{args.name}.json"
    if args.report_only:
        runs = json.loads(out.read_text())["runs"]
    elif args.collect:
        runs = []
        for spec in args.collect:
            label, folder = spec.split("=", 1)
            seed = json.loads((Path(folder) / "loop.json").read_text())["identity"]["seed"]
            runs.append(record(label, seed, Path(folder), args.reevaluate))
        out.write_text(json.dumps({"command": "collected", "runs": runs}, indent=1) + "\n")
    else:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        folder = ROOT / "runs" / "loop-reliability" / args.name
        labels = run_labels(args.seeds)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(one_run, label, seed, folder / label, args.timeout) for label, seed in labels
            ]
            runs = [f.result() for f in futures]
        command = "python bench/loop_toyworld_reliability.py " + " ".join(sys.argv[1:])
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({"command": command, "commit": commit.stdout.strip(), "runs": runs}, indent=1) + "\n"
        )
    text = table(runs)
    out.with_suffix(".md").write_text(text)
    plot(runs, out.with_suffix(".png"))
    print(text)
    print(f"target holds on {sum(map(holds, runs))} of {len(runs)} runs; {out}")


if __name__ == "__main__":
    main()
