"""The DPO family: learn from preference pairs directly, without a reward model.

Every loss in `alignloop.core.losses` is one option (`--loss`): DPO (`sigmoid`), IPO
(`ipo`), SLiC-style `hinge`, robust DPO (`robust`), and cDPO through `--label-smoothing`;
the reference-free SimPO (`simpo`) and ORPO (`orpo`); and KTO (`kto`), which reads each
pair as one desirable (chosen) and one undesirable (rejected) example.

Data: comparison files in any format `alignloop.lm.data.load_comparisons` reads
(PKU-SafeRLHF: chosen = the `better` response; HH-RLHF; prompt/chosen/rejected); pairs without
a preference (ties) are left out and counted. Without a file, the toy world's labelled pairs.

How a step runs, and why it is fast:

- chosen and rejected sequences (and, for KTO, one mismatched prompt/response pair per
  example, for the KL reference point) go through the policy as ONE left-padded batch,
  padded only to the longest sequence of that micro-batch;
- because of left padding every response ends at the last position, so the LM head is applied
  to the last `R + 1` positions only (`logits_to_keep`, R = longest response), and the
  log-probabilities are a gather minus a logsumexp, never a full log-softmax;
- the reference model is frozen, so its log-probabilities are computed once for the whole
  dataset before training (`--reference precompute`, the default) and the reference model is
  then freed; `--reference online` keeps it and scores each batch instead (with LoRA and no
  separate reference, the reference is the policy with its adapters switched off).

Per-pair losses are averaged over the global batch (all processes, all micro-batches), so
`torchrun --nproc_per_node=N` and `--grad-accum` give the same update as one big batch.

    alignloop train dpo --model runs/sft/final --train-file pairs.jsonl --beta 0.1
    torchrun --nproc_per_node=2 -m alignloop.cli train dpo --model runs/sft/final --strategy fsdp
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from alignloop.core.losses import DPO_LOSSES, kto_loss, orpo_loss, simpo_loss
from alignloop.errors import UserError
from alignloop.feedback.schema import Comparison
from alignloop.lm.data import check_batches, encode_pair, load_comparisons, pad, preferred_pairs
from alignloop.lm.folders import check_inputs
from alignloop.lm.models import position_ids_from_mask, token_logprobs
from alignloop.lm.sft import load_model
from alignloop.lm.training import (
    DistributedContext,
    TrainCommon,
    autocast,
    fit,
    prepare_model,
    save_final,
    start_run,
    unwrap,
)

LossName = Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo", "kto"]
REFERENCE_FREE = frozenset({"simpo", "orpo"})
"""Losses that need no reference model."""


@dataclass(frozen=True)
class DPOConfig(TrainCommon):
    """Direct preference optimisation of a causal language model (DPO, IPO, hinge, rDPO, SimPO, ORPO, KTO)."""

    output_dir: Path = Path("runs/dpo")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final model in final/."""
    model: str = "toy"
    """Policy to start from: a Hugging Face folder, or "toy" for a fresh tiny toy-world model."""
    ref_model: str | None = None
    """Frozen reference model folder (default: the starting policy)."""
    train_file: Path | None = None
    """Comparison file (PKU-SafeRLHF, HH-RLHF, prompt/chosen/rejected); none = toy-world pairs."""
    eval_file: Path | None = None
    """Held-out comparison file (none = eval_fraction of train_file, or the toy world's eval split)."""
    format: Literal["auto", "pku-saferlhf", "hh-rlhf", "preference"] = "auto"
    """Format of the data files ("auto" detects it from the first row)."""
    eval_fraction: float = 0.05
    """Share of train_file held out for evaluation when there is no eval_file."""
    skip_invalid: bool = False
    """Skip malformed rows of the data files (they are counted and reported)."""
    toy_train_size: int = 2000
    """Toy world: number of training pairs."""
    toy_eval_size: int = 256
    """Toy world: number of held-out pairs."""
    max_length: int = 64
    """Longest prompt + response, in tokens."""
    loss: LossName = "sigmoid"
    """Loss: sigmoid (DPO), ipo, hinge, robust (rDPO), simpo, orpo or kto."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward (SimPO: reward scale, typically 2)."""
    label_smoothing: float = 0.0
    """sigmoid: cDPO label smoothing; robust: label flip rate; simpo: smoothing. Must be 0 for ipo/hinge."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    lam: float = 0.1
    """ORPO weight of the odds-ratio term next to the SFT loss."""
    desirable_weight: float = 1.0
    """KTO weight of desirable (chosen) examples."""
    undesirable_weight: float = 1.0
    """KTO weight of undesirable (rejected) examples."""
    reference: Literal["precompute", "online"] = "precompute"
    """Reference log-probs computed once before training (reference freed), or per batch."""
    lr: float = 5e-4
    """Peak learning rate."""
    batch_size: int = 32
    """Pairs per optimiser step across all processes (before accumulation splits it)."""
    max_steps: int = 200
    """Stop after this many optimiser steps (0 = run `epochs`)."""


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class PairExample:
    """One preference pair as token ids; each sequence is prompt + response + <eos>."""

    chosen: list[int]
    rejected: list[int]
    chosen_len: int  # response tokens at the end of `chosen`
    rejected_len: int
    mismatched: list[int] | None = None  # KTO: this prompt with another example's chosen response
    mismatched_len: int = 0


def encode_pairs(
    tokenizer: Any, comparisons: Sequence[Comparison], max_length: int, mismatched: bool = False
) -> list[PairExample]:
    """Tokenise pairs (chosen = the `better` response). With `mismatched`, each example also
    gets its prompt followed by the next example's chosen response (KTO's KL estimate)."""
    out = []
    for i, c in enumerate(comparisons):
        assert c.better is not None, "ties must be filtered out first"
        chosen = encode_pair(tokenizer, c.prompt, c.response(c.better), max_length)
        rejected = encode_pair(tokenizer, c.prompt, c.response(1 - c.better), max_length)
        other = None
        if mismatched:
            nxt = comparisons[(i + 1) % len(comparisons)]
            assert nxt.better is not None
            other = encode_pair(tokenizer, c.prompt, nxt.response(nxt.better), max_length)
        out.append(
            PairExample(
                chosen["input_ids"],
                rejected["input_ids"],
                sum(chosen["response_mask"]),
                sum(rejected["response_mask"]),
                other["input_ids"] if other else None,
                sum(other["response_mask"]) if other else 0,
            )
        )
    return out


def collate(examples: Sequence[PairExample], pad_id: int) -> dict[str, Tensor]:
    """One left-padded batch of every sequence: rows [chosen..., rejected..., (mismatched...)].

    input_ids, attention_mask (N, T) with T the longest row; response_mask (N, R) over the
    last R positions (R the longest response), True = response token.
    """
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    lengths = [e.chosen_len for e in examples] + [e.rejected_len for e in examples]
    if examples[0].mismatched is not None:
        rows += [e.mismatched or [] for e in examples]
        lengths += [e.mismatched_len for e in examples]
    R = max(lengths)
    return {
        "input_ids": pad(rows, pad_id, "left"),  # (N, T)
        "attention_mask": pad([[1] * len(r) for r in rows], 0, "left"),  # (N, T) 1 = real token
        "response_mask": pad([[1] * n for n in lengths], 0, "left").bool()[:, -R:],  # (N, R) True = response
    }


def indexed_collate(items: Sequence[tuple[int, PairExample]], pad_id: int) -> dict[str, Tensor]:
    """`collate` of (index, example) items, with ``index`` (B,): each example's place in its
    set, where the precomputed reference log-probs are looked up."""
    batch = collate([e for _, e in items], pad_id)
    batch["index"] = torch.tensor([i for i, _ in items])
    return batch


def load_pairs(cfg: DPOConfig) -> tuple[list[Comparison], list[Comparison]]:
    """(train, eval) comparisons with a `better` preference; ties are counted and left out."""
    fmt = None if cfg.format == "auto" else cfg.format
    if cfg.train_file is None:
        from alignloop.lm.toyworld import ToyWorld

        world = ToyWorld(seed=cfg.seed)
        train, evals = (
            world.comparisons(cfg.toy_train_size, "train"),
            world.comparisons(cfg.toy_eval_size, "eval"),
        )
    else:
        train = load_comparisons(cfg.train_file, fmt, cfg.skip_invalid)
        if cfg.eval_file is not None:
            evals = load_comparisons(cfg.eval_file, fmt, cfg.skip_invalid)
        else:
            n_eval = max(1, int(len(train) * cfg.eval_fraction))
            train, evals = train[n_eval:], train[:n_eval]
    train, ties = preferred_pairs(train, "better")
    evals, eval_ties = preferred_pairs(evals, "better")
    if ties or eval_ties:
        print(f"dpo: left out {ties} training and {eval_ties} held-out pair(s) without a preference (ties)")
    if not train:
        raise UserError(
            f"{cfg.train_file or 'toy world'}: no comparison with a 'better' preference to learn from"
        )
    return train, evals


# ---------------------------------------------------------------------------------- math flow
def response_logps(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed log-prob of each row's response tokens and their number: (N,), (N,).

    Rows are left-padded, so responses end at the last position and only the last R + 1
    positions need logits (position t predicts token t + 1).
    """
    response_mask = batch["response_mask"]  # (N, R) True = response token
    R = response_mask.shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids_from_mask(batch["attention_mask"]),
        logits_to_keep=R + 1,
        use_cache=False,
    ).logits  # (N, R + 1, V)
    logps = token_logprobs(logits[:, :-1], batch["input_ids"][:, -R:])  # (N, R)
    mask = response_mask.to(logps.dtype)
    return (logps * mask).sum(-1), mask.sum(-1)


def preference_loss(
    loss: str,
    pi_logps: Tensor,
    ref_logps: Tensor | None,
    lengths: Tensor,
    kl_ref: Tensor | float = 0.0,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    lam: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The named loss of `alignloop.core.losses` on one batch.

    pi_logps, ref_logps, lengths: (2B,) rows [chosen..., rejected...] (summed response
    log-probs and response lengths); ref_logps None for reference-free losses. kl_ref: KTO's
    reference point.
    """
    pi_chosen, pi_rejected = pi_logps.chunk(2)  # (B,), (B,)
    len_chosen, len_rejected = lengths.chunk(2)
    if loss in DPO_LOSSES:
        assert ref_logps is not None
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        return DPO_LOSSES[loss](
            pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing
        )
    if loss == "simpo":
        return simpo_loss(
            pi_chosen,
            pi_rejected,
            len_chosen,
            len_rejected,
            beta=beta,
            gamma=gamma,
            label_smoothing=label_smoothing,
        )
    if loss == "orpo":
        chosen_nll = -pi_chosen / len_chosen  # (B,) per-token NLL of each chosen response
        return orpo_loss(pi_chosen, pi_rejected, len_chosen, len_rejected, chosen_nll, lam=lam)
    if loss == "kto":
        assert ref_logps is not None
        desirable = torch.arange(len(pi_logps), device=pi_logps.device) < len(pi_chosen)  # True = chosen row
        return kto_loss(
            pi_logps,
            ref_logps,
            desirable,
            kl_ref,
            beta=beta,
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
        )
    raise ValueError(f"loss: {loss!r} is not one of {', '.join(get_args(LossName))}")


def pair_margin(pi_logps: Tensor, ref_logps: Tensor | None, lengths: Tensor) -> Tensor:
    """How much more the policy favours chosen over rejected, per pair (B,): the log-ratio
    margin against the reference, or (reference-free) the per-token log-prob margin."""
    if ref_logps is None:
        per_token = pi_logps / lengths.clamp(min=1)
        chosen, rejected = per_token.chunk(2)
        return chosen - rejected
    chosen, rejected = (pi_logps - ref_logps).chunk(2)
    return chosen - rejected


@torch.no_grad()
def reference_logps(
    model: nn.Module, examples: Sequence[PairExample], pad_id: int, batch_size: int, ctx: DistributedContext
) -> Tensor:
    """Reference log-probs of every row of every example, (n, k) with columns chosen,
    rejected (, mismatched); each process scores its share and the shares are summed."""
    k = 3 if examples and examples[0].mismatched is not None else 2
    out = torch.zeros(len(examples), k, dtype=torch.float64)
    mine = list(range(ctx.rank, len(examples), ctx.world_size))
    model.eval()
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        batch = {key: v.to(ctx.device) for key, v in collate([examples[i] for i in idx], pad_id).items()}
        logps, _ = response_logps(model, batch)  # (k * b,)
        out[idx] = logps.view(k, len(idx)).t().double().cpu()
    return ctx.all_reduce_sum(out).float()


class ReferenceScorer:
    """Reference log-probs for a batch: looked up (precomputed) or computed by a frozen model."""

    def __init__(
        self, table: Tensor | None = None, model: nn.Module | None = None, use_adapters_off: bool = False
    ):
        self.table, self.model, self.adapters_off = table, model, use_adapters_off

    @torch.no_grad()
    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """(N,) in the row order of `collate`, for the examples of `indexed_collate`'s batch."""
        if self.table is not None:
            return self.table[batch["index"].cpu()].t().reshape(-1).to(batch["input_ids"].device)
        assert self.model is not None
        off: Any = unwrap(self.model)
        context = off.disable_adapter() if self.adapters_off else contextlib.nullcontext()
        with context:
            return response_logps(self.model, batch)[0].detach()


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: Sequence[PairExample],
    reference: ReferenceScorer | None,
    pad_id: int,
    batch_size: int,
    ctx: DistributedContext,
    loss: str,
    loss_kwargs: dict[str, Any],
) -> dict[str, float]:
    """Held-out loss, chosen-over-rejected margin and accuracy (the share of pairs with a
    positive margin); each process scores its share, in the same number of forward passes
    (a sharded model's forward is a collective): a process whose share has run out scores its
    first example again, counted nothing."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss * n, margin, correct, n
    mine = list(range(ctx.rank, len(examples), ctx.world_size))
    rounds = -(-len(range(0, len(examples), ctx.world_size)) // batch_size)  # the largest share's batches
    for start in range(0, rounds * batch_size, batch_size):
        idx = mine[start : start + batch_size]
        counted = len(idx)
        idx = idx or mine[:1] or [0]
        batch = {
            k: v.to(ctx.device) for k, v in indexed_collate([(i, examples[i]) for i in idx], pad_id).items()
        }
        pi_logps, lengths = response_logps(model, batch)
        ref_logps = reference(batch) if reference is not None else None
        kl_ref = kl_reference(pi_logps, ref_logps, len(idx), ctx=None)
        n = 2 * len(idx)  # the chosen and rejected rows
        ref_pair = None if ref_logps is None else ref_logps[:n]
        value, _ = preference_loss(loss, pi_logps[:n], ref_pair, lengths[:n], kl_ref, **loss_kwargs)
        margin = pair_margin(pi_logps[:n], ref_pair, lengths[:n])  # (b,)
        if counted:
            sums += torch.tensor(
                [float(value) * len(idx), float(margin.sum()), float((margin > 0).sum()), float(len(idx))]
            )
    sums = ctx.all_reduce_sum(sums)
    count = max(1.0, float(sums[3]))
    return {
        "loss": float(sums[0]) / count,
        "margin": float(sums[1]) / count,
        "accuracy": float(sums[2]) / count,
    }


def kl_reference(
    pi_logps: Tensor, ref_logps: Tensor | None, n_pairs: int, ctx: DistributedContext | None
) -> Tensor | float:
    """KTO's reference point: mean log-ratio of the mismatched rows (rows past 2B), over
    every process; 0 when the batch has no mismatched rows."""
    if ref_logps is None or len(pi_logps) <= 2 * n_pairs:
        return 0.0
    kl = (pi_logps[2 * n_pairs :] - ref_logps[2 * n_pairs :]).detach().mean()
    return ctx.all_reduce_mean(kl) if ctx is not None else kl


# ---------------------------------------------------------------------------------- training
def make_reference(
    cfg: DPOConfig,
    train_set: list[PairExample],
    eval_set: list[PairExample],
    pad_id: int,
    ctx: DistributedContext,
) -> tuple[ReferenceScorer | None, ReferenceScorer | None]:
    """(train, eval) reference scorers as `cfg` asks; None for reference-free losses."""
    if cfg.loss in REFERENCE_FREE:
        return None, None
    if cfg.reference == "online" and cfg.lora_r > 0 and cfg.ref_model is None:
        scorer = ReferenceScorer(use_adapters_off=True)  # the model is set once LoRA is applied
        return scorer, scorer
    _, ref_model = load_model(cfg.ref_model or cfg.model, cfg.seed)  # "toy": same seed, same weights
    ref_model.to(ctx.device).eval().requires_grad_(False)
    if cfg.reference == "online":
        scorer = ReferenceScorer(model=ref_model)
        return scorer, scorer
    batch = max(1, cfg.batch_size // ctx.world_size)
    with autocast(ctx, cfg.bf16):  # the same precision as the policy's forward
        train_table = reference_logps(ref_model, train_set, pad_id, batch, ctx)
        eval_table = reference_logps(ref_model, eval_set, pad_id, batch, ctx)
    return ReferenceScorer(train_table), ReferenceScorer(eval_table)  # the reference model is freed


def train(cfg: DPOConfig) -> int:
    files = {"--train-file": cfg.train_file, "--eval-file": cfg.eval_file}
    check_inputs(
        cfg.output_dir,
        files=files,
        models={"--model": (cfg.model, "causal-lm"), "--ref-model": (cfg.ref_model, "causal-lm")},
    )
    run = start_run(cfg, "train dpo")
    policy: Any
    tokenizer, policy = load_model(cfg.model, cfg.seed)
    pad_id = int(tokenizer.pad_token_id)
    train_pairs, eval_pairs = load_pairs(cfg)
    check_batches(
        len(train_pairs),
        cfg.batch_size,
        cfg.grad_accum,
        what="training pairs with a preference",
        source=cfg.train_file,
        held_out=len(eval_pairs) if cfg.train_file is not None and cfg.eval_file is None else 0,
    )
    train_set = encode_pairs(tokenizer, train_pairs, cfg.max_length, mismatched=cfg.loss == "kto")
    eval_set = encode_pairs(tokenizer, eval_pairs, cfg.max_length, mismatched=cfg.loss == "kto")
    reference, eval_reference = make_reference(cfg, train_set, eval_set, pad_id, run.ctx)
    model = prepare_model(policy, run, cfg)
    if reference is not None and reference.adapters_off:
        reference.model = unwrap(model)
    loss_kwargs: dict[str, Any] = dict(
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        gamma=cfg.gamma,
        lam=cfg.lam,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
    )

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        pi_logps, lengths = response_logps(model, batch)  # (N,), (N,)
        ref_logps = reference(batch) if reference is not None else None
        n_pairs = len(batch["index"])
        kl_ref = kl_reference(pi_logps, ref_logps, n_pairs, run.ctx)
        n = 2 * n_pairs  # the chosen and rejected rows
        return preference_loss(
            cfg.loss,
            pi_logps[:n],
            None if ref_logps is None else ref_logps[:n],
            lengths[:n],
            kl_ref,
            **loss_kwargs,
        )

    eval_batch = max(1, cfg.batch_size // run.ctx.world_size)
    fit(
        run,
        model,
        list(enumerate(train_set)),
        collate=lambda items: indexed_collate(items, pad_id),
        loss=loss,
        weight=lambda batch: len(batch["index"]),  # the mean is over pairs
        evaluate=lambda model: evaluate(
            model, eval_set, eval_reference, pad_id, eval_batch, run.ctx, cfg.loss, loss_kwargs
        ),
        options=cfg,
        description=f"dpo ({cfg.loss})",
        evaluate_first=True,
    )
    save_final(model, tokenizer, run.layout.final, run.ctx)
    run.close()
    return 0
