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
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
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

    from alignloop.control.ppo import PPOSettings, train_policy
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
    # language-model runs to --resume: one whose checkpoint is cut short, one of a smaller model
    from alignloop.lm.training import Checkpointer

    small = build_policy(tokenizer, hidden_size=32, intermediate_size=64)
    Checkpointer(root / "lm-small").save(1, {"model": small})
    state = Checkpointer(root / "lm-damaged").save(1, {"model": small})
    assert state is not None
    (state / "state.pt").write_bytes((state / "state.pt").read_bytes()[:1000])
    data_folder = root / "data-folder"
    datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}).save_to_disk(
        str(data_folder)
    )
    control = root / "control-runs" / "control"
    settings = PPOSettings(num_steps=32, minibatch_size=16, epochs=1)
    train_policy(control, "SafeSliderVelocity-v0", None, True, 32, 0, settings, progress=False, report_to=())
    control_damaged = root / "control-runs" / "control-damaged"
    shutil.copytree(control, control_damaged)
    [control_state] = control_damaged.glob("checkpoints/step_*/state.pt")
    control_state.write_bytes(control_state.read_bytes()[:300])
    pair = {"prompt": "how do I boil an egg", "chosen": "in water", "rejected": "no"}
    (root / "three.jsonl").write_text("".join(json.dumps(pair) + "\n" for _ in range(3)))
    (root / "empty.jsonl").write_text("")
    (root / "bad-row.jsonl").write_text(
        json.dumps(pair) + "\n" + json.dumps({"prompt": 3, "chosen": "x"}) + "\n"
    )
    (root / "not-json.jsonl").write_text("{not json\n")
    (root / "conversation.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": 1}]}) + "\n")
    (root / "pairs.txt").write_text("prompt chosen rejected\n")
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (root / "config.yaml").write_text("max-stepz: 3\n")
    (root / "not-yaml.yaml").write_text("a: [1\n")
    (root / "empty-password.txt").write_text("\n")
    (root / "password.txt").write_text("secret\n")
    (root / "a-file").write_text("x")
    names = ("three.jsonl", "empty.jsonl", "bad-row.jsonl", "not-json.jsonl", "conversation.jsonl", "pairs.txt",
             "prompts.jsonl", "config.yaml", "not-yaml.yaml", "empty-password.txt", "password.txt", "a-file")  # fmt: skip
    return {
        "model": str(model),
        "score": str(score),
        "no_tokenizer": str(weights_only),
        "damaged": str(damaged),
        "run": str(run),
        "lm_damaged": str(root / "lm-damaged"),
        "lm_damaged_state": str(state / "state.pt"),
        "lm_small": str(root / "lm-small"),
        "data_folder": str(data_folder),
        "control": str(control),
        "control_damaged": str(control_damaged),
        "control_runs": str(root / "control-runs"),
        "missing": str(root / "missing.jsonl"),
        "missing_dir": str(root / "missing"),
        **{name.replace("-", "_").replace(".", "_"): str(root / name) for name in names},
        "out": str(root / "out"),
        "under_file": str(root / "a-file" / "out"),
        "dead_url": f"http://127.0.0.1:{_free_port()}",
    }


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real platform (SQLite) with an admin, an annotator and one project."""
    from alignloop.loop.demo import local_platform
    from alignloop.platform.client import PlatformClient

    root = tmp_path_factory.mktemp("platform")
    platform, admin_password = local_platform(root)
    platform.start()
    try:
        with PlatformClient.login(platform.url, "admin", admin_password.read_text().splitlines()[0]) as admin:
            admin.create_project("round-one")
            admin.create_user("ann", "annotator password", role="annotator")
        (root / "ann.txt").write_text("annotator password\n")
        (root / "wrong.txt").write_text("not the password\n")
        yield {
            "url": platform.url,
            "ann_password": str(root / "ann.txt"),
            "wrong_password": str(root / "wrong.txt"),
        }
    finally:
        platform.stop()


@pytest.fixture(scope="session")
def taken_port() -> Iterator[dict[str, str]]:
    """A port something listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield {"taken_port": str(taken.getsockname()[1])}


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
    Mistake("ppo fewer prompts than a rollout", ("train", "ppo", "--policy", "{model}", "--reward-model", "{score}", "--prompts", "{prompts_jsonl}"), ("--rollout-batch-size 64", "the 1 prompts in {prompts_jsonl}")),
    Mistake("config file missing", ("train", "sft", "--config", "{missing}"), ("{missing}", "config file not found")),
    Mistake("config file not YAML", ("train", "sft", "--config", "{not_yaml_yaml}"), ("{not_yaml_yaml}", "not valid YAML")),
    Mistake("config file with a typo", ("train", "sft", "--config", "{config_yaml}"), ("{config_yaml}", "max-stepz")),
]  # fmt: skip

