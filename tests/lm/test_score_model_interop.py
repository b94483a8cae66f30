"""A reward or cost model folder is a Hugging Face sequence classifier: TRL's or OpenRLHF's
`AutoModelForSequenceClassification` loads the trained head and gives alignloop's score."""

from __future__ import annotations

from pathlib import Path

import torch

from alignloop.lm.data import pad
from alignloop.lm.models import ScoreModel
from alignloop.lm.toyworld import tiny_config


def _trained_like(tokenizer) -> ScoreModel:
    """A score model whose head is far from any fresh initialisation (as after training)."""
    model = ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=3)
    with torch.no_grad():
        model.score_head.weight.copy_(torch.linspace(-2.0, 2.0, model.score_head.in_features)[None])
    return model.eval()


def test_the_standard_class_gives_the_same_score(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    model = _trained_like(tokenizer)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    torch.testing.assert_close(classifier.score.weight, model.score_head.weight, rtol=0, atol=0)
    rows = [[1, 4, 9, 10, 5, 20, 2], [1, 4, 12, 5, 2]]  # <bos> ... <eos>, of two lengths
    ids = pad(rows, tokenizer.pad_token_id, "right")  # (2, 7)
    mask = pad([[1] * len(r) for r in rows], 0, "right")
    with torch.no_grad():
        ours = model(ids, mask).end_scores  # (2,) at the last real token, the <eos>
        theirs = classifier(input_ids=ids, attention_mask=mask).logits[:, 0]  # at the last non-pad token
        alone = torch.stack([classifier(input_ids=torch.tensor([r])).logits[0, 0] for r in rows])
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, ours, rtol=1e-5, atol=1e-6)
    assert float((ours[0] - ours[1]).abs()) > 1e-3  # the two scores differ: the comparison can fail


def test_a_classifier_saved_by_another_tool_loads_as_a_score_model(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = tiny_config(tokenizer, num_labels=1)
    other = AutoModelForSequenceClassification.from_config(config).eval()
    other.save_pretrained(str(tmp_path / "trl"))
    tokenizer.save_pretrained(str(tmp_path / "trl"))
    loaded = ScoreModel.from_pretrained(tmp_path / "trl").eval()
    ids = torch.tensor([[1, 4, 9, 10, 5, 2]])
    with torch.no_grad():
        expected = other(input_ids=ids).logits[0, 0]
        got = loaded(ids, torch.ones_like(ids)).end_scores[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
