"""Preference-based RL with a scripted teacher: each query-selection rule, and the safe variant.

Reward learning (default): HalfCheetah-v5, 1000 judgements of a perfect scripted teacher
(50 per round, a round every 10 PPO iterations, segments of 50 steps), reward ensemble of 3.
For each seed, PPO on the true reward runs beside it; the figure is the final true return of
preference-based RL as a fraction of PPO's (target >= 0.7), for each rule.

Safe (`--safe`): SafeHalfCheetahVelocity-v5; the teacher also says whether each segment is safe
and which is safer; the cost model is learned from that and PPO-Lagrangian (limit 25) trains on
the learned reward and cost. The figure is the final true episode cost (target <= 25).

Marks (`--cost-labels segments marks`): the same safe run with the teacher's segment labels
only, and with the teacher also marking the step where each segment first becomes unsafe
(`--mark-noise` steps of Gaussian noise; the cost model learns per-step labels from the marks
beside the segment labels), at the same number of queries, interleaved seed by seed.

Final = mean over the last 100 training episodes, true reward and true cost.

    python bench/control_pbrl.py --steps 1000000 --seeds 0 1 2
    python bench/control_pbrl.py --safe --steps 1000000 --seeds 0 1 2
    python bench/control_pbrl.py --steps 100000 --seeds 0 --rules uniform     # a short check
    python bench/control_pbrl.py --safe --rules disagreement --cost-labels segments marks
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

CALIBRATION = (
    "pbrl/cost_on_unsafe_steps",
    "pbrl/cost_on_safe_steps",
    "pbrl/true_unsafe_step_share",
    "pbrl/cost_threshold",
)
"""The cost model's last calibration on its segment pool (true costs known to the teacher)."""


def _last_scalars(tb_dir: Path, tags: tuple[str, ...]) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, float] = {}
    for path in sorted(tb_dir.iterdir()):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in set(tags) & set(events.Tags()["scalars"]):
            found[tag] = events.Scalars(tag)[-1].value
    return found


def worker(spec: dict) -> dict:
    from alignloop.control.pbrl import PbrlConfig, train
    from alignloop.control.ppo import PPOSettings, train_policy

    settings = PPOSettings(cost_window=100, cost_limit=25.0, **spec.get("ppo", {}))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if spec["rule"] == "ppo-true-reward":
            lag = spec["env"].startswith("Safe")
            stats = train_policy(
                Path(tmp) / "r",
                spec["env"],
                None,
                lag,
                spec["steps"],
                spec["seed"],
                settings,
                save_every=0,
                progress=False,
            )
            return {
                "return": stats["episode/return"],
                "cost": stats["episode/cost"],
                "seconds": time.perf_counter() - start,
            }
        cfg = PbrlConfig(
            env=spec["env"],
            feedback=spec["feedback"],
            select=spec["rule"],
            queries_per_round=spec.get("queries_per_round", 50),
            round_every=spec.get("round_every", 10),
            cost_queries=spec.get("cost_queries", 0.5),
            threshold_pairs=spec.get("threshold_pairs", 250),
            cost_ensemble=spec.get("cost_ensemble", 3),
            marks=spec.get("cost_labels") == "marks",
            teacher_mark_noise=spec.get("mark_noise", 2.0),
            total_env_steps=spec["steps"],
            seed=spec["seed"],
            output_dir=Path(tmp) / "r",
            save_every=0,
            progress=False,
            ppo=settings,
        )
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            if train(cfg) != 0:
                raise RuntimeError("pbrl run failed")
        report = json.loads(captured.getvalue().strip().splitlines()[-1])
        report |= _last_scalars(Path(tmp) / "r" / "tb", CALIBRATION)
        return {
            "return": report["episode/return"],
            "cost": report["episode/cost"],
            "learned_cost": report.get("train/episode_cost", float("nan")),
            **{key.split("/")[1]: report[key] for key in CALIBRATION if key in report},
            "lambda": report.get("train/lambda", float("nan")),
            "queries": report["queries"],
            "seconds": time.perf_counter() - start,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--safe", action="store_true", help="SafeHalfCheetahVelocity-v5 with a learned cost")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--feedback", type=int, default=1000)
    parser.add_argument("--rules", nargs="+", default=["uniform", "disagreement", "entropy"])
    parser.add_argument("--queries-per-round", type=int, default=50)
    parser.add_argument("--round-every", type=int, default=10, help="PPO iterations between rounds")
    parser.add_argument(
        "--cost-queries", type=float, default=0.5, help="safe: share of a round chosen by cost-sign doubt"
    )
    parser.add_argument(
        "--threshold-pairs",
        type=int,
        default=250,
        help="safe: recent pairs the step-counting threshold is fitted on",
    )
    parser.add_argument("--cost-ensemble", type=int, default=3, help="safe: cost models in the ensemble")
    parser.add_argument(
        "--cost-labels",
        nargs="+",
        choices=["segments", "marks"],
        default=["segments"],
        help="safe: what the teacher tells the cost model, segment labels alone or with marks (each is a run)",
    )
    parser.add_argument(
        "--mark-noise", type=float, default=2.0, help="safe, marks: the marks' noise in steps"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time (one core each)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the PPO-on-true-reward run of each seed",
    )
    parser.add_argument(
        "--reference-from",
        type=Path,
        default=None,
        help="take PPO's return per seed from the 'ppo' runs of this control_ppo_lag.py result "
        "(same reward, settings and seeds) instead of running it here",
    )
    add_ppo_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps({**spec, **worker(spec)}))
        return
    env = "SafeHalfCheetahVelocity-v5" if args.safe else "HalfCheetah-v5"
    rules = ["ppo-true-reward", *args.rules] if args.reference else list(args.rules)
    out = args.out or Path(f"bench/results/control_pbrl{'_safe' if args.safe else ''}.json")
    labels = args.cost_labels if args.safe else ["segments"]
    specs = [
        {
            "rule": rule,
            "variant": rule if label == "segments" or rule == "ppo-true-reward" else f"{rule}, marks",
            "cost_labels": label,
            "mark_noise": args.mark_noise,
            "env": env,
            "steps": args.steps,
            "seed": seed,
            "feedback": args.feedback,
            "queries_per_round": args.queries_per_round,
            "round_every": args.round_every,
            "cost_queries": args.cost_queries,
            "threshold_pairs": args.threshold_pairs,
            "cost_ensemble": args.cost_ensemble,
            "ppo": ppo_overrides(args),
        }
        for seed in args.seeds
        for rule in rules
        for label in (labels if rule != "ppo-true-reward" else labels[:1])
    ]
    rows = run_all(__file__, specs, out, args.jobs)
    reference = {r["seed"]: r["return"] for r in rows if r["rule"] == "ppo-true-reward"}
    if args.reference_from:
        runs = json.loads(args.reference_from.read_text())["runs"]
        reference.update({r["seed"]: r["return"] for r in runs if r["algo"] == "ppo"})
    for row in rows:
        ref = reference.get(row["seed"])
        row["fraction_of_ppo"] = row["return"] / ref if ref else float("nan")
    fields = ["return", "cost", "learned_cost", "fraction_of_ppo", "seconds"]
    summary = summarise(rows, "variant", fields)
    save(out, rows, summary)
    print(markdown(summary, "variant", fields))


if __name__ == "__main__":
    main()
