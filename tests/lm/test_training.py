"""The shared supervised loop and the run stack under the LM trainers: the --resume rule, a
damaged newest checkpoint, extending a finished run, gradient checkpointing, bf16 on CPU,
LoRA and run.json for every supervised trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignloop.errors import UserError
from alignloop.lm import sft
from alignloop.runstack.layout import STATE, RunLayout
from alignloop.runstack.metrics import read_metrics

TINY = dict(toy_train_size=64, toy_eval_size=8, batch_size=8, warmup_steps=1, eval_every=0, progress=False)
SUPERVISED = ("sft", "reward", "cost", "dpo", "aligner")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted((run / "final").glob("*.safetensors")):
        out.update({f"{file.stem}.{k}": v for k, v in load_file(str(file)).items()})
    return out


def assert_same(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-7, msg=name)


def sft_config(out: Path, **options) -> sft.SFTConfig:
    return sft.SFTConfig(output_dir=out, **{**TINY, "max_steps": 6, "save_every": 2, **options})


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match=rf"--resume: {tmp_path / 'none'}: it holds no checkpoint"):
        sft.train(sft_config(tmp_path / "none", resume=True))
    assert not (tmp_path / "none" / "final").exists()


def test_resume_with_another_model_is_refused_naming_the_option(tmp_path: Path):
    sft.train(sft_config(tmp_path / "run", max_steps=2))
    other = tmp_path / "other-model"
    sft.train(sft_config(other, max_steps=1))
    with pytest.raises(UserError, match=r"--model 'toy' -> '.*other-model/final'"):
        sft.train(sft_config(tmp_path / "run", max_steps=4, resume=True, model=str(other / "final")))
    record = json.loads(RunLayout(tmp_path / "run").config.read_text())
    assert record["command"] == "train sft" and record["config"]["model"] == "toy"  # untouched


def test_a_truncated_newest_checkpoint_falls_back_and_still_resumes_exactly(tmp_path: Path, capsys):
    sft.train(sft_config(tmp_path / "whole"))
    sft.train(sft_config(tmp_path / "cut", max_steps=4, total_steps=6))  # checkpoints 2 and 4
    state = RunLayout(tmp_path / "cut").checkpoint(4) / STATE
    state.write_bytes(state.read_bytes()[:1000])
    sft.train(sft_config(tmp_path / "cut", resume=True))
    err = capsys.readouterr().err
    assert f"{state}: truncated" in err and "step_00000002 (step 2)" in err
    assert_same(tmp_path / "whole", tmp_path / "cut")
    steps = [r["step"] for r in read_metrics(tmp_path / "cut", "train")]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lines of the lost steps 3-4 were replaced


def test_extending_a_finished_run_keeps_its_schedule_unless_total_steps_says(tmp_path: Path):
    sft.train(sft_config(tmp_path / "run", max_steps=4))
    with pytest.raises(UserError, match="schedule is 4 steps long and this resume would make it 6"):
        sft.train(sft_config(tmp_path / "run", resume=True))
    sft.train(sft_config(tmp_path / "run", resume=True, total_steps=6))  # stretched, as asked
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    assert len(lrs) == 6 and lrs[4] > 0 and lrs[3] == 0.0  # step 4 ended the 4-step cosine at 0


def test_gradient_checkpointing_and_bf16_on_cpu_change_nothing(tmp_path: Path, capsys):
    from alignloop.lm.models import ScoreModel
    from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config
    from alignloop.lm.training import enable_gradient_checkpointing

    tokenizer = build_tokenizer()
    for model in (build_policy(tokenizer), ScoreModel.from_backbone_config(tiny_config(tokenizer))):
        enable_gradient_checkpointing(model)
        checkpointed = [
            m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")
        ]
        assert checkpointed and all(checkpointed)
    options = dict(max_steps=2, save_every=0)
    sft.train(sft_config(tmp_path / "plain", **options))
    sft.train(sft_config(tmp_path / "checkpointed", gradient_checkpointing=True, bf16=True, **options))
    assert "--bf16: needs a CUDA device with bfloat16 support; training in float32" in capsys.readouterr().err
    wa, wb = final_weights(tmp_path / "plain"), final_weights(tmp_path / "checkpointed")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("trainer", SUPERVISED)
def test_every_supervised_trainer_has_lora_and_writes_its_run_folder(tmp_path: Path, trainer: str):
    from torchrun_plan import trainer as command

    config_cls, train = command(trainer)
    cfg = config_cls(output_dir=tmp_path, **{**TINY, "max_steps": 1, "lora_r": 2})
    assert train(cfg) == 0
    layout = RunLayout(tmp_path)
    record = json.loads(layout.config.read_text())
    assert record["command"] == f"train {trainer}"
    assert record["config"] == json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    assert [p.name for p in layout.checkpoint_dirs()] == ["step_00000001"]
    assert (
        layout.metrics.is_file() and layout.tensorboard.is_dir() and (layout.final / "config.json").is_file()
    )
    assert not any("lora" in name for name in final_weights(tmp_path))  # merged into a plain model