TRAIN += [
    Mistake("dpo bad message in a conversation", ("train", "dpo", "--train-file", "{conversation_jsonl}"), ("{conversation_jsonl}:1", "prompt[0].content: expected text")),
    Mistake("sft resume from a damaged checkpoint", ("train", "sft", "--output-dir", "{lm_damaged}", "--resume"), ("{lm_damaged_state}", "damaged")),
    Mistake("sft resume with another model", ("train", "sft", "--output-dir", "{lm_small}", "--resume"), ("{lm_small}", "does not fit this run")),
    Mistake("sft option of the wrong type", ("train", "sft", "--batch-size", "lots"), ("--batch-size", "lots")),
    Mistake("sft unknown flag", ("train", "sft", "--max-stepz", "3"), ("--max-stepz",)),
    Mistake("sft report to none and wandb", ("train", "sft", "--report-to", "none", "tensorboard"), ("--report-to none tensorboard",)),
]  # fmt: skip

CRITIC_FREE = [
    Mistake("grpo policy missing", ("train", "grpo", "--policy", "{missing_dir}"), ("--policy", "{missing_dir}", "no such folder")),
    Mistake("grpo policy toy", ("train", "grpo", "--policy", "toy"), ("--policy toy", "no such folder")),
    Mistake("grpo policy is a data folder", ("train", "grpo", "--policy", "{data_folder}"), ("--policy", "{data_folder}", "datasets folder")),
    Mistake("grpo prompts missing", ("train", "grpo", "--policy", "{model}", "--reward-model", "{score}", "--prompts", "{missing}"), ("--prompts", "{missing}", "no such file")),
    Mistake("grpo no reward", ("train", "grpo", "--policy", "{model}", "--reward-model"), ("no reward: pass --reward-model",)),
    Mistake("grpo groups of one", ("train", "grpo", "--policy", "{model}", "--reward-model", "{score}", "--group-size", "1", "--batch-size", "4"), ("--group-size (1) must be at least 2",)),
    Mistake("grpo-lag cost model is a causal LM", ("train", "grpo-lag", "--policy", "{model}", "--reward-model", "{score}", "--cost-model", "{model}"), ("--cost-model", "{model}", "not a reward or cost model")),
    Mistake("grpo-lag no cost", ("train", "grpo-lag", "--policy", "{model}", "--reward-model", "{score}", "--cost-model"), ("no cost: pass --cost-model",)),
    Mistake("rloo reward model missing", ("train", "rloo", "--policy", "{model}", "--reward-model", "{missing_dir}"), ("--reward-model", "{missing_dir}", "no such folder")),
    Mistake("rloo fewer prompts than a rollout", ("train", "rloo", "--policy", "{model}", "--reward-model", "{score}", "--prompts", "{prompts_jsonl}"), ("--rollout-batch-size 32", "the 1 prompts in {prompts_jsonl}")),
    Mistake("reinforce-pp batch that does not divide a rollout", ("train", "reinforce-pp", "--policy", "{model}", "--reward-model", "{score}", "--batch-size", "6"), ("--batch-size (6) must divide",)),
    Mistake("remax reward function cannot be imported", ("train", "remax", "--policy", "{model}", "--reward-model", "--reward-function", "no_such_module_here:f"), ("--reward-function", "no_such_module_here")),
    Mistake("remax reward weights that do not match", ("train", "remax", "--policy", "{model}", "--reward-model", "{score}", "--reward-weights", "1", "2"), ("--reward-weights", "2 weight")),
]  # fmt: skip

