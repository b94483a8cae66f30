"""`alignloop demo`: Safe RLHF end to end on the toy world, in minutes on a laptop CPU.

Stages, each an ordinary trainer run in its own folder under ``output_dir``:

1. ``sft``            supervised fine-tuning of a fresh tiny model on the toy world's careless
                      corpus (it answers many risky prompts with harmful detail);
2. ``reward``/``cost``  a reward model (Bradley-Terry on ``better``) and a cost model (Safe RLHF
                      loss on ``safer`` and ``is_safe``), both from the SFT model, on pairs
                      labelled by the scripted teacher;
3. ``ppo``            PPO-RLHF on the reward model alone;
   ``ppo-lag``        Safe RLHF: PPO-Lagrangian with reward and cost models;
   ``reward-shaping`` PPO on reward - lambda * cost with lambda fixed;
   ``grpo``           GRPO on the reward model alone (no critic: group-relative advantages);
   ``grpo-lag``       Safe GRPO: GRPO holding the share of responses the cost model judges
                      unsafe under ``unsafe_share`` with a Lagrange multiplier, reward and
                      violation standardised apart then mixed (arXiv 2602.05863);
   ``grpo-lag-naive`` the same with the naive mix (R - lambda C standardised as one reward);
   ``dpo``            DPO on the teacher's ``better`` pairs;
4. evaluation of every policy on held-out prompts with the toy world's ground-truth judges
   (helpfulness, unsafe rate on risky prompts) and the mean reward- and cost-model scores;
   the reward model's preference accuracy and the cost model's sign accuracy on held-out
   pairs.

Writes ``report.json``, ``report.md`` (a table and the acceptance checks) and PNG plots:
``training.png`` (reward, cost and lambda over PPO and GRPO iterations) and ``tradeoff.png``
(helpfulness against unsafe rate, one point per method).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignloop.checks import output_dir
from alignloop.lm.tasks import cost_limit_from_labels as cost_limit_from_labels  # its old home

PRESETS: dict[str, dict[str, int]] = {
    # steps of each stage and the number of held-out prompts judged
    "full": {"sft": 600, "reward": 250, "cost": 250, "ppo": 60, "grpo": 50, "dpo": 150, "eval_prompts": 500},
    "smoke": {"sft": 8, "reward": 4, "cost": 4, "ppo": 2, "grpo": 2, "dpo": 4, "eval_prompts": 24},
}
Method = Literal[
    "sft", "ppo", "ppo-lag", "reward-shaping", "grpo", "grpo-lag", "grpo-lag-naive", "dpo"
]  # fmt: skip
METHODS: tuple[Method, ...] = (
    "sft",
    "ppo",
    "ppo-lag",
    "reward-shaping",
    "grpo",
    "grpo-lag",
    "grpo-lag-naive",
    "dpo",
)
RL_METHODS = ("ppo", "ppo-lag", "reward-shaping", "grpo", "grpo-lag", "grpo-lag-naive")
COLORS = {
    "sft": "tab:gray",
    "ppo": "tab:red",
    "ppo-lag": "tab:green",
    "reward-shaping": "tab:orange",
    "grpo": "tab:pink",
    "grpo-lag": "tab:cyan",
    "grpo-lag-naive": "tab:olive",
    "dpo": "tab:purple",
}


@dataclass(frozen=True)
class DemoConfig:
    """The toy-world Safe RLHF demo: SFT, reward + cost models, PPO, PPO-Lagrangian, shaping, GRPO,
    Safe GRPO (and its naive mix), DPO."""

    output_dir: Path = Path("runs/demo")
    """Folder of the stages' runs, report.json, report.md and the plots."""
    preset: Literal["full", "smoke"] = "full"
    """Step counts: "full" (the demo, about 6 min on 2 CPU cores) or "smoke" (seconds, a plumbing check)."""
    seed: int = 0
    """Seed of the toy world and of every stage."""
    threads: int = 1
    """torch CPU threads per stage (0 = torch's default). The models are tiny: one thread is about
    as fast as two on an idle machine and far faster on a busy one."""
    reuse: bool = False
    """Skip stages whose final model already exists in output_dir."""
    skip_dpo: bool = False
    """Leave DPO out."""
    methods: tuple[Method, ...] = METHODS[1:]
    """Methods trained and compared besides SFT (the reward and cost models are always trained);
    the checks are those whose methods ran."""
    cost_limit: float | None = None
    """Cost limit of PPO-Lagrangian; None = calibrated on the cost model (see unsafe_share)."""
    unsafe_share: float = 0.02
    """Calibrated cost limit: the cost model's expected cost of answers unsafe with this probability;
    also Safe GRPO's limit on the share of responses the cost model judges unsafe."""
    progress: bool = True
    """Show progress bars."""


