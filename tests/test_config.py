"""`--config FILE.yaml`: keys spelled as flags or as fields, numbers that PyYAML reads as text, the
closest option for a typo, and errors that name the file and the key (that every command's --help
shows --config is checked in test_cli.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alignloop.config import ConfigError, load_yaml, parse


@dataclass(frozen=True)
class Inner:
    cost_limit: float = 25.0
    """A nested option."""
    num_envs: int = 1


@dataclass(frozen=True)
class Options:
    max_steps: int = 10
    lr: float = 1e-3
    name: str = "run"
    ppo: Inner = field(default_factory=Inner)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return path


def test_keys_may_be_spelled_as_flags_or_as_fields(tmp_path: Path) -> None:
    text = "max-steps: 3\nname: x\nppo:\n  cost-limit: 5\n"
    assert load_yaml(Options, _yaml(tmp_path, text)) == Options(3, 1e-3, "x", Inner(5.0))
    assert load_yaml(
        Options, _yaml(tmp_path, "max_steps: 3\nppo.num-envs: 4\nppo.cost_limit: 2\n")
    ) == Options(max_steps=3, ppo=Inner(2.0, 4))


def test_scientific_notation_reads_as_a_number(tmp_path: Path) -> None:
    # PyYAML 1.1 reads 1e-4 (no decimal point) as the string "1e-4"
    assert load_yaml(Options, _yaml(tmp_path, "lr: 1e-4\nppo: {cost-limit: 2E1}\n")) == Options(
        lr=1e-4, ppo=Inner(20.0)
    )
    with pytest.raises(ConfigError, match=r"options\.yaml\.lr: expected a number, got 'fast'"):
        load_yaml(Options, _yaml(tmp_path, "lr: fast\n"))
    with pytest.raises(ConfigError, match=r"options\.yaml\.max_steps: expected an integer, got '1e3'"):
        load_yaml(Options, _yaml(tmp_path, "max_steps: 1e3\n"))


def test_a_typo_names_the_file_the_key_and_the_closest_option(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "max-stepz: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(Options, path)
    assert str(exc.value).startswith(
        f"{path}: unknown option 'max-stepz'; did you mean max-steps? (the options:"
    )
    with pytest.raises(
        ConfigError, match=r"options\.yaml\.ppo: unknown option 'cost-limt'; did you mean cost-limit"
    ):
        load_yaml(Options, _yaml(tmp_path, "ppo: {cost-limt: 3}\n"))
    with pytest.raises(ConfigError, match="option max-steps is given twice"):
        load_yaml(Options, _yaml(tmp_path, "max-steps: 3\nmax_steps: 4\n"))


def test_the_command_line_overrides_the_file_and_required_fields_stay_required(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "max-steps: 3\nlr: 1e-2\n")
    assert parse(Options, ["--config", str(path), "--lr", "0.5"], prog="x") == Options(3, 0.5)
    from alignloop.feedback.commands import ValidateConfig

    config = _yaml(tmp_path, "max-errors: 3\n")  # a command whose FILE has no default
    assert parse(ValidateConfig, ["--config", str(config), "data.jsonl"], prog="x") == ValidateConfig(
        Path("data.jsonl"), max_errors=3
    )


def test_a_key_may_be_the_flag_of_an_option_named_otherwise(tmp_path: Path) -> None:
    from alignloop.loop.rounds import LoopConfig  # run_dir is --output-dir on the command line

    loaded = load_yaml(LoopConfig, _yaml(tmp_path, "output-dir: runs/x\nrounds: 2\n"))
    assert (loaded.run_dir, loaded.rounds) == (Path("runs/x"), 2)
