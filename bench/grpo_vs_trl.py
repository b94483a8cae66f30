"""GRPO with alignloop against TRL's `GRPOTrainer`: throughput, peak memory and reward curves.

Both trainers get the same tiny model (the toy world's 2-layer Llama, saved as a Hugging Face
folder) and tokenizer, the same prompts (a file of toy-world prompts, formatted as
``Human: ... Assistant:`` for TRL, which alignloop does itself), the same reward function (the
toy world's ground-truth helpfulness, a Python function both call with ``prompts`` and
``completions``), the same group size, prompts per step, number of steps and response length,
the same KL coefficient to the same frozen reference (k3 in the loss), GRPO's loss
normalisation and group-std scaling, AdamW (betas 0.9/0.95, no weight decay), a constant
learning rate and gradient clipping at 1.0. alignloop's penalty for a response without an end
token is off (TRL has none). Prompts are drawn in each trainer's own shuffled order.

Each run is a fresh Python process (`--worker`), so its peak memory is its own:

- time: wall clock from just before the trainer is built to the end of training (the final
  save included). Imports and first-call set-up are not timed: every worker first imports
  what either trainer uses and runs the model once (`dpo_vs_trl.warm_up`'s approach);
- tokens/s: prompt and response tokens of every sampled sequence (each trainer's own count,
  from its per-step mean response length), divided by that time;
- memory: the process's peak resident set size, and the peak minus the RSS just before
  training ("train +MiB").

Runs are interleaved (each repeat runs every configuration, in alternating order) and the
report gives medians and the ratios of medians.

    python bench/grpo_vs_trl.py                    # 3 repeats; several minutes on 2 busy cores
    python bench/grpo_vs_trl.py --repeats 5 --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import peak_rss_mib, rss_mib  # noqa: E402

KINDS = ("alignloop", "trl")
LR, BETA = 2e-4, 0.04


def helpfulness(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """The toy world's ground-truth helpfulness; takes raw prompts (alignloop) or formatted ones (TRL)."""
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(0)
    raw = [p.strip().removeprefix("Human:").removesuffix("Assistant:").strip() for p in prompts]
    return [world.helpfulness(p, c) for p, c in zip(raw, completions, strict=True)]


# ------------------------------------------------------------------------------------ setup
def prepare(setup: Path, n_prompts: int, seed: int, hidden: int, layers: int) -> dict[str, Any]:
    """Write the model folder and the prompt files (alignloop's raw, TRL's formatted)."""
    from alignloop.lm.data import encode_prompt, format_prompt
    from alignloop.lm.toyworld import ToyWorld, build_policy, build_tokenizer

    setup.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(setup / "model")
    size = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers}
    build_policy(tokenizer, seed=seed, **size).save_pretrained(str(setup / "model"))
    prompts = [p.text for p in ToyWorld(seed).prompts("train", n_prompts, seed=seed)]
    (setup / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    formatted = [{"prompt": format_prompt(tokenizer, p)} for p in prompts]
    (setup / "trl_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in formatted))
    same = all(
        tokenizer(r["prompt"])["input_ids"] == encode_prompt(tokenizer, p)
        for r, p in zip(formatted, prompts, strict=True)
    )
    mean_prompt = statistics.fmean(len(encode_prompt(tokenizer, p)) for p in prompts)
    return {"prompts": len(prompts), "mean_prompt_tokens": mean_prompt, "same_prompt_tokens": same}


# ------------------------------------------------------------------------------------ workers
def run_alignloop(setup: Path, out: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    from alignloop.lm.grpo import GRPOConfig, train

    cfg = GRPOConfig(
        output_dir=out,
        policy=setup / "model",
        reward_model=(),
        reward_function=(f"{Path(__file__).resolve()}:helpfulness",),
        prompts=setup / "prompts.jsonl",
        max_steps=args.steps,
        rollout_batch_size=args.prompts_per_step,
        group_size=args.group,
        batch_size=args.prompts_per_step * args.group,
        max_new_tokens=args.max_new_tokens,
        lr=LR,
        kl_coef=BETA,
        loss="grpo",
        missing_eos_penalty=0.0,
        eval_size=0,
        save_every=0,
        threads=args.threads,
        progress=False,
        seed=args.seed,
    )
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [
        {"reward": r["reward"], "loss": r["policy_loss"], "response_tokens": r["response_tokens"]}
        for r in rows
        if r["split"] == "train"
    ]


def run_trl(setup: Path, out: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(setup / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "model"))
    rows = [json.loads(line) for line in (setup / "trl_prompts.jsonl").read_text().splitlines()]
    samples = args.prompts_per_step * args.group
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=samples,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        max_steps=args.steps,
        learning_rate=LR,
        beta=BETA,
        loss_type="grpo",
        scale_rewards="group",
        temperature=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=helpfulness,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(out / "final"))  # alignloop's time includes saving its final policy
    return [
        {"reward": h["reward"], "loss": h["loss"], "response_tokens": h["completions/mean_length"]}
        for h in trainer.state.log_history
        if "reward" in h
    ]


def warm_up(setup: Path) -> None:
    """Import what either trainer uses and run the model once (untimed; the same for both)."""
    import datasets  # noqa: F401
    import rich.progress  # noqa: F401
    import torch
    import torch.utils.tensorboard  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from trl import GRPOConfig, GRPOTrainer  # noqa: F401

    import alignloop.lm.grpo  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(str(setup / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "model"))
    ids = torch.tensor([tokenizer("Human: hello Assistant: sure")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    helpfulness(["how do i cook rice"], ["boil water"])


def worker(args: argparse.Namespace) -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore", FutureWarning)  # TRL's configs use deprecated transformers arguments
    torch.set_num_threads(args.threads)
    setup = Path(args.setup)
    warm_up(setup)
    with tempfile.TemporaryDirectory() as tmp:
        rss_before = rss_mib()
        start = time.perf_counter()
        steps = (
            run_alignloop(setup, Path(tmp), args)
            if args.worker == "alignloop"
            else run_trl(setup, Path(tmp), args)
        )
        seconds = time.perf_counter() - start
    samples = args.prompts_per_step * args.group
    tokens = sum(samples * (s["response_tokens"] + args.mean_prompt_tokens) for s in steps)
    result = {
        "kind": args.worker,
        "seconds": seconds,
        "tokens": tokens,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
        "steps": steps,
    }
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------ report
def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        if mine:
            out[kind] = {
                "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in mine),
                "seconds": statistics.median(r["seconds"] for r in mine),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
                "train_rss_mib": statistics.median(r["peak_rss_mib"] - r["rss_before_mib"] for r in mine),
                "first_reward": statistics.median(
                    statistics.fmean(s["reward"] for s in r["steps"][:5]) for r in mine
                ),
                "final_reward": statistics.median(
                    statistics.fmean(s["reward"] for s in r["steps"][-5:]) for r in mine
                ),
                "runs": len(mine),
            }
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    base = summary["trl"]
    lines = [
        "| trainer | tokens/s | vs TRL | peak RSS MiB | vs TRL | train +MiB | reward, first 5 steps | last 5 steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['tokens_per_s']:.0f} | {s['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"| {s['peak_rss_mib']:.0f} | {s['peak_rss_mib'] / base['peak_rss_mib']:.2f}x "
            f"| {s['train_rss_mib']:.0f} | {s['first_reward']:.3f} | {s['final_reward']:.3f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"alignloop": "tab:blue", "trl": "tab:orange"}
    for kind in KINDS:
        for i, r in enumerate(x for x in runs if x["kind"] == kind):
            rewards = [s["reward"] for s in r["steps"]]
            ax.plot(range(1, len(rewards) + 1), rewards, color=colors[kind], alpha=0.8 if i == 0 else 0.3,
                    label=kind if i == 0 else None)  # fmt: skip
    ax.set_xlabel("step (one rollout, one optimiser step)")
    ax.set_ylabel("mean reward of the step's responses")
    ax.set_title("GRPO on the toy world: alignloop vs TRL GRPOTrainer (every run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group", type=int, default=4, help="responses per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64, help="model width (the toy world's is 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (the toy world's is 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/grpo_vs_trl"))
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--mean-prompt-tokens", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = Path(tmp) / "setup"
        info = prepare(setup, args.steps * args.prompts_per_step, args.seed, args.hidden, args.layers)
        for repeat in range(args.repeats):
            for kind in KINDS if repeat % 2 == 0 else tuple(reversed(KINDS)):
                result = Path(tmp) / f"{kind}-{repeat}.json"
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    kind,
                    "--setup",
                    str(setup),
                    "--result",
                    str(result),
                ]
                for name in ("steps", "prompts_per_step", "group", "max_new_tokens", "threads", "seed"):
                    command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
                command += ["--mean-prompt-tokens", str(info["mean_prompt_tokens"])]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
                runs.append(json.loads(result.read_text()))
                r = runs[-1]
                print(
                    f"repeat {repeat} {kind:10s} {r['tokens'] / r['seconds']:8.0f} tokens/s  {r['peak_rss_mib']:6.0f} MiB"
                )
    summary = summarise(runs)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "setup", "result", "out")}
        | info,
        "summary": summary,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(runs, args.out / "reward_curves.png")
    text = table(summary)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
