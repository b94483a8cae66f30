"""The DPO family, SimPO, ORPO and KTO against TRL's implementations on random inputs.

TRL computes these losses inside trainer methods. The trainers are created without their
``__init__`` (``object.__new__``) and given only the attributes the method reads. Where TRL
runs a model forward (DPO, KTO), a stand-in model returns per-token log-probs from a table,
looked up by the row id stored in the first column of ``input_ids``.

Conventions that differ, and how each comparison bridges them:
- TRL's DPO ``sigmoid`` ignores ``label_smoothing``; our cDPO (sigmoid with label smoothing)
  is compared to TRL CPO's ``sigmoid`` loss, which is the same formula, fed the log-ratios.
- TRL's DPO ``ipo`` divides each log-ratio by the response length; ours regresses the
  log-ratios it is given, so it is fed log-probs divided by the same lengths.
- TRL's ORPO takes per-token mean log-probs and returns the (positive) ``beta * log sigmoid``
  term; ours takes sums and lengths and adds the SFT term, passed as 0 here.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alignloop.core.losses import dpo_loss, kto_loss, orpo_loss, simpo_loss

pytest.importorskip("trl")

from trl import DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

RTOL = 1e-5
ATOL = 1e-6
SEEDS = [0, 1, 2]


class TableLM(torch.nn.Module):
    """Returns ``table[row]`` as the per-token log-probs of row ``input_ids[row, 0]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (N, T - 1)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        log_probs = self.table[input_ids[:, 0]]  # (rows, T - 1)
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )


def bare(trainer_cls: type, **attributes: Any) -> Any:
    trainer = object.__new__(trainer_cls)
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
    )
    common = {
        "accelerator": accelerator,
        "aux_loss_enabled": False,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    for name, value in {**common, **attributes}.items():
        object.__setattr__(trainer, name, value)
    return trainer


def rand_logps(gen: torch.Generator, *shape: int, scale: float = 20.0) -> torch.Tensor:
    return -torch.rand(*shape, generator=gen) * scale


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("variant", "beta", "label_smoothing"),
    [
        ("sigmoid", 0.1, 0.0),
        ("hinge", 0.1, 0.0),
        ("robust", 0.2, 0.0),
        ("robust", 0.2, 0.3),
        ("ipo", 0.5, 0.0),
    ],
)
def test_dpo_matches_trl(seed: int, variant: str, beta: float, label_smoothing: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, width = 16, 9
    per_token = rand_logps(gen, 2 * batch, width - 1, scale=3.0)  # (2B, T - 1), rows [chosen; rejected]
    ref_chosen, ref_rejected = rand_logps(gen, batch), rand_logps(gen, batch)  # (B,)
    lengths = torch.randint(1, width + 1, (2 * batch,), generator=gen)  # (2B,) response tokens
    completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (2B, T)
    model = TableLM(per_token)
    trainer = bare(
        DPOTrainer,
        model=model,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[variant],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {
        "input_ids": torch.arange(2 * batch)[:, None].repeat(1, width),
        "attention_mask": torch.ones(2 * batch, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    theirs = trainer._compute_loss(model, inputs, False)

    logps = per_token.sum(1)  # (2B,)
    pi_chosen, pi_rejected = logps[:batch], logps[batch:]
    if variant == "ipo":  # TRL averages the log-ratios per token
        len_c, len_r = lengths[:batch].float(), lengths[batch:].float()
        args = (pi_chosen / len_c, pi_rejected / len_r, ref_chosen / len_c, ref_rejected / len_r)
    else:
        args = (pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    ours, metrics = dpo_loss(*args, beta=beta, variant=variant, label_smoothing=label_smoothing)
    close(ours, theirs)
    if variant != "ipo":
        logged = trainer._metrics["train"]
        assert float(metrics["rewards/margin"]) == pytest.approx(logged["rewards/margins"][-1], rel=RTOL)
        assert float(metrics["rewards/accuracy"]) == pytest.approx(logged["rewards/accuracies"][-1], rel=RTOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_conservative_dpo_matches_trl_cpo_sigmoid(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pi_c, pi_r, ref_c, ref_r = (rand_logps(gen, 32) for _ in range(4))
    beta, eps = 0.3, 0.15
    trainer = bare(CPOTrainer, alpha=0.0, beta=beta, loss_type="sigmoid", label_smoothing=eps)
    theirs, _, _ = trainer.cpo_loss(pi_c - ref_c, pi_r - ref_r)
    ours, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=beta, variant="sigmoid", label_smoothing=eps)
    close(ours, theirs.mean())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo_simpo(seed: int, label_smoothing: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    pi_c, pi_r = rand_logps(gen, 32), rand_logps(gen, 32)
    len_c = torch.randint(1, 30, (32,), generator=gen).float()
    len_r = torch.randint(1, 30, (32,), generator=gen).float()
    beta, gamma = 2.0, 0.8
    trainer = bare(
        CPOTrainer,
        alpha=0.0,
        beta=beta,
        loss_type="simpo",
        simpo_gamma=gamma,
        label_smoothing=label_smoothing,
    )
    theirs, their_chosen, _ = trainer.cpo_loss(pi_c / len_c, pi_r / len_r)  # TRL takes per-token means
    ours, metrics = simpo_loss(
        pi_c, pi_r, len_c, len_r, beta=beta, gamma=gamma, label_smoothing=label_smoothing
    )
    close(ours, theirs.mean())
    close(metrics["rewards/chosen"], their_chosen.mean())


@pytest.mark.parametrize("seed", SEEDS)
def test_orpo_matches_trl(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # per-token mean log-probs on both sides of -log 2, where log(1 - e^x) switches branch
    len_c = torch.randint(1, 30, (32,), generator=gen).float()
    len_r = torch.randint(1, 30, (32,), generator=gen).float()
    mean_c, mean_r = rand_logps(gen, 32, scale=3.0), rand_logps(gen, 32, scale=3.0)
    lam = 0.25
    trainer = bare(ORPOTrainer, beta=lam)
    their_terms, _, _, their_log_sigmoid, their_log_odds = trainer.odds_ratio_loss(mean_c, mean_r)
    ours, metrics = orpo_loss(mean_c * len_c, mean_r * len_r, len_c, len_r, torch.zeros(()), lam=lam)
    close(ours, -their_terms.mean())  # TRL's loss is nll - mean(beta * log sigmoid(log odds ratio))
    close(metrics["log_odds_ratio"], their_log_odds)
    close(metrics["log_sigmoid_odds_ratio"], their_log_sigmoid)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.0, 1.33)])
def test_kto_matches_trl(seed: int, desirable_weight: float, undesirable_weight: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, width = 16, 7
    # rows 0..B-1: the examples; rows B..2B-1: the mismatched (x, y') pairs for the KL estimate
    per_token = rand_logps(gen, 2 * batch, width - 1, scale=2.0)  # (2B, T - 1)
    ref_logps = per_token[:batch].sum(1) + torch.randn(batch, generator=gen)  # (B,)
    # the KL estimate is positive for seeds 0 and 1 and negative (clamped to 0) for seed 2
    shift = torch.rand(batch, generator=gen) * (1.0 if seed < 2 else -1.0)  # (B,)
    ref_kl_logps = per_token[batch:].sum(1) - shift  # (B,)
    desirable = torch.rand(batch, generator=gen) < 0.5  # (B,) True = desirable
    desirable[:2] = torch.tensor([True, False])  # both kinds present
    model = TableLM(per_token)
    trainer = bare(
        KTOTrainer,
        model=model,
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=0.1,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    ones = torch.ones(batch, width, dtype=torch.long)
    inputs = {
        "input_ids": torch.arange(batch)[:, None].repeat(1, width),
        "attention_mask": ones,
        "completion_mask": ones,
        "KL_input_ids": torch.arange(batch, 2 * batch)[:, None].repeat(1, width),
        "KL_attention_mask": ones,
        "KL_completion_mask": ones,
        "label": desirable,
        "ref_logps": ref_logps,
        "ref_KL_logps": ref_kl_logps,
    }
    theirs = trainer._compute_loss(model, inputs, False)

    kl_ref = (per_token[batch:].sum(1) - ref_kl_logps).mean()
    ours, metrics = kto_loss(
        per_token[:batch].sum(1),
        ref_logps,
        desirable,
        kl_ref,
        beta=0.1,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    close(ours, theirs)
    logged = trainer._metrics["train"]
    assert float(metrics["kl_ref"]) == pytest.approx(logged["kl"][-1], rel=RTOL)
    assert float(metrics["rewards/chosen"]) == pytest.approx(logged["rewards/chosen"][-1], rel=RTOL)
    assert float(metrics["rewards/rejected"]) == pytest.approx(logged["rewards/rejected"][-1], rel=RTOL)


# --- the GRPO family --------------------------------------------------------------------------


def bare_grpo(**attributes: Any) -> Any:
    """A `GRPOTrainer` with only what `_compute_loss` reads: token-level importance sampling,
    no entropy mask, no off-policy mask, no vLLM, no entropy bonus, one process, no accumulation."""
    from trl import GRPOTrainer

    trainer = bare(GRPOTrainer, **attributes)
    trainer.accelerator.autocast = contextlib.nullcontext
    trainer.accelerator.reduce = lambda x, reduction="sum": x
    trainer.accelerator.num_processes = 1
    trainer.accelerator.is_main_process = True
    defaults = {
        "top_entropy_quantile": 1.0,
        "off_policy_mask_threshold": None,
        "importance_sampling_level": "token",
        "use_vllm": False,
        "current_gradient_accumulation_steps": 1,
        "_entropy_bonus_enabled": False,
        "args": SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    }
    for name, value in defaults.items():
        if name not in attributes:
            object.__setattr__(trainer, name, value)
    return trainer


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("variant", "trl_name", "eps_high", "beta"),
    [
        ("grpo", "grpo", 0.2, 0.0),
        ("grpo", "grpo", 0.2, 0.04),
        ("dr-grpo", "dr_grpo", 0.2, 0.04),
        ("dapo", "dapo", 0.28, 0.0),
        ("dapo", "dapo", 0.28, 0.04),
    ],
)
def test_grpo_losses_match_trl(seed: int, variant: str, trl_name: str, eps_high: float, beta: float) -> None:
    from alignloop.core.losses import GRPO_LOSSES, LossTotals

    gen = torch.Generator().manual_seed(seed)
    batch, width, max_length = 12, 6, 8
    old = rand_logps(gen, batch, width, scale=3.0)  # (B, C) log-probs when sampled
    current = old + 0.4 * torch.randn(batch, width, generator=gen)  # ratios on both sides of the clip
    ref = old + 0.3 * torch.randn(batch, width, generator=gen)
    advantages = torch.randn(batch, generator=gen)  # (B,)
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)
    completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, C)
    model = TableLM(current)
    trainer = bare_grpo(
        model=model,
        loss_type=trl_name,
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=eps_high,
        max_completion_length=max_length,
    )
    inputs = {
        "prompt_ids": torch.arange(batch)[:, None].repeat(1, 2),  # the row id in column 0
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.zeros(batch, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }
    theirs = trainer._compute_loss(model, inputs)

    mask = completion_mask.bool()
    totals = LossTotals(sequences=batch, tokens=float(mask.sum()), max_length=max_length)
    ours, metrics = GRPO_LOSSES[variant](
        current, old, advantages, mask,
        clip_eps_low=0.2, clip_eps_high=eps_high, ref_logprobs=ref, kl_coef=beta, totals=totals,
    )  # fmt: skip
    close(ours, theirs)
    logged = trainer._metrics["train"]
    assert float(metrics["clip_ratio/low"]) == pytest.approx(logged["clip_ratio/low_mean"][-1], rel=RTOL)
    assert float(metrics["clip_ratio/high"]) == pytest.approx(logged["clip_ratio/high_mean"][-1], rel=RTOL)
    if beta:
        assert float(metrics["kl_ref"]) == pytest.approx(logged["kl"][-1], rel=RTOL)


GROUP, PROMPTS = 4, 3


@pytest.fixture(scope="module")
def trl_scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real `GRPOTrainer` (two reward functions, weights 0.5 and 2) and `RLOOTrainer` on the toy
    model; the reward functions read each completion's score from a table by the row's ``idx``,
    so the advantages TRL computes are those of known scores."""
    import warnings

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from alignloop.lm.toyworld import build_policy, build_tokenizer

    tokenizer = build_tokenizer()
    table: dict[str, torch.Tensor] = {}

    def first(prompts: list, completions: list, idx: list[int], **_: Any) -> list[float]:
        return [float(table["first"][i]) for i in idx]

    def second(prompts: list, completions: list, idx: list[int], **_: Any) -> list[float]:
        return [float(table["second"][i]) for i in idx]

    rows = [{"prompt": "how do i cook rice", "idx": i} for i in range(GROUP * PROMPTS)]
    options = dict(
        num_generations=GROUP, per_device_train_batch_size=GROUP * PROMPTS, max_completion_length=4, beta=0.0,
        report_to=[], use_cpu=True, save_strategy="no",
    )  # fmt: skip
    out = tmp_path_factory.mktemp("trl")
    with warnings.catch_warnings():  # TRL's configs use deprecated transformers arguments
        warnings.simplefilter("ignore")
        grpo = GRPOTrainer(
            model=build_policy(tokenizer, seed=0),
            reward_funcs=[first, second],
            args=GRPOConfig(output_dir=str(out / "grpo"), reward_weights=[0.5, 2.0], **options),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        rloo = RLOOTrainer(
            model=build_policy(tokenizer, seed=0),
            reward_funcs=[first],
            args=RLOOConfig(output_dir=str(out / "rloo"), **options),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    return {"grpo": grpo, "rloo": rloo, "table": table, "rows": rows}


def _trl_advantages(
    scorers: dict[str, Any], name: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    first, second = torch.randn(GROUP * PROMPTS, generator=gen), torch.randn(GROUP * PROMPTS, generator=gen)
    first[:GROUP] = 1.0  # one group of equal scores
    second[:GROUP] = -2.0
    scorers["table"].update(first=first, second=second)
    trainer = scorers[name]
    trainer.model.train()
    advantages = trainer._generate_and_score_completions(scorers["rows"])["advantages"]
    return advantages, first.view(PROMPTS, GROUP), second.view(PROMPTS, GROUP)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("scale_rewards", "scale"), [("group", True), ("none", False)])
def test_group_advantages_match_trl(
    trl_scorers: dict[str, Any], seed: int, scale_rewards: str, scale: bool
) -> None:
    """GRPO (TRL ``scale_rewards="group"``) and Dr. GRPO (``"none"``) on the weighted sum of two
    reward functions, TRL's ``reward_weights``."""
    from alignloop.core.advantages import group_advantages

    trl_scorers["grpo"].scale_rewards = scale_rewards
    theirs, first, second = _trl_advantages(trl_scorers, "grpo", seed)
    close(group_advantages(0.5 * first + 2.0 * second, scale=scale).flatten(), theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_advantages_match_trl(trl_scorers: dict[str, Any], seed: int) -> None:
    from alignloop.core.advantages import rloo_advantages

    theirs, first, _ = _trl_advantages(trl_scorers, "rloo", seed)
    close(rloo_advantages(first).flatten(), theirs)
