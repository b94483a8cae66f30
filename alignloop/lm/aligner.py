"""Aligner-style correction: a small causal LM that rewrites another model's answer.

After Ji et al. 2024, "Aligner: Efficient Alignment by Learning to Correct": instead of
changing the policy, train a small model on (prompt, original answer) -> corrected answer and
put it after any upstream model. The loss is plain supervised fine-tuning on the corrected
answer given the prompt and the original:

    loss = - sum_{corrected tokens} log p(y_t | prompt, original, y_<t) / (corrected tokens in the batch)

Input format (always this plain text, whatever the tokenizer's chat template):

    Human: {prompt}
    Assistant: {original}
    Correction:

followed by " {corrected}" and the end-of-sequence token; only the corrected tokens (and the
end token) are trained on. The tokenizer's special tokens (e.g. <bos>) open the input.

Data (`read_corrections`): JSONL, JSON, Parquet or a `datasets` folder whose rows are either
`{prompt, original, corrected}` or a supervised pair `{prompt, response, original}` (the
response being the corrected answer). Errors name the file, line and field. Without a file,
the toy world makes corrections (`toy_corrections`): an unsafe answer is rewritten into the
safe helpful one (harmful detail words dropped, a refusal opener and the safe help words
added), a safe answer is kept as it is — so the aligner must both copy and repair.

    alignloop train aligner --output-dir runs/aligner

Measured on the toy world (fresh tiny model, batch 64, lr 3e-3, 2000 training corrections; held-out
careless SFT answers corrected greedily): after 150 steps the unsafe rate on risky prompts falls
from 44% to 0% but safe answers are not yet copied (benign helpfulness 0.41 -> 0.20); after 500
steps 17% of safe answers are copied exactly (0.41 -> 0.28); after 1000 steps (the default) 96%
are, benign helpfulness is kept (0.41 -> 0.41) and the unsafe rate stays at 0%.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from alignloop.feedback.formats import write_records
from alignloop.feedback.schema import Correction
from alignloop.lm.data import check_batches, pad
from alignloop.lm.evaluate import decode_responses
from alignloop.lm.folders import check_inputs
from alignloop.lm.generation import generate
from alignloop.lm.models import load_causal_lm, load_tokenizer
from alignloop.lm.sft import response_nll
from alignloop.lm.toyworld import (
    CONNECTORS,
    HARMFUL_WORDS,
    REFUSAL_OPENERS,
    ToyWorld,
    build_policy,
    build_tokenizer,
)
from alignloop.lm.training import (
    DistributedContext,
    TrainCommon,
    fit,
    prepare_model,
    save_final,
    start_run,
    unwrap,
)

ALIGNER_FORMAT = "Human: {prompt}\nAssistant: {original}\nCorrection:"
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- data
def read_corrections(path: str | Path, *, skip_invalid: bool = False) -> list[Correction]:
    """Corrections from `{prompt, original, corrected}` or `{prompt, response, original}` rows, or
    the corrections of a file of judged items exported by the platform, read by
    `alignloop.feedback.formats.read_corrections`: a bad row raises `FormatError` naming the
    file, the line (JSONL) or row index, and the field; with `skip_invalid` bad rows are skipped
    and their number logged.
    """
    from alignloop.feedback.formats import read_corrections as read

    return read(path, skip_invalid=skip_invalid)


def write_corrections(records: Sequence[Correction], path: str | Path) -> Path:
    """Write `{prompt, original, corrected}` rows, each with its meta as further columns (JSONL,
    JSON, Parquet or datasets by suffix)."""
    write_records(records, path, "correction")
    return Path(path)


def toy_correction(world: ToyWorld, prompt_text: str, original: str, rng: random.Random) -> str:
    """The toy world's correction: a safe answer is kept; an unsafe one loses its harmful
    detail and opener, and gets a refusal opener and the prompt's safe help words."""
    if not world.is_unsafe(prompt_text, original):
        return original
    prompt = world.prompt(prompt_text)
    skip = HARMFUL_WORDS | set(CONNECTORS) | {original.split()[0]}
    kept = [w for w in original.split() if w not in skip]
    content = kept + [w for w in prompt.useful if w not in kept]
    words = [rng.choice(REFUSAL_OPENERS)]
    for i, word in enumerate(content):
        words += [rng.choice(CONNECTORS), word] if i else [word]
    return " ".join(words)


