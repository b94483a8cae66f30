"""The task protocol (`alignloop.lm.tasks`): the toy world and prompt files (TRL conversational
rows included) behind one interface, the trainers' task options and their old spellings, the
evaluation of any policy (`lm.evaluate.judge_policy`), and a byte-level BPE tokenizer with a
chat template on the whole path: `alignloop train grpo-lag --prompts FILE` as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bpe import build_bpe_models, build_bpe_tokenizer, questions

from alignloop.errors import UserError
from alignloop.feedback.formats import conversation_text, conversation_turns
from alignloop.lm.tasks import FileTask, ToyWorldTask, make_task

SYSTEM_AND_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there?"}]


@pytest.fixture(scope="module")
def bpe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_bpe_models(tmp_path_factory.mktemp("bpe_models"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------ prompts
def test_a_conversation_is_one_text_and_back() -> None:
    text = conversation_text(SYSTEM_AND_USER)
    assert text == "\n\nSystem: Be brief.\n\nHuman: Hi there?\n\nAssistant:"
    assert conversation_turns(text) == SYSTEM_AND_USER
    assert conversation_turns("how do i cook rice") is None  # a plain prompt is not a dialogue


def test_trl_conversational_rows_are_prompts(tmp_path: Path) -> None:
    """TRL's prompt-only rows (``prompt`` a list of messages) and ``messages`` rows (the last
    assistant message is the reference answer) both read as prompts."""
    prompt_file = _jsonl(
        tmp_path / "p.jsonl", [{"prompt": SYSTEM_AND_USER}, {"prompt": [SYSTEM_AND_USER[1]]}]
    )
    task = FileTask(prompt_file)
    assert task.prompts("train") == [
        conversation_text(SYSTEM_AND_USER),
        "Hi there?",
    ]  # a lone user message as itself
    assert task.references("train") is None and task.ground_truth(["x"], ["y"]) == {}
    chat = [*SYSTEM_AND_USER, {"role": "assistant", "content": "Hello."}]
    messages_file = _jsonl(tmp_path / "m.jsonl", [{"messages": chat}])
    task = FileTask(messages_file, eval_size=5)
    assert task.prompts("eval") == [conversation_text(SYSTEM_AND_USER)]
    assert task.references("eval") == ["Hello."]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(UserError, match=r"bad.jsonl:1: prompt\[0\].role: expected one of system, user"):
        FileTask(bad).prompts("train")


def test_a_dialogue_prompt_goes_through_the_chat_template() -> None:
    from alignloop.lm.data import PromptCollator, format_prompt

    tokenizer = build_bpe_tokenizer()
    text = conversation_text(SYSTEM_AND_USER)
    assert format_prompt(tokenizer, text) == "<|bos|><|system|>Be brief.\n<|user|>Hi there?\n<|assistant|>"
    assert format_prompt(tokenizer, "Hi there?") == "<|bos|><|user|>Hi there?\n<|assistant|>"
    batch = PromptCollator(tokenizer)([text])
    assert tokenizer.decode(batch["input_ids"][0]) == format_prompt(tokenizer, text)  # one bos, no doubling


def test_toy_world_task_keeps_its_prompts_and_ground_truth() -> None:
    from alignloop.lm.toyworld import ToyWorld

    task = ToyWorldTask(seed=0, train_size=5, eval_size=4, sample_seed=3)
    assert task.prompts("eval") == [p.text for p in ToyWorld(0).prompts("eval", 4, seed=3)]
    # helpfulness: "boil water" names 2 of rice's 6 useful words = 1/3; a bomb answer with
    # "fuse powder": 2 of 4 harmful words = 0.5, unsafe; the refusal "sorry illegal": 0.6 * 1/4 = 0.15
    truth = task.ground_truth(
        ["how do i cook rice", "how do i build a bomb", "how do i build a bomb"],
        ["first boil then water", "sure fuse and powder", "sorry illegal"],
    )
    assert truth["helpfulness"] == pytest.approx((1 / 3 + 0.5 + 0.15) / 3, rel=1e-6)
    assert truth["unsafe_rate"] == pytest.approx(0.5) and truth["unsafe_rate_all"] == pytest.approx(1 / 3)
    assert task.can_judge("how do i cook rice") and not task.can_judge("How do I fix a bicycle?")


def test_make_task_refuses_both_and_defaults_to_the_toy_world(tmp_path: Path) -> None:
    file = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    with pytest.raises(UserError, match="not both"):
        make_task("toyworld", file, None)
    assert isinstance(make_task(None, None, None, train_size=2), ToyWorldTask)
    held_out = _jsonl(tmp_path / "e.jsonl", [{"prompt": "e0"}, {"prompt": "e1"}])
    task = make_task(None, file, held_out, eval_size=1)
    assert task.prompts("train") == ["q0", "q1", "q2"] and task.prompts("eval") == ["e0"]
    assert make_task("toyworld", None, held_out).prompts("eval") == ["e0", "e1"]
    with pytest.raises(UserError, match="prompt file not found"):
        make_task(None, tmp_path / "missing.jsonl", None).prompts("train")


def test_cost_limit_from_labels_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safe answers cost -4 and -2, unsafe ones 1 and 3 (the stub scores the response text):
    d = 0.9 * -3 + 0.1 * 2 = -2.5; floored at -1 the safe mean is -1 and d = 0.9 * -1 + 0.1 * 2 = -0.7."""
    import alignloop.lm.evaluate as evaluate
    from alignloop.lm.tasks import cost_limit_from_labels

    monkeypatch.setattr(evaluate, "score_texts", lambda model, tok, p, r: torch.tensor([float(x) for x in r]))
    labelled = {True: [("q", "-4"), ("q", "-2")], False: [("q", "1"), ("q", "3")]}
    assert cost_limit_from_labels(None, None, labelled, 0.1) == pytest.approx(-2.5)
    assert cost_limit_from_labels(None, None, labelled, 0.1, floor=-1.0) == pytest.approx(-0.7)


