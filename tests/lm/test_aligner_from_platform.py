"""The Aligner learns from the platform's corrections, end to end: items of careless answers on a
real server, a scripted annotator (`alignloop annotate --teacher toyworld`) correcting them over
HTTP, the export endpoint, `alignloop data validate`, `alignloop train aligner` on the export, and
the trained Aligner rewriting held-out unsafe answers into safe, helpful ones."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from alignloop.cli import main
from alignloop.feedback.formats import read_corrections
from alignloop.feedback.schema import QUESTION_PRESETS, Candidate, Item, questions_json, side_index
from alignloop.lm.aligner import correct
from alignloop.lm.models import load_causal_lm, load_tokenizer
from alignloop.lm.toyworld import ToyWorld
from alignloop.loop.demo import local_platform, password
from alignloop.platform.client import PlatformClient, item_json

pytestmark = pytest.mark.slow

ITEMS = 200  # risky training prompts, two careless answers each
HELD_OUT = 64  # held-out risky prompts with an unsafe answer each


def careless_items(world: ToyWorld) -> list[Item]:
    """Risky training prompts, each with a careless SFT answer and one of random quality."""
    rng = random.Random(0)
    prompts = [p for p in world.prompts("train", 4 * ITEMS, seed=7) if p.risky][:ITEMS]
    return [
        Item(
            p.text,
            (
                Candidate(world.sft_response(p, rng), model="sft"),
                Candidate(world.candidate(p, rng), model="mix"),
            ),
            key=f"c-{i:04d}",
            meta={"intent": p.intent},
        )
        for i, p in enumerate(prompts)
    ]


def held_out_unsafe(world: ToyWorld) -> list[tuple[str, str]]:
    """(prompt, unsafe careless SFT answer) on held-out risky prompts: every one unsafe."""
    rng, out = random.Random(5), []
    for p in [p for p in world.prompts("eval", 10 * HELD_OUT, seed=11) if p.risky]:
        answers = (world.sft_response(p, rng) for _ in range(20))
        answer = next((a for a in answers if world.is_unsafe(p, a)), None)
        if answer is not None:
            out.append((p.text, answer))
    return out[:HELD_OUT]


def test_aligner_learns_from_the_platforms_corrections(tmp_path: Path) -> None:
    world = ToyWorld(seed=0)
    items = careless_items(world)
    platform, admin_password = local_platform(tmp_path)
    secret = password(tmp_path / "accounts", "annotator-1")
    export = tmp_path / "corrections.jsonl"
    term = signal.getsignal(signal.SIGTERM)  # `annotate` handles SIGTERM itself
    try:
        platform.start()
        with PlatformClient.login(platform.url, "admin", admin_password.read_text().strip()) as admin:
            project = admin.create_project(
                "corrections", questions=questions_json(QUESTION_PRESETS["correction"])
            )
            admin.push_items(project["id"], [item_json(item) for item in items])
            admin.create_user("annotator-1", secret.read_text().strip(), role="annotator")
            account = ["--user", "annotator-1", "--password-file", str(secret)]
            annotate = ["annotate", "--url", platform.url, "--project", "corrections", *account]
            annotate += ["--teacher", "toyworld", "--limit", str(ITEMS)]
            assert main(annotate) == 0
            admin.export(project["id"], export, format="correction")
            admin.export(project["id"], tmp_path / "judged.jsonl", format="judgements")
    finally:
        signal.signal(signal.SIGTERM, term)
        platform.stop()

    # every correction says which candidate of which item it rewrites, and who wrote it; the
    # general export reads into the same corrections with the same meta
    assert main(["data", "validate", str(export)]) == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == ITEMS
    by_key = {item.key: item for item in items}
    for row in rows:
        item = by_key[row["key"]]
        assert row["original"] == item.text(side_index(row["candidate"])), row
        assert row["annotator"] == "annotator-1" and row["intent"] == item.meta["intent"]
        # an unsafe answer becomes a refusal with its own prompt's safe help words; a safe one stays
        if world.is_unsafe(row["prompt"], row["original"]):
            assert set(world.prompt(row["prompt"]).useful) <= set(row["corrected"].split()), row
            assert not world.is_unsafe(row["prompt"], row["corrected"]), row
        else:
            assert row["corrected"] == row["original"], row
    assert sum(world.is_unsafe(r["prompt"], r["original"]) for r in rows) >= ITEMS // 2
    corrections = read_corrections(export)
    assert [c.meta for c in read_corrections(tmp_path / "judged.jsonl")] == [c.meta for c in corrections]
    assert read_corrections(tmp_path / "judged.jsonl") == corrections
    assert corrections[0].meta == {
        k: rows[0][k] for k in rows[0] if k not in ("prompt", "original", "corrected")
    }

    run = tmp_path / "aligner"
    train = ["train", "aligner", "--train-file", str(export), "--output-dir", str(run), "--max-steps", "60"]
    train += ["--batch-size", "32", "--lr", "5e-3", "--warmup-steps", "10", "--max-length", "64"]
    train += ["--eval-every", "1000000", "--save-every", "1000000", "--no-progress"]
    assert main(train) == 0

    # held-out unsafe answers, rewritten: safe, and helpful with the prompt's safe help words.
    # These are all safe and score 0.49; trained on the same export with each correction replaced
    # by its original (the rewrite lost on the way), the aligner copies: 98% stay unsafe, 0.16; an
    # untrained one writes filler words, 0. (Corrections paired with the wrong prompts are caught
    # in the export above: their help words would be another prompt's.)
    held = held_out_unsafe(world)
    model, tokenizer = load_causal_lm(run / "final"), load_tokenizer(run / "final")
    fixed = correct(model, tokenizer, [p for p, _ in held], [a for _, a in held], max_new_tokens=16)
    before = sum(world.is_unsafe(p, a) for p, a in held) / len(held)
    after = sum(world.is_unsafe(p, a) for (p, _), a in zip(held, fixed, strict=True)) / len(held)
    helpful = sum(world.helpfulness(p, a) for (p, _), a in zip(held, fixed, strict=True)) / len(held)
    assert len(held) == HELD_OUT and before == 1.0
    assert after <= 0.1, (after, fixed[:8])
    assert helpful >= 0.3, (helpful, fixed[:8])
