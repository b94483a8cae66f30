"""Models: the score model (reward and cost), loading helpers, LoRA, token log-probabilities.

A `ScoreModel` is any `AutoModel` backbone plus a linear head giving one score per token;
the sequence's score is read at its last non-padding token, so left and right padding give
the same result. It saves as the Hugging Face sequence classifier of its family with one label
(`LlamaForSequenceClassification`, ...), so that other tools load the trained head:

    config.json        architectures [...ForSequenceClassification], num_labels 1, and the
                       tokenizer's pad_token_id (the classifier scores the last non-pad token)
    model.safetensors  the backbone under its prefix (`model.`) and the head as `score.weight`
    tokenizer files    when a tokenizer is passed to `save_pretrained`

`AutoModelForSequenceClassification.from_pretrained(folder)` then gives the same end score as
`ScoreModel.from_pretrained(folder)` on right-padded batches (left padding shifts the positions
it counts, unless `position_ids` are passed). A head with a bias, or a family without such a
classifier, is saved as before: the backbone plus `score_head.json` and
`score_head.safetensors`, which `from_pretrained` still reads.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignloop.errors import UserError
from alignloop.lm.folders import SCORE_HEAD_CONFIG, SCORE_HEAD_WEIGHTS, TOY, is_score_folder, model_folder


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them.  (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-padding token of each row, for left or right padding.  (B,)"""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)  # (B, T)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values


@dataclass
class ScoreOutput:
    end_scores: Tensor  # (B,) score at the last non-padding token
    scores: Tensor  # (B, T) score at every token


class ScoreModel(nn.Module):
    """A transformer backbone with a scalar head: a reward model or a cost model."""

    backbone: Any  # a transformers base model (or its peft wrapper)

    def __init__(self, backbone: Any, head_bias: bool = False):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.score_head = nn.Linear(hidden, 1, bias=head_bias)  # no bias: as the HF classifier's `score`
        nn.init.normal_(self.score_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        if head_bias:
            nn.init.zeros_(self.score_head.bias)

    @property
    def config(self) -> Any:
        return self.backbone.config

    @classmethod
    def from_backbone_config(cls, config: Any, seed: int | None = None) -> ScoreModel:
        """A freshly initialised score model for a backbone config."""
        from transformers import AutoModel

        if seed is not None:
            torch.manual_seed(seed)
        return cls(AutoModel.from_config(config))

    @classmethod
    def from_causal_lm(cls, path_or_model: str | Path | nn.Module) -> ScoreModel:
        """Start from a causal LM's transformer body (Safe RLHF initialises from the SFT model)."""
        lm = load_causal_lm(path_or_model)
        return cls(lm.get_decoder())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ScoreOutput:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
        ).last_hidden_state  # (B, T, H)
        scores = self.score_head(hidden).squeeze(-1).float()  # (B, T)
        end = last_token_index(attention_mask)  # (B,)
        end_scores = scores.gather(1, end.unsqueeze(1)).squeeze(1)  # (B,)
        return ScoreOutput(end_scores=end_scores, scores=scores)

    def save_pretrained(self, save_dir: str | Path, tokenizer: Any = None) -> Path:
        """Write a Hugging Face folder: the one-label sequence classifier (see the module
        docstring), else backbone + score head files; and the tokenizer, when given."""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(self.backbone, "merge_and_unload"):  # LoRA: merge the adapters for good
            self.backbone = self.backbone.merge_and_unload()
        pad_id = None if tokenizer is None else tokenizer.pad_token_id
        classifier = self.as_classifier(pad_id)
        if classifier is not None:
            classifier.save_pretrained(str(save_dir))
            for stale in (SCORE_HEAD_CONFIG, SCORE_HEAD_WEIGHTS):
                (save_dir / stale).unlink(missing_ok=True)
            if tokenizer is not None and pad_id == tokenizer.eos_token_id:
                print(
                    f"{save_dir}: the tokenizer pads with its end token, so a sequence classifier would "
                    "score the token before the final end token; give the tokenizer its own pad token"
                )
        else:
            self._save_head_files(save_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(save_dir))
        return save_dir

    def as_classifier(self, pad_token_id: int | None = None) -> Any:
        """This model as its family's `...ForSequenceClassification` with one label and the same
        weights (shared, not copied), or None when the family has none or the head has a bias."""
        from transformers import AutoModelForSequenceClassification

        if self.score_head.bias is not None:
            return None
        config = copy.deepcopy(self.backbone.config)
        config.num_labels = 1
        config.architectures = None
        if pad_token_id is not None:
            config.pad_token_id = pad_token_id
        try:
            with torch.device("meta"):  # no weights initialised: they are assigned below
                classifier = AutoModelForSequenceClassification.from_config(config)
        except ValueError:  # no sequence classifier for this family
            return None
        head = getattr(classifier, "score", None)
        body = getattr(classifier, classifier.base_model_prefix, None)
        if not isinstance(head, nn.Linear) or head.bias is not None or body is None:
            return None
        body.load_state_dict(self.backbone.state_dict(), assign=True)
        head.load_state_dict(self.score_head.state_dict(), assign=True)
        for name, buffer in self.backbone.named_buffers():  # buffers kept out of the state dict
            owner, _, leaf = name.rpartition(".")
            target = body.get_submodule(owner) if owner else body
            if (
                leaf in target._buffers
                and target._buffers[leaf] is not None
                and target._buffers[leaf].is_meta
            ):
                target._buffers[leaf] = buffer
        classifier.config.architectures = [type(classifier).__name__]
        return classifier

    def _save_head_files(self, save_dir: Path) -> None:
        """The layout of earlier versions: backbone, score_head.json, score_head.safetensors."""
        from safetensors.torch import save_file

        self.backbone.save_pretrained(str(save_dir))
        head = {"hidden_size": self.score_head.in_features, "bias": self.score_head.bias is not None}
        (save_dir / SCORE_HEAD_CONFIG).write_text(json.dumps(head, indent=2) + "\n")
        weights = {k: v.detach().cpu().contiguous() for k, v in self.score_head.state_dict().items()}
        save_file(weights, str(save_dir / SCORE_HEAD_WEIGHTS))

    @classmethod
    def from_pretrained(cls, load_dir: str | Path, dtype: torch.dtype | None = None) -> ScoreModel:
        """Load a folder written by `save_pretrained` (either layout), or any one-label sequence
        classifier (e.g. a reward model trained with TRL)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForSequenceClassification

        load_dir = model_folder(load_dir, kind="score", tokenizer=False)
        head_config = load_dir / SCORE_HEAD_CONFIG
        with loading(load_dir):
            if head_config.is_file():
                head = json.loads(head_config.read_text())
                model = cls(
                    AutoModel.from_pretrained(str(load_dir), dtype=dtype), head_bias=bool(head["bias"])
                )
                model.score_head.load_state_dict(load_file(str(load_dir / SCORE_HEAD_WEIGHTS)))
                return model
            classifier = AutoModelForSequenceClassification.from_pretrained(str(load_dir), dtype=dtype)
        score = getattr(classifier, "score", None)
        if classifier.config.num_labels != 1 or not isinstance(score, nn.Linear):
            raise UserError(
                f"{load_dir}: a sequence classifier with {classifier.config.num_labels} labels; a reward or "
                "cost model has one score"
            )
        model = cls(getattr(classifier, classifier.base_model_prefix), head_bias=score.bias is not None)
        model.score_head.load_state_dict(score.state_dict())
        return model


@contextlib.contextmanager
def loading(folder: Path) -> Iterator[None]:
    """Turn what transformers and safetensors raise on a damaged or foreign folder into a
    `UserError` naming the folder."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{folder}: cannot load the model ({reason}); are its files damaged or cut short?"
        ) from exc


