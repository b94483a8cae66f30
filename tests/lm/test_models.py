"""Score model: end score at the last real token under either padding, saved and loaded as a
Hugging Face folder; token log-probabilities against a direct computation; LoRA."""

from __future__ import annotations

import json

import torch

from alignloop.lm.data import pad
from alignloop.lm.models import (
    ScoreModel,
    apply_lora,
    last_token_index,
    load_causal_lm,
    load_score_model,
    sequence_logprobs,
    token_logprobs,
)
from alignloop.lm.toyworld import build_policy, tiny_config


def test_last_token_index_by_hand() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_end_score_is_read_at_last_real_token_for_left_and_right_padding(tokenizer) -> None:
    model = ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=0).eval()
    rows = [[1, 4, 9, 10, 5, 20], [1, 4, 12, 5, 33]]
    with torch.no_grad():
        alone = [
            float(model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)).end_scores) for r in rows
        ]
        for side in ("left", "right"):
            ids = pad(rows, tokenizer.pad_token_id, side)  # (2, 6)
            mask = pad([[1] * len(r) for r in rows], 0, side)
            out = model(ids, mask)
            torch.testing.assert_close(out.end_scores, torch.tensor(alone), rtol=1e-5, atol=1e-5)
            # end score = the per-token score at the last real position (row 1: index 4 right, 5 left)
            last = 4 if side == "right" else 5
            assert float(out.scores[1, last]) == float(out.end_scores[1])


def test_score_model_save_load_round_trip(tmp_path, tokenizer) -> None:
    model = ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=1).eval()
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not files & {"score_head.json", "score_head.safetensors"}
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["pad_token_id"] == tokenizer.pad_token_id
    tok, loaded = load_score_model(str(tmp_path / "rm"))
    loaded.eval()
    ids = torch.tensor([[1, 4, 9, 10, 5, 20]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).scores, model(ids, mask).scores, rtol=0, atol=0)
    assert tok.pad_token_id == tokenizer.pad_token_id


def test_score_model_folders_of_earlier_versions_still_load(tmp_path, tokenizer) -> None:
    """Backbone + score_head.json + score_head.safetensors, the head with a bias."""
    model = ScoreModel(
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=1).backbone, head_bias=True
    )
    with torch.no_grad():
        model.score_head.bias.fill_(0.25)
    model.eval().save_pretrained(tmp_path / "old", tokenizer=tokenizer)  # a biased head keeps that layout
    files = {p.name for p in (tmp_path / "old").iterdir()}
    assert {"score_head.json", "score_head.safetensors"} <= files
    _, loaded = load_score_model(str(tmp_path / "old"))
    ids, mask = torch.tensor([[1, 4, 9, 10, 5, 20]]), torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids, mask).scores, model(ids, mask).scores, rtol=0, atol=0)
    assert float(loaded.score_head.bias.detach()) == 0.25


def test_score_model_from_causal_lm_takes_its_body(tmp_path, tokenizer) -> None:
    lm = build_policy(tokenizer, seed=2)
    lm.save_pretrained(str(tmp_path / "lm"))
    tokenizer.save_pretrained(str(tmp_path / "lm"))
    _, model = load_score_model(str(tmp_path / "lm"))
    lm_weight = lm.get_input_embeddings().weight
    torch.testing.assert_close(model.backbone.get_input_embeddings().weight, lm_weight)


def test_token_logprobs_by_hand() -> None:
    # logits [0, ln 3] -> softmax [1/4, 3/4]; label 1 -> ln(3/4), label 0 -> ln(1/4)
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))], [0.0, torch.log(torch.tensor(3.0))]]])
    labels = torch.tensor([[1, 0]])
    expected = torch.log(torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(token_logprobs(logits, labels), expected, rtol=1e-6, atol=0)


def test_sequence_logprobs_sums_only_response_tokens(tokenizer) -> None:
    lm = build_policy(tokenizer, seed=0).eval()
    ids = torch.tensor([[1, 4, 9, 10, 5, 20, 21, 2]])
    mask = torch.ones_like(ids)
    response = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]]).bool()  # True = response token
    with torch.no_grad():
        total, n = sequence_logprobs(lm, ids, mask, response)
        logp = torch.log_softmax(lm(ids).logits, -1)[0]  # (T, V)
    expected = sum(float(logp[t - 1, ids[0, t]]) for t in (5, 6, 7))
    assert float(n) == 3
    assert abs(float(total) - expected) < 1e-4
    # left padding does not change it
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    pmask = torch.cat([torch.zeros(1, 3, dtype=torch.long), mask], 1)
    presp = torch.cat([torch.zeros(1, 3, dtype=torch.bool), response], 1)
    with torch.no_grad():
        total_left, _ = sequence_logprobs(lm, padded, pmask, presp)
    assert abs(float(total_left) - float(total)) < 1e-4


def test_causal_lm_save_load_round_trip(tmp_path, tokenizer) -> None:
    lm = build_policy(tokenizer, seed=0).eval()
    lm.save_pretrained(str(tmp_path / "lm"))
    loaded = load_causal_lm(tmp_path / "lm").eval()
    ids = torch.tensor([[1, 4, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, lm(ids).logits, rtol=0, atol=0)


def test_lora_trains_only_adapters_and_head_and_saves_merged(tmp_path, tokenizer) -> None:
    model = apply_lora(ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=0), r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score_head") for n in trainable)
    with torch.no_grad():  # move the adapters off zero so merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    ids, mask = torch.tensor([[1, 4, 9, 10, 5]]), torch.ones(1, 5, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        before = model(ids, mask).end_scores
    model.save_pretrained(tmp_path / "lora")
    loaded = ScoreModel.from_pretrained(tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).end_scores, before, rtol=1e-5, atol=1e-5)