DATA = [
    Mistake("validate missing file", ("data", "validate", "{missing}"), ("{missing}", "no such file")),
    Mistake("validate unknown file type", ("data", "validate", "{pairs_txt}"), ("{pairs_txt}", "unknown file type")),
    Mistake("validate bad row", ("data", "validate", "{bad_row_jsonl}"), ("{bad_row_jsonl}:2: prompt",)),
    Mistake("validate empty file", ("data", "validate", "{empty_jsonl}"), ("{empty_jsonl}", "no records")),
    Mistake("validate a model folder", ("data", "validate", "{model}"), ("{model}", "not a datasets folder")),
    Mistake("validate unknown format", ("data", "validate", "{three_jsonl}", "--format", "trl"), ("--format", "trl")),
    Mistake("convert over an existing file", ("data", "convert", "{three_jsonl}", "{prompts_jsonl}", "--to", "prompt"), ("{prompts_jsonl}", "--overwrite")),
    Mistake("convert under a file", ("data", "convert", "{three_jsonl}", "{under_file}/x.jsonl", "--to", "prompt"), ("OUT", "{a_file} is a file")),
    Mistake("convert into a format that cannot hold it", ("data", "convert", "{prompts_jsonl}", "{out}/p.jsonl", "--to", "preference"), ("{out}/p.jsonl", "record 0", "cannot be written as preference")),
    Mistake("convert config with a typo", ("data", "convert", "--config", "{config_yaml}"), ("{config_yaml}", "max-stepz")),
]  # fmt: skip

