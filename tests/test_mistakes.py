"""A table of the mistakes a user makes, for every command group: each ends in one message that
names the offending path or option, a non-zero exit code, and no traceback.

Most rows run in this process through `alignloop.cli.main` (the same code path as the command,
without a Python start-up each); a few run as real subprocesses, as a user sees them. The files
they need (a tiny model folder, a score-model folder, data files, a control run) are made once
per session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

from alignloop.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Mistake:
    name: str
    argv: tuple[str, ...]
    """The command line; {key} is replaced by the path of that fixture file."""
    named: tuple[str, ...]
    """Text the message must contain: the offending path or option, and what is wrong."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the rows refer to as {name}: good inputs to pair with one bad one, and bad inputs."""
    import datasets
    import torch

    from alignloop.lm.models import ScoreModel
    from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config

    root = tmp_path_factory.mktemp("mistakes")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = root / "model"
    build_policy(tokenizer).save_pretrained(str(model))
    tokenizer.save_pretrained(str(model))
    score = root / "score"
    ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=0).save_pretrained(
        score, tokenizer=tokenizer
    )
    weights_only = root / "no-tokenizer"
    build_policy(tokenizer).save_pretrained(str(weights_only))
    damaged = root / "damaged"
    build_policy(tokenizer).save_pretrained(str(damaged))
    tokenizer.save_pretrained(str(damaged))
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    run = root / "run"
    (run / "final").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (run / "final" / name).write_bytes((model / name).read_bytes())
    data_folder = root / "data-folder"
    datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}).save_to_disk(
        str(data_folder)
    )
    pair = {"prompt": "how do I boil an egg", "chosen": "in water", "rejected": "no"}
    (root / "three.jsonl").write_text("".join(json.dumps(pair) + "\n" for _ in range(3)))
    (root / "empty.jsonl").write_text("")
    (root / "bad-row.jsonl").write_text(
        json.dumps(pair) + "\n" + json.dumps({"prompt": 3, "chosen": "x"}) + "\n"
    )
    (root / "not-json.jsonl").write_text("{not json\n")
    (root / "pairs.txt").write_text("prompt chosen rejected\n")
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (root / "config.yaml").write_text("max-stepz: 3\n")
    (root / "not-yaml.yaml").write_text("a: [1\n")
    (root / "empty-password.txt").write_text("\n")
    (root / "password.txt").write_text("secret\n")
    (root / "a-file").write_text("x")
    return {
        "model": str(model),
        "score": str(score),
        "no_tokenizer": str(weights_only),
        "damaged": str(damaged),
        "run": str(run),
        "data_folder": str(data_folder),
        "missing": str(root / "missing.jsonl"),
        "missing_dir": str(root / "missing"),
        **{
            name.replace("-", "_").replace(".", "_"): str(root / name)
            for name in ("three.jsonl", "empty.jsonl", "bad-row.jsonl", "not-json.jsonl", "pairs.txt")
            + (
                "prompts.jsonl",
                "config.yaml",
                "not-yaml.yaml",
                "empty-password.txt",
                "password.txt",
                "a-file",
            )
        },
        "out": str(root / "out"),
        "under_file": str(root / "a-file" / "out"),
        "dead_url": f"http://127.0.0.1:{_free_port()}",
    }


