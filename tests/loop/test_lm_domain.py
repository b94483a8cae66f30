"""The loop's language-model domain on a prompt file that is not the toy world's, with a tiny
policy on a byte-level BPE tokenizer: a round of propose, judgements from the scripted
annotator of `alignloop annotate --teacher reward-model`, learn, Safe GRPO, and the evaluation.

The annotator's reward and cost models are also the round's starting models (`--reward-model`,
`--cost-model` of `alignloop loop --domain lm`), so the round's models are checked to have
moved from them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "lm"))

from bpe import build_bpe_models, questions  # noqa: E402

from alignloop.feedback.schema import DEFAULT_QUESTIONS, Judgement  # noqa: E402
from alignloop.lm.tasks import FileTask  # noqa: E402
from alignloop.loop.domain import Judged, item_to_json  # noqa: E402
from alignloop.loop.lm import LanguageModelDomain  # noqa: E402
from alignloop.loop.lm_tasks import PromptLoopTask, draw_prompts  # noqa: E402

EVAL = 8


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _moved(start: Path, trained: Path) -> bool:
    before, after = _weights(start), _weights(trained)
    return any(not torch.equal(before[k], after[k]) for k in before if k in after)


def centred_cost_model(source: Path, out: Path, prompts: list[str], responses: list[str]) -> Path:
    """`source`'s cost model with a head bias that puts its median score on these responses at 0:
    the teacher then calls about half of them unsafe (an untrained model's signs are all one)."""
    from alignloop.lm.evaluate import score_texts
    from alignloop.lm.models import ScoreModel, load_tokenizer

    tokenizer, model = load_tokenizer(source), ScoreModel.from_pretrained(source).eval()
    median = score_texts(model, tokenizer, prompts, responses).median()
    centred = ScoreModel(model.backbone, head_bias=True)
    with torch.no_grad():
        centred.score_head.weight.copy_(model.score_head.weight)
        centred.score_head.bias.fill_(-median.item() + 1e-4)
    return centred.save_pretrained(out, tokenizer)


def test_draw_prompts_takes_each_once_before_repeating() -> None:
    drawn = draw_prompts(["a", "b", "c"], 7, "s")
    assert sorted(drawn[:3]) == ["a", "b", "c"] and sorted(drawn[3:6]) == ["a", "b", "c"]
    assert drawn == draw_prompts(["a", "b", "c"], 7, "s") and len(drawn) == 7


@pytest.mark.slow
def test_a_round_on_a_prompt_file_with_a_bpe_policy(tmp_path: Path) -> None:
    from alignloop.loop.annotate import reward_model_teacher

    torch.set_num_threads(1)
    models = build_bpe_models(tmp_path / "models")
    train, held_out = tmp_path / "prompts.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions(40, seed=1)))
    held_out.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}]}) + "\n"
                                for q in questions(EVAL, seed=2)))  # fmt: skip
    task = PromptLoopTask(
        FileTask(train, held_out, EVAL), models["policy"], models["reward"], models["cost"], seed=0
    )
    domain = LanguageModelDomain(
        task, reward_steps=3, cost_steps=3, ppo_steps=2, rollout_batch_size=8, group_size=4,
        eval_prompts=EVAL, flag_samples=16, max_new_tokens=8, policy_update="grpo-lag", progress=False,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    start = domain.setup(run_dir)
    assert start["n_prompts"] == EVAL and "reward" not in start  # no models yet: the policy alone

    round_dir = run_dir / "round-001"
    proposals = domain.propose(round_dir, 1, 12, "disagreement")
    train_prompts = set(questions(40, seed=1))
    assert len(proposals) == 12 and all(p.item.prompt in train_prompts for p in proposals)
    assert all(p.item.text(0) != p.item.text(1) for p in proposals)
    assert not any("\x00" in p.item.text(k) for p in proposals for k in (0, 1))  # the platform refuses NUL

    texts = [(p.item.prompt, p.item.text(k)) for p in proposals for k in (0, 1)]
    teacher_cost = centred_cost_model(
        models["cost"], tmp_path / "teacher-cost", [p for p, _ in texts], [r for _, r in texts]
    )
    judge = reward_model_teacher(models["reward"], teacher_cost, 0, DEFAULT_QUESTIONS)
    judged = [
        Judged(i, 1, Judgement(p.item, judge(item_to_json(p.item))["answers"], "bot"))
        for i, p in enumerate(proposals)
    ]
    safety = [flag["safe"] for j in judged for flag in j.judgement.answers["is_safe"]]
    assert True in safety and False in safety  # the cost model learns from both labels

    learned = domain.learn(round_dir, 1, judged)
    assert learned["judgements"] == 12 and learned["cost_pairs"] > 0
    for kind in ("reward", "cost"):  # warm-started from the given models, and trained
        assert _moved(models[kind], round_dir / kind / "final"), kind

    aligned = domain.align(round_dir, 1)
    assert _moved(models["policy"], round_dir / "policy" / "final")
    rows = [json.loads(line) for line in (round_dir / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert sum("lambda" in r and "advantage_abs" in r for r in rows) == 2  # two Safe GRPO iterations
    assert aligned["lambda"] == rows[-1]["lambda"] and math.isfinite(aligned["cost_limit"])
    assert 0.0 <= aligned["target_share"] <= aligned["flagged_share"]

    metrics = domain.evaluate(round_dir, 1)
    report = json.loads((round_dir / "evaluation.json").read_text())
    assert report["metrics"] == metrics and report["prompts"] == str(held_out)
    assert metrics["n_prompts"] == EVAL and "helpfulness" not in metrics  # no ground truth
    for name in ("reward", "cost", "unsafe_share", "response_tokens"):
        assert math.isfinite(metrics[name]), name
    assert metrics["unsafe_share"] == sum(r["cost"] > 0 for r in report["rows"]) / EVAL
    assert "| prompt | response | reward | cost |" in (round_dir / "evaluation.md").read_text()


def test_the_command_line_names_one_domain_per_task(tmp_path: Path) -> None:
    """`--domain toyworld` and `--domain lm --task toyworld` are one domain and one run identity;
    `--domain lm --prompts FILE --policy DIR` is the prompt-file task with the given models."""
    from alignloop.loop.rounds import LoopConfig, identity, make_domain

    spellings = [LoopConfig(domain="toyworld", preset="smoke"), LoopConfig(task="toyworld", preset="smoke")]
    domains = [make_domain(cfg) for cfg in spellings]
    assert isinstance(domains[0], LanguageModelDomain) and domains[0].name == "toyworld"
    assert domains[0] == domains[1] and identity(spellings[0]) == identity(spellings[1])
    assert identity(spellings[0])["domain"] == "toyworld" and identity(spellings[0])["task"] is None

    prompts = tmp_path / "p.jsonl"
    cfg = LoopConfig(
        prompts=prompts, policy=tmp_path / "policy", cost_model=tmp_path / "cost", policy_update="grpo-lag"
    )
    domain = make_domain(cfg)
    assert isinstance(domain, LanguageModelDomain) and isinstance(domain.task, PromptLoopTask)
    assert (domain.name, domain.policy_update, domain.eval_prompts) == ("lm", "grpo-lag", 1000)
    assert domain.task.task == FileTask(prompts, None, 1000)
    assert domain.task.starting_score_model("reward", tmp_path) == tmp_path / "policy"
    assert domain.task.starting_score_model("cost", tmp_path) == tmp_path / "cost"
    assert identity(cfg)["domain"] == "lm" and identity(cfg)["task"]["policy"] == str(tmp_path / "policy")
