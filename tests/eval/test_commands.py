"""`alignloop eval` end to end on tiny random policies, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from alignloop.eval.commands import EvalConfig, run  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two tiny random policies, a reward model and a cost model, saved as HF folders."""
    import torch

    from alignloop.lm.models import ScoreModel
    from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = build_tokenizer()
    out = {}
    for seed, name in enumerate(("sft", "ppo")):
        out[name] = root / name / "final"
        build_policy(tokenizer, seed).save_pretrained(str(out[name]))
        tokenizer.save_pretrained(str(out[name]))
    for seed, name in enumerate(("reward", "cost")):
        out[name] = root / name
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=seed).save_pretrained(
            out[name], tokenizer
        )
    torch.set_num_threads(threads)
    return out


def test_cli_end_to_end_on_the_toy_world(folders, tmp_path):
    out = tmp_path / "eval"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="120")
    args = [folders["sft"], f"aligned={folders['ppo']}", "--toyworld", "--n-prompts", "24"]
    args += ["--reward-model", folders["reward"], "--cost-model", folders["cost"], "--output-dir", out]
    args += ["--bootstrap-rounds", "30", "--tie-tolerance", "0.01", "--reference", "sft"]
    proc = subprocess.run(
        [sys.executable, "-m", "alignloop.cli", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "eval.json").read_text())
    assert list(report["policies"]) == ["sft", "aligned"]  # "final" folders take their parent's name
    for row in report["policies"].values():
        assert row["n_prompts"] == 24
        assert {"reward", "cost", "helpfulness", "mean_win_rate"} <= set(row)
    rates = report["win_rates"]
    assert rates["sft"]["aligned"] + rates["aligned"]["sft"] == pytest.approx(1.0)
    assert report["policies"]["aligned"]["win_rate_vs_reference"] == rates["aligned"]["sft"]
    assert (
        "kl_to_reference" in report["policies"]["aligned"]
        and "kl_to_reference" not in report["policies"]["sft"]
    )
    assert report["judge"] == "reward model"
    assert [r["model"] for r in report["leaderboard"]] and len(report["leaderboard"]) == 2
    for r in report["leaderboard"]:
        assert r["lower"] <= r["rating"] <= r["upper"] and r["games"] == 24
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 48 and {"reward", "cost"} <= set(responses[0])
    # the report's rates are those of the responses: the share of costs above 0, and the toy
    # world's judges on the risky prompts (helpfulness over all of them)
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(seed=0)
    for name, row in report["policies"].items():
        mine = [r for r in responses if r["policy"] == name]
        assert row["unsafe_rate"] == pytest.approx(sum(r["cost"] > 0 for r in mine) / 24, abs=1e-12)
        risky = [r for r in mine if world.prompt(r["prompt"]).risky]
        unsafe = sum(world.is_unsafe(world.prompt(r["prompt"]), r["response"]) for r in risky)
        assert risky and row["true_unsafe_rate"] == pytest.approx(unsafe / len(risky), abs=1e-12)
        helpful = sum(world.helpfulness(world.prompt(r["prompt"]), r["response"]) for r in mine) / 24
        assert row["helpfulness"] == pytest.approx(helpful, abs=1e-12)
    for png in ("reward_cost.png", "leaderboard.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| sft |" in (out / "eval.md").read_text() and "| sft |" in proc.stdout


def test_prompt_file_and_identical_policies_tie(folders, tmp_path, capsys):
    """The same policy under two names samples the same responses: every prompt a tie, 0.5."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"how do i cook rice {i}"}) + "\n" for i in range(6)))
    cfg = EvalConfig(
        policies=(f"a={folders['sft']}", f"b={folders['sft']}", f"c={folders['ppo']}"),
        prompts=prompts,
        reward_model=folders["reward"],
        output_dir=tmp_path / "out",
        bootstrap_rounds=10,
        max_new_tokens=6,
        aligner=folders["ppo"],  # any causal LM can stand in for an aligner here
        n_prompts=4,
        reference="a",
    )
    assert run(cfg) == 0
    assert "using the first 4 of 6 prompts" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert list(report["policies"]) == ["a", "b", "c", "a+aligner", "b+aligner", "c+aligner"]
    assert report["win_rates"]["a"]["b"] == 0.5 and report["n_prompts"] == 4
    assert report["win_rates"]["a+aligner"]["b+aligner"] == 0.5  # same answers, same corrections
    b, c = report["policies"]["b"], report["policies"]["c"]
    assert b["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and b["win_rate_vs_reference"] == 0.5
    assert c["kl_to_reference"] != pytest.approx(0.0, abs=1e-3)  # another policy: its own log-ratio
    markdown = (tmp_path / "out" / "eval.md").read_text()
    assert "## Sample responses" in markdown and "| how do i cook rice 0 |" in markdown
    assert "unsafe_rate" not in report["policies"]["a"]  # no cost model, no unsafe rate
    assert "helpfulness" not in report["policies"]["a"]  # no toy world, no ground truth
    assert not (tmp_path / "out" / "reward_cost.png").exists()
    assert (tmp_path / "out" / "leaderboard.png").exists()


def test_toyworld_without_reward_model_judges_by_ground_truth(folders, tmp_path):
    cfg = EvalConfig(
        policies=(str(folders["sft"]), str(folders["ppo"])),
        toyworld=True,
        n_prompts=8,
        output_dir=tmp_path / "out",
        bootstrap_rounds=0,
        max_new_tokens=6,
        tie_tolerance=0.01,
    )
    assert run(cfg) == 0
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["judge"].startswith("toy-world helpfulness")
    assert "reward" not in report["policies"]["sft"]


def _error(cfg: EvalConfig, capsys) -> str:
    assert run(cfg) == 2
    return capsys.readouterr().err


def test_missing_model_folder_is_named(folders, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = _error(EvalConfig(policies=(str(folders["sft"]), f"rl={missing}"), toyworld=True), capsys)
    assert "policy 'rl'" in err and str(missing) in err and "no such folder" in err
    err = _error(EvalConfig(policies=(str(folders["sft"]),), toyworld=True, reward_model=missing), capsys)
    assert "--reward-model" in err and str(missing) in err
    err = _error(
        EvalConfig(policies=(str(folders["sft"]),), toyworld=True, cost_model=folders["sft"]), capsys
    )
    assert "--cost-model" in err and "not a reward or cost model" in err
    err = _error(EvalConfig(policies=(str(folders["sft"]),), toyworld=True, aligner=missing), capsys)
    assert "--aligner" in err and str(missing) in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(EvalConfig(policies=(str(empty),), toyworld=True), capsys)
    assert "no config.json" in err


def test_empty_or_broken_prompt_file_and_bad_options(folders, tmp_path, capsys):
    policy = (str(folders["sft"]),)
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    err = _error(EvalConfig(policies=policy, prompts=empty), capsys)
    assert str(empty) in err and "holds no prompts" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi"}\n{"prompt": 3}\n')
    err = _error(EvalConfig(policies=policy, prompts=broken), capsys)
    assert f"{broken}:2: prompt" in err
    err = _error(EvalConfig(policies=policy), capsys)
    assert "--prompts FILE or --toyworld" in err
    err = _error(EvalConfig(policies=policy, prompts=empty, toyworld=True), capsys)
    assert "exactly one" in err
    err = _error(EvalConfig(policies=(f"x={folders['sft']}", f"x={folders['ppo']}"), toyworld=True), capsys)
    assert "two policies are named 'x'" in err
    err = _error(EvalConfig(policies=policy, toyworld=True, temperature=0.0), capsys)
    assert "temperature: must be > 0, got 0.0" in err
    err = _error(EvalConfig(policies=policy, toyworld=True, confidence=1.5), capsys)
    assert "confidence: must be between 0 and 1" in err


def test_without_a_judge_there_are_no_win_rates(folders, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "how do i cook rice", "response": "boil water"}]))
    cfg = EvalConfig(
        policies=(str(folders["sft"]), str(folders["ppo"])), prompts=prompts, output_dir=tmp_path / "out"
    )
    assert run(cfg) == 0
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["judge"] is None and report["win_rates"] is None and report["leaderboard"] is None
    assert report["plots"] == {} and report["policies"]["sft"]["n_prompts"] == 1
    assert "Pairwise judge: none" in (tmp_path / "out" / "eval.md").read_text()


def test_scores_match_the_training_encoding(folders):
    """`score_responses` gives the same end scores as `alignloop.lm.evaluate.score_texts`."""
    import torch

    from alignloop.eval.commands import score_responses
    from alignloop.lm.evaluate import score_texts
    from alignloop.lm.models import ScoreModel, load_tokenizer

    model, tokenizer = ScoreModel.from_pretrained(folders["reward"]).eval(), load_tokenizer(folders["reward"])
    prompts = ["how do i cook rice", "tell me how to make poison", "hi"]
    responses = ["first boil then salt", "sorry illegal", "sure"]
    expected = score_texts(model, tokenizer, prompts, responses, batch_size=2)
    got = torch.tensor(score_responses(model, tokenizer, prompts, responses, batch_size=2))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_device_option_errors(folders, capsys):
    import torch

    policy = (str(folders["sft"]),)
    err = _error(EvalConfig(policies=policy, toyworld=True, device="tpu"), capsys)
    assert "device: 'tpu' is not one of" in err
    if not torch.cuda.is_available():
        err = _error(EvalConfig(policies=policy, toyworld=True, device="cuda"), capsys)
        assert "CUDA is not available" in err
