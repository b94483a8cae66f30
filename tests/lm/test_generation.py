"""Batched KV-cached sampling: shapes, masks, end-of-sequence handling, cache equivalence."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignloop.lm.generation import filter_logits, generate
from alignloop.lm.models import position_ids_from_mask

VOCAB, PAD, EOS, UNUSED = 40, 0, 2, 39


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def _prompts(batch: int = 6, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB - 1, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):  # left padding of 0..3 tokens
        pad = row % 4
        ids[row, :pad] = PAD
        mask[row, :pad] = 0
    return ids, mask


def _full_logprobs(model, sequences, attention_mask, prompt_length):
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).logits  # (B, T, V)
    logps = torch.log_softmax(logits[:, prompt_length - 1 : -1].float(), -1)  # (B, R, V)
    return logps.gather(-1, sequences[:, prompt_length:, None]).squeeze(-1)  # (B, R)


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    inf = float("-inf")
    top2 = filter_logits(logits, top_k=1)
    assert top2[0, 1:].tolist() == [inf, inf, inf]
    # nucleus 0.6: mass ranked above each token = 0, 0.5, 0.7 (tie order), 0.9 -> keep the first two
    kept = torch.isfinite(filter_logits(logits, top_p=0.6))
    assert kept.sum().item() == 2 and kept[0, 0]
    # nucleus 0.5 keeps only the top token (mass above the second one is already 0.5)
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).sum().item() == 1
    assert torch.equal(filter_logits(logits), logits)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_kv_cache_matches_no_cache_greedy(build):
    model = build()
    ids, mask = _prompts()
    cached = generate(model, ids, mask, max_new_tokens=10, eos_token_id=UNUSED, pad_token_id=PAD, greedy=True)
    full = generate(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_token_id=UNUSED,
        pad_token_id=PAD,
        greedy=True,
        use_cache=False,
    )
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(cached.logprobs, full.logprobs, rtol=1e-5, atol=1e-5)
    # each left-padded row decodes as the same prompt without padding would
    row = 3  # 3 pad tokens
    alone = generate(
        model,
        ids[row : row + 1, 3:],
        mask[row : row + 1, 3:],
        max_new_tokens=10,
        eos_token_id=UNUSED,
        pad_token_id=PAD,
        greedy=True,
    )
    assert torch.equal(alone.responses[0], cached.responses[row])


def test_shapes_masks_and_logprobs_match_a_forward_pass():
    model = _gpt2()
    ids, mask = _prompts()
    gen = torch.Generator().manual_seed(0)
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=8,
        eos_token_id=UNUSED,
        pad_token_id=PAD,
        temperature=0.7,
        generator=gen,
    )
    batch, prompt_length = ids.shape
    assert out.prompt_length == prompt_length
    assert out.sequences.shape == (batch, prompt_length + 8)
    assert out.attention_mask.shape == out.sequences.shape
    assert out.response_mask.shape == out.logprobs.shape == (batch, 8)
    assert torch.equal(out.sequences[:, :prompt_length], ids)
    assert bool(out.response_mask.all())
    assert bool((out.logprobs < 0).all())
    logits_logps = _full_logprobs(model, out.sequences, out.attention_mask, prompt_length)
    # the recorded log-probs are at temperature 0.7: compare with a forward pass at the same temperature
    logits = model(
        input_ids=out.sequences,
        attention_mask=out.attention_mask,
        position_ids=position_ids_from_mask(out.attention_mask),
    ).logits[:, prompt_length - 1 : -1]
    tempered = torch.log_softmax(logits / 0.7, -1).gather(-1, out.responses[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, tempered, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logprobs, logits_logps)


def test_rows_stop_at_eos_and_are_padded_after():
    model = _gpt2()
    ids, mask = _prompts()
    free = generate(model, ids, mask, max_new_tokens=8, eos_token_id=UNUSED, pad_token_id=PAD, greedy=True)
    eos = int(free.responses[0, 2])  # row 0 greedily emits this token at step 2: call it the end token
    out = generate(model, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD, greedy=True)
    for row in range(ids.shape[0]):
        response = free.responses[row].tolist()
        end = response.index(eos) + 1 if eos in response else len(response)
        assert out.response_mask[row].sum().item() == end
        assert out.responses[row, :end].tolist() == response[:end]
        assert bool((out.responses[row, end:] == PAD).all())
        assert bool((out.logprobs[row, end:] == 0).all())
        assert bool((out.attention_mask[row, ids.shape[1] + end :] == 0).all())
    lengths = out.response_mask.sum(-1)  # (B,)
    assert lengths[0].item() <= 3 and lengths.min().item() < lengths.max().item()
    # log-probs of the kept tokens agree with one forward pass over the padded result
    full = _full_logprobs(model, out.sequences, out.attention_mask, ids.shape[1])
    torch.testing.assert_close(full[out.response_mask], out.logprobs[out.response_mask], rtol=1e-5, atol=1e-5)


class EndsAfter(nn.Module):
    """A stub causal LM whose row i puts all its mass on EOS once it has generated ``ends[i]``
    tokens, and none on EOS before: every row surely ends, row i after ``ends[i] + 1`` tokens.
    It counts its forward calls."""

    def __init__(self, prompt_length: int, ends: list[int]):
        super().__init__()
        self.prompt_length, self.ends, self.calls = prompt_length, torch.tensor(ends), 0

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=False):
        self.calls += 1
        generated = attention_mask.shape[1] - self.prompt_length  # (the same for every row)
        logits = torch.zeros(*input_ids.shape, VOCAB)  # (B, L, V)
        at_end = generated >= self.ends  # (B,)
        logits[:, -1] = torch.where(at_end[:, None], float("-inf"), 0.0)
        logits[:, -1, EOS] = torch.where(at_end, 0.0, float("-inf"))
        return SimpleNamespace(logits=logits, past_key_values="past" if use_cache else None)


@pytest.mark.parametrize("use_cache", [True, False])
def test_stops_as_soon_as_every_row_has_ended(use_cache):
    ids, mask = _prompts(batch=4)
    ends = [0, 2, 1, 3]  # row i samples ends[i] tokens, then EOS
    model = EndsAfter(ids.shape[1], ends)
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_token_id=EOS,
        pad_token_id=PAD,
        use_cache=use_cache,
        generator=torch.Generator().manual_seed(0),
    )
    # the longest row ends at its 4th token: 4 steps, not 10
    assert model.calls == 4
    assert out.responses.shape == (4, 4) and out.logprobs.shape == (4, 4)
    assert out.response_mask.sum(-1).tolist() == [1, 3, 2, 4]
    ended = out.responses.gather(1, torch.tensor(ends)[:, None]).squeeze(1)  # (B,) token at each end
    assert ended.tolist() == [EOS] * 4
    assert (out.responses[~out.response_mask] == PAD).all() and (out.logprobs[~out.response_mask] == 0).all()
    # log-probs: 0 (log 1) for each EOS, log(1 / 39) for a token drawn uniformly from the other 39
    at_eos = out.responses == EOS
    torch.testing.assert_close(out.logprobs[at_eos], torch.zeros(4), rtol=0, atol=1e-6)
    drawn = out.logprobs[out.response_mask & ~at_eos]
    torch.testing.assert_close(drawn, torch.full((6,), -math.log(VOCAB - 1)), rtol=1e-6, atol=1e-6)


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = _gpt2()
    ids, mask = _prompts()

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate(
            model, ids, mask, max_new_tokens=6, eos_token_id=UNUSED, pad_token_id=PAD, generator=generator
        ).sequences

    assert torch.equal(sample(5), sample(5))
    assert not torch.equal(sample(5), sample(6))


def test_rejects_right_padded_prompts():
    model = _gpt2()
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask.flip(-1), max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)


def test_sampling_is_multinomial_and_each_row_is_independent_of_the_split():
    """The noise of row i is drawn at row i of the whole batch: two halves sampled with
    ``rows`` (one process each, seeded alike) draw the tokens of the whole batch; and one
    sampling step is exactly ``torch.multinomial``."""
    model = _llama()
    ids, mask = _prompts(batch=6)
    options = dict(max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD, top_k=12)
    whole = generate(model, ids, mask, generator=torch.Generator().manual_seed(3), **options)
    for offset in (0, 3):
        half = generate(
            model,
            ids[offset : offset + 3],
            mask[offset : offset + 3],
            generator=torch.Generator().manual_seed(3),
            rows=(offset, 6),
            **options,
        )
        steps = half.responses.shape[1]  # a half may end before the whole batch does
        assert torch.equal(half.responses, whole.responses[offset : offset + 3, :steps])
        assert bool((whole.responses[offset : offset + 3, steps:] == PAD).all())
        torch.testing.assert_close(
            half.logprobs, whole.logprobs[offset : offset + 3, :steps], rtol=1e-5, atol=1e-6
        )
    one_step = generate(model, ids, mask, max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD,
                        generator=torch.Generator().manual_seed(8))  # fmt: skip
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[
        :, -1
    ]
    expected = torch.multinomial(
        torch.softmax(logits.float(), -1), 1, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(one_step.responses[:, 0], expected[:, 0])
