"""What a model folder is, told apart from everything else a user may pass as one.

A causal LM (a policy) is a Hugging Face folder: `config.json`, weights, tokenizer files. A score
model (reward or cost) is one too, saved as a sequence classifier with one label
(`...ForSequenceClassification` in `config.json`'s `architectures`), or, in folders written by
earlier versions, a backbone plus `score_head.json` and `score_head.safetensors`.

`model_folder` checks a folder before anything is loaded and says, when it is not what was asked
for, what it is instead (a data set, a run folder whose model is in `final/`, a reward model
given as a policy, ...) and what to pass. No torch here: commands call it first thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from alignloop.errors import UserError

SCORE_HEAD_CONFIG = "score_head.json"
SCORE_HEAD_WEIGHTS = "score_head.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip
FolderKind = Literal["causal-lm", "score", "any"]
TOY = "toy"
"""The model name that means a fresh tiny toy-world model rather than a folder."""

_MAKE = {
    "causal-lm": "a causal-LM folder (e.g. runs/sft/final, written by `alignloop train sft`)",
    "score": "a reward or cost model folder (runs/reward/final or runs/cost/final, written by "
    "`alignloop train reward` or `alignloop train cost`)",
    "any": "a Hugging Face model folder (e.g. runs/sft/final)",
}


def read_config(path: Path) -> dict[str, Any]:
    """A folder's `config.json` as a mapping ({} when there is none)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: not a readable JSON model configuration ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: not a model configuration (expected a JSON object)")
    return data


def is_score_folder(path: str | Path) -> bool:
    """Whether `path` holds a score model: a one-label sequence classifier, or the older layout."""
    path = Path(path)
    if (path / SCORE_HEAD_CONFIG).is_file():
        return True
    architectures = read_config(path).get("architectures") or []
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def _what_it_is(path: Path) -> str:
    """What a folder without config.json holds instead, as a phrase ("" when unknown)."""
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "a datasets folder (data, not a model; pass it as --train-file)"
    if (path / "final" / "config.json").is_file():
        return f"a run folder; its model is {path / 'final'}"
    if (path / "adapter_config.json").is_file():
        return "a LoRA adapter folder; merge it into its base model first (alignloop saves merged models)"
    if (path / "loop.json").is_file():
        return "a loop run folder; its models are in round-NNN/"
    if (path / "checkpoint.pt").is_file():
        return "a control run folder (`alignloop control`), not a language model"
    if (path / "state.pt").is_file() or path.name.startswith("step_"):
        return "a training checkpoint; the model to pass is the run's final/ folder"
    return ""


def model_folder(
    path: str | Path, option: str | None = None, kind: FolderKind = "causal-lm", *, tokenizer: bool = True
) -> Path:
    """`path` if it holds a model of `kind` (and, with `tokenizer`, its tokenizer) that can be
    loaded, else a `UserError` saying what it holds instead and what to pass. Hub ids are not
    looked up: alignloop runs offline."""
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    wanted = _MAKE[kind]
    if not path.exists():
        hub = len(path.parts) == 2 and not str(path).startswith((".", "/"))
        hint = " (models are not downloaded from a hub here; pass a local folder)" if hub else ""
        raise UserError(f"{where}: no such folder{hint}; pass {wanted}")
    if not path.is_dir():
        raise UserError(f"{where}: is a file, not a model folder; pass {wanted}")
    if not (path / "config.json").is_file():
        instead = _what_it_is(path)
        raise UserError(f"{where}: not a model folder (no config.json){': ' + instead if instead else ''}; "
                        f"pass {wanted}")  # fmt: skip
    read_config(path)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{where}: has config.json but no weights (model.safetensors); pass {wanted}")
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{where}: has no tokenizer (tokenizer.json or tokenizer_config.json); save the tokenizer "
            "with the model (tokenizer.save_pretrained(folder))"
        )
    score = is_score_folder(path)
    if kind == "causal-lm" and score:
        raise UserError(f"{where}: is a reward or cost model, not a causal LM (a policy); pass {wanted}")
    if kind == "score" and not score:
        raise UserError(
            f"{where}: is a causal LM, not a reward or cost model; train one from it with "
            f"`alignloop train reward --model {path}` (or `train cost`)"
        )
    return path


def model_option(name: str | Path, option: str, kind: FolderKind = "causal-lm") -> None:
    """`model_folder` for an option that also takes "toy" (a fresh tiny model)."""
    if str(name) != TOY:
        model_folder(name, option, kind)


def check_inputs(
    output_dir: Path,
    *,
    files: dict[str, Path | None] | None = None,
    models: dict[str, tuple[str | Path | None, FolderKind]] | None = None,
) -> None:
    """A trainer's first call: every model option (name -> (value, kind); None passes, and so
    does "toy" for the options typed `str` that take it, while a `Path` option must be a folder),
    every input file (option -> path or None) and the run folder (`--output-dir`, created and
    written to once), so that a mistake stops the command before anything is loaded."""
    from alignloop import checks

    for option, (value, kind) in (models or {}).items():
        if isinstance(value, str):
            model_option(value, option, kind)
        elif value is not None:
            model_folder(value, option, kind)
    for option, path in (files or {}).items():
        if path is not None:
            checks.input_file(path, option)
    checks.output_dir(output_dir, "--output-dir")
