"""PPO on a MuJoCo task: alignloop against Stable-Baselines3's PPO, same hyper-parameters.

Both sides: one env, 2048 steps per rollout, minibatch 64, 10 epochs, Adam lr 3e-4, gamma
0.99, GAE lambda 0.95, clip 0.2, no entropy bonus, gradient-norm clip 0.5, separate actor and
critic MLPs (64, 64, tanh) with orthogonal init, state-independent log std starting at 0,
observations normalised and rewards scaled by the running std of the discounted return (SB3:
`VecNormalize`, clip 10), one torch thread, CPU. Value loss weights match (alignloop's
``vf_coef=1`` on half the MSE is SB3's ``vf_coef=0.5`` on the MSE). Remaining differences:
alignloop standardises advantages over the whole rollout, SB3 per minibatch; Adam eps 1e-5
(alignloop) vs 1e-8 (SB3).

Measured per run (a fresh process each, seeds interleaved):

- return: mean undiscounted return of the last 100 training episodes (both sides record the
  true reward of full episodes: SB3 through `Monitor`);
- steps/s: environment steps divided by the wall time of `learn` / `train_policy` (env
  creation and imports excluded, rollouts and updates included).

    python bench/control_ppo_vs_sb3.py --steps 1000000 --seeds 0 1 2      # the full benchmark
    python bench/control_ppo_vs_sb3.py --steps 50000 --seeds 0 1 2        # a short check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_common import markdown, run_all, save, summarise  # noqa: E402


def run_alignloop(env_id: str, steps: int, seed: int) -> dict[str, Any]:
    from alignloop.control.ppo import PPOSettings, train_policy

    settings = PPOSettings(cost_window=100)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = train_policy(
            Path(tmp) / "run", env_id, None, False, steps, seed, settings, save_every=0, progress=False
        )
        seconds = time.perf_counter() - start
    return {"return": stats["episode/return"], "steps": stats["global_step"], "seconds": seconds}


def run_sb3(env_id: str, steps: int, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    env = VecNormalize(
        DummyVecEnv([lambda: Monitor(gym.make(env_id))]), gamma=0.99, clip_obs=10.0, clip_reward=10.0
    )
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=3e-4,
        n_steps=2048,
        batch_size=64,
        n_epochs=10,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.0,
        vf_coef=0.5,
        max_grad_norm=0.5,
        policy_kwargs={
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.Tanh,
            "log_std_init": 0.0,
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # alignloop runs floor(steps / 2048) full rollouts; give SB3 the same number of steps
    total = max(1, steps // 2048) * 2048
    start = time.perf_counter()
    model.learn(total_timesteps=total)
    seconds = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]
    return {"return": float(np.mean(returns)), "steps": total, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench/results/control_ppo_vs_sb3.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        runner = run_alignloop if spec["system"] == "alignloop" else run_sb3
        result = runner(spec["env"], spec["steps"], spec["seed"])
        print(json.dumps({**spec, **result, "steps_per_second": result["steps"] / result["seconds"]}))
        return
    specs = [
        {"system": system, "env": args.env, "steps": args.steps, "seed": seed}
        for seed in args.seeds
        for system in (("alignloop", "sb3") if seed % 2 == 0 else ("sb3", "alignloop"))
    ]
    rows = run_all(__file__, specs, args.out)
    fields = ["return", "steps_per_second"]
    summary = summarise(rows, "system", fields)
    save(args.out, rows, summary)
    print(markdown(summary, "system", fields))
    medians = {e["system"]: e["steps_per_second"]["median"] for e in summary}
    print(f"steps/s ratio alignloop / sb3 (medians): {medians['alignloop'] / medians['sb3']:.2f}")


if __name__ == "__main__":
    main()