def load_causal_lm(path_or_model: str | Path | nn.Module, dtype: torch.dtype | None = None) -> Any:
    """A causal LM from a Hugging Face folder (or a model already built, returned as is)."""
    if isinstance(path_or_model, nn.Module):
        return path_or_model
    from transformers import AutoModelForCausalLM

    folder = model_folder(path_or_model, kind="causal-lm", tokenizer=False)
    with loading(folder):
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)


def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer from a Hugging Face folder; a missing pad token falls back to eos."""
    from transformers import AutoTokenizer

    folder = model_folder(path, kind="any")
    with loading(folder):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_lora(
    model: nn.Module, r: int, alpha: float, dropout: float = 0.0, target_modules: list[str] | None = None
) -> nn.Module:
    """Freeze `model` and add LoRA adapters of rank `r` (peft). For a `ScoreModel`, the
    adapters go into the backbone and the score head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=int(alpha), lora_dropout=dropout, target_modules=target_modules or "all-linear"
    )
    if isinstance(model, ScoreModel):
        model.backbone = get_peft_model(model.backbone, config)
        return model
    return get_peft_model(model, config)


def merge_lora(model: Any) -> Any:
    """The plain model with any LoRA adapters merged in (for saving as a normal folder)."""
    if isinstance(model, ScoreModel):
        return model  # ScoreModel.save_pretrained merges
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) at each position: logits (B, T, V), labels (B, T) -> (B, T).

    Computed as the label's logit minus logsumexp, without materialising a (B, T, V) log-softmax.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(
    model: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed log-probability of the response tokens, and their number.  -> (B,), (B,)

    `response_mask` (B, T): True = response token (scored given everything before it).
    """
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).logits  # (B, T, V)
    logps = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1): token t+1 given <= t
    mask = response_mask[:, 1:].to(logps.dtype)  # True = response token
    return (logps * mask).sum(-1), mask.sum(-1)


def load_score_model(name: str, seed: int = 0) -> tuple[Any, ScoreModel]:
    """(tokenizer, score model) from "toy" (fresh tiny model), a score-model folder, or a causal-LM
    folder (its body with a fresh head, as Safe RLHF starts reward and cost models from SFT)."""
    if name == TOY:
        from alignloop.lm.toyworld import build_tokenizer, tiny_config

        tokenizer = build_tokenizer()
        return tokenizer, ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=seed)
    if is_score_folder(model_folder(name, kind="any")):
        return load_tokenizer(name), ScoreModel.from_pretrained(name)
    torch.manual_seed(seed)
    return load_tokenizer(name), ScoreModel.from_causal_lm(name)
