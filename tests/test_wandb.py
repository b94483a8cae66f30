"""`--report-to wandb` (the optional `alignloop[wandb]` extra), offline: the language-model
trainers' metrics (the supervised loop's and the critic-free one's) and `control train`'s reach Weights & Biases beside (or instead of) TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.cli import main
from alignloop.errors import UserError
from alignloop.runstack.metrics import check_report_to, read_metrics

wandb = pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'alignloop[wandb]'")


BLOCK, HEADER = 32768, 7  # the .wandb file: LevelDB's log format, a 7-byte file header first


def _history(run_dir: Path) -> list[dict]:
    """The metrics rows an offline run recorded, read from its run-*.wandb file (protobuf
    `Record`s in LevelDB log records: checksum 4, length 2, type 1, then the data)."""
    from wandb.proto.wandb_internal_pb2 import Record

    [path] = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pending, at = [], b"", HEADER
    while at + HEADER <= len(data):
        if BLOCK - at % BLOCK < HEADER:  # a block's tail too short for a header is padding
            at += BLOCK - at % BLOCK
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        if kind == 0:
            break
        pending += data[at + HEADER : at + HEADER + length]
        at += HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})  # fmt: skip
    return rows


def _logged(run_dir: Path) -> dict:
    """(step, "split/name") -> value of every record in the run's metrics.jsonl."""
    return {(m["step"], f"{m['split']}/{k}"): v for m in read_metrics(run_dir) for k, v in m.items()
            if k not in ("step", "split")}  # fmt: skip


def _recorded(run_dir: Path) -> dict:
    """The same, as the offline wandb run recorded it."""
    return {
        (row["_step"], k): v for row in _history(run_dir) for k, v in row.items() if not k.startswith("_")
    }


def test_metrics_go_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_META": "true",
                        "WANDB_X_DISABLE_STATS": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    sft = tmp_path / "sft"
    argv = ["train", "sft", "--output-dir", str(sft), "--max-steps", "2", "--batch-size", "8"]
    argv += ["--toy-train-size", "32", "--toy-eval-size", "8", "--no-progress", "--report-to", "wandb"]
    assert main(argv) == 0
    assert not (sft / "tb").exists()  # TensorBoard only when asked for

    grpo = tmp_path / "grpo"  # the critic-free trainers: rewards from a function, on the SFT policy
    scores = Path(__file__).parent / "lm" / "toy_scores.py"
    argv = ["train", "grpo", "--policy", str(sft / "final"), "--reward-model", "--reward-function",
            f"{scores}:helpfulness", "--toy-prompts", "16", "--rollout-batch-size", "4", "--group-size", "2",
            "--batch-size", "8", "--max-new-tokens", "4", "--eval-prompts", "0", "--max-steps", "2"]  # fmt: skip
    argv += ["--output-dir", str(grpo), "--no-progress", "--report-to", "wandb"]
    assert main(argv) == 0
    assert not (grpo / "tb").exists()

    control = tmp_path / "control"
    argv = [
        "control",
        "train",
        "--env",
        "SafeSliderVelocity-v0",
        "--algo",
        "ppo-lag",
        "--total-env-steps",
        "128",
    ]
    argv += ["--ppo.num-steps", "64", "--ppo.minibatch-size", "32", "--ppo.epochs", "1"]
    argv += ["--output-dir", str(control), "--no-progress", "--report-to", "tensorboard", "wandb"]
    assert main(argv) == 0
    wandb.teardown()  # the wandb service writes a finished run's file on its own time; wait for it
    assert _logged(sft) == _recorded(sft)  # every metric of metrics.jsonl, at its step
    assert _logged(grpo) == _recorded(grpo) and {step for step, _ in _logged(grpo)} == {1, 2}
    assert _logged(control) == _recorded(control)  # two iterations' metrics
    assert {step for step, _ in _logged(control)} == {1, 2}
    assert list((control / "tb").glob("events.out.tfevents.*"))


def test_report_to_mistakes_are_named() -> None:
    with pytest.raises(UserError, match="--report-to none wandb: none means no other sink"):
        check_report_to(("none", "wandb"))
    check_report_to(("none",))
