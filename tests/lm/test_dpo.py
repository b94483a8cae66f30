"""DPO family trainer: the math flow, every loss variant, learning, and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import torch

from alignloop.core.losses import dpo_sigmoid_loss, kto_loss
from alignloop.lm.data import PreferenceCollator
from alignloop.lm.dpo import (
    DPOConfig,
    LossName,
    collate,
    encode_pairs,
    pair_margin,
    preference_loss,
    response_logps,
    train,
)
from alignloop.lm.models import sequence_logprobs
from alignloop.lm.toyworld import ToyWorld, build_policy, build_tokenizer

torch.set_num_threads(1)

TINY = dict(toy_train_size=96, toy_eval_size=32, batch_size=8, threads=1, progress=False, warmup_steps=0)


def eval_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "eval"]


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_one_pass_logps_match_separate_right_padded_scoring():
    """Left padding + logits on the response positions only = the plain full-sequence score."""
    tokenizer = build_tokenizer()
    model = build_policy(tokenizer, seed=3).eval()
    pairs = [c for c in ToyWorld(seed=1).comparisons(12) if c.better is not None][:6]
    examples = encode_pairs(tokenizer, pairs, max_length=64)
    with torch.no_grad():
        logps, lengths = response_logps(model, collate(examples, tokenizer.pad_token_id))  # (2B,)
        ref = PreferenceCollator(tokenizer, 64)(pairs)
        chosen, n_chosen = sequence_logprobs(
            model, ref["chosen_input_ids"], ref["chosen_attention_mask"], ref["chosen_response_mask"]
        )
        rejected, n_rejected = sequence_logprobs(
            model, ref["rejected_input_ids"], ref["rejected_attention_mask"], ref["rejected_response_mask"]
        )
    torch.testing.assert_close(logps, torch.cat([chosen, rejected]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lengths, torch.cat([n_chosen, n_rejected]).to(lengths.dtype))


def test_kto_rows_and_reference_point():
    """KTO: the first B rows are desirable (chosen), the next B undesirable."""
    pi = torch.tensor([-1.0, -2.0, -3.0, -4.0])  # chosen 0, chosen 1, rejected 0, rejected 1
    ref = torch.tensor([-1.5, -2.0, -2.5, -4.5])
    lengths = torch.ones(4)
    loss, _ = preference_loss("kto", pi, ref, lengths, 0.25, beta=0.5)
    expected, _ = kto_loss(pi, ref, torch.tensor([True, True, False, False]), 0.25, beta=0.5)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    # sigmoid DPO pairs row i with row B + i
    loss, _ = preference_loss("sigmoid", pi, ref, lengths, beta=0.5)
    expected, _ = dpo_sigmoid_loss(pi[:2], pi[2:], ref[:2], ref[2:], beta=0.5)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    # margin: (log-ratio chosen) - (log-ratio rejected) = (0.5 - (-0.5), 0 - 0.5)
    torch.testing.assert_close(pair_margin(pi, ref, lengths), torch.tensor([1.0, -0.5]))


@pytest.mark.parametrize("loss", get_args(LossName))
def test_every_variant_takes_a_step(tmp_path: Path, loss: str):
    extra = {"robust": {"label_smoothing": 0.1}, "simpo": {"beta": 2.0}}.get(loss, {})
    cfg = DPOConfig(output_dir=tmp_path, loss=loss, max_steps=2, eval_every=2, save_every=0, **TINY, **extra)
    assert train(cfg) == 0
    records = eval_records(tmp_path)
    assert [r["step"] for r in records] == [0, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # two steps on the training pairs already raise the held-out chosen-over-rejected margin
    # (measured: +0.02 for SimPO and ORPO, whose margin has no reference; +0.5 for the others)
    assert records[-1]["margin"] > records[0]["margin"] + 0.01, records
    assert (tmp_path / "final" / "config.json").is_file()
    assert (tmp_path / "final" / "tokenizer.json").is_file()


def test_precomputed_and_online_reference_give_the_same_run(tmp_path: Path):
    base = DPOConfig(max_steps=3, eval_every=3, save_every=0, **TINY)
    train(replace(base, output_dir=tmp_path / "pre", reference="precompute"))
    train(replace(base, output_dir=tmp_path / "online", reference="online"))
    a, b = final_params(tmp_path / "pre"), final_params(tmp_path / "online")
    # equal up to float rounding: the two paths pad the reference batches differently
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_lora_reference_is_the_policy_with_adapters_off(tmp_path: Path):
    """With LoRA and --reference online the reference is the policy with its adapters
    switched off: the run equals one against a separately loaded, precomputed reference."""
    base = DPOConfig(max_steps=3, eval_every=3, save_every=0, lora_r=4, lr=1e-2, **TINY)
    train(replace(base, output_dir=tmp_path / "pre", reference="precompute"))
    train(replace(base, output_dir=tmp_path / "off", reference="online"))
    a, b = final_params(tmp_path / "pre"), final_params(tmp_path / "off")
    assert not any(("lora" in name) for name in a)  # saved merged, as a plain model
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert eval_records(tmp_path / "off")[-1]["margin"] > 0.1  # the adapters did learn


@pytest.mark.slow
def test_dpo_raises_the_chosen_over_rejected_margin(tmp_path: Path):
    """On held-out toy pairs the policy comes to prefer the teacher's choice."""
    cfg = DPOConfig(
        output_dir=tmp_path,
        toy_train_size=640,
        toy_eval_size=160,
        batch_size=32,
        max_steps=40,
        eval_every=40,
        save_every=0,
        lr=2e-3,
        warmup_steps=4,
        threads=1,
        progress=False,
    )
    train(cfg)
    before, after = eval_records(tmp_path)[0], eval_records(tmp_path)[-1]
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0  # pi = reference at the start
    assert after["margin"] > 2.0, after
    assert after["accuracy"] > 0.75, after  # chance is 0.5
    assert after["loss"] < 0.55, after


def test_command_line_runs(tmp_path: Path):
    """`alignloop train dpo` end to end from a YAML file plus flags, on a PKU-SafeRLHF file."""
    data = ToyWorld(seed=0).write_preference_file(tmp_path / "pairs.jsonl", 48)
    config = tmp_path / "dpo.yaml"
    config.write_text(f"train_file: {data}\nloss: ipo\nbatch_size: 8\nmax_steps: 2\nprogress: false\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignloop.cli",
            "train",
            "dpo",
            "--config",
            str(config),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file()
    assert [r["step"] for r in eval_records(out)] == [0, 2]


def test_bad_option_names_the_allowed_values(capsys: pytest.CaptureFixture[str]):
    from alignloop.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "dpo", "--loss", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "sigmoid" in err and "kto" in err
