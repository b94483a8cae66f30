"""From feedback records to padded tensors.

Prompt format: when the tokenizer has a chat template, a prompt is rendered as one user turn
with the generation prompt appended (`apply_chat_template(..., add_generation_prompt=True)`); a
prompt that is a dialogue (chat messages read from a file, held as one text by
`feedback.formats.conversation_text`, or an HH-RLHF prompt) goes through the template as its
messages. Otherwise the default format is

    Human: {prompt}
    Assistant:

(a dialogue is kept as it is), and the response follows after a space. Sequences are tokenised as prompt (with the
tokenizer's special tokens, e.g. <bos>) + response (without) + <eos>, so the boundary between
prompt and response is exact: `response_mask` is True on the response tokens and the <eos>.

Collators pad training batches on the right; `PromptCollator` pads on the left for generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from alignloop.errors import UserError
from alignloop.feedback.formats import conversation_turns
from alignloop.feedback.pairs import (
    RankedCandidates,
    SafetyOrder,
    preference,
    preference_rankings,
    ranked_pair,
    safety_order,
)
from alignloop.feedback.schema import Comparison, SupervisedPair, side_letter

DEFAULT_PROMPT_FORMAT = "Human: {prompt}\nAssistant:"


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the model sees before its response (chat template, else the default format)."""
    turns = conversation_turns(prompt)
    if getattr(tokenizer, "chat_template", None):
        messages = turns if turns is not None else [{"role": "user", "content": prompt}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return prompt.lstrip("\n") if turns is not None else DEFAULT_PROMPT_FORMAT.format(prompt=prompt)


def encode_prompt(tokenizer: Any, prompt: str, max_length: int | None = None) -> list[int]:
    """Token ids of the formatted prompt (with the tokenizer's special tokens); long prompts
    keep their end."""
    text = format_prompt(tokenizer, prompt)
    add_special = not getattr(tokenizer, "chat_template", None)  # a template writes its own
    ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    return ids[-max_length:] if max_length else ids


def encode_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Prompt + response + <eos> as lists: input_ids, attention_mask, response_mask.

    Over-long pairs are cut: the prompt keeps its last tokens (at most half the budget when
    the response needs the rest), the response its first tokens.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = list(tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        keep_prompt = max(max_length // 2, max_length - len(response_ids))
        prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt > 0 else []
        response_ids = response_ids[: max_length - len(prompt_ids)]
    ids = prompt_ids + response_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),  # 1 = response token
    }


def pad(rows: Sequence[Sequence[int]], value: int, side: Literal["left", "right"] = "right") -> Tensor:
    """Pad lists of ints to one (B, T) tensor."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            if side == "right":
                out[i, : len(row)] = torch.tensor(row)
            else:
                out[i, T - len(row) :] = torch.tensor(row)
    return out


def _pad_encoded(
    encoded: Sequence[dict[str, list[int]]], pad_id: int, side: Literal["left", "right"] = "right"
) -> dict[str, Tensor]:
    return {
        "input_ids": pad([e["input_ids"] for e in encoded], pad_id, side),  # (B, T)
        "attention_mask": pad([e["attention_mask"] for e in encoded], 0, side),  # (B, T) 1 = real token
        "response_mask": pad([e["response_mask"] for e in encoded], 0, side).bool(),  # True = response token
    }


@dataclass(frozen=True)
class SFTCollator:
    """SupervisedPair list -> input_ids, attention_mask, response_mask (B, T), right-padded."""

    tokenizer: Any
    max_length: int = 64

    def __call__(self, pairs: Sequence[SupervisedPair]) -> dict[str, Tensor]:
        encoded = [encode_pair(self.tokenizer, p.prompt, p.response, self.max_length) for p in pairs]
        return _pad_encoded(encoded, self.tokenizer.pad_token_id)


def _letter(index: int | None) -> str | None:
    return None if index is None else side_letter(index)


def preferred(c: Comparison) -> tuple[int, int] | None:
    """(chosen, rejected) response indices of a comparison's `better`, by `feedback.pairs`' rule."""
    return preference(_letter(c.better))


def safety(c: Comparison) -> SafetyOrder | None:
    """The comparison's safety pair by `feedback.pairs`' rule (None without both flags)."""
    return safety_order(_letter(c.safer), c.is_safe)


@dataclass(frozen=True)
class PreferenceCollator:
    """Comparison list -> chosen_* and rejected_* tensors, both padded to one length T.

    `by="better"` takes the more helpful response as chosen (reward models, DPO); `by="safer"`
    the safer one (cost models), with `ranked` (B,) bool False for a safety tie, whose pair
    counts only through its two safety signs (`feedback.pairs`: the order of a tie is arbitrary).
    Both halves share T so they can go through the model as one (2B, T) batch. Also returns
    `chosen_safe`/`rejected_safe` (B,) bool (False where safety was not judged). Records
    without a pair on `by` must be filtered out first (`preferred_pairs`, `safety_judged`).
    """

    tokenizer: Any
    max_length: int = 64
    by: Literal["better", "safer"] = "better"

    def _order(self, c: Comparison) -> tuple[int, int, bool]:
        if self.by == "better":
            pair = preferred(c)
            if pair is None:
                raise ValueError(f"comparison has no 'better' preference: {c.prompt!r}")
            return pair[0], pair[1], True
        order = safety(c)
        if order is None:
            raise ValueError(f"comparison has no safety pair (both is_safe flags): {c.prompt!r}")
        return order.safer, order.unsafer, order.ranked

    def __call__(self, comparisons: Sequence[Comparison]) -> dict[str, Tensor]:
        chosen, rejected, chosen_safe, rejected_safe, ranked = [], [], [], [], []
        for c in comparisons:
            winner, loser, is_ranked = self._order(c)
            chosen.append(encode_pair(self.tokenizer, c.prompt, c.response(winner), self.max_length))
            rejected.append(encode_pair(self.tokenizer, c.prompt, c.response(loser), self.max_length))
            chosen_safe.append(bool(c.is_safe[winner]))
            rejected_safe.append(bool(c.is_safe[loser]))
            ranked.append(is_ranked)
        both = _pad_encoded(chosen + rejected, self.tokenizer.pad_token_id)
        B = len(comparisons)
        out = {f"chosen_{k}": v[:B] for k, v in both.items()}
        out.update({f"rejected_{k}": v[B:] for k, v in both.items()})
        out["chosen_safe"] = torch.tensor(chosen_safe)  # (B,) True = judged safe
        out["rejected_safe"] = torch.tensor(rejected_safe)
        out["ranked"] = torch.tensor(ranked)  # (B,) False = a tie: no ranking term
        return out


@dataclass(frozen=True)
class RankingCollator:
    """RankedCandidates list -> every candidate's tokens in one batch, and where each goes.

    Returns input_ids, attention_mask (N, T) for the N candidates of all B rankings (every ranking's
    first candidate, then every ranking's second, and so on), `ranks` (B, K) long and `mask`
    (B, K) bool (True = a candidate; K the longest ranking, shorter ones padded), and `slots`
    (N,) long: the flat index b * K + k of each candidate's score in (B, K). A batch of pairs
    (winner first) is exactly the (2B, T) batch `PreferenceCollator` puts through the model:
    every chosen response, then every rejected one.
    """

    tokenizer: Any
    max_length: int = 64

    def __call__(self, rankings: Sequence[RankedCandidates]) -> dict[str, Tensor]:
        K = max(len(r.texts) for r in rankings)
        encoded, slots = [], []
        ranks = torch.zeros(len(rankings), K, dtype=torch.long)
        mask = torch.zeros(len(rankings), K, dtype=torch.bool)
        for k in range(K):
            for b, r in enumerate(rankings):
                if k < len(r.texts):
                    encoded.append(encode_pair(self.tokenizer, r.prompt, r.texts[k], self.max_length))
                    slots.append(b * K + k)
                    ranks[b, k], mask[b, k] = r.ranks[k], True
        batch = _pad_encoded(encoded, self.tokenizer.pad_token_id)
        return {
            "input_ids": batch["input_ids"],  # (N, T)
            "attention_mask": batch["attention_mask"],  # (N, T) 1 = real token
            "ranks": ranks,  # (B, K) 1 = best, equal = tie
            "mask": mask,  # (B, K) True = a candidate
            "slots": torch.tensor(slots),  # (N,) flat index into (B, K)
        }


@dataclass(frozen=True)
class PromptCollator:
    """Prompt texts -> left-padded input_ids, attention_mask (B, T), ready for generation."""

    tokenizer: Any
    max_length: int = 48

    def __call__(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        rows = [encode_prompt(self.tokenizer, p, self.max_length) for p in prompts]
        return {
            "input_ids": pad(rows, self.tokenizer.pad_token_id, "left"),  # (B, T)
            "attention_mask": pad([[1] * len(r) for r in rows], 0, "left"),  # (B, T) 1 = real token
        }


def preferred_pairs(
    comparisons: Sequence[Comparison], by: Literal["better", "safer"]
) -> tuple[list[Comparison], int]:
    """The comparisons that give a pair on `by` under `feedback.pairs`' rule, and how many
    gave none (`better`: ties and "both bad"; `safer`: see `safety_judged`)."""
    if by == "safer":
        return safety_judged(comparisons)
    kept = [c for c in comparisons if preferred(c) is not None]
    return kept, len(comparisons) - len(kept)


def safety_judged(comparisons: Sequence[Comparison]) -> tuple[list[Comparison], int]:
    """The comparisons that give a safety pair (both `is_safe` flags; a tie keeps its sign
    terms, `feedback.pairs`), and how many lacked the flags."""
    kept = [c for c in comparisons if safety(c) is not None]
    return kept, len(comparisons) - len(kept)


def load_comparisons(
    path: str | Path, format: str | None = None, skip_invalid: bool = False
) -> list[Comparison]:
    """Comparisons from a PKU-SafeRLHF, HH-RLHF or prompt/chosen/rejected file, or a platform
    export of judged items (every annotator's judgement, `feedback.judged.comparisons`; rankings
    give every implied pair), in any container.

    Errors name the file, line and field; with `skip_invalid` bad rows are skipped and counted
    in a printed note.
    """
    from alignloop.feedback.formats import FormatError, read_records
    from alignloop.feedback.judged import comparisons

    result = read_records(path, format, skip_invalid=skip_invalid)
    if not result.rows:
        raise FormatError(path, None, None, "holds no rows; give a file of comparisons")
    if result.format in ("prompt", "supervised", "correction"):
        raise FormatError(path, None, None, f"holds {result.format} records, not comparisons")
    if result.skipped:
        print(f"{path}: skipped {result.skipped} invalid row(s) of {result.rows}; first: {result.errors[0]}")
    return comparisons(result.records)


def rankings_of(records: Sequence[Any]) -> tuple[list[RankedCandidates], int]:
    """What a reward model learns from in file records (`feedback.pairs.preference_rankings`):
    a comparison's `better` pair as a ranking of two, a judged item's rankings whole, its
    choices or ratings as pairs; and how many comparisons or judgements gave nothing (ties,
    "both bad", equal scores)."""
    from alignloop.feedback.judged import JudgedItem

    out: list[RankedCandidates] = []
    left_out = 0
    for r in records:
        if isinstance(r, Comparison):
            pair = preferred(r)
            if pair is None:
                left_out += 1
            else:
                out.append(ranked_pair(r.prompt, r.response(pair[0]), r.response(pair[1])))
        elif isinstance(r, JudgedItem):
            judgements = r.answered()
            found = preference_rankings(judgements, r.questions)
            out += found
            left_out += len({id(j) for j in judgements} - {id(f.judgement) for f in found})
    return out, left_out


def load_rankings(path: str | Path, skip_invalid: bool = False) -> tuple[list[RankedCandidates], int]:
    """`rankings_of` the records of a comparison file or a platform export of judged items, in
    any format and container `feedback.formats` reads (errors name the file, line and field)."""
    from alignloop.feedback.formats import FormatError, read_records

    result = read_records(path, None, skip_invalid=skip_invalid)
    if result.format in ("prompt", "supervised", "correction"):
        raise FormatError(path, None, None, f"holds {result.format} records, not preferences")
    if result.skipped:
        print(f"{path}: skipped {result.skipped} invalid row(s) of {result.rows}; first: {result.errors[0]}")
    return rankings_of(result.records)


def ranking_splits(
    train_file: Path | None,
    eval_file: Path | None,
    *,
    eval_fraction: float,
    skip_invalid: bool,
    toy_seed: int,
    toy_train_size: int,
    toy_eval_size: int,
) -> tuple[list[RankedCandidates], list[RankedCandidates], int]:
    """(train, eval) rankings, as `comparison_splits` splits comparisons, and how many records
    gave none."""
    if train_file is None:
        from alignloop.lm.toyworld import ToyWorld

        world = ToyWorld(seed=toy_seed)
        train, a = rankings_of(world.comparisons(toy_train_size, "train"))
        evals, b = rankings_of(world.comparisons(toy_eval_size, "eval"))
        return train, evals, a + b
    train, left_out = load_rankings(train_file, skip_invalid)
    if eval_file is not None:
        evals, more = load_rankings(eval_file, skip_invalid)
        return train, evals, left_out + more
    n_eval = max(1, int(len(train) * eval_fraction))
    return train[n_eval:], train[:n_eval], left_out


def load_supervised(
    path: str | Path, format: str | None = None, skip_invalid: bool = False
) -> list[SupervisedPair]:
    """Prompt/response pairs from a supervised file; a comparison file gives its `better` responses."""
    from alignloop.feedback.formats import FormatError, read_records

    result = read_records(path, format, skip_invalid=skip_invalid)
    if not result.rows:
        raise FormatError(path, None, None, "holds no rows; give a file of prompt/response pairs")
    if result.format == "prompt":
        raise FormatError(path, None, None, "holds prompts only; supervised training needs responses too")
    if result.skipped:
        print(f"{path}: skipped {result.skipped} invalid row(s) of {result.rows}; first: {result.errors[0]}")
    out = []
    for r in result.records:
        if isinstance(r, SupervisedPair):
            out.append(r)
        elif isinstance(r, Comparison) and (pair := preferred(r)) is not None:
            out.append(SupervisedPair(r.prompt, r.response(pair[0])))
    return out


def comparison_splits(
    train_file: Path | None,
    eval_file: Path | None,
    *,
    eval_fraction: float,
    skip_invalid: bool,
    toy_seed: int,
    toy_train_size: int,
    toy_eval_size: int,
) -> tuple[list[Comparison], list[Comparison]]:
    """(train, eval) comparisons: from files, else held out of `train_file`, else the toy world."""
    if train_file is None:
        from alignloop.lm.toyworld import ToyWorld

        world = ToyWorld(seed=toy_seed)
        return world.comparisons(toy_train_size, "train"), world.comparisons(toy_eval_size, "eval")
    train = load_comparisons(train_file, skip_invalid=skip_invalid)
    if eval_file is not None:
        return train, load_comparisons(eval_file, skip_invalid=skip_invalid)
    n_eval = max(1, int(len(train) * eval_fraction))
    return train[n_eval:], train[:n_eval]


def check_batches(
    n_items: int,
    batch_size: int,
    grad_accum: int,
    *,
    what: str,
    source: str | Path | None,
    held_out: int = 0,
) -> int:
    """Optimiser steps per epoch of `n_items` in batches of `batch_size`; a `UserError` with the
    fix when the options do not fit the data (`source`: the file it came from, None for the toy
    world; `held_out`: how many of its rows were kept back for evaluation)."""
    of = f" in {source}" if source is not None else ""
    if held_out:
        of += f" ({held_out} more held out for evaluation, see --eval-fraction and --eval-file)"
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if not 1 <= grad_accum <= batch_size:
        raise UserError(f"--grad-accum must be between 1 and --batch-size ({batch_size}), got {grad_accum}")
    if n_items == 0:
        raise UserError(f"no {what} to train on{of}")
    if n_items < batch_size:
        raise UserError(
            f"--batch-size {batch_size} is larger than the {n_items} {what}{of}; pass --batch-size "
            f"{n_items} or less, or give more data"
        )
    return n_items // batch_size
