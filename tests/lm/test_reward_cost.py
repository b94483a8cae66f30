"""Reward and cost models: learn the toy world's judgements, resume exactly, LoRA, files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from alignloop.lm import cost, reward
from alignloop.lm.folders import is_score_folder
from alignloop.lm.models import ScoreModel
from alignloop.lm.toyworld import ToyWorld, build_tokenizer, tiny_config
from alignloop.lm.training import read_metrics

TINY = dict(toy_train_size=64, toy_eval_size=16, batch_size=8, warmup_steps=1, progress=False, eval_every=2)


def score_params(path: Path) -> dict[str, torch.Tensor]:
    return dict(ScoreModel.from_pretrained(path).state_dict())


@pytest.mark.slow
def test_reward_model_learns_toy_preferences_past_90_percent(tmp_path: Path) -> None:
    # learnable pairs: candidates without repeats or rambling, written as PKU-SafeRLHF files
    world = ToyWorld(seed=0, repeat_rate=0.0, ramble_rate=0.0)
    train_file = world.write_preference_file(tmp_path / "train.jsonl", 3000)
    eval_file = world.write_preference_file(tmp_path / "eval.jsonl", 400, "eval")
    cfg = reward.RewardConfig(
        output_dir=tmp_path / "run",
        train_file=train_file,
        eval_file=eval_file,
        epochs=2,
        lr=2e-3,
        batch_size=32,
        progress=False,
    )
    assert reward.train(cfg) == 0
    final = list(read_metrics(tmp_path / "run", "eval"))[-1]
    # the teacher's own labels agree with true helpfulness on ~97% of held-out pairs
    assert final["accuracy"] >= 0.9, final
    assert final["chosen_score"] > final["rejected_score"]


@pytest.mark.slow
def test_cost_model_learns_safety_signs(tmp_path: Path) -> None:
    cfg = cost.CostConfig(
        output_dir=tmp_path, toy_train_size=2000, toy_eval_size=400, eval_every=1000, progress=False
    )
    assert cost.train(cfg) == 0
    final = list(read_metrics(tmp_path, "eval"))[-1]
    assert final["sign_accuracy"] >= 0.9, final
    assert final["unsafe_cost"] > 0 > final["safe_cost"]  # cost 0 is the safe/unsafe boundary


@pytest.mark.parametrize("module", [reward, cost])
def test_resumed_score_model_equals_uninterrupted(tmp_path: Path, module) -> None:
    Config = module.RewardConfig if module is reward else module.CostConfig
    base = Config(max_steps=5, total_steps=5, save_every=2, grad_accum=2, **TINY)
    module.train(dataclasses.replace(base, output_dir=tmp_path / "full"))
    module.train(dataclasses.replace(base, output_dir=tmp_path / "cut", max_steps=3))
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000003")  # killed before saving step 3
    module.train(dataclasses.replace(base, output_dir=tmp_path / "cut", resume=True))
    full, cut = score_params(tmp_path / "full" / "final"), score_params(tmp_path / "cut" / "final")
    for k in full:
        torch.testing.assert_close(full[k], cut[k], rtol=0, atol=1e-6, msg=k)


def test_reward_with_lora_changes_only_adapters_and_head(tmp_path: Path) -> None:
    cfg = reward.RewardConfig(output_dir=tmp_path, max_steps=3, lora_r=4, lr=1e-2, **TINY)
    reward.train(cfg)
    trained = score_params(tmp_path / "final")
    fresh = ScoreModel.from_backbone_config(tiny_config(build_tokenizer()), seed=cfg.seed).state_dict()
    # LoRA targets the linear layers; embeddings and norms stay frozen, the head trains
    torch.testing.assert_close(trained["backbone.embed_tokens.weight"], fresh["backbone.embed_tokens.weight"])
    torch.testing.assert_close(trained["backbone.norm.weight"], fresh["backbone.norm.weight"])
    assert not torch.equal(trained["score_head.weight"], fresh["score_head.weight"])
    q = "backbone.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[q], fresh[q])  # adapters merged into the saved weights


def test_reward_trains_from_a_pku_saferlhf_file(tmp_path: Path) -> None:
    data = ToyWorld(seed=1).write_preference_file(tmp_path / "pairs.jsonl", 80)
    cfg = reward.RewardConfig(
        output_dir=tmp_path / "run", train_file=data, eval_fraction=0.25, max_steps=2, **TINY
    )
    assert reward.train(cfg) == 0
    assert list(read_metrics(tmp_path / "run", "eval"))[-1]["step"] == 2
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert is_score_folder(tmp_path / "run" / "final")


@pytest.mark.slow
def test_reward_model_learns_from_a_rating_projects_export(tmp_path: Path) -> None:
    """A rating project (1-7 on helpfulness and honesty, 3 responses an item) labelled by the
    scripted annotator from true helpfulness with noise, exported in the general format: the
    reward model trained on the export (ratings as the pairs of one judgement's ordered scores)
    orders held-out toy-world pairs by true helpfulness on >= 75% of them (measured 0.88 with
    400 items; chance 0.5)."""
    import random

    import numpy as np

    from alignloop.feedback.formats import write_records
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.schema import QUESTION_PRESETS, Candidate, Item, Judgement
    from alignloop.feedback.teachers import ScriptedAnnotator, Truth

    world = ToyWorld(seed=0, repeat_rate=0.0, ramble_rate=0.0)
    questions = QUESTION_PRESETS["rating"]
    annotator = ScriptedAnnotator(questions, world.teacher(1).noise, seed=1)
    rng = random.Random(0)
    records = []
    for i, prompt in enumerate(world.prompts("train", 250, seed=1)):
        texts = [world.candidate(prompt, rng) for _ in range(3)]
        item = Item(prompt.text, tuple(Candidate(t) for t in texts), key=f"k{i}")
        values = np.asarray([world.helpfulness(prompt.text, t) for t in texts])
        answers = annotator.answer(Truth(values, values))
        if answers is not None:
            records.append(judged_item(item, questions, [Judgement(item, answers, "ann")]))
    assert len(records) >= 200 and set(records[0].judgements[0].answers["rating"]) == {
        "helpfulness",
        "honesty",
    }
    write_records(records, tmp_path / "export.jsonl", "judgements")
    cfg = reward.RewardConfig(
        output_dir=tmp_path / "run",
        train_file=tmp_path / "export.jsonl",
        eval_file=world.write_preference_file(tmp_path / "eval.jsonl", 400, "eval"),
        epochs=1,
        lr=2e-3,
        batch_size=32,
        progress=False,
    )
    assert reward.train(cfg) == 0
    final = list(read_metrics(tmp_path / "run", "eval"))[-1]
    assert final["accuracy"] >= 0.75, final
