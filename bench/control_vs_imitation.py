"""Preference-based RL on Pendulum-v1: alignloop against the `imitation` library.

Both sides: 200 comparisons from a perfect synthetic teacher (preference by the true return of
the segments), a budget of 50,000 environment steps, PPO as the policy learner (SB3's PPO inside
`imitation`, alignloop's PPO here), reward nets (64, 64). imitation's agent trains in whole SB3
rollouts, so it really takes 67,584 steps for that budget (`imitation_agent_steps`); alignloop is
given the same number. alignloop runs once per query-selection rule (`--select`). Figure: the mean true return of the
final policy over 10 evaluation episodes (deterministic actions), median and spread over seeds.
Target: alignloop's return at least imitation's.

`imitation` pins old gymnasium and SB3 versions, so it lives in its own environment,
installed without its dependencies on top of the main environment's packages:

    python bench/control_vs_imitation.py --setup      # creates bench/.venv-imitation
    python bench/control_vs_imitation.py --seeds 0 1 2

The imitation side follows the library's documented `PreferenceComparisons` example
(RandomFragmenter, SyntheticGatherer, BasicRewardTrainer with the cross-entropy loss,
AgentTrainer around SB3 PPO, hyperbolic query schedule), with fragment length 50.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_common import markdown, run_all, save, summarise  # noqa: E402

VENV = Path(__file__).resolve().parent / ".venv-imitation"
FRAGMENT, EPISODES = 50, 10
ITERATIONS, SB3_ROLLOUT = 10, 2048


def imitation_agent_steps(steps: int) -> int:
    """Environment steps imitation's agent really trains for: the initial comparisons and each
    of the ITERATIONS rounds are followed by a call of SB3's ``learn`` for steps / ITERATIONS,
    which runs whole rollouts of SB3_ROLLOUT steps (50,000 -> 11 x 6,144 = 67,584; the worker
    reports SB3's own count). alignloop gets the same number, so both learn from equal
    experience."""
    per_iteration = -(-(steps // ITERATIONS) // SB3_ROLLOUT) * SB3_ROLLOUT
    return (ITERATIONS + 1) * per_iteration


def setup() -> None:
    """A venv that sees the main environment's packages, with imitation installed --no-deps."""
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        # imitation and the one module it imports that the main environment lacks (scipy)
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--no-deps", "imitation", "scipy"],
        check=True,
    )
    subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import imitation.algorithms.preference_comparisons"], check=True
    )


def run_alignloop(seed: int, steps: int, comparisons: int, select: str) -> dict:
    from alignloop.control.evaluate import evaluate_policy
    from alignloop.control.pbrl import PbrlConfig, train
    from alignloop.control.ppo import PPOSettings

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PbrlConfig(
            env="Pendulum-v1",
            feedback=comparisons,
            queries_per_round=max(1, comparisons // 10),
            round_every=2,
            select=select,  # type: ignore[arg-type]
            segment_length=FRAGMENT,
            total_env_steps=imitation_agent_steps(steps),
            seed=seed,
            output_dir=Path(tmp) / "r",
            save_every=0,
            progress=False,
            ppo=PPOSettings(),
        )
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg)
        returns, _, _ = evaluate_policy(Path(tmp) / "r", EPISODES, 10_000 + seed)
    return {"return": sum(returns) / len(returns), "agent_steps": imitation_agent_steps(steps)}


def run_imitation(seed: int, steps: int, comparisons: int) -> dict:
    import numpy as np
    from imitation.algorithms import preference_comparisons
    from imitation.data.wrappers import RolloutInfoWrapper
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    rng = np.random.default_rng(seed)
    venv = make_vec_env(
        "Pendulum-v1", rng=rng, n_envs=1, post_wrappers=[lambda env, _: RolloutInfoWrapper(env)]
    )
    reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    preference_model = preference_comparisons.PreferenceModel(reward_net)
    trainer = preference_comparisons.BasicRewardTrainer(
        preference_model=preference_model,
        loss=preference_comparisons.CrossEntropyRewardLoss(),
        epochs=3,
        rng=rng,
    )
    agent = PPO("MlpPolicy", venv, seed=seed, n_steps=SB3_ROLLOUT, batch_size=64, device="cpu")
    generator = preference_comparisons.AgentTrainer(
        algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.05, rng=rng
    )
    main = preference_comparisons.PreferenceComparisons(
        generator,
        reward_net,
        num_iterations=ITERATIONS,
        fragmenter=preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng),
        preference_gatherer=preference_comparisons.SyntheticGatherer(rng=rng),
        reward_trainer=trainer,
        fragment_length=FRAGMENT,
        transition_oversampling=1,
        initial_comparison_frac=0.1,
        allow_variable_horizon=False,
        initial_epoch_multiplier=4,
        query_schedule="hyperbolic",
    )
    main.train(total_timesteps=steps, total_comparisons=comparisons)
    eval_env = make_vec_env("Pendulum-v1", rng=np.random.default_rng(10_000 + seed), n_envs=1)
    mean, _ = evaluate_policy(agent.policy, eval_env, EPISODES, deterministic=True)
    return {"return": float(mean), "agent_steps": int(agent.num_timesteps)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="create bench/.venv-imitation and exit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument(
        "--select",
        nargs="+",
        default=["uniform", "disagreement"],
        help="alignloop's query-selection rules to run (imitation's documented example picks at random)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time (one core each)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/control_vs_imitation.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if args.worker:
        spec = json.loads(args.worker)
        if spec["system"].startswith("alignloop"):
            result = run_alignloop(spec["seed"], spec["steps"], spec["comparisons"], spec["select"])
        else:
            result = run_imitation(spec["seed"], spec["steps"], spec["comparisons"])
        print(json.dumps({**spec, **result}))
        return
    if not (VENV / "bin" / "python").exists():
        sys.exit(f"{VENV} is missing: run `python {__file__} --setup` first")
    specs = []
    for seed in args.seeds:
        for select in args.select:
            specs.append({"system": f"alignloop-{select}", "select": select, "seed": seed})
        specs.append({"system": "imitation", "seed": seed})
    for spec in specs:
        spec |= {"steps": args.steps, "comparisons": args.comparisons}

    def python(spec: dict) -> str:
        return str(VENV / "bin" / "python") if spec["system"] == "imitation" else sys.executable

    rows = run_all(__file__, specs, args.out, args.jobs, python)
    summary = summarise(rows, "system", ["return"])
    save(args.out, rows, summary)
    print(markdown(summary, "system", ["return"]))


if __name__ == "__main__":
    main()