TRAIN = [
    Mistake("dpo missing train file", ("train", "dpo", "--train-file", "{missing}"), ("--train-file", "{missing}", "no such file")),
    Mistake("dpo empty train file", ("train", "dpo", "--train-file", "{empty_jsonl}"), ("{empty_jsonl}", "no rows")),
    Mistake("dpo unknown file type", ("train", "dpo", "--train-file", "{pairs_txt}"), ("{pairs_txt}", "unknown file type '.txt'")),
    Mistake("dpo bad row", ("train", "dpo", "--train-file", "{bad_row_jsonl}"), ("{bad_row_jsonl}:2", "prompt")),
    Mistake("dpo invalid JSON", ("train", "dpo", "--train-file", "{not_json_jsonl}"), ("{not_json_jsonl}:1", "not valid JSON")),
    Mistake("dpo model is a data folder", ("train", "dpo", "--model", "{data_folder}"), ("--model", "{data_folder}", "datasets folder")),
    Mistake("dpo model missing", ("train", "dpo", "--model", "{missing_dir}"), ("--model", "{missing_dir}", "no such folder")),
    Mistake("dpo model is a hub id", ("train", "dpo", "--model", "org/name"), ("--model org/name", "not downloaded")),
    Mistake("dpo model is a run folder", ("train", "dpo", "--model", "{run}"), ("--model", "{run}/final")),
    Mistake("dpo model damaged", ("train", "dpo", "--model", "{damaged}"), ("{damaged}", "cannot load the model")),
    Mistake("dpo model without tokenizer", ("train", "dpo", "--model", "{no_tokenizer}"), ("{no_tokenizer}", "no tokenizer")),
    Mistake("dpo model is a score model", ("train", "dpo", "--model", "{score}"), ("--model", "{score}", "not a causal LM")),
    Mistake("dpo ref model missing", ("train", "dpo", "--ref-model", "{missing_dir}"), ("--ref-model", "{missing_dir}")),
    Mistake("dpo 3 rows, batch 32", ("train", "dpo", "--model", "{model}", "--train-file", "{three_jsonl}"), ("--batch-size 32", "{three_jsonl}", "--batch-size 2 or less")),
    Mistake("dpo grad accum 0", ("train", "dpo", "--model", "{model}", "--train-file", "{three_jsonl}", "--batch-size", "2", "--grad-accum", "0"), ("--grad-accum",)),
    Mistake("sft output under a file", ("train", "sft", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("sft prompt-only file", ("train", "sft", "--train-file", "{prompts_jsonl}"), ("{prompts_jsonl}", "prompts only")),
    Mistake("reward model missing", ("train", "reward", "--model", "{missing_dir}"), ("--model", "{missing_dir}")),
    Mistake("cost train file missing", ("train", "cost", "--train-file", "{missing}"), ("--train-file", "{missing}")),
    Mistake("aligner train file missing", ("train", "aligner", "--train-file", "{missing}"), ("--train-file", "{missing}")),
    Mistake("ppo policy missing", ("train", "ppo", "--policy", "{missing_dir}"), ("--policy", "{missing_dir}")),
    Mistake("ppo reward model is a causal LM", ("train", "ppo", "--policy", "{model}", "--reward-model", "{model}"), ("--reward-model", "{model}", "not a reward or cost model")),
    Mistake("ppo-lag cost model missing", ("train", "ppo-lag", "--policy", "{model}", "--reward-model", "{score}", "--cost-model", "{missing_dir}"), ("--cost-model", "{missing_dir}")),
    Mistake("ppo prompts missing", ("train", "reward-shaping", "--policy", "{model}", "--reward-model", "{score}", "--cost-model", "{score}", "--prompts", "{missing}"), ("--prompts", "{missing}")),
    Mistake("ppo fewer prompts than a rollout", ("train", "ppo", "--policy", "{model}", "--reward-model", "{score}", "--prompts", "{prompts_jsonl}"), ("--rollout-batch-size 64", "1 prompts", "{prompts_jsonl}")),
    Mistake("config file missing", ("train", "sft", "--config", "{missing}"), ("{missing}", "config file not found")),
    Mistake("config file not YAML", ("train", "sft", "--config", "{not_yaml_yaml}"), ("{not_yaml_yaml}", "not valid YAML")),
    Mistake("config file with a typo", ("train", "sft", "--config", "{config_yaml}"), ("{config_yaml}", "max-stepz")),
]  # fmt: skip

TABLE = TRAIN


def _fill(text: str, files: dict[str, str]) -> str:
    return text.format(**files)


def _argv(mistake: Mistake, files: dict[str, str]) -> list[str]:
    argv = [_fill(a, files) for a in mistake.argv]
    if argv[0] == "train" and "--output-dir" not in argv:
        argv += ["--output-dir", files["out"]]
    if argv[0] == "train":
        argv.append("--no-progress")
    return argv


@pytest.mark.parametrize("mistake", TABLE, ids=lambda m: m.name)
def test_a_mistake_is_one_message(
    mistake: Mistake, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_argv(mistake, files))
    out, err = capsys.readouterr()
    assert code != 0, out + err
    assert "Traceback" not in out + err
    for text in mistake.named:
        assert _fill(text, files) in err, err


def test_debug_shows_the_traceback(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from alignloop.errors import UserError

    argv = ["train", "dpo", "--model", files["missing_dir"], "--output-dir", files["out"]]
    with pytest.raises(UserError, match="no such folder"):
        main(["--debug", *argv])
    monkeypatch.setenv("ALIGNLOOP_DEBUG", "1")
    with pytest.raises(UserError, match="no such folder"):
        main(argv)
    monkeypatch.setenv("ALIGNLOOP_DEBUG", "0")
    assert main(argv) == 2


def _alignloop(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    env.pop("ALIGNLOOP_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "alignloop.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_user_sees_one_line_and_exit_code_2(files: dict[str, str]) -> None:
    """As a real process: the message and nothing else on stderr; --debug adds the traceback."""
    args = ("train", "dpo", "--model", files["data_folder"], "--output-dir", files["out"])
    result = _alignloop(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"alignloop train dpo: --model {files['data_folder']}: not a model folder (no config.json): a "
        "datasets folder (data, not a model; pass it as --train-file); pass a causal-LM folder (e.g. "
        "runs/sft/final, written by `alignloop train sft`)"
    ]
    debug = _alignloop("--debug", *args)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr
