"""A byte-level BPE tokenizer with a chat template, trained with `tokenizers` at test time from a
few hundred lines of text (no hub), and a tiny policy, reward and cost model on it: the
language-model path with a tokenizer like a real model's rather than the toy world's word-level one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SUBJECTS = ("the garden", "a bicycle", "my laptop", "a sourdough loaf", "the river", "an old map", "a violin")
ASKS = (
    "How do I fix",
    "What is the best way to clean",
    "Can you describe",
    "Why does",
    "Explain how to paint",
)
REPLIES = (
    "Start slowly, check each part, then rinse it.",
    "I can't help with that.",
    "Use warm water and a soft cloth.",
)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """`n` lines of English-like text, questions and answers with punctuation and capitals."""
    rng = random.Random(seed)
    return [f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)}? {rng.choice(REPLIES)}" for _ in range(n)]


def questions(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)}?" for _ in range(n)]


def build_bpe_tokenizer(save_dir: Path | None = None, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenisation) trained on `corpus()`, with
    pad/bos/eos and role tokens and `CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *(f"<|{r}|>" for r in ROLES)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def build_bpe_models(root: Path) -> dict[str, Path]:
    """A tiny untrained policy and reward and cost models on the BPE tokenizer, saved under
    `root` (policy/, reward/, cost/)."""
    from alignloop.lm.models import ScoreModel
    from alignloop.lm.toyworld import build_policy, tiny_config

    tokenizer = build_bpe_tokenizer()
    folders = {name: root / name for name in ("policy", "reward", "cost")}
    policy = build_policy(tokenizer, seed=0, max_position_embeddings=128)
    policy.save_pretrained(str(folders["policy"]))
    tokenizer.save_pretrained(str(folders["policy"]))
    for i, name in enumerate(("reward", "cost")):
        config = tiny_config(tokenizer, max_position_embeddings=128)
        ScoreModel.from_backbone_config(config, seed=i + 1).save_pretrained(folders[name], tokenizer)
    return folders
