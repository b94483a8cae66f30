"""DPO with alignloop against TRL's `DPOTrainer`: throughput, peak memory and loss curves.

Both trainers get the same tiny model (the toy world's 2-layer Llama, saved as a Hugging Face
folder), the same tokenizer, the same preference pairs in the same order (no shuffling), the
same batch size, optimiser (AdamW, betas 0.9/0.95, no weight decay), cosine schedule without
warm-up, gradient clipping at 1.0 and beta = 0.1. The pairs are checked to tokenise to the
same ids on both sides.

Each run is a fresh Python process (`--worker`), so its peak memory is its own:

- time: wall clock from just before the trainer is built to the end of training (data
  preparation, reference log-probs and the final save included). Imports and first-call
  set-up are not timed: every worker first imports what either trainer uses and runs the
  model once (`warm_up`);
- tokens/s: non-padding tokens of every chosen and rejected sequence trained on, divided by
  that time (both trainers see exactly the same tokens);
- memory: the process's peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`). Every
  worker makes the same warm-up, so the baselines match; the report also gives the peak minus
  the RSS measured just before training ("train +MiB").

Runs are interleaved (each repeat runs every configuration, in alternating order) and the
report gives medians and the ratios of medians, not single timings. Configurations:

- `alignloop`: defaults (reference log-probs precomputed once, reference model freed);
- `alignloop-online`: reference model scored on every batch;
- `trl`: TRL's defaults (reference model scored on every batch);
- `trl-precompute`: TRL with `precompute_ref_log_probs=True`.

    python bench/dpo_vs_trl.py                 # 12 runs; 5-10 minutes on 2 busy CPU cores
    python bench/dpo_vs_trl.py --repeats 5 --pairs 1024 --threads 2
    python bench/dpo_vs_trl.py --hidden 256 --layers 4 --pairs 256   # compute-bound regime

`--trees base=DIR new=DIR` instead times alignloop's DPO (defaults) from two source trees
(e.g. a second git worktree of an older commit), interleaved, to check that a change did not
slow it down: medians, the ratio of each tree's time and peak memory to the first tree's, and
whether the loss curves are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("alignloop", "alignloop-online", "trl", "trl-precompute")
BETA, LR, MAX_LENGTH = 0.1, 1e-3, 64


def rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------ setup
def prepare(setup: Path, n_pairs: int, seed: int, hidden: int = 64, layers: int = 2) -> dict[str, Any]:
    """Write the model folder and the pairs file; return the pairs and their token count."""
    from alignloop.feedback.schema import Comparison
    from alignloop.lm.data import encode_pair, format_prompt
    from alignloop.lm.toyworld import ToyWorld, build_policy, build_tokenizer

    setup.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(setup / "model")
    size = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers}
    build_policy(tokenizer, seed=seed, **size).save_pretrained(str(setup / "model"))
    comparisons = [c for c in ToyWorld(seed=seed).comparisons(2 * n_pairs + 64) if c.better is not None]
    if len(comparisons) < n_pairs + 8:
        raise SystemExit(f"the toy world gave only {len(comparisons)} pairs with a preference")

    def row(c: Comparison) -> dict[str, str]:
        assert c.better is not None
        return {"prompt": c.prompt, "chosen": c.response(c.better), "rejected": c.response(1 - c.better)}

    train, held_out = (
        [row(c) for c in comparisons[:n_pairs]],
        [row(c) for c in comparisons[n_pairs : n_pairs + 8]],
    )
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        (setup / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = sum(
        len(encode_pair(tokenizer, r["prompt"], r[k], MAX_LENGTH)["input_ids"])
        for r in train
        for k in ("chosen", "rejected")
    )
    # what TRL is given: the formatted prompt, and the response after a space (TRL adds <eos>)
    trl_rows = [
        {
            "prompt": format_prompt(tokenizer, r["prompt"]),
            "chosen": " " + r["chosen"],
            "rejected": " " + r["rejected"],
        }
        for r in train
    ]
    (setup / "trl_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trl_rows))
    return {"pairs": len(train), "tokens_per_epoch": tokens}


# ------------------------------------------------------------------------------------ workers
def run_alignloop(setup: Path, out: Path, args: argparse.Namespace, online: bool) -> list[float]:
    from alignloop.lm.dpo import DPOConfig, train

    cfg = DPOConfig(
        output_dir=out,
        model=str(setup / "model"),
        train_file=setup / "train.jsonl",
        eval_file=setup / "eval.jsonl",
        format="preference",
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=0,
        lr=LR,
        beta=BETA,
        warmup_steps=0,
        scheduler="cosine",
        max_grad_norm=1.0,
        max_length=MAX_LENGTH,
        eval_every=0,  # at the start and the end only
        save_every=0,
        shuffle=False,
        reference="online" if online else "precompute",
        threads=args.threads,
        progress=False,
        seed=args.seed,
    )
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def run_trl(setup: Path, out: Path, args: argparse.Namespace, precompute: bool) -> tuple[list[float], bool]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from alignloop.lm.data import encode_pair

    tokenizer = AutoTokenizer.from_pretrained(str(setup / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "model"))
    ref_model = None if precompute else AutoModelForCausalLM.from_pretrained(str(setup / "model"))
    rows = [json.loads(line) for line in (setup / "trl_train.jsonl").read_text().splitlines()]
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=LR,
        beta=BETA,
        loss_type=["sigmoid"],
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=precompute,
        train_sampling_strategy="sequential",
        dataloader_drop_last=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # no console log per step (alignloop prints none either)
    # the same token ids as alignloop's encoding of the same pairs
    ours = [json.loads(line) for line in (setup / "train.jsonl").read_text().splitlines()]
    data = trainer.train_dataset
    same = all(
        list(data[i]["prompt_ids"]) + list(data[i][f"{k}_ids"])
        == encode_pair(tokenizer, r["prompt"], r[k], MAX_LENGTH)["input_ids"]
        for i, r in enumerate(ours)
        for k in ("chosen", "rejected")
    )
    trainer.train()
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h], same


def warm_up(setup: Path) -> None:
    """Import what either trainer uses and run the model once, so lazy imports and first-call
    set-up are not timed (and both kinds of worker start from the same memory baseline)."""
    import datasets  # noqa: F401
    import rich.progress  # noqa: F401
    import torch
    import torch.distributed.tensor  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    import alignloop.feedback.formats  # noqa: F401
    import alignloop.lm.dpo  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(str(setup / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "model"))
    ids = torch.tensor([tokenizer("Human: hello Assistant: sure")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    setup = Path(args.setup)
    warm_up(setup)
    with tempfile.TemporaryDirectory() as tmp:
        rss_before = rss_mib()
        start = time.perf_counter()
        same_tokens = True
        if args.worker.startswith("alignloop"):
            losses = run_alignloop(setup, Path(tmp), args, online=args.worker == "alignloop-online")
        else:
            losses, same_tokens = run_trl(setup, Path(tmp), args, precompute=args.worker == "trl-precompute")
        seconds = time.perf_counter() - start
    result = {
        "kind": args.worker,
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
        "losses": losses,
        "same_tokens": same_tokens,
    }
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------ report
def summarise(runs: list[dict[str, Any]], tokens: int) -> dict[str, dict[str, float]]:
    out = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        out[kind] = {
            "tokens_per_s": statistics.median(tokens / r["seconds"] for r in mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
            "train_rss_mib": statistics.median(r["peak_rss_mib"] - r["rss_before_mib"] for r in mine),
            "final_loss": statistics.median(statistics.fmean(r["losses"][-5:]) for r in mine),
            "runs": len(mine),
        }
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    base = summary["trl"]
    lines = [
        "| trainer | tokens/s | vs TRL | peak RSS MiB | vs TRL | train +MiB | final loss (last 5 steps) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['tokens_per_s']:.0f} | {s['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"| {s['peak_rss_mib']:.0f} | {s['peak_rss_mib'] / base['peak_rss_mib']:.2f}x "
            f"| {s['train_rss_mib']:.0f} | {s['final_loss']:.4f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"alignloop": "-", "trl": "--", "alignloop-online": ":", "trl-precompute": "-."}
    for kind in KINDS:
        first = next((r for r in runs if r["kind"] == kind), None)
        if first is not None:
            ax.plot(range(1, len(first["losses"]) + 1), first["losses"], styles[kind], label=kind)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("DPO loss (training batch)")
    ax.set_title("DPO on the toy world: alignloop vs TRL DPOTrainer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def compare_trees(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Time the `alignloop` worker from each source tree of ``--trees``, interleaved."""
    trees = dict(item.split("=", 1) for item in args.trees)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        setup = Path(tmp) / "setup"
        info = prepare(setup, args.pairs, args.seed, args.hidden, args.layers)
        for repeat in range(args.repeats):
            for name in trees if repeat % 2 == 0 else list(reversed(trees)):
                result = Path(tmp) / f"{name}-{repeat}.json"
                command = [sys.executable, __file__, "--worker", "alignloop", "--setup", str(setup)]
                command += ["--result", str(result), "--batch-size", str(args.batch_size)]
                command += [
                    "--epochs",
                    str(args.epochs),
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(args.seed),
                ]
                tree_env = {**env, "PYTHONPATH": str(Path(trees[name]).resolve())}
                done = subprocess.run(command, env=tree_env, capture_output=True, text=True, cwd=tmp)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
                runs[name].append(json.loads(result.read_text()))
                print(f"repeat {repeat} {name:10s} {runs[name][-1]['seconds']:7.2f} s")
    first = next(iter(trees))
    seconds = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    memory = {name: statistics.median(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()}
    report = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("worker", "setup", "result", "out")},
            **info,
        },
        "median_seconds": seconds,
        "time_ratio": {name: seconds[name] / seconds[first] for name in trees},
        "peak_rss_ratio": {name: memory[name] / memory[first] for name in trees},
        "same_losses": {name: rs[0]["losses"] == runs[first][0]["losses"] for name, rs in runs.items()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trees.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("median_seconds", "time_ratio", "peak_rss_ratio", "same_losses")})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64, help="model width (the toy world's is 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (the toy world's is 2)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dpo_vs_trl"))
    parser.add_argument(
        "--trees", nargs="+", metavar="NAME=DIR", help="time alignloop from these source trees"
    )
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.pairs % args.batch_size:
        raise SystemExit(f"--pairs {args.pairs} must be a multiple of --batch-size {args.batch_size}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    if args.trees:
        compare_trees(args, env)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = Path(tmp) / "setup"
        info = prepare(setup, args.pairs, args.seed, args.hidden, args.layers)
        tokens = info["tokens_per_epoch"] * args.epochs
        for repeat in range(args.repeats):
            order = args.kinds if repeat % 2 == 0 else list(reversed(args.kinds))
            for kind in order:
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
                command += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
                command += ["--threads", str(args.threads), "--seed", str(args.seed)]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
                runs.append(json.loads(result.read_text()))
                r = runs[-1]
                print(
                    f"repeat {repeat} {kind:17s} {tokens / r['seconds']:8.0f} tokens/s  {r['peak_rss_mib']:6.0f} MiB"
                )
    summary = summarise(runs, tokens)
    curve = {}
    if "alignloop" in summary and "trl" in summary:
        ours = next(r for r in runs if r["kind"] == "alignloop")["losses"]
        theirs = next(r for r in runs if r["kind"] == "trl")["losses"]
        curve = {
            "steps": [len(ours), len(theirs)],
            "max_abs_step_difference": max(abs(a - b) for a, b in zip(ours, theirs, strict=False)),
            "final_loss_difference": abs(summary["alignloop"]["final_loss"] - summary["trl"]["final_loss"]),
        }
    report = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("worker", "setup", "result", "out")},
            **info,
        },
        "tokens_trained": tokens,
        "same_tokens": all(r["same_tokens"] for r in runs),
        "summary": summary,
        "loss_curves": curve,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, args.out / "loss_curves.png")
    text = table(summary) if "trl" in summary else json.dumps(summary, indent=2)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(json.dumps({"same_tokens": report["same_tokens"], **curve}))


if __name__ == "__main__":
    main()
