"""Reward and cost models with and without a bias on the score head, on the toy world.

Score models are saved as Hugging Face sequence classifiers, whose one-label head (`score`) has
no bias, so alignloop's head lost its bias too. This measures what that does to the demo's
reward model (held-out preference accuracy) and cost model (held-out sign accuracy: cost > 0
exactly for the responses labelled unsafe), at the demo's sizes, from one shared SFT model, seed
by seed with the two heads interleaved.

    .venv/bin/python bench/score_head_bias.py --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from control_common import markdown, run_all, save, summarise  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "score_head_bias.json"


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from alignloop.lm import cost, models, reward, sft
    from alignloop.lm.training import read_metrics

    torch.set_num_threads(1)
    root = Path(spec["root"])
    sft_final = root / "sft" / "final"
    if spec["kind"] == "sft":
        sft.train(sft.SFTConfig(output_dir=root / "sft", seed=0, progress=False, threads=1))
        return {"kind": "sft"}
    models.ScoreModel.__init__.__defaults__ = (spec["bias"],)  # the head of every new score model
    out = root / f"{spec['kind']}-bias{int(spec['bias'])}-s{spec['seed']}"
    common: dict[str, Any] = dict(
        model=str(sft_final), output_dir=out, seed=spec["seed"], progress=False, threads=1
    )
    common |= dict(max_steps=250, batch_size=64, eval_every=250, save_every=250)
    if spec["kind"] == "reward":
        reward.train(reward.RewardConfig(**common))
        key = "accuracy"
    else:
        cost.train(cost.CostConfig(**common))
        key = "sign_accuracy"
    last = [m for m in read_metrics(out, "eval")][-1]
    return {"head": "bias" if spec["bias"] else "no bias", "kind": spec["kind"], "seed": spec["seed"],
            "accuracy": 100 * last[key]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--root", type=Path, default=Path("runs/bench-score-head-bias"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    root = str(args.root.resolve())
    run_all(__file__, [{"kind": "sft", "root": root}], RESULTS.with_suffix(".sft.tmp"))
    specs = [
        {"kind": kind, "bias": bias, "seed": seed, "root": root}
        for seed in args.seeds
        for kind in ("reward", "cost")
        for bias in (True, False)
    ]
    rows = run_all(__file__, specs, RESULTS, jobs=args.jobs)
    for kind in ("reward", "cost"):
        mine = [r for r in rows if r["kind"] == kind]
        summary = summarise(mine, "head", ["accuracy"])
        print(f"\n{kind} model, held-out {'preference' if kind == 'reward' else 'sign'} accuracy (%)")
        print(markdown(summary, "head", ["accuracy"]))
    save(RESULTS, rows, summarise(rows, "head", ["accuracy"]))


if __name__ == "__main__":
    main()