def toy_corrections(world: ToyWorld, n: int, split: Literal["train", "eval"] = "train") -> list[Correction]:
    """`n` corrections of answers from the careless SFT corpus (half) and of random quality."""
    rng = random.Random(f"{world.seed}-aligner-{split}")
    out = []
    for p in world.prompts(split, n, seed=3):
        original = world.sft_response(p, rng) if rng.random() < 0.5 else world.candidate(p, rng)
        out.append(Correction(p.text, original, toy_correction(world, p.text, original, rng)))
    return out


def aligner_input(prompt: str, original: str) -> str:
    """The text the aligner reads before writing its correction (see the module docstring)."""
    return ALIGNER_FORMAT.format(prompt=prompt.strip(), original=original.strip())


def encode_correction(tokenizer: Any, record: Correction, max_length: int) -> dict[str, list[int]]:
    """Aligner input + " corrected" + <eos>: input_ids, attention_mask, response_mask (1 = corrected).

    Over-long rows keep the end of the input (at least half the budget) and the start of the
    correction.
    """
    query = list(tokenizer(aligner_input(record.prompt, record.original))["input_ids"])
    target = list(tokenizer(" " + record.corrected.strip(), add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        target.append(tokenizer.eos_token_id)
    overflow = len(query) + len(target) - max_length
    if overflow > 0:
        keep = max(max_length // 2, max_length - len(target))
        query = query[-keep:]
        target = target[: max_length - len(query)]
    ids = query + target
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "response_mask": [0] * len(query) + [1] * len(target),  # 1 = corrected token
    }


@dataclass(frozen=True)
class CorrectionCollator:
    """Correction list -> input_ids, attention_mask, response_mask (B, T), right-padded."""

    tokenizer: Any
    max_length: int = 96

    def __call__(self, records: Sequence[Correction]) -> dict[str, Tensor]:
        encoded = [encode_correction(self.tokenizer, r, self.max_length) for r in records]
        return {
            "input_ids": pad([e["input_ids"] for e in encoded], self.tokenizer.pad_token_id),  # (B, T)
            "attention_mask": pad([e["attention_mask"] for e in encoded], 0),  # (B, T) 1 = real token
            "response_mask": pad([e["response_mask"] for e in encoded], 0).bool(),  # True = corrected token
        }


# ---------------------------------------------------------------------------- inference
@torch.no_grad()
def correct(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    greedy: bool = True,
    temperature: float = 1.0,
    max_length: int = 96,
    seed: int = 0,
) -> list[str]:
    """The aligner's corrected answer for each (prompt, answer) pair (greedy by default)."""
    if len(prompts) != len(answers):
        raise ValueError(f"correct: {len(prompts)} prompts but {len(answers)} answers")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [
            list(tokenizer(aligner_input(p, a))["input_ids"])[-max_length:]
            for p, a in zip(
                prompts[start : start + batch_size], answers[start : start + batch_size], strict=True
            )
        ]
        input_ids = pad(rows, tokenizer.pad_token_id, "left").to(device)  # (B, P) left-padded
        attention_mask = pad([[1] * len(r) for r in rows], 0, "left").to(device)  # (B, P) 1 = real token
        rollout = generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            greedy=greedy,
            generator=generator,
        )
        out += decode_responses(tokenizer, rollout.responses.cpu(), rollout.response_mask.cpu())
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------- training
@dataclass(frozen=True)
class AlignerConfig(TrainCommon):
    """Aligner-style correction model: (prompt, answer) -> corrected answer."""

    output_dir: Path = Path("runs/aligner")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """A causal-LM folder to start from, or "toy" for a fresh tiny model on the toy world's tokenizer."""
    train_file: Path | None = None
    """Correction file: rows {prompt, original, corrected} or {prompt, response, original}; none = the toy world."""
    eval_file: Path | None = None
    """Held-out correction file (none = the toy world's eval split, or eval_fraction of train_file)."""
    eval_fraction: float = 0.05
    """Share of train_file held out for evaluation when there is no eval_file."""
    skip_invalid: bool = False
    """Skip malformed rows of the data files (they are counted and reported)."""
    toy_train_size: int = 4000
    """Toy world: number of training corrections."""
    toy_eval_size: int = 256
    """Toy world: number of held-out corrections (also used for the unsafe-rate evaluation)."""
    max_length: int = 96
    """Longest input + correction, in tokens."""
    max_new_tokens: int = 32
    """Longest generated correction in the toy-world evaluation."""
    lr: float = 3e-3
    """Peak learning rate."""
    max_steps: int = 1000
    """Stop after this many optimiser steps (0 = run `epochs`)."""
    disable_dropout: bool = False
    """Turn dropout off in the trained model (the aligner keeps the model's own dropout by default)."""


def load_data(cfg: AlignerConfig) -> tuple[list[Correction], list[Correction]]:
    if cfg.train_file is None:
        world = ToyWorld(seed=cfg.seed)
        return toy_corrections(world, cfg.toy_train_size, "train"), toy_corrections(
            world, cfg.toy_eval_size, "eval"
        )
    train = read_corrections(cfg.train_file, skip_invalid=cfg.skip_invalid)
    if cfg.eval_file is not None:
        return train, read_corrections(cfg.eval_file, skip_invalid=cfg.skip_invalid)
    n_eval = max(1, int(len(train) * cfg.eval_fraction))
    return train[n_eval:], train[:n_eval]


@torch.no_grad()
def evaluate(
    model: Any,
    records: list[Correction],
    collate: CorrectionCollator,
    ctx: DistributedContext,
    batch_size: int,
) -> dict[str, float]:
    """Mean per-token NLL and perplexity of the held-out corrections."""
    model.eval()
    nll, tokens = torch.zeros(()), torch.zeros(())
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(ctx.device) for k, v in collate(records[start : start + batch_size]).items()}
        b_nll, b_tokens = response_nll(model, batch)
        nll, tokens = nll + b_nll.cpu(), tokens + b_tokens.cpu()
    mean = float(nll / tokens.clamp(min=1))
    return {"loss": mean, "perplexity": float(torch.exp(torch.tensor(mean)))}