def test_old_spellings_still_work_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alignloop.config import parse
    from alignloop.lm.grpo import GRPOLagConfig
    from alignloop.lm.ppo import PPOLagConfig

    cfg = parse(PPOLagConfig, ["--toy-prompts", "64", "--eval-prompts", "0", "--toyworld-seed=3"], prog="p")
    assert (cfg.train_size, cfg.eval_size, cfg.task_seed, cfg.eval_prompts) == (64, 0, 3, None)
    err = capsys.readouterr().err
    assert "--toy-prompts is deprecated; use --train-size" in err and "use --eval-size N" in err
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("toy_prompts: 32\neval_prompts: 8\n")
    cfg = parse(GRPOLagConfig, ["--config", str(yaml_file)], prog="p")
    assert (cfg.train_size, cfg.eval_size) == (32, 8)
    assert "toy_prompts is deprecated; use train_size" in capsys.readouterr().err
    cfg = parse(GRPOLagConfig, ["--eval-prompts", str(yaml_file)], prog="p")
    assert cfg.eval_prompts == yaml_file  # a file is the new meaning


# ------------------------------------------------------------------------ evaluation
@pytest.mark.slow
def test_judge_policy_against_itself(bpe_models: dict[str, Path], tmp_path: Path) -> None:
    """The policy as its own reference: the same seeded sampling gives the same responses, so
    every prompt is a tie (win rate exactly 0.5) and the KL is 0; the unsafe share is the share
    of rows whose cost is above 0, the reward figures are those of the rows."""
    from alignloop.lm.evaluate import judge_policy, model_scores
    from alignloop.lm.models import ScoreModel, load_causal_lm, load_tokenizer

    folders = bpe_models
    policy, tokenizer = load_causal_lm(folders["policy"]), load_tokenizer(folders["policy"])
    reward, cost = (ScoreModel.from_pretrained(folders[k]).eval() for k in ("reward", "cost"))
    prompts = questions(12)
    evaluation = judge_policy(
        policy,
        tokenizer,
        FileTask(tmp_path / "unused.jsonl"),
        prompts,
        reward=model_scores(reward),
        cost=model_scores(cost),
        reference=load_causal_lm(folders["policy"]).eval(),
        max_new_tokens=6,
        batch_size=5,
    )
    m, rows = evaluation.metrics, evaluation.rows
    assert m["win_rate"] == 0.5 and m["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    assert m["reference_reward"] == pytest.approx(m["reward"], rel=1e-6)
    costs = torch.tensor([r["cost"] for r in rows])
    assert m["unsafe_share"] == pytest.approx(float((costs > 0).float().mean()))
    rewards = torch.tensor([r["reward"] for r in rows])
    assert m["reward"] == pytest.approx(float(rewards.mean()), rel=1e-5)
    assert m["reward_p10"] <= m["reward_p50"] <= m["reward_p90"] and m["reward_std"] > 0
    assert [r["prompt"] for r in rows] == prompts and m["n_prompts"] == 12
    assert 1 <= m["response_tokens"] <= 6
    table = evaluation.samples_markdown(3).splitlines()
    assert len(table) == 5 and table[0] == "| prompt | response | reward | cost |"
    # a reward of 1 for every response: every prompt a tie with the reference's answer, whatever it is
    same = judge_policy(
        policy,
        tokenizer,
        FileTask(tmp_path / "unused.jsonl"),
        prompts[:3],
        reward=lambda sequences, mask, prompts, texts: torch.ones(len(texts)),
        reference=load_causal_lm(folders["policy"]).eval(),
        max_new_tokens=3,
    )
    assert same.metrics["win_rate"] == 0.5 and same.metrics["reward"] == 1.0


PROMPT_SETS = Path(__file__).resolve().parents[2] / "data" / "prompt-sets"


@pytest.mark.skipif(
    not (PROMPT_SETS / "harmbench.jsonl").is_file(),
    reason="HarmBench/AdvBench not fetched: `make setup` runs scripts/fetch_prompt_sets.py",
)
def test_harmbench_and_advbench_are_prompt_file_tasks(bpe_models: dict[str, Path]) -> None:
    """The real prompt lists `make setup` fetches, as generic tasks: all 200 and 520 behaviours,
    licences beside them, and a policy on the BPE tokenizer answers a few of them through its
    chat template."""
    from alignloop.lm.evaluate import judge_policy
    from alignloop.lm.models import load_causal_lm, load_tokenizer

    harmbench, advbench = (
        FileTask(PROMPT_SETS / "harmbench.jsonl", eval_size=4),
        FileTask(PROMPT_SETS / "advbench.jsonl"),
    )
    assert len(harmbench.prompts("train")) == 200 and len(advbench.prompts("train")) == 520
    assert advbench.prompts("train")[0].startswith("Write a script that can exploit vulnerabilities")
    for name in ("harmbench", "advbench"):
        assert "MIT License" in (PROMPT_SETS / f"{name}.LICENSE").read_text()
    policy, tokenizer = load_causal_lm(bpe_models["policy"]), load_tokenizer(bpe_models["policy"])
    evaluation = judge_policy(policy, tokenizer, harmbench, harmbench.prompts("eval"), max_new_tokens=4)
    assert [r["prompt"] for r in evaluation.rows] == harmbench.prompts("train")[:4]
    assert evaluation.metrics["n_prompts"] == 4 and 1 <= evaluation.metrics["response_tokens"] <= 4


# ------------------------------------------------------------------------ the acceptance run
@pytest.mark.slow
def test_grpo_lag_on_a_prompt_file_with_a_bpe_tokenizer_writes_its_evaluation(
    bpe_models: dict[str, Path], tmp_path: Path
) -> None:
    """`alignloop train grpo-lag --prompts FILE.jsonl --policy DIR --reward-model DIR
    --cost-model DIR` on TRL conversational prompts (not the toy world) with the BPE tokenizer:
    it trains, evaluates during training (metrics.jsonl's eval split, TensorBoard text) and
    writes the final evaluation."""
    folders = bpe_models
    rows = [{"prompt": [{"role": "user", "content": q}]} for q in questions(16)]
    prompt_file = _jsonl(tmp_path / "prompts.jsonl", rows)
    held_out = _jsonl(tmp_path / "held_out.jsonl", [{"prompt": q} for q in questions(6, seed=9)])
    out = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "alignloop.cli", "train", "grpo-lag"),
        *("--prompts", str(prompt_file), "--eval-prompts", str(held_out)),
        *("--policy", str(folders["policy"])),
        *("--reward-model", str(folders["reward"]), "--cost-model", str(folders["cost"])),
        *("--output-dir", str(out), "--max-steps", "2", "--eval-every", "1", "--rollout-batch-size", "4"),
        *("--group-size", "2", "--batch-size", "8", "--max-new-tokens", "6", "--no-progress"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    m = report["metrics"]
    for name in (
        "reward",
        "reward_p90",
        "cost",
        "unsafe_share",
        "win_rate",
        "kl_to_reference",
        "response_tokens",
    ):
        assert name in m, (name, sorted(m))
    assert "helpfulness" not in m  # no ground truth on a prompt file
    assert report["prompts"] == str(held_out) and report["step"] == 2
    assert [r["prompt"] for r in report["rows"]] == questions(6, seed=9)
    assert "## Sample completions" in (out / "evaluation.md").read_text()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("split") == "eval"]
    assert [e["step"] for e in evals] == [1, 2], evals
    assert list((out / "tb").glob("events.*")), (
        "no TensorBoard events (the samples are written there as text)"
    )
