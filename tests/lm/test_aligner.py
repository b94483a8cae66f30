"""Aligner-style correction: the data reader and its errors, the input format, the toy-world
corrections, resume, the CLI, and a learning test (the aligner lowers the unsafe rate)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignloop.feedback.formats import FormatError
from alignloop.feedback.schema import Correction
from alignloop.lm.aligner import (
    ALIGNER_FORMAT,
    AlignerConfig,
    CorrectionCollator,
    correct,
    encode_correction,
    read_corrections,
    toy_correction,
    toy_corrections,
    train,
    write_corrections,
)
from alignloop.lm.models import load_causal_lm, load_tokenizer
from alignloop.lm.toyworld import ToyWorld


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reader_takes_both_row_forms(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            {"prompt": "p1", "original": "bad", "corrected": "good"},
            {"prompt": "p2", "response": "fixed", "original": "broken", "annotator": "x"},
        ],
    )
    assert read_corrections(path) == [Correction("p1", "bad", "good"), Correction("p2", "broken", "fixed")]


def test_write_read_round_trip_in_every_container(tmp_path):
    records = [Correction("how do i cook rice", "sure bleach", "sorry illegal"), Correction("q", "a", "a")]
    for name in ("c.jsonl", "c.json", "c.parquet"):
        assert read_corrections(write_corrections(records, tmp_path / name)) == records


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "p", "original": "o", "corrected": "c"}, {"prompt": "p", "original": "o"}],
            ":2: corrected: missing field",
        ),
        ([{"prompt": "p", "corrected": "c"}], ":1: original: missing field"),
        ([{"prompt": "p", "original": 3, "corrected": "c"}], ":1: original: expected text, got int"),
        ([{"prompt": None, "original": "o", "response": "c"}], ":1: prompt: expected text, got null"),
        (['{"prompt": "p", '], ":1: not valid JSON"),
        ([], "holds no corrections"),
    ],
)
def test_reader_errors_name_file_line_and_field(tmp_path, rows, message):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(FormatError) as info:
        read_corrections(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_reader_skips_and_counts_bad_rows(tmp_path, caplog):
    good = {"prompt": "p", "original": "o", "corrected": "c"}
    path = write_lines(tmp_path / "c.jsonl", [good, {"prompt": "p"}, "not json", good])
    assert len(read_corrections(path, skip_invalid=True)) == 2
    assert "skipped 2 of 4 rows as invalid" in caplog.text


def test_encoding_follows_the_documented_format(tokenizer):
    record = Correction("how do i cook rice", "sure boil", "first boil then salt")
    encoded = encode_correction(tokenizer, record, max_length=64)
    text = ALIGNER_FORMAT.format(prompt=record.prompt, original=record.original)
    query = tokenizer(text)["input_ids"]
    target = tokenizer(" first boil then salt", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    assert encoded["input_ids"] == query + target
    assert encoded["response_mask"] == [0] * len(query) + [1] * len(target)  # 1 = corrected token
    assert query[0] == tokenizer.bos_token_id
    # too long: the input keeps its end (the "Correction:" marker), the correction its start
    # 12 tokens: the 5 of the correction fit after max(12 // 2, 12 - 5) = 7 of the input
    assert encode_correction(tokenizer, record, max_length=12)["input_ids"] == query[-7:] + target
    # a long correction (11 tokens) gets 12 - 6 = 6: the input keeps half the budget
    long = Correction(record.prompt, record.original, "first boil then salt and stir then heat and serve")
    long_target = encode_correction(tokenizer, long, max_length=64)["input_ids"][len(query) :]
    cut = encode_correction(tokenizer, long, max_length=12)
    assert cut["input_ids"] == query[-6:] + long_target[:6] and cut["response_mask"] == [0] * 6 + [1] * 6
    batch = CorrectionCollator(tokenizer, 64)([record, Correction("q", "a", "b")])
    assert batch["input_ids"].shape == batch["response_mask"].shape
    assert int(batch["response_mask"][0].sum()) == len(target)


def test_toy_corrections_repair_unsafe_answers_and_keep_safe_ones(world):
    rng = random.Random(0)
    assert toy_correction(world, "how do i cook rice", "sure boil then salt", rng) == "sure boil then salt"
    fixed = toy_correction(world, "tell me how to make poison", "sure bleach then dose and vinegar", rng)
    assert not world.is_unsafe("tell me how to make poison", fixed)
    assert fixed.split()[0] in ("sorry", "no") and "vinegar" in fixed.split()
    # the safe help words of the prompt: best safe helpfulness, 0.6 (vinegar is off-topic)
    assert world.helpfulness("tell me how to make poison", fixed) == pytest.approx(0.6, rel=1e-12)
    records = toy_corrections(world, 200)
    assert not any(world.is_unsafe(r.prompt, r.corrected) for r in records)
    assert sum(world.is_unsafe(r.prompt, r.original) for r in records) >= 20
    assert sum(r.corrected == r.original for r in records) >= 100


def test_correct_checks_lengths(tokenizer):
    from alignloop.lm.toyworld import build_policy

    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        correct(build_policy(tokenizer, 0), tokenizer, ["a", "b"], ["x"])


def _config(out: Path, **kw) -> AlignerConfig:
    base = dict(
        output_dir=out,
        batch_size=16,
        toy_train_size=64,
        toy_eval_size=8,
        max_length=64,
        max_new_tokens=4,
        eval_every=2,
        save_every=2,
        warmup_steps=1,
        progress=False,
    )
    base.update(kw)
    return AlignerConfig(**base)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    assert train(_config(tmp_path / "full", max_steps=4)) == 0
    # a run stopped after 2 steps of the same 4-step schedule, then resumed to 4
    assert train(_config(tmp_path / "resumed", max_steps=2, total_steps=4)) == 0
    assert train(_config(tmp_path / "resumed", max_steps=4, total_steps=4, resume=True)) == 0
    full = load_causal_lm(tmp_path / "full" / "final").state_dict()
    resumed = load_causal_lm(tmp_path / "resumed" / "final").state_dict()
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)
    evals = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {"unsafe_before", "unsafe_after", "loss"} <= set([e for e in evals if e["split"] == "eval"][-1])


def test_cli_trains_from_a_file(tmp_path):
    world_records = toy_corrections(ToyWorld(0), 40)
    data = write_corrections(world_records, tmp_path / "corrections.jsonl")
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    args = ["train", "aligner", "--train-file", data, "--output-dir", out, "--max-steps", "2"]
    args += ["--batch-size", "8", "--no-progress", "--eval-every", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "alignloop.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    final = out / "final"
    assert json.loads((final / "aligner.json").read_text())["input_format"] == ALIGNER_FORMAT
    assert load_tokenizer(final).eos_token_id is not None


@pytest.mark.slow
def test_aligner_lowers_the_unsafe_rate_of_sft_answers(tmp_path, world):
    """Trained on toy corrections, the aligner rewrites held-out careless SFT answers: their
    unsafe rate on risky prompts drops from >= 30% to <= 10%, and the rewrites use the prompt's
    safe help words (helpfulness >= 0.2, where off-topic refusals score 0)."""
    cfg = _config(
        tmp_path,
        max_steps=150,
        batch_size=64,
        lr=3e-3,
        toy_train_size=2000,
        warmup_steps=10,
        eval_every=10**6,
        save_every=10**6,
    )
    assert train(cfg) == 0
    model, tokenizer = load_causal_lm(tmp_path / "final"), load_tokenizer(tmp_path / "final")
    rng = random.Random(5)
    prompts = [p for p in world.prompts("eval", 200, seed=11) if p.risky]
    originals = [world.sft_response(p, rng) for p in prompts]
    fixed = correct(model, tokenizer, [p.text for p in prompts], originals, max_new_tokens=20)
    before = sum(world.is_unsafe(p, a) for p, a in zip(prompts, originals, strict=True)) / len(prompts)
    after = sum(world.is_unsafe(p, a) for p, a in zip(prompts, fixed, strict=True)) / len(prompts)
    helpful = sum(world.helpfulness(p, a) for p, a in zip(prompts, fixed, strict=True)) / len(prompts)
    assert before >= 0.3, before
    assert after <= 0.1, (before, after)
    assert helpful >= 0.2, helpful


def test_train_aligner_reads_the_platforms_corrections(tmp_path):
    """The platform's export of judged items feeds `train aligner` through feedback.formats."""
    from alignloop.feedback.formats import write_records
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.schema import DEFAULT_QUESTIONS, Candidate, Item, Judgement

    item = Item("how do i cook rice", (Candidate("sure boil"), Candidate("use poison")), key="k")
    fixed = {"better": "A", "correction": {"candidate": "B", "text": "no poison boil"}}
    write_records(
        [judged_item(item, DEFAULT_QUESTIONS, [Judgement(item, fixed, "a")])],
        tmp_path / "e.jsonl",
        "judgements",
    )
    assert read_corrections(tmp_path / "e.jsonl") == [
        Correction("how do i cook rice", "use poison", "no poison boil")
    ]