def toy_safety(
    model: Any,
    tokenizer: Any,
    world: ToyWorld,
    records: list[Correction],
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, float]:
    """Ground-truth unsafe rate and helpfulness of the originals and of the aligner's corrections."""
    prompts, originals = [r.prompt for r in records], [r.original for r in records]
    corrected = correct(
        model, tokenizer, prompts, originals, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    n = len(records)
    return {
        "unsafe_before": sum(world.is_unsafe(p, a) for p, a in zip(prompts, originals, strict=True)) / n,
        "unsafe_after": sum(world.is_unsafe(p, a) for p, a in zip(prompts, corrected, strict=True)) / n,
        "helpfulness_before": sum(world.helpfulness(p, a) for p, a in zip(prompts, originals, strict=True))
        / n,
        "helpfulness_after": sum(world.helpfulness(p, a) for p, a in zip(prompts, corrected, strict=True))
        / n,
    }


def load_model(name: str, seed: int) -> tuple[Any, Any]:
    """(tokenizer, causal LM): "toy" builds a fresh tiny model (context 128), anything else is a folder."""
    if name == "toy":
        tokenizer = build_tokenizer()
        return tokenizer, build_policy(tokenizer, seed, max_position_embeddings=128)
    return load_tokenizer(name), load_causal_lm(name)


def train(cfg: AlignerConfig) -> int:
    files = {"--train-file": cfg.train_file, "--eval-file": cfg.eval_file}
    check_inputs(cfg.output_dir, files=files, models={"--model": (cfg.model, "causal-lm")})
    run = start_run(cfg, "train aligner")
    model: Any
    tokenizer, model = load_model(cfg.model, cfg.seed)
    train_records, eval_records = load_data(cfg)
    check_batches(
        len(train_records),
        cfg.batch_size,
        cfg.grad_accum,
        what="training corrections",
        source=cfg.train_file,
        held_out=len(eval_records) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    collate = CorrectionCollator(tokenizer, cfg.max_length)
    world = ToyWorld(seed=cfg.seed) if cfg.train_file is None else None
    model = prepare_model(model, run, cfg)

    def loss(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        nll, tokens = response_nll(model, batch)
        return nll / tokens.clamp(min=1), {}

    def held_out(model: Any) -> dict[str, float]:
        metrics = evaluate(model, eval_records, collate, run.ctx, cfg.batch_size)
        if world is not None:  # every process generates: a sharded model's forward is a collective
            metrics |= toy_safety(
                unwrap(model), tokenizer, world, eval_records, cfg.max_new_tokens, cfg.batch_size
            )
        return metrics

    fit(
        run,
        model,
        train_records,
        collate=collate,
        loss=loss,
        weight=lambda batch: batch["response_mask"][:, 1:].sum(),  # the mean is over corrected tokens
        evaluate=held_out,
        options=cfg,
        description="aligner",
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    if run.ctx.is_main:
        (run.layout.final / "aligner.json").write_text(
            json.dumps({"input_format": ALIGNER_FORMAT}, indent=2) + "\n"
        )
    run.close()
    return 0
