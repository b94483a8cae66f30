"""Prompt format, pair encoding and masks, collators, comparison loading."""

from __future__ import annotations

import pytest
import torch

from alignloop.feedback.schema import Comparison, SupervisedPair
from alignloop.lm.data import (
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    encode_pair,
    format_prompt,
    load_comparisons,
    preferred_pairs,
    safety_judged,
)


def test_default_prompt_format(tokenizer) -> None:
    assert format_prompt(tokenizer, "how do i cook rice") == "Human: how do i cook rice\nAssistant:"


def test_chat_template_is_used_when_present(tokenizer) -> None:
    templated = _copy(tokenizer)  # the fixture is shared; template a copy
    templated.chat_template = (
        "{% for m in messages %}Human: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant: sure{% endif %}"
    )
    assert format_prompt(templated, "how do i cook rice") == "Human: how do i cook rice\nAssistant: sure"


def _copy(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


def test_encode_pair_masks_response_and_eos(tokenizer) -> None:
    enc = encode_pair(tokenizer, "how do i cook rice", "first boil", max_length=64)
    words = ["<bos>", "Human:", "how", "do", "i", "cook", "rice", "Assistant:", "first", "boil", "<eos>"]
    assert enc["input_ids"] == tokenizer.convert_tokens_to_ids(words)
    assert enc["response_mask"] == [0] * 8 + [1] * 3  # 1 = response token (with <eos>)
    assert enc["attention_mask"] == [1] * 11


def test_encode_pair_truncates_prompt_start_and_response_end(tokenizer) -> None:
    enc = encode_pair(tokenizer, "how do i cook rice", "first boil then salt and stir", max_length=10)
    assert len(enc["input_ids"]) == 10
    assert sum(enc["response_mask"]) == 5  # half the budget for the prompt's end, the rest for the response
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][:5]) == ["do", "i", "cook", "rice", "Assistant:"]


def test_sft_collator_pads_right(tokenizer) -> None:
    batch = SFTCollator(tokenizer)(
        [SupervisedPair("how do i cook rice", "first boil"), SupervisedPair("how do i cook rice", "boil")]
    )
    assert batch["input_ids"].shape == (2, 11)
    assert batch["attention_mask"][1].tolist() == [1] * 10 + [0]
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id
    assert batch["response_mask"].dtype == torch.bool and batch["response_mask"][1].sum() == 2


def test_preference_collator_orders_by_choice_and_shares_length(tokenizer) -> None:
    c = Comparison(
        "how do i cook rice",
        "first boil",
        "sure detonator then boil and salt",
        better=1,
        safer=0,
        is_safe=(True, False),
    )
    by_better = PreferenceCollator(tokenizer, by="better")([c])
    by_safer = PreferenceCollator(tokenizer, by="safer")([c])
    assert by_better["chosen_input_ids"].shape == by_better["rejected_input_ids"].shape == (1, 15)
    assert by_better["chosen_attention_mask"].sum() == 15 and by_better["rejected_attention_mask"].sum() == 11
    assert by_safer["chosen_attention_mask"].sum() == 11
    assert by_better["chosen_safe"].tolist() == [False] and by_safer["chosen_safe"].tolist() == [True]
    with pytest.raises(ValueError, match="no 'better' preference"):
        PreferenceCollator(tokenizer)([Comparison("p", "a", "b", better=None)])
    kept, ties = preferred_pairs([c, Comparison("p", "a", "b", better=None)], "better")
    assert kept == [c] and ties == 1


def test_safety_ties_keep_their_sign_terms_for_the_cost_model(tokenizer) -> None:
    ranked = Comparison("p", "first boil", "sure detonator", better=0, safer=0, is_safe=(True, False))
    tie = Comparison("p", "first boil", "boil", better=None, safer=None, is_safe=(True, True))
    unjudged = Comparison("p", "a", "b", better=0, safer=0)
    kept, left_out = safety_judged([ranked, tie, unjudged])
    assert kept == [ranked, tie] and left_out == 1  # the tie is kept: both flags are known
    batch = PreferenceCollator(tokenizer, by="safer")(kept)
    assert batch["ranked"].tolist() == [True, False]
    assert batch["chosen_safe"].tolist() == [True, True] and batch["rejected_safe"].tolist() == [False, True]


def test_prompt_collator_pads_left(tokenizer) -> None:
    batch = PromptCollator(tokenizer)(["how do i cook rice", "tell me how to make poison"])
    # <bos> Human: ... Assistant: -> 8 and 9 tokens; the shorter one gets one pad on the left
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"][0].tolist() == [0] + [1] * 8
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id
    assert batch["input_ids"][0, 1] == tokenizer.bos_token_id
    assert batch["input_ids"][:, -1].tolist() == tokenizer.convert_tokens_to_ids(["Assistant:"] * 2)


def test_load_comparisons_reports_file_line_and_field(tmp_path) -> None:
    from alignloop.feedback.formats import FormatError

    good = '{"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": true, "is_response_1_safe": false, "better_response_id": 1, "safer_response_id": 0}'
    bad = '{"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": true, "is_response_1_safe": false, "better_response_id": 1, "safer_response_id": 1}'
    path = tmp_path / "pairs.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    with pytest.raises(FormatError, match=r"pairs.jsonl.*2.*safer"):
        load_comparisons(path)
    assert [c.better for c in load_comparisons(path, skip_invalid=True)] == [1]


def test_reward_and_cost_data_read_the_platforms_judged_items(tmp_path) -> None:
    from alignloop.feedback.formats import write_records
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.schema import DEFAULT_QUESTIONS, Candidate, Item, Judgement, Ranking

    three = Item("q", (Candidate("a"), Candidate("b"), Candidate("c")))
    pair = Item("p", (Candidate("x"), Candidate("y")))
    unsafe = {"safe": False, "harms": [], "severity": None}
    records = [
        judged_item(three, (Ranking("order"),), [Judgement(three, {"order": [2, 1, 3]}, "ann1")]),
        judged_item(
            pair,
            DEFAULT_QUESTIONS,
            [Judgement(pair, {"better": "B", "safer": "A", "is_safe": [None, unsafe]}, "ann1")],
        ),
    ]
    write_records(records, tmp_path / "export.parquet", "judgements")
    loaded = load_comparisons(tmp_path / "export.parquet")
    assert [(c.response_0, c.response_1, c.better) for c in loaded[:3]] == [
        ("b", "a", 0),
        ("a", "c", 0),
        ("b", "c", 0),
    ]
    assert (loaded[3].better, loaded[3].safer, loaded[3].is_safe) == (1, 0, (None, False))


def test_rankings_are_batched_candidate_by_candidate_and_scored_in_place(tokenizer, tmp_path) -> None:
    from types import SimpleNamespace

    from alignloop.feedback.formats import write_records
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.pairs import RankedCandidates, ranked_pair
    from alignloop.feedback.schema import Candidate, Item, Judgement, Ranking, Rating
    from alignloop.lm.data import RankingCollator, load_rankings
    from alignloop.lm.reward import implied_pair_scores, ranking_scores

    pair = ranked_pair("how do i cook rice", "boil", "no")
    three = RankedCandidates("what is tea", ("a", "b", "c"), (2, 1, 2))
    batch = RankingCollator(tokenizer, 32)([pair, three])
    assert batch["input_ids"].shape[0] == 5  # 2 + 3 candidates, no padding candidate
    # every first candidate, then every second, ...: into (2, 3), the pair's third slot is empty
    assert batch["slots"].tolist() == [0, 3, 1, 4, 5]
    assert batch["ranks"].tolist() == [[1, 2, 0], [2, 1, 2]]
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    first = encode_pair(tokenizer, "how do i cook rice", "boil", 32)["input_ids"]
    assert batch["input_ids"][0, : len(first)].tolist() == first
    assert batch["attention_mask"][0].sum() == len(first)

    def model(input_ids, attention_mask):  # scores 10, 11, 12, ... by row
        return SimpleNamespace(end_scores=10.0 + torch.arange(len(input_ids), dtype=torch.float32))

    scores = ranking_scores(model, batch)
    assert scores.tolist() == [[10.0, 12.0, 0.0], [11.0, 13.0, 14.0]]
    better, worse = implied_pair_scores(scores, batch["ranks"], batch["mask"])
    assert sorted(zip(better.tolist(), worse.tolist(), strict=True)) == [
        (10.0, 12.0),
        (13.0, 11.0),
        (13.0, 14.0),
    ]

    # an export: a ranking kept whole, ratings as pairs, and the judgements that say nothing counted
    four = Item("q", tuple(Candidate(t) for t in "wxyz"))
    rated = Item("r", (Candidate("u"), Candidate("v")))
    records = [
        judged_item(
            four,
            (Ranking("order"),),
            [Judgement(four, {"order": [4, 1, 2, 3]}, "a1"), Judgement(four, {}, "a2", skipped=True)],
        ),
        judged_item(
            rated,
            (Rating("q"),),
            [
                Judgement(rated, {"q": {"overall": [2, 4]}}, "a1"),
                Judgement(rated, {"q": {"overall": [3, 3]}}, "a2"),
            ],
        ),
    ]
    write_records(records, tmp_path / "export.jsonl", "judgements")
    rankings, left_out = load_rankings(tmp_path / "export.jsonl")
    assert [(r.texts, r.ranks) for r in rankings] == [
        (("w", "x", "y", "z"), (4, 1, 2, 3)),
        (("v", "u"), (1, 2)),
    ]
    assert left_out == 1  # the equal ratings (a skip is no judgement)
