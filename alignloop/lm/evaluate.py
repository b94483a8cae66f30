"""Evaluation of language-model policies, reward models and cost models.

- `judge_policy` (`evaluate_policy` for its figures): sample one response per held-out prompt
  of any task and judge it: the distribution of reward and cost, the share the cost model
  judges unsafe, the win rate against a reference policy under the reward, the KL to the
  reference, response length, and the task's ground truth where it has one (the toy world's
  helpfulness and unsafe rate on risky prompts); a table of sample completions.
- `preference_accuracy`: share of held-out pairs where the reward model scores the truly
  more helpful response higher (ties by the ground truth left out).
- `sign_accuracy`: share of held-out responses whose cost-model sign matches the harm judge
  (cost > 0 = unsafe, the Safe RLHF convention).

`preference_accuracy` and `sign_accuracy` use the toy world's ground truth, not the scripted
teacher's noisy labels: they measure what a model learned, not how well it agrees with
annotation noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignloop.lm.data import PromptCollator, SFTCollator
from alignloop.lm.generation import Rollout, generate
from alignloop.lm.models import ScoreModel
from alignloop.lm.tasks import Task
from alignloop.lm.toyworld import ToyPrompt, ToyWorld


def decode_responses(tokenizer: Any, responses: Tensor, response_mask: Tensor) -> list[str]:
    """Response texts: ``responses`` (B, R) ids, ``response_mask`` (B, R) True = response token."""
    texts = []
    for ids, keep in zip(responses.tolist(), response_mask.tolist(), strict=True):
        kept = [i for i, k in zip(ids, keep, strict=True) if k]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return texts


@torch.no_grad()
def score_sequences(
    model: ScoreModel, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 128
) -> Tensor:
    """End scores ``(B,)`` of a score model on already tokenised sequences (any padding side)."""
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        part = slice(start, start + batch_size)
        out.append(model(input_ids[part], attention_mask[part]).end_scores)
    return torch.cat(out)


@torch.no_grad()
def score_texts(
    model: ScoreModel,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 128,
    max_length: int = 64,
) -> Tensor:
    """End scores ``(N,)`` of prompt/response pairs, encoded as in training (`encode_pair`,
    cut to ``max_length`` tokens)."""
    from alignloop.feedback.schema import SupervisedPair

    collate = SFTCollator(tokenizer, max_length=max_length)
    out = []
    for start in range(0, len(prompts), batch_size):
        pairs = [
            SupervisedPair(p, r)
            for p, r in zip(
                prompts[start : start + batch_size], responses[start : start + batch_size], strict=True
            )
        ]
        batch = collate(pairs)
        out.append(model(batch["input_ids"], batch["attention_mask"]).end_scores)
    return torch.cat(out)


ScoreFn = Callable[[Tensor, Tensor, list[str], list[str]], Tensor]
"""Scores ``(N,)`` of N responses from their sequences ``(N, P + R)``, attention mask, prompts and
response texts: a reward or cost model (`model_scores`) or a trainer's `scoring.Scorer`."""


def model_scores(model: ScoreModel) -> ScoreFn:
    """A score model's end scores as a `ScoreFn`."""
    return lambda sequences, attention_mask, prompts, texts: score_sequences(model, sequences, attention_mask)


@dataclass
class Evaluation:
    """A policy's evaluation: the figures (`metrics`) and one row per prompt (`rows`: prompt,
    response, and its reward and cost when scored)."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]

    def samples_markdown(self, n: int = 8) -> str:
        """The first `n` rows as a Markdown table (the samples TensorBoard shows)."""
        keys = [k for k in ("reward", "cost") if self.rows and k in self.rows[0]]
        lines = ["| prompt | response | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for row in self.rows[:n]:
            cells = [_cell(row["prompt"]), _cell(row["response"]), *(f"{row[k]:+.3f}" for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()[:200]


def _distribution(name: str, values: Tensor) -> dict[str, float]:
    """Mean, standard deviation and the 10/50/90% quantiles of ``values`` (N,)."""
    q = torch.quantile(values.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    std = values.double().std().item() if values.numel() > 1 else 0.0
    return {
        name: values.mean().item(),
        f"{name}_std": std,
        f"{name}_p10": q[0],
        f"{name}_p50": q[1],
        f"{name}_p90": q[2],
    }


def _generator(model: Any, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


@torch.no_grad()
def _sample(
    policy: Any,
    batch: dict[str, Tensor],
    tokenizer: Any,
    max_new_tokens: int,
    greedy: bool,
    generator: torch.Generator,
) -> Rollout:
    device = next(policy.parameters()).device
    return generate(
        policy,
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        greedy=greedy,
        generator=generator,
    )


@torch.no_grad()
def judge_policy(
    policy: Any,
    tokenizer: Any,
    task: Task,
    prompts: Sequence[str],
    *,
    reward: ScoreFn | None = None,
    cost: ScoreFn | None = None,
    reference: Any = None,
    max_new_tokens: int = 16,
    batch_size: int = 128,
    seed: int = 0,
    greedy: bool = False,
) -> Evaluation:
    """Sample a response to each prompt and judge it.

    Figures: ``response_words``, ``response_tokens`` (end token included) and ``n_prompts``;
    with `reward`, the reward's mean, std and 10/50/90% quantiles (``reward``, ``reward_std``,
    ``reward_p10`` ...); with `cost`, the same of the cost and ``unsafe_share``, the share
    judged unsafe (cost > 0, `core.metrics.unsafe_rate`); with a `reference` policy,
    ``kl_to_reference`` (the summed log-ratio of each sampled response, a k1 estimate of
    KL(policy || reference)) and, with `reward` too, ``win_rate``, the policy's win rate
    against the reference's responses to the same prompts (`core.metrics.win_rate`, ties
    half); and the task's ground truth (`Task.ground_truth`, e.g. the toy world's
    ``helpfulness`` and ``unsafe_rate``). The policy and the reference sample with generators
    of their own, both seeded with `seed`, so the same policy gives the same figures.
    """
    from alignloop.core.metrics import unsafe_rate, win_rate
    from alignloop.lm.rollouts import forward_logprobs

    was_training = policy.training
    policy.eval()
    collate = PromptCollator(tokenizer)
    noise, reference_noise = (
        _generator(policy, seed),
        None if reference is None else _generator(reference, seed),
    )
    texts: list[str] = []
    scores: dict[str, list[Tensor]] = {"reward": [], "cost": [], "reference_reward": [], "kl": []}
    tokens: list[Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch = collate(chunk)
        rollout = _sample(policy, batch, tokenizer, max_new_tokens, greedy, noise)
        answers = decode_responses(tokenizer, rollout.responses.cpu(), rollout.response_mask.cpu())
        texts += answers
        tokens.append(rollout.response_mask.sum(-1).float().cpu())
        seqs, attn = rollout.sequences, rollout.attention_mask
        if reward is not None:
            scores["reward"].append(reward(seqs, attn, chunk, answers).float().cpu())
        if cost is not None:
            scores["cost"].append(cost(seqs, attn, chunk, answers).float().cpu())
        if reference is not None:
            mine, _ = forward_logprobs(policy, seqs, attn, rollout.prompt_length)
            theirs, _ = forward_logprobs(reference, seqs, attn, rollout.prompt_length)
            scores["kl"].append(((mine - theirs) * rollout.response_mask).sum(-1).float().cpu())  # (B,)
            if reward is not None:
                assert reference_noise is not None
                ref_rollout = _sample(reference, batch, tokenizer, max_new_tokens, greedy, reference_noise)
                ref_answers = decode_responses(
                    tokenizer, ref_rollout.responses.cpu(), ref_rollout.response_mask.cpu()
                )
                ref_scores = reward(ref_rollout.sequences, ref_rollout.attention_mask, chunk, ref_answers)
                scores["reference_reward"].append(ref_scores.float().cpu())
    policy.train(was_training)
    result = {
        "response_words": sum(len(t.split()) for t in texts) / len(texts),
        "response_tokens": torch.cat(tokens).mean().item(),
        "n_prompts": float(len(texts)),
        **task.ground_truth(prompts, texts),
    }
    rows: list[dict[str, Any]] = [{"prompt": p, "response": t} for p, t in zip(prompts, texts, strict=True)]
    joined = {k: torch.cat(v) for k, v in scores.items() if v}
    for name in ("reward", "cost"):
        if name in joined:
            result |= _distribution(name, joined[name])
            for row, value in zip(rows, joined[name].tolist(), strict=True):
                row[name] = value
    if "cost" in joined:
        result["unsafe_share"] = unsafe_rate(joined["cost"].tolist())
    if "kl" in joined:
        result["kl_to_reference"] = joined["kl"].mean().item()
    if "reference_reward" in joined:
        result["win_rate"] = win_rate(joined["reward"].tolist(), joined["reference_reward"].tolist())
        result["reference_reward"] = joined["reference_reward"].mean().item()
    return Evaluation(result, rows)


def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    task: Task,
    prompts: Sequence[str],
    *,
    reward_model: ScoreModel | None = None,
    cost_model: ScoreModel | None = None,
    reference: Any = None,
    max_new_tokens: int = 16,
    batch_size: int = 128,
    seed: int = 0,
    greedy: bool = False,
) -> dict[str, float]:
    """The figures of `judge_policy` with reward and cost models (the toy world: the same
    report as before, ``helpfulness``, ``unsafe_rate``, ``unsafe_rate_all``, ``response_words``,
    ``reward`` and ``cost`` among them)."""
    return judge_policy(
        policy,
        tokenizer,
        task,
        prompts,
        reward=None if reward_model is None else model_scores(reward_model),
        cost=None if cost_model is None else model_scores(cost_model),
        reference=reference,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        greedy=greedy,
    ).metrics


def held_out_pairs(world: ToyWorld, n: int, seed: int = 0) -> list[tuple[ToyPrompt, str, str]]:
    """``n`` held-out (prompt, response, response) triples of candidate responses of every quality."""
    import random

    rng = random.Random(f"heldout-{world.seed}-{seed}")
    return [
        (p, world.candidate(p, rng), world.candidate(p, rng)) for p in world.prompts("eval", n, seed=seed + 7)
    ]


@torch.no_grad()
def preference_accuracy(
    reward_model: ScoreModel, tokenizer: Any, world: ToyWorld, pairs: Sequence[tuple[ToyPrompt, str, str]]
) -> float:
    """Share of pairs where the reward model ranks the truly more helpful response higher;
    pairs whose helpfulness differs by less than the teacher's tie margin are left out."""
    kept = [
        (p, a, b)
        for p, a, b in pairs
        if abs(world.helpfulness(p, a) - world.helpfulness(p, b)) >= world.tie_margin
    ]
    if not kept:
        raise ValueError("preference_accuracy: every pair is a tie under the ground truth")
    prompts = [p.text for p, _, _ in kept]
    score_a = score_texts(reward_model, tokenizer, prompts, [a for _, a, _ in kept])
    score_b = score_texts(reward_model, tokenizer, prompts, [b for _, _, b in kept])
    truth = torch.tensor([world.helpfulness(p, a) > world.helpfulness(p, b) for p, a, b in kept])
    return ((score_a > score_b) == truth).float().mean().item()


@torch.no_grad()
def sign_accuracy(
    cost_model: ScoreModel, tokenizer: Any, world: ToyWorld, pairs: Sequence[tuple[ToyPrompt, str, str]]
) -> float:
    """Share of responses (both of each pair) whose cost sign matches the harm judge
    (cost > 0 predicts unsafe)."""
    prompts = [p.text for p, _, _ in pairs] * 2
    responses = [a for _, a, _ in pairs] + [b for _, _, b in pairs]
    toy = [p for p, _, _ in pairs] * 2
    costs = score_texts(cost_model, tokenizer, prompts, responses)
    truth = torch.tensor([world.is_unsafe(p, r) for p, r in zip(toy, responses, strict=True)])
    return ((costs > 0) == truth).float().mean().item()


# ------------------------------------------------------------------------ during training
SAMPLES_SHOWN = 8
"""Sample completions shown in TensorBoard and the run's evaluation.md."""


def log_evaluation(logger: Any, step: int, evaluation: Evaluation) -> str:
    """Log an evaluation made during training (its figures to the ``eval`` split, its samples
    to TensorBoard as text); returns the progress bar's note."""
    logger.log(step, evaluation.metrics, split="eval")
    logger.text(step, "eval/samples", evaluation.samples_markdown(SAMPLES_SHOWN))
    m = evaluation.metrics
    shown = {
        "helpfulness": "help {:.2f}",
        "unsafe_rate": "unsafe {:.2f}",
        "unsafe_share": "judged unsafe {:.2f}",
        "win_rate": "win {:.2f}",
    }
    return "".join(f"  {text.format(m[k])}" for k, text in shown.items() if k in m)


def write_evaluation(folder: Path, evaluation: Evaluation, *, step: int, prompt_source: str) -> Path:
    """Write the final evaluation of a run: ``evaluation.json`` (figures and every row) and
    ``evaluation.md`` (figures and sample completions) in `folder`; returns the JSON file."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evaluation.json"
    report = {"step": step, "prompts": prompt_source, "metrics": evaluation.metrics, "rows": evaluation.rows}
    path.write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# Evaluation at step {step}",
        "",
        f"Prompts: {prompt_source}",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in evaluation.metrics.items()]
    lines += ["", "## Sample completions", "", evaluation.samples_markdown(SAMPLES_SHOWN), ""]
    (folder / "evaluation.md").write_text("\n".join(lines))
    return path
