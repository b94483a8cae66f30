"""The pure helpers of bench/control_vs_omnisafe.py: both libraries' logs read into the same
per-epoch means, and the per-pair speed ratios (the benchmark itself runs in bench/ only)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "control_vs_omnisafe.py"
    spec = importlib.util.spec_from_file_location("control_vs_omnisafe_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_logs_give_the_mean_of_each_epochs_own_episodes(tmp_path: Path) -> None:
    bench = _bench()
    # 20 episodes of costs 10 in epoch 1, 20 of cost 40 in epoch 2, 20 of cost 0 in epoch 3.
    # Running means over all: 10, (20*10 + 20*40)/40 = 25, (1000 + 0)/60 = 16.67.
    # alignloop's window (100) holds all 60, so epoch 3's own mean is (60*16.67 - 40*25)/20 = 0;
    # OmniSafe's window (50) no longer does after epoch 3: its logged window mean stands.
    running = [10.0, 25.0, 1000.0 / 60]
    metrics = tmp_path / "metrics.jsonl"
    lines = []
    for step, cost in enumerate(running, start=1):
        lines.append({"step": step, "split": "train", "lambda": 0.0})
        lines.append({"step": step, "split": "episode", "return": 2 * cost, "cost": cost, "length": 1000})
        lines.append({"step": step, "split": "time", "env_steps": 20000.0 * step})
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    progress = tmp_path / "progress.csv"
    progress.write_text(
        "Metrics/EpRet,Metrics/EpCost,TotalEnvSteps,Time/Total\n"
        + "".join(f"{2 * c},{c},{20000.0 * (i + 1)},1.0\n" for i, c in enumerate(running))
    )
    ours = bench.curve(bench.read_alignloop(metrics), 100)
    theirs = bench.curve(bench.read_omnisafe(progress), bench.OMNISAFE_WINDOW)
    assert ours["steps"] == theirs["steps"] == [20000.0, 40000.0, 60000.0]
    assert ours["cost"] == pytest.approx([10.0, 40.0, 0.0], abs=1e-9)
    assert ours["return"] == pytest.approx([20.0, 80.0, 0.0], abs=1e-9)
    assert ours["exact"] and not theirs["exact"]
    assert theirs["cost"] == pytest.approx([10.0, 40.0, 1000.0 / 60], abs=1e-9)


def test_speed_ratios_pair_the_runs_of_one_algorithm_and_seed() -> None:
    bench = _bench()
    rows = [
        {"algo": "cpo", "seed": 0, "library": "alignloop", "steps_per_second": 300.0},
        {"algo": "cpo", "seed": 1, "library": "omnisafe", "steps_per_second": 50.0},
        {"algo": "cpo", "seed": 0, "library": "omnisafe", "steps_per_second": 100.0},
        {"algo": "cpo", "seed": 1, "library": "alignloop", "steps_per_second": 200.0},
        {"algo": "cpo", "seed": 2, "library": "alignloop", "steps_per_second": 9.0},  # unpaired
    ]
    assert bench.ratios(rows) == pytest.approx([3.0, 4.0])


@pytest.mark.parametrize(("algo", "window"), [("ppo-lag", 50), ("cpo", 50)])
def test_the_alignloop_window_is_read_from_the_run_it_describes(
    tmp_path: Path, algo: str, window: int
) -> None:
    # A real (tiny) run: its run.json records the default J_c window of the algorithm's group,
    # OmniSafe's 50, which is what the curves must be rebuilt with.
    from alignloop.control.train import TrainConfig, train

    group = algo.replace("-", "_")
    settings = {"num_steps": 200, "minibatch_size": 100}
    cfg = TrainConfig(
        env="SafeSliderVelocity-v0",
        algo=algo,
        total_env_steps=200,
        output_dir=tmp_path / "run",
        save_every=0,
        progress=False,
        **{group: dataclasses.replace(getattr(TrainConfig(), group), **settings)},
    )
    assert train(cfg) == 0
    assert _bench().alignloop_window(tmp_path / "run", algo) == window


def test_the_choices_bench_passes_flags_alignloop_parses_into_omnisafes_settings() -> None:
    """bench/omnisafe_choices.py builds its alignloop runs from flags; each must reach the
    setting the bench says it sets, so a renamed option fails here rather than at 10^6 steps."""
    import tyro

    from alignloop.control.train import TrainConfig

    path = Path(__file__).resolve().parents[2] / "bench" / "omnisafe_choices.py"
    spec = importlib.util.spec_from_file_location("omnisafe_choices_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for algo, group in (("ppo-lag", "ppo_lag"), ("cpo", "cpo")):
        command = bench.alignloop_command(
            algo, "SafetyPointGoal1-v0", 3, 1000, Path("/tmp/x"), bench.choices(algo)
        )
        args = command[command.index("train") + 1 :]
        cfg = tyro.cli(TrainConfig, args=args)
        settings = getattr(cfg, group)
        assert (cfg.algo, cfg.seed, cfg.total_env_steps) == (algo, 3, 1000)
        assert (settings.init, settings.norm_obs_per_step, settings.cost_limit, settings.threads) == (
            "pytorch",
            True,
            25.0,
            1,
        )
        if algo == "ppo-lag":  # the three choices, not the update (the "update" variant's)
            assert (settings.lagrange_method, settings.lagrange_lr, settings.critics_apart) == (
                "adam",
                0.035,
                False,
            )
    command = bench.alignloop_command(
        "ppo-lag", "SafetyPointGoal1-v0", 0, 1000, Path("/tmp/x"), bench.FLAGS["update"]("ppo-lag")
    )
    cfg = tyro.cli(TrainConfig, args=command[command.index("train") + 1 :])
    assert (
        cfg.ppo_lag.critics_apart and cfg.ppo_lag.init == "pytorch" and cfg.ppo_lag.lagrange_method == "adam"
    )
    assert bench.FLAGS["default"]("cpo") == [] and bench.FLAGS["choices"]("cpo") == bench.choices("cpo")
    # --lambda-lr sets the Adam rate on both sides: alignloop's flag, then OmniSafe's lambda_lr
    command = bench.alignloop_command(
        "ppo-lag", "SafetyPointGoal1-v0", 0, 1000, Path("/tmp/x"), bench.FLAGS["update"]("ppo-lag", 0.1)
    )
    cfg = tyro.cli(TrainConfig, args=command[command.index("train") + 1 :])
    assert (cfg.ppo_lag.lagrange_method, cfg.ppo_lag.lagrange_lr) == ("adam", 0.1)
    assert "--lambda-lr" not in bench.omnisafe_command("ppo-lag", "E", 0, 10, Path("/tmp/x"))
    omnisafe = bench.omnisafe_command("ppo-lag", "E", 0, 10, Path("/tmp/x"), 0.1)
    runner_spec = importlib.util.spec_from_file_location("omnisafe_runner_bench", omnisafe[1])
    assert runner_spec is not None and runner_spec.loader is not None
    runner = importlib.util.module_from_spec(runner_spec)
    runner_spec.loader.exec_module(runner)
    rate = float(omnisafe[omnisafe.index("--lambda-lr") + 1])
    cfgs = runner.custom_cfgs("PPOLag", 0, 10, Path("/tmp/x"), None, rate)
    assert cfgs["lagrange_cfgs"] == {"cost_limit": 25.0, "lambda_lr": 0.1}
    assert "lambda_lr" not in runner.custom_cfgs("PPOLag", 0, 10, Path("/tmp/x"), None)["lagrange_cfgs"]