DEMO = [
    Mistake("demo output under a file", ("demo", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("demo unknown preset", ("demo", "--preset", "huge"), ("--preset", "huge")),
]  # fmt: skip

CONTROL = [
    Mistake("train unknown env", ("control", "train", "--env", "Hoper-v5"), ("Hoper-v5", "did you mean Hopper-v5")),
    Mistake("train navigation task with another cost", ("control", "train", "--env", "SafetyPointGoal1-v0", "--cost", "velocity"), ("SafetyPointGoal1-v0", "computes its own cost", "drop --cost velocity")),
    Mistake("train navigation task misspelt", ("control", "train", "--env", "SafetyPointGoal3-v0"), ("SafetyPointGoal3-v0", "did you mean")),
    Mistake("train ppo-lag without a cost", ("control", "train", "--env", "Hopper-v5", "--algo", "ppo-lag"), ("--algo ppo-lag needs a cost",)),
    Mistake("train minibatch larger than the rollout", ("control", "train", "--ppo.minibatch-size", "5000"), ("--ppo.minibatch-size 5000",)),
    Mistake("train resume without a checkpoint", ("control", "train", "--output-dir", "{out}/none", "--resume"), ("--resume", "no checkpoint")),
    Mistake("train resume with another env", ("control", "train", "--env", "Hopper-v5", "--output-dir", "{control}", "--resume"), ("--resume", "--env 'SafeSliderVelocity-v0' -> 'Hopper-v5'")),
    Mistake("train resume with other sizes", ("control", "train", "--env", "SafeSliderVelocity-v0", "--algo", "ppo-lag", "--cost", "velocity", "--ppo-lag.hidden", "8", "--ppo-lag.num-steps", "32", "--ppo-lag.minibatch-size", "16", "--output-dir", "{control}", "--resume"), ("does not fit this run", "resume with the options the run was started with")),
    Mistake("train resume from a damaged checkpoint", ("control", "train", "--env", "SafeSliderVelocity-v0", "--output-dir", "{control_damaged}", "--resume"), ("{control_damaged}/checkpoints/step_00000001/state.pt: truncated", "--resume: no checkpoint in {control_damaged}")),
    Mistake("train output under a file", ("control", "train", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("pbrl budget below one round", ("control", "pbrl", "--feedback", "10"), ("--feedback 10",)),
    Mistake("pbrl unknown env", ("control", "pbrl", "--env", "HalfCheeta-v5"), ("HalfCheeta-v5", "did you mean")),
    Mistake("eval missing run", ("control", "eval", "{missing_dir}"), ("{missing_dir}", "no intact checkpoint")),
    Mistake("eval a language-model folder", ("control", "eval", "{model}"), ("{model}", "no intact checkpoint")),
    Mistake("eval no episodes", ("control", "eval", "{control}", "--episodes", "0"), ("--episodes must be >= 1",)),
    Mistake("eval damaged checkpoint", ("control", "eval", "{control_damaged}", "--video", "none"), ("{control_damaged}/checkpoints/step_00000001/state.pt: truncated", "no intact checkpoint")),
]  # fmt: skip

SERVE = [
    Mistake("db not a URL", ("serve", "--db", "nonsense", "--migrate-only"), ("--db 'nonsense'", "not a database URL")),
    Mistake("db of an unknown kind", ("serve", "--db", "mysqlx://u@h/d", "--migrate-only"), ("--db mysqlx://u@h/d", "unknown database kind")),
    Mistake("db file under a file", ("serve", "--db", "sqlite:///{a_file}/x.db", "--migrate-only"), ("--db sqlite:///{a_file}/x.db", "{a_file} is a file")),
    Mistake("db file in a folder it cannot create", ("serve", "--db", "sqlite:////proc/no/x.db", "--migrate-only"), ("--db sqlite:////proc/no/x.db", "cannot open the database")),
    Mistake("db a data file", ("serve", "--db", "sqlite:///{three_jsonl}", "--migrate-only"), ("--db sqlite:///{three_jsonl}", "not a database")),
    Mistake("db server down", ("serve", "--db", "postgresql+psycopg://u:pw@127.0.0.1:1/db", "--migrate-only"), ("--db postgresql+psycopg://u:***@127.0.0.1:1/db", "cannot open")),
    Mistake("port in use", ("serve", "--db", "sqlite:///{out}/p.db", "--port", "{taken_port}"), ("--port {taken_port}", "already in use")),
    Mistake("port out of range", ("serve", "--port", "70000"), ("--port must be between 1 and 65535",)),
    Mistake("no workers", ("serve", "--workers", "0"), ("--workers must be >= 1",)),
    Mistake("host unknown", ("serve", "--db", "sqlite:///{out}/p.db", "--host", "no-such-host.invalid"), ("--host 'no-such-host.invalid'",)),
    Mistake("password file missing", ("serve", "--db", "sqlite:///{out}/p.db", "--create-admin", "a", "--password-file", "{missing}", "--migrate-only"), ("--password-file {missing}", "no such file")),
    Mistake("password file empty", ("serve", "--db", "sqlite:///{out}/p.db", "--create-admin", "a", "--password-file", "{empty_password_txt}", "--migrate-only"), ("--password-file {empty_password_txt}", "first line is empty")),
    Mistake("password file a folder", ("serve", "--db", "sqlite:///{out}/p.db", "--create-admin", "a", "--password-file", "{model}", "--migrate-only"), ("--password-file {model}", "is a folder")),
    Mistake("media folder under a file", ("serve", "--media-dir", "{under_file}"), ("--media-dir", "{a_file} is a file")),
]  # fmt: skip

LOOP = [
    Mistake("url not http", ("loop", "--url", "localhost:8000", "--output-dir", "{out}/loop"), ("--url 'localhost:8000'", "not an http(s) address")),
    Mistake("server down", ("loop", "--url", "{dead_url}", "--user", "a", "--password-file", "{password_txt}", "--output-dir", "{out}/loop"), ("cannot reach the platform at {dead_url}", "--url")),
    Mistake("password file missing", ("loop", "--user", "a", "--password-file", "{missing}", "--output-dir", "{out}/loop"), ("--user a needs --password-file",)),
    Mistake("password file empty", ("loop", "--user", "a", "--password-file", "{empty_password_txt}", "--output-dir", "{out}/loop"), ("--password-file {empty_password_txt}", "first line is empty")),
    Mistake("wrong password", ("loop", "--url", "{url}", "--user", "ann", "--password-file", "{wrong_password}", "--output-dir", "{out}/loop"), ("{url}", "refused to log in 'ann'")),
    Mistake("quota out of range", ("loop", "--quota", "2"), ("--quota must be in (0, 1]",)),
    Mistake("unknown preset", ("loop", "--preset", "huge"), ("--preset 'huge'",)),
    Mistake("run folder under a file", ("loop", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("demo run folder under a file", ("loop", "--demo", "toyworld", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("prompt file without a policy", ("loop", "--domain", "lm", "--prompts", "{prompts_jsonl}", "--output-dir", "{out}/loop"), ("--prompts {prompts_jsonl} needs --policy DIR",)),
    Mistake("toy world and a prompt file", ("loop", "--task", "toyworld", "--prompts", "{prompts_jsonl}", "--policy", "{model}", "--output-dir", "{out}/loop"), ("give --task toyworld or --prompts {prompts_jsonl}, not both",)),
    Mistake("toyworld domain and a prompt file", ("loop", "--domain", "toyworld", "--prompts", "{prompts_jsonl}", "--policy", "{model}", "--output-dir", "{out}/loop"), ("give --domain toyworld or --prompts {prompts_jsonl}, not both",)),
    Mistake("policy without a prompt file", ("loop", "--policy", "{model}", "--output-dir", "{out}/loop"), ("--policy is an option of a prompt file", "give --prompts FILE")),
    Mistake("control domain and a prompt file", ("loop", "--domain", "control", "--prompts", "{prompts_jsonl}", "--output-dir", "{out}/loop"), ("--prompts is an option of --domain lm",)),
    Mistake("control domain and grpo-lag", ("loop", "--domain", "control", "--policy-update", "grpo-lag", "--output-dir", "{out}/loop"), ("--policy-update grpo-lag: the control domain always updates by PPO-Lagrangian",)),
    Mistake("prompt file missing", ("loop", "--prompts", "{missing}", "--policy", "{model}", "--output-dir", "{out}/loop"), ("--prompts {missing}: no such file",)),
    Mistake("policy is a score model", ("loop", "--prompts", "{prompts_jsonl}", "--policy", "{score}", "--output-dir", "{out}/loop"), ("--policy {score}: is a reward or cost model, not a causal LM",)),
    Mistake("starting cost model is a policy", ("loop", "--prompts", "{prompts_jsonl}", "--policy", "{model}", "--cost-model", "{model}", "--output-dir", "{out}/loop"), ("--cost-model {model}", "not a reward or cost model")),
    Mistake("demo and a prompt file", ("loop", "--demo", "toyworld", "--prompts", "{prompts_jsonl}", "--policy", "{model}", "--output-dir", "{out}/loop"), ("--demo toyworld runs its own task",)),
    Mistake("toy-world preset for a prompt file", ("loop", "--prompts", "{prompts_jsonl}", "--policy", "{model}", "--preset", "demo", "--output-dir", "{out}/loop"), ("--preset 'demo': a prompt file has ['default', 'smoke']",)),
]  # fmt: skip

ANNOTATE = [
    Mistake("server down", ("annotate", "--url", "{dead_url}", "--user", "ann", "--password-file", "{password_txt}"), ("cannot reach the platform at {dead_url}",)),
    Mistake("url not http", ("annotate", "--url", "ftp://x", "--user", "ann", "--password-file", "{password_txt}"), ("--url 'ftp://x'",)),
    Mistake("unknown project", ("annotate", "--url", "{url}", "--project", "round-1", "--user", "ann", "--password-file", "{ann_password}", "--idle-exit", "0.1"), ("--project 'round-1'", "did you mean round-one")),
    Mistake("wrong password", ("annotate", "--url", "{url}", "--user", "ann", "--password-file", "{wrong_password}"), ("refused to log in 'ann'",)),
    Mistake("oracle without a file", ("annotate", "--teacher", "oracle"), ("--teacher oracle needs --oracle",)),
    Mistake("no poll", ("annotate", "--poll", "0"), ("--poll > 0",)),
    Mistake("no credentials", ("annotate", "--url", "{url}"), ("give --user and --password-file",)),
]  # fmt: skip

EVAL = [
    Mistake("policy missing", ("eval", "{missing_dir}", "--toyworld"), ("{missing_dir}", "no such folder")),
    Mistake("policy is a data folder", ("eval", "{data_folder}", "--toyworld"), ("{data_folder}", "datasets folder")),
    Mistake("reward model is a policy", ("eval", "{model}", "--toyworld", "--reward-model", "{model}"), ("--reward-model {model}", "not a reward or cost model")),
    Mistake("cost model missing", ("eval", "{model}", "--toyworld", "--cost-model", "{missing_dir}"), ("--cost-model {missing_dir}",)),
    Mistake("prompts missing", ("eval", "{model}", "--prompts", "{missing}"), ("{missing}", "no such file")),
    Mistake("prompts and toy world", ("eval", "{model}", "--prompts", "{prompts_jsonl}", "--toyworld"), ("exactly one",)),
    Mistake("output under a file", ("eval", "{model}", "--toyworld", "--output-dir", "{under_file}"), ("--output-dir", "{a_file} is a file")),
    Mistake("no CUDA", ("eval", "{model}", "--toyworld", "--device", "cuda"), ("'cuda'", "CUDA is not available")),
]  # fmt: skip

TABLE = TRAIN + CRITIC_FREE + DATA + DEMO + CONTROL + SERVE + LOOP + ANNOTATE + EVAL


def test_the_table_covers_every_command_group() -> None:
    from alignloop.cli import COMMANDS, Group

    groups = {m.argv[0] for m in TABLE}
    assert groups == set(COMMANDS)
    for name, node in COMMANDS.items():
        if isinstance(node, Group):  # every command of a group
            assert {m.argv[1] for m in TABLE if m.argv[0] == name} == set(node.commands), name


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fill(text: str, places: dict[str, str]) -> str:
    return text.format(**places)


def _argv(mistake: Mistake, places: dict[str, str]) -> list[str]:
    argv = [_fill(a, places) for a in mistake.argv]
    if argv[0] == "train" and "--output-dir" not in argv:
        argv += ["--output-dir", places["out"]]
    if argv[0] in ("train", "control", "loop") and argv[1:2] != ["eval"]:
        argv.append("--no-progress")
    return argv


@pytest.mark.parametrize("mistake", TABLE, ids=lambda m: f"{m.argv[0]}: {m.name}")
def test_a_mistake_is_one_message(
    mistake: Mistake,
    files: dict[str, str],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "cuda" in mistake.argv and _cuda_available():
        pytest.skip("this machine has CUDA, so --device cuda is no mistake here")
    monkeypatch.delenv("ALIGNLOOP_TOKEN", raising=False)
    monkeypatch.delenv("ALIGNLOOP_ADMIN_PASSWORD", raising=False)
    places = dict(files)
    command = " ".join(mistake.argv)
    if any(key in command for key in ("{url}", "{ann_password}", "{wrong_password}")):
        places |= request.getfixturevalue("server")
    if "{taken_port}" in command:
        places |= request.getfixturevalue("taken_port")
    try:
        code = main(_argv(mistake, places))
    except SystemExit as exit_:  # tyro's own refusals of a flag: a boxed message, exit code 2
        code = exit_.code
    out, err = capsys.readouterr()
    assert code not in (0, None), out + err
    assert "Traceback" not in out + err
    for text in mistake.named:
        assert _fill(text, places) in err, err


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
    """As real processes: the message and nothing else on stderr; --debug adds the traceback."""
    dead, password = files["dead_url"], files["password_txt"]
    cases = [
        (("serve", "--db", f"sqlite:///{files['a_file']}/platform.db", "--migrate-only"), 2,
         f"alignloop serve: --db sqlite:///{files['a_file']}/platform.db: {files['a_file']} is a file, not a "
         "folder; give the database another path"),
        (("annotate", "--url", dead, "--user", "ann", "--password-file", password, "--teacher", "oracle",
          "--oracle", files["missing"]), 2,
         f"alignloop annotate: cannot reach the platform at {dead} ([Errno 111] Connection refused); is "
         "`alignloop serve` running there? check --url"),
        (("data", "validate", files["missing"]), 1, f"error: {files['missing']}: no such file or folder"),
    ]  # fmt: skip
    for args, code, line in cases:
        result = _alignloop(*args)
        assert (result.returncode, result.stderr.splitlines()) == (code, [line])
    debug = _alignloop("--debug", *cases[0][0])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr
