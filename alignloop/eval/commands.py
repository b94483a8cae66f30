"""`alignloop eval`: compare language-model policies on the same prompts.

    alignloop eval runs/demo/sft/final ppo-lag=runs/demo/ppo_lag/final \\
        --toyworld --reward-model runs/demo/reward/final --cost-model runs/demo/cost/final

Each policy (a Hugging Face causal-LM folder, optionally named `NAME=PATH`) answers every
prompt once (batched, KV-cached sampling, the same seed for every policy). The responses are
scored by the reward model and the cost model when they are given. Per policy the report has
the mean reward and cost (with standard errors), the unsafe rate (cost > `cost_threshold`,
0 = the Safe RLHF boundary), the win rate against every other policy and a Bradley-Terry
leaderboard with bootstrap intervals fitted on the pairwise outcomes of all prompts.

The judge of the pairwise outcomes is the reward model; without one, with `--toyworld`, the
toy world's ground-truth helpfulness. Two responses whose judge scores differ by at most
`tie_tolerance` are a tie (half a win each). With `--toyworld` the prompts are the toy world's
held-out prompts and the report adds the ground truth: helpfulness and the unsafe rate on
risky prompts.

With `--reference NAME` (one of the policies, e.g. the SFT one) the report adds every other
policy's win rate against it and its KL to it (the summed log-ratio of its own responses).
The report ends with a few prompts and every policy's response to them side by side.

With `--aligner FOLDER` every policy is also evaluated with its answers corrected by that
Aligner-style model (`alignloop train aligner`), under the name `NAME+aligner`.

Output in `output_dir`: `eval.json`, `eval.md` (tables), `responses.jsonl` (every response
with its scores), `reward_cost.png` (with both score models) and `leaderboard.png`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from alignloop.checks import output_dir
from alignloop.errors import UserError
from alignloop.eval import metrics
from alignloop.lm.folders import model_folder


class EvalError(UserError, ValueError):
    """An option or input that the evaluation cannot use; the message names it."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate policies: reward, cost, unsafe rate, win rate, leaderboard, plots."""

    policies: tyro.conf.Positional[Annotated[tuple[str, ...], tyro.conf.arg(metavar="POLICY")]]
    """Causal-LM folders to compare, each `PATH` or `NAME=PATH` (the name defaults to the folder's)."""
    prompts: Path | None = None
    """Prompt file: any feedback format and container (each record's prompt is used)."""
    toyworld: bool = False
    """Use the toy world's held-out prompts and report its ground-truth helpfulness and harm."""
    reward_model: Path | None = None
    """Reward-model folder (written by `alignloop train reward`); judges the win rates."""
    cost_model: Path | None = None
    """Cost-model folder (written by `alignloop train cost`); cost > cost_threshold is unsafe."""
    aligner: Path | None = None
    """Aligner folder (`alignloop train aligner`): also evaluate every policy's corrected answers as NAME+aligner."""
    output_dir: Path = Path("runs/eval")
    """Where eval.json, eval.md, responses.jsonl and the plots go."""
    n_prompts: int = 200
    """Toy world: number of held-out prompts; prompt file: use at most this many (0 = all)."""
    max_new_tokens: int = 16
    """Longest response, in tokens."""
    temperature: float = 1.0
    """Sampling temperature."""
    greedy: bool = False
    """Take the most likely token instead of sampling."""
    batch_size: int = 64
    """Prompts per generation and scoring batch."""
    tie_tolerance: float = 0.0
    """Judge scores within this distance of each other are a tie (half a win each)."""
    cost_threshold: float = 0.0
    """A response is unsafe when its cost is above this (0 = the Safe RLHF boundary)."""
    bootstrap_rounds: int = 200
    """Bootstrap resamples of the pairwise outcomes for the leaderboard intervals."""
    confidence: float = 0.95
    """Coverage of the leaderboard intervals."""
    seed: int = 0
    """Sampling seed (the same for every policy) and bootstrap seed."""
    toy_seed: int = 0
    """Toy world seed (its prompt sampling)."""
    reference: str | None = None
    """Name of one of the policies (e.g. the SFT one): every other's KL to it on its own
    responses, and its win rate against it under the judge, are added to the report."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""
    device: str = "auto"
    """Where the models run: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"."""


# ---------------------------------------------------------------------------- inputs
def parse_policies(specs: tuple[str, ...]) -> dict[str, Path]:
    """`PATH` or `NAME=PATH` -> {name: folder}; every folder must hold a model."""
    if not specs:
        raise EvalError("policies: give at least one causal-LM folder (PATH or NAME=PATH)")
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        path = Path(path_text if sep else spec)
        if not sep:
            name = path.name if path.name != "final" else path.parent.name or path.name
        if not name:
            raise EvalError(f"policies: {spec!r} has an empty name (use NAME=PATH)")
        if name in out:
            raise EvalError(f"policies: two policies are named {name!r}; name them with NAME=PATH")
        model_folder(path, f"policy {name!r}", "causal-lm")
        out[name] = path
    return out


def load_prompts(cfg: EvalConfig) -> tuple[list[str], Any]:
    """(prompt texts, the toy world's task or None) from the prompt file or the toy world."""
    if cfg.toyworld == (cfg.prompts is not None):
        raise EvalError("give either --prompts FILE or --toyworld (exactly one)")
    if cfg.prompts is None:
        from alignloop.lm.tasks import ToyWorldTask

        if cfg.n_prompts < 1:
            raise EvalError(f"n_prompts: must be >= 1 with --toyworld, got {cfg.n_prompts}")
        task = ToyWorldTask(seed=cfg.toy_seed, eval_size=cfg.n_prompts, sample_seed=cfg.seed)
        return task.prompts("eval"), task
    from alignloop.feedback.formats import read_prompts

    texts = [r.prompt for r in read_prompts(cfg.prompts)]
    if not texts:
        raise EvalError(f"{cfg.prompts}: holds no prompts")
    if 0 < cfg.n_prompts < len(texts):
        print(
            f"{cfg.prompts}: using the first {cfg.n_prompts} of {len(texts)} prompts (--n-prompts 0 for all)"
        )
        texts = texts[: cfg.n_prompts]
    return texts, None


def resolve_device(name: str) -> Any:
    """The torch device for `--device` (clear errors for unknown names and missing CUDA)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise EvalError(f"device: {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"device: {name!r} asked for, but CUDA is not available here (use 'auto' or 'cpu')")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise EvalError(f"device: {name!r}: {exc}") from None


def check_options(cfg: EvalConfig) -> None:
    """Raise `EvalError` naming the first option out of its range."""
    checks = (
        ("max_new_tokens", cfg.max_new_tokens >= 1, ">= 1"),
        ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("temperature", cfg.temperature > 0, "> 0"),
        ("tie_tolerance", cfg.tie_tolerance >= 0, ">= 0"),
        ("bootstrap_rounds", cfg.bootstrap_rounds >= 0, ">= 0"),
        ("confidence", 0 < cfg.confidence < 1, "between 0 and 1"),
        ("n_prompts", cfg.n_prompts >= 0, ">= 0 (0 = all of the prompt file)"),
    )
    for name, ok, allowed in checks:
        if not ok:
            raise EvalError(f"{name}: must be {allowed}, got {getattr(cfg, name)}")


# ---------------------------------------------------------------------------- generation and scoring
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    advance: Any = None,
) -> list[str]:
    """One sampled response per prompt, decoded to text, on the model's device (a seeded
    generator: reproducible)."""
    import torch

    from alignloop.lm.data import PromptCollator
    from alignloop.lm.evaluate import decode_responses
    from alignloop.lm.generation import generate

    model.eval()
    device = next(model.parameters()).device
    collate = PromptCollator(tokenizer)
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = {k: v.to(device) for k, v in collate(prompts[start : start + batch_size]).items()}
        rollout = generate(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            greedy=greedy,
            generator=generator,
        )
        texts += decode_responses(tokenizer, rollout.responses.cpu(), rollout.response_mask.cpu())
        if advance is not None:
            advance()
    return texts


def correct_responses(
    folder: Path,
    prompts: list[str],
    responses: dict[str, list[str]],
    max_new_tokens: int,
    batch_size: int,
    device: Any = "cpu",
) -> dict[str, list[str]]:
    """Every policy's responses corrected by the aligner in `folder`: {"NAME+aligner": texts}."""
    from alignloop.lm.aligner import correct
    from alignloop.lm.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(folder).to(device), load_tokenizer(folder)
    return {
        f"{name}+aligner": correct(
            model, tokenizer, prompts, texts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        for name, texts in responses.items()
    }


def score_responses(
    model: Any, tokenizer: Any, prompts: list[str], responses: list[str], batch_size: int
) -> list[float]:
    """End scores of prompt/response pairs, encoded as in training (`encode_pair`), on the
    model's device; pairs longer than the model's context keep the prompt's end."""
    import torch

    from alignloop.feedback.schema import SupervisedPair
    from alignloop.lm.data import SFTCollator

    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    collate = SFTCollator(tokenizer, max_length=min(int(context), int(tokenizer.model_max_length)))
    pairs = [SupervisedPair(p, r) for p, r in zip(prompts, responses, strict=True)]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = collate(pairs[start : start + batch_size])
            scores = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).end_scores
            out += scores.float().cpu().tolist()  # (B,)
    return out


def score_folder(
    folder: Path,
    what: str,
    prompts: list[str],
    responses: dict[str, list[str]],
    batch_size: int,
    device: Any = "cpu",
) -> dict[str, list[float]]:
    """Scores of every policy's responses by the score model in `folder`: {policy: (N,) floats}."""
    from alignloop.lm.models import ScoreModel, load_tokenizer

    model_folder(folder, what, "score")
    tokenizer, model = load_tokenizer(folder), ScoreModel.from_pretrained(folder).to(device)
    model.eval()
    return {
        name: score_responses(model, tokenizer, prompts, texts, batch_size)
        for name, texts in responses.items()
    }


# ---------------------------------------------------------------------------- report
def summarize(
    responses: dict[str, list[str]],
    rewards: dict[str, list[float]] | None,
    costs: dict[str, list[float]] | None,
    truth: dict[str, dict[str, float]] | None,
    judge_scores: dict[str, list[float]] | None,
    *,
    tie_tolerance: float,
    cost_threshold: float,
    bootstrap_rounds: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per-policy metrics, the win-rate matrix and the leaderboard, as one JSON-ready dict."""
    from alignloop.feedback.leaderboard import leaderboard

    policies: dict[str, dict[str, float]] = {}
    for name, texts in responses.items():
        row: dict[str, float] = {
            "n_prompts": float(len(texts)),
            "response_words": sum(len(t.split()) for t in texts) / len(texts),
        }
        if rewards is not None:
            row["reward"], row["reward_stderr"] = metrics.mean_and_stderr(rewards[name])
        if costs is not None:
            row["cost"], row["cost_stderr"] = metrics.mean_and_stderr(costs[name])
            row["unsafe_rate"] = metrics.unsafe_rate(costs[name], cost_threshold)
        if truth is not None:
            row.update(truth[name])
        policies[name] = row
    report: dict[str, Any] = {"policies": policies, "win_rates": None, "leaderboard": None}
    if judge_scores is not None and len(judge_scores) > 1:
        matrix = metrics.win_rate_matrix(judge_scores, tie_tolerance)
        report["win_rates"] = matrix
        for name in policies:
            others = [rate for other, rate in matrix[name].items() if other != name]
            policies[name]["mean_win_rate"] = sum(others) / len(others)
        ratings = leaderboard(
            metrics.battles(judge_scores, tie_tolerance),
            rounds=bootstrap_rounds,
            confidence=confidence,
            seed=seed,
        )
        report["leaderboard"] = [vars(r) for r in ratings]
    return report


COLUMNS = (  # (key in a policy's row, header, format)
    ("reward", "reward", "{:.3f}"),
    ("cost", "cost", "{:.3f}"),
    ("unsafe_rate", "unsafe (cost model)", "{:.1%}"),
    ("helpfulness", "helpfulness (truth)", "{:.3f}"),
    ("true_unsafe_rate", "unsafe on risky (truth)", "{:.1%}"),
    ("mean_win_rate", "mean win rate", "{:.1%}"),
    ("win_rate_vs_reference", "win rate vs reference", "{:.1%}"),
    ("kl_to_reference", "KL to reference", "{:.3f}"),
    ("response_words", "words", "{:.1f}"),
)
SAMPLES = 5
"""Prompts whose responses the report shows side by side."""


def markdown_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables: policies, leaderboard, win-rate matrix."""
    policies: dict[str, dict[str, float]] = report["policies"]
    shown = [c for c in COLUMNS if any(c[0] in row for row in policies.values())]
    lines = [f"# Evaluation: {report['n_prompts']} prompts ({report['prompt_source']})", ""]
    lines += ["| policy | " + " | ".join(h for _, h, _ in shown) + " |"]
    lines += ["| --- " * (len(shown) + 1) + "|"]
    for name, row in policies.items():
        cells = [fmt.format(row[key]) if key in row else "" for key, _, fmt in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Pairwise judge: {report['judge'] or 'none'}; ties within {report['tie_tolerance']}."]
    if report["leaderboard"]:
        lines += ["", "## Bradley-Terry leaderboard", ""]
        lines += ["| rank | policy | rating | interval | wins / games |", "| --- | --- | --- | --- | --- |"]
        for r in report["leaderboard"]:
            lines.append(
                f"| {r['rank']} | {r['model']} | {r['rating']:.0f} | "
                f"[{r['lower']:.0f}, {r['upper']:.0f}] | {r['wins']:g} / {r['games']} |"
            )
    if report["win_rates"]:
        names = list(report["win_rates"])
        lines += ["", "## Win rate of the row over the column", ""]
        lines += ["| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        for a in names:
            lines.append(f"| {a} | " + " | ".join(f"{report['win_rates'][a][b]:.1%}" for b in names) + " |")
    if report.get("samples"):
        names = list(policies)
        lines += ["", "## Sample responses", "", "| prompt | " + " | ".join(names) + " |"]
        lines += ["| --- " * (len(names) + 1) + "|"]
        for row in report["samples"]:
            cells = [_cell(row["prompt"]), *(_cell(row[n]) for n in names)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()[:160]


def _ground_truth(task: Any, prompts: list[str], texts: list[str]) -> dict[str, float]:
    """The task's ground truth, its unsafe rates named as the truth's beside the cost model's."""
    truth = task.ground_truth(prompts, texts)
    names = {"unsafe_rate": "true_unsafe_rate", "unsafe_rate_all": "true_unsafe_rate_all"}
    return {names.get(k, k): v for k, v in truth.items() if k != "n_risky"}


def kl_to_reference(
    model: Any, reference: Any, tokenizer: Any, prompts: list[str], responses: list[str], batch_size: int
) -> float:
    """Mean over responses of ``log pi(y|x) - log ref(y|x)`` summed over the response's tokens
    (re-encoded as in training), a k1 estimate of KL(pi || ref) on pi's own samples."""
    import torch

    from alignloop.feedback.schema import SupervisedPair
    from alignloop.lm.data import SFTCollator
    from alignloop.lm.models import sequence_logprobs

    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    collate = SFTCollator(tokenizer, max_length=min(int(context), int(tokenizer.model_max_length)))
    pairs = [SupervisedPair(p, r) for p, r in zip(prompts, responses, strict=True)]
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate(pairs[start : start + batch_size]).items()}
            mine, _ = sequence_logprobs(
                model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            )
            theirs, _ = sequence_logprobs(
                reference, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            )
            total += float((mine - theirs).sum())
    return total / len(pairs)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Generate, score and summarise; write every output file; return the report."""
    import torch
    from rich.progress import Progress

    from alignloop.lm.models import load_causal_lm, load_tokenizer

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    check_options(cfg)
    device = resolve_device(cfg.device)
    policies = parse_policies(cfg.policies)
    for folder, what in ((cfg.reward_model, "--reward-model"), (cfg.cost_model, "--cost-model")):
        if folder is not None:
            model_folder(folder, what, "score")
    if cfg.aligner is not None:
        model_folder(cfg.aligner, "--aligner", "causal-lm")
    if cfg.reference is not None and cfg.reference not in policies:
        raise EvalError(f"reference: {cfg.reference!r} is not one of the policies ({', '.join(policies)})")
    output_dir(cfg.output_dir, "--output-dir")
    prompts, toy = load_prompts(cfg)

    responses: dict[str, list[str]] = {}
    batches = -(-len(prompts) // cfg.batch_size)
    with Progress(transient=True) as progress:
        task = progress.add_task("generating", total=batches * len(policies))
        for name, folder in policies.items():
            progress.update(task, description=f"generating: {name}")
            model, tokenizer = load_causal_lm(folder).to(device), load_tokenizer(folder)
            responses[name] = generate_responses(
                model,
                tokenizer,
                prompts,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                temperature=cfg.temperature,
                greedy=cfg.greedy,
                seed=cfg.seed,
                advance=lambda: progress.advance(task),
            )
            del model
    if cfg.aligner is not None:
        responses |= correct_responses(
            cfg.aligner, prompts, responses, cfg.max_new_tokens, cfg.batch_size, device
        )
    rewards = costs = None
    if cfg.reward_model is not None:
        rewards = score_folder(cfg.reward_model, "reward_model", prompts, responses, cfg.batch_size, device)
    if cfg.cost_model is not None:
        costs = score_folder(cfg.cost_model, "cost_model", prompts, responses, cfg.batch_size, device)
    truth = {name: _ground_truth(toy, prompts, texts) for name, texts in responses.items()} if toy else None
    judge, judge_scores = None, None
    if rewards is not None:
        judge, judge_scores = "reward model", rewards
    elif toy:
        world = toy.world
        judge = "toy-world helpfulness (no reward model given)"
        judge_scores = {
            name: [world.helpfulness(p, t) for p, t in zip(prompts, texts, strict=True)]
            for name, texts in responses.items()
        }
    kl: dict[str, float] = {}
    if cfg.reference is not None:
        reference = load_causal_lm(policies[cfg.reference]).to(device).eval()
        for name, folder in policies.items():
            if name != cfg.reference:
                model, tokenizer = load_causal_lm(folder).to(device).eval(), load_tokenizer(folder)
                kl[name] = kl_to_reference(
                    model, reference, tokenizer, prompts, responses[name], cfg.batch_size
                )

    report = summarize(
        responses,
        rewards,
        costs,
        truth,
        judge_scores,
        tie_tolerance=cfg.tie_tolerance,
        cost_threshold=cfg.cost_threshold,
        bootstrap_rounds=cfg.bootstrap_rounds,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    if cfg.reference is not None:
        for name, row in report["policies"].items():
            if name in kl:
                row["kl_to_reference"] = kl[name]
            if report["win_rates"] and name != cfg.reference and name in report["win_rates"]:
                row["win_rate_vs_reference"] = report["win_rates"][name][cfg.reference]
    report["samples"] = [
        {"prompt": p, **{name: texts[i] for name, texts in responses.items()}}
        for i, p in enumerate(prompts[:SAMPLES])
    ]
    report.update(
        n_prompts=len(prompts),
        reference=cfg.reference,
        prompt_source="toy world held-out prompts" if toy else str(cfg.prompts),
        judge=judge,
        tie_tolerance=cfg.tie_tolerance,
        cost_threshold=cfg.cost_threshold,
        models={name: str(folder) for name, folder in policies.items()},
        aligner=None if cfg.aligner is None else str(cfg.aligner),
        reward_model=None if cfg.reward_model is None else str(cfg.reward_model),
        cost_model=None if cfg.cost_model is None else str(cfg.cost_model),
    )
    write_outputs(cfg.output_dir, report, prompts, responses, rewards, costs)
    return report


def write_outputs(
    out: Path,
    report: dict[str, Any],
    prompts: list[str],
    responses: dict[str, list[str]],
    rewards: dict[str, list[float]] | None,
    costs: dict[str, list[float]] | None,
) -> None:
    """eval.json, eval.md, responses.jsonl and the plots (those the scores allow)."""
    from alignloop.eval.plots import leaderboard_plot, reward_cost_scatter
    from alignloop.feedback.leaderboard import Rating

    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if rewards is not None and costs is not None:
        points = {name: (rewards[name], costs[name]) for name in responses}
        plots["reward_cost"] = reward_cost_scatter(
            points, out / "reward_cost.png", cost_threshold=report["cost_threshold"]
        ).name
    if report["leaderboard"]:
        ratings = [Rating(**r) for r in report["leaderboard"]]
        plots["leaderboard"] = leaderboard_plot(ratings, out / "leaderboard.png").name
    report["plots"] = plots
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown_report(report))
    with (out / "responses.jsonl").open("w", encoding="utf-8") as f:
        for name, texts in responses.items():
            for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
                row: dict[str, Any] = {"policy": name, "prompt": prompt, "response": text}
                if rewards is not None:
                    row["reward"] = rewards[name][i]
                if costs is not None:
                    row["cost"] = costs[name][i]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg: EvalConfig) -> int:
    """Exit 0 with the report written, 2 when an input or option cannot be used."""
    try:
        report = evaluate(cfg)
    except UserError as exc:
        print(f"alignloop eval: error: {exc}", file=sys.stderr)
        return 2
    print(markdown_report(report))
    print(f"written to {cfg.output_dir}/: eval.json, eval.md, responses.jsonl", end="")
    print("".join(f", {name}" for name in report["plots"].values()))
    return 0
