"""Run a plan of language-model trainer runs in one torchrun launch, in order:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/lm/torchrun_plan.py PLAN.json

PLAN.json is a list of ``{"trainer": "sft", "options": {...}}``; each run is the trainer's own
``train`` function with its config built from the options, as the command line would build it.
The process group is joined once, before the first run, so that no run leaves it (a launch
costs seconds of start-up; several runs share one).
"""

from __future__ import annotations

import json
import sys

import torch

from alignloop.config import from_mapping
from alignloop.lm import aligner, cost, dpo, ppo, reward, sft

TRAINERS = {
    "sft": (sft.SFTConfig, sft.train),
    "reward": (reward.RewardConfig, reward.train),
    "cost": (cost.CostConfig, cost.train),
    "dpo": (dpo.DPOConfig, dpo.train),
    "aligner": (aligner.AlignerConfig, aligner.train),
    "ppo": (ppo.PPOConfig, ppo.train),
    "ppo-lag": (ppo.PPOLagConfig, ppo.train_lagrangian),
}


def main() -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    for item in plan:
        config_cls, train = TRAINERS[item["trainer"]]
        assert train(from_mapping(config_cls, item["options"])) == 0, item
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
