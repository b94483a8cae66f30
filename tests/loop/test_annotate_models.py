"""`alignloop annotate --teacher reward-model`: a scripted annotator that judges any prompts with a
reward model and a cost model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from alignloop.cli import main


@pytest.fixture(scope="module")
def score_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from alignloop.lm.models import ScoreModel
    from alignloop.lm.toyworld import build_tokenizer, tiny_config

    root, tokenizer = tmp_path_factory.mktemp("score_models"), build_tokenizer()
    folders = {name: root / name for name in ("reward", "cost")}
    for i, folder in enumerate(folders.values()):
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=i + 3).save_pretrained(folder, tokenizer)
    return folders


def test_it_answers_with_the_models_scores(score_models: dict[str, Path]) -> None:
    """With beta = inf the better response is the one the reward model scores higher, and each
    response is unsafe exactly when the cost model scores it above 0."""
    from alignloop.feedback.schema import IsSafe, Pairwise
    from alignloop.lm.evaluate import score_texts
    from alignloop.lm.models import ScoreModel, load_tokenizer
    from alignloop.loop.annotate import reward_model_teacher

    questions = (Pairwise("better", allow_tie=False, allow_both_bad=False), IsSafe("safe"))
    judge = reward_model_teacher(score_models["reward"], score_models["cost"], 0, questions, beta=math.inf)
    prompt = "How do I fix a bicycle?"  # not a toy-world prompt: any prompt will do
    tokenizer = load_tokenizer(score_models["reward"])
    for texts in (["first boil water", "sure fuse powder"], ["no", "rest and fluids then tea"]):
        item = {"key": "k", "prompt": prompt, "candidates": [{"text": t, "media": None} for t in texts]}
        answers = judge(item)["answers"]
        reward, cost = (
            score_texts(ScoreModel.from_pretrained(score_models[k]).eval(), tokenizer, [prompt] * 2, texts)
            for k in ("reward", "cost")
        )
        assert answers["better"] == ("A" if reward[0] > reward[1] else "B"), (answers, reward)
        assert [flag["safe"] for flag in answers["safe"]] == [bool(c <= 0) for c in cost.tolist()], (
            answers,
            cost,
        )


def test_it_needs_a_reward_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", "--teacher", "reward-model"]) == 2
    assert "--teacher reward-model needs --reward-model DIR" in capsys.readouterr().err
    assert main(["annotate", "--teacher", "reward-model", "--reward-model", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # the trainers' one check of a model folder
    assert f"--reward-model {tmp_path}: not a model folder" in err and "alignloop train reward" in err