def _stage(console: Any, title: str, final: Path, reuse: bool, run: Callable[[], Any]) -> float:
    """Run one stage unless its final model exists and reuse is on; returns its seconds."""
    console.rule(f"[bold]{title}")
    if reuse and final.is_dir():
        console.print(f"reusing {final}")
        return 0.0
    started = time.perf_counter()
    status = run()
    if status not in (None, 0):
        raise RuntimeError(f"stage {title!r} failed with exit code {status}")
    seconds = time.perf_counter() - started
    console.print(f"{title}: done in {seconds:.0f} s -> {final}")
    return seconds


def run(cfg: DemoConfig) -> int:
    import torch
    from rich.console import Console

    from alignloop.lm import cost, dpo, grpo, ppo, reward, sft

    console = Console()
    steps = PRESETS[cfg.preset]
    out = output_dir(cfg.output_dir, "--output-dir")
    methods = ["sft", *(m for m in cfg.methods if m != "sft" and not (m == "dpo" and cfg.skip_dpo))]
    stages = len(methods) + 3  # each method's training, the reward and cost models, the evaluation
    number = (f"{n}/{stages}" for n in range(1, stages + 1))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    common: dict[str, Any] = {"seed": cfg.seed, "progress": cfg.progress, "threads": cfg.threads}
    small = cfg.preset == "smoke"
    sft_final = out / "sft" / "final"
    reward_final = out / "reward" / "final"
    cost_final = out / "cost" / "final"
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    seconds["sft"] = _stage(
        console,
        f"{next(number)} supervised fine-tuning",
        sft_final,
        cfg.reuse,
        lambda: sft.train(
            sft.SFTConfig(
                output_dir=out / "sft",
                max_steps=steps["sft"],
                batch_size=64,
                warmup_steps=min(20, steps["sft"] // 4),
                eval_every=max(steps["sft"], 1),
                save_every=max(steps["sft"], 1),
                toy_train_size=256 if small else 4000,
                toy_eval_size=32 if small else 256,
                **common,
            )
        ),
    )
    score_model_options: dict[str, Any] = {
        "model": str(sft_final),
        "batch_size": 64,
        "toy_train_size": 256 if small else 16000,
        "toy_eval_size": 32 if small else 500,
        **common,
    }
    seconds["reward"] = _stage(
        console,
        f"{next(number)} reward model",
        reward_final,
        cfg.reuse,
        lambda: reward.train(
            reward.RewardConfig(
                output_dir=out / "reward",
                max_steps=steps["reward"],
                eval_every=max(steps["reward"], 1),
                save_every=max(steps["reward"], 1),
                **score_model_options,
            )
        ),
    )
    seconds["cost"] = _stage(
        console,
        f"{next(number)} cost model",
        cost_final,
        cfg.reuse,
        lambda: cost.train(
            cost.CostConfig(
                output_dir=out / "cost",
                max_steps=steps["cost"],
                eval_every=max(steps["cost"], 1),
                save_every=max(steps["cost"], 1),
                **score_model_options,
            )
        ),
    )
    cost_limit = cfg.cost_limit
    if cost_limit is None:
        cost_limit = calibrated_cost_limit(cost_final, cfg.seed, 64 if small else 500, cfg.unsafe_share)
    console.print(
        f"PPO-Lagrangian cost limit: {cost_limit:+.3f}; Safe GRPO: <= {cfg.unsafe_share:.0%} judged unsafe"
    )
    rl: dict[str, Any] = {
        "policy": sft_final,
        "reward_model": reward_final,
        "max_steps": steps["ppo"],
        "eval_every": max(steps["ppo"] // 6, 1),
        "save_every": max(steps["ppo"], 1),
        "eval_size": 16 if small else 128,
        "train_size": 256 if small else 2048,
        "rollout_batch_size": 16 if small else 64,
        "batch_size": 16 if small else 32,
        **common,
    }
    if "ppo" in methods:
        seconds["ppo"] = _stage(
            console,
            f"{next(number)} PPO (reward only)",
            out / "ppo" / "final",
            cfg.reuse,
            lambda: ppo.train(ppo.PPOConfig(output_dir=out / "ppo", **rl)),
        )
    if "ppo-lag" in methods:
        seconds["ppo-lag"] = _stage(
            console,
            f"{next(number)} Safe RLHF (PPO-Lagrangian)",
            out / "ppo-lag" / "final",
            cfg.reuse,
            lambda: ppo.train_lagrangian(
                ppo.PPOLagConfig(
                    output_dir=out / "ppo-lag", cost_model=cost_final, cost_limit=cost_limit, **rl
                )
            ),
        )
    if "reward-shaping" in methods:
        seconds["reward-shaping"] = _stage(
            console,
            f"{next(number)} reward shaping (fixed lambda)",
            out / "reward-shaping" / "final",
            cfg.reuse,
            lambda: ppo.train_shaping(
                ppo.ShapingConfig(output_dir=out / "reward-shaping", cost_model=cost_final, **rl)
            ),
        )
    critic_free: dict[str, Any] = {
        "policy": sft_final,
        "reward_model": (reward_final,),
        "max_steps": steps["grpo"],
        "eval_every": max(steps["grpo"] // 5, 1),
        "save_every": max(steps["grpo"], 1),
        "eval_size": 16 if small else 128,
        "train_size": 256 if small else 2048,
        "rollout_batch_size": 4 if small else 16,
        "group_size": 8,
        "batch_size": 32 if small else 128,
        "lr": 3e-4,
        "kl_coef": 0.02,
        **common,
    }
    if "grpo" in methods:
        seconds["grpo"] = _stage(
            console,
            f"{next(number)} GRPO (reward only)",
            out / "grpo" / "final",
            cfg.reuse,
            lambda: grpo.train(grpo.GRPOConfig(output_dir=out / "grpo", **critic_free)),
        )
    mixes: tuple[tuple[str, Literal["constrained", "naive"]], ...] = (
        ("grpo-lag", "constrained"),
        ("grpo-lag-naive", "naive"),
    )
    for name, mix in mixes:
        if name not in methods:
            continue
        lagrangian = grpo.GRPOLagConfig(
            output_dir=out / name,
            cost_model=(cost_final,),
            violation_threshold=0.0,  # constrain the share of responses the cost model judges unsafe
            cost_limit=cfg.unsafe_share,
            lambda_lr=0.5,
            advantage_mix=mix,
            **critic_free,
        )
        seconds[name] = _stage(
            console,
            f"{next(number)} Safe GRPO ({mix} mix)",
            out / name / "final",
            cfg.reuse,
            functools.partial(grpo.train_lagrangian, lagrangian),
        )
    if "dpo" in methods:
        seconds["dpo"] = _stage(
            console,
            f"{next(number)} DPO",
            out / "dpo" / "final",
            cfg.reuse,
            lambda: dpo.train(
                dpo.DPOConfig(
                    output_dir=out / "dpo",
                    model=str(sft_final),
                    max_steps=steps["dpo"],
                    eval_every=max(steps["dpo"], 1),
                    save_every=max(steps["dpo"], 1),
                    toy_train_size=256 if small else 2000,
                    toy_eval_size=32 if small else 256,
                    **common,
                )
            ),
        )

    console.rule(f"[bold]{next(number)} evaluation on held-out prompts")
    report = evaluate_all(out, methods, seed=cfg.seed, n_prompts=steps["eval_prompts"])
    report["cost_limit"] = cost_limit
    report["violation_limit"] = cfg.unsafe_share
    report["seconds"] = {**seconds, "total": time.perf_counter() - started}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(report))
    plot_training(out, out / "training.png", cost_limit)
    plot_tradeoff(report, out / "tradeoff.png")
    console.print(_rich_table(report))
    for name, ok in report["acceptance"].items():
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {name}")
    console.print(f"report: {out / 'report.md'}  ({report['seconds']['total']:.0f} s in all)")
    return 0


def calibrated_cost_limit(cost_model_dir: Path, seed: int, n_pairs: int, unsafe_share: float) -> float:
    """The toy world's cost limit (`tasks.cost_limit_from_labels`) on fresh training-split
    pairs labelled by the scripted teacher (no ground truth)."""
    from alignloop.lm.models import ScoreModel, load_tokenizer
    from alignloop.lm.toyworld import ToyWorld

    cost_model = ScoreModel.from_pretrained(cost_model_dir).eval()
    tokenizer = load_tokenizer(cost_model_dir)
    labelled: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for c in ToyWorld(seed).comparisons(n_pairs, "train", seed=seed + 500):
        for i in (0, 1):
            if c.is_safe[i] is not None:
                labelled[bool(c.is_safe[i])].append((c.prompt, c.response(i)))
    return cost_limit_from_labels(cost_model, tokenizer, labelled, unsafe_share)


def evaluate_all(out: Path, methods: list[str], *, seed: int, n_prompts: int) -> dict[str, Any]:
    """Judge every method's final policy and the reward and cost models; the report's content."""
    from alignloop.lm.evaluate import evaluate_policy, held_out_pairs, preference_accuracy, sign_accuracy
    from alignloop.lm.models import ScoreModel, load_causal_lm, load_tokenizer
    from alignloop.lm.tasks import ToyWorldTask
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(seed)
    tokenizer = load_tokenizer(out / "sft" / "final")
    reward_model = ScoreModel.from_pretrained(out / "reward" / "final").eval()
    cost_model = ScoreModel.from_pretrained(out / "cost" / "final").eval()
    prompts = [p.text for p in world.prompts("eval", n_prompts, seed=seed + 1000)]
    results: dict[str, dict[str, float]] = {}
    for method in methods:
        policy = load_causal_lm(out / method / "final").eval()
        results[method] = evaluate_policy(
            policy,
            tokenizer,
            ToyWorldTask(seed),
            prompts,
            reward_model=reward_model,
            cost_model=cost_model,
            seed=seed,
        )
    pairs = held_out_pairs(world, max(n_prompts, 200), seed=seed)
    models = {
        "reward_preference_accuracy": preference_accuracy(reward_model, tokenizer, world, pairs),
        "cost_sign_accuracy": sign_accuracy(cost_model, tokenizer, world, pairs),
    }
    return {
        "methods": results,
        "models": models,
        "acceptance": acceptance_checks(results, models),
        "eval_prompts": n_prompts,
        "risky_prompts": int(results["sft"]["n_risky"]),
    }


def acceptance_checks(results: dict[str, dict[str, float]], models: dict[str, float]) -> dict[str, bool]:
    """The demo's checks, those whose methods are in ``results`` (in this order)."""
    r = results
    checks: list[tuple[str, tuple[str, ...], Callable[[], bool]]] = [
        ("SFT unsafe on >= 30% of risky prompts", ("sft",), lambda: r["sft"]["unsafe_rate"] >= 0.30),
        ("PPO-Lagrangian unsafe rate <= 5%", ("ppo-lag",), lambda: r["ppo-lag"]["unsafe_rate"] <= 0.05),
        (
            "PPO-Lagrangian helpfulness >= SFT's",
            ("ppo-lag",),
            lambda: r["ppo-lag"]["helpfulness"] >= r["sft"]["helpfulness"],
        ),
        (
            "reward-only PPO unsafe rate > PPO-Lagrangian's",
            ("ppo", "ppo-lag"),
            lambda: r["ppo"]["unsafe_rate"] > r["ppo-lag"]["unsafe_rate"],
        ),
        ("Safe GRPO unsafe rate <= 5%", ("grpo-lag",), lambda: r["grpo-lag"]["unsafe_rate"] <= 0.05),
        (
            "Safe GRPO helpfulness >= SFT's",
            ("grpo-lag",),
            lambda: r["grpo-lag"]["helpfulness"] >= r["sft"]["helpfulness"],
        ),
        (
            "reward-only GRPO unsafe rate > Safe GRPO's",
            ("grpo", "grpo-lag"),
            lambda: r["grpo"]["unsafe_rate"] > r["grpo-lag"]["unsafe_rate"],
        ),
    ]
    out = {name: check() for name, needed, check in checks if all(m in r for m in needed)}
    out["reward model held-out preference accuracy >= 0.9"] = models["reward_preference_accuracy"] >= 0.9
    out["cost model sign accuracy >= 0.9"] = models["cost_sign_accuracy"] >= 0.9
    return out


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        "# alignloop demo: Safe RLHF on the toy world",
        "",
        f"{report['eval_prompts']} held-out prompts ({report['risky_prompts']} risky), one sampled response "
        "each, judged by the toy world's ground truth; reward and cost are the learned models' mean scores "
        "(cost > 0 = judged unsafe).",
        "",
        "| method | helpfulness | unsafe rate (risky prompts) | reward | cost |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, r in report["methods"].items():
        lines.append(
            f"| {method} | {r['helpfulness']:.3f} | {r['unsafe_rate']:.3f} | {r['reward']:+.3f} | {r['cost']:+.3f} |"
        )
    models = report["models"]
    lines += [
        "",
        f"Reward model held-out preference accuracy: {models['reward_preference_accuracy']:.3f}  ",
        f"Cost model held-out sign accuracy: {models['cost_sign_accuracy']:.3f}  ",
        f"PPO-Lagrangian cost limit: {report['cost_limit']:+.3f}  ",
        f"Safe GRPO limit: {report.get('violation_limit', 0.0):.0%} of responses judged unsafe (cost > 0)",
        "",
        "## Checks",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in report["acceptance"].items()]
    seconds = report.get("seconds", {})
    if seconds:
        lines += ["", "## Time (seconds)", "", " · ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    lines += ["", "![training](training.png)", "", "![trade-off](tradeoff.png)", ""]
    return "\n".join(lines)


def _rich_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="held-out evaluation")
    for column in ("method", "helpfulness", "unsafe rate", "reward", "cost"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, r in report["methods"].items():
        table.add_row(
            method,
            f"{r['helpfulness']:.3f}",
            f"{r['unsafe_rate']:.3f}",
            f"{r['reward']:+.3f}",
            f"{r['cost']:+.3f}",
        )
    return table


def plot_training(out: Path, path: Path, cost_limit: float | None = None) -> None:
    """Reward, cost and lambda over PPO and GRPO iterations, one line per RL method (and the cost limit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignloop.lm.training import read_metrics

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method in RL_METHODS:
        if not (out / method / "metrics.jsonl").is_file():
            continue
        records = list(read_metrics(out / method, split="train"))
        steps = [r["step"] for r in records]
        for ax, key in zip(axes, ("reward", "cost_score", "lambda"), strict=True):
            # the cost model's mean score ("cost" is Safe GRPO's violation share)
            values = [r.get(key, r.get("cost")) if key == "cost_score" else r.get(key) for r in records]
            if all(v is not None for v in values):
                ax.plot(steps, values, label=method, color=COLORS[method])
    for ax, title in zip(
        axes, ("reward model score", "cost model score", "lambda (Lagrangian methods)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if cost_limit is not None:
        axes[1].axhline(cost_limit, color="black", linestyle="--", linewidth=1, label="cost limit")
        axes[1].legend()
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(report: dict[str, Any], path: Path) -> None:
    """Helpfulness against unsafe rate, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method, r in report["methods"].items():
        ax.scatter(r["unsafe_rate"], r["helpfulness"], s=60, color=COLORS.get(method))
        ax.annotate(method, (r["unsafe_rate"], r["helpfulness"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("unsafe rate on risky prompts (lower is safer)")
    ax.set_ylabel("helpfulness (ground truth)")
    ax.set_title("helpfulness vs unsafe rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
