"""One vocabulary of options across commands: every trainer's run options come from
`RunOptions`, the old spellings still work with a note, and --help states the --resume rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alignloop.cli import COMMANDS, Command, Group, _load, main
from alignloop.config import parse
from alignloop.runstack.options import RunOptions

TRAINERS = [f"train {name}" for name in COMMANDS["train"].commands] + ["control train", "control pbrl"]  # type: ignore[union-attr]
RETIRED = {"out", "name", "checkpoint_every"}
"""Spellings of run options that no command may define again."""


def commands() -> dict[str, type]:
    found: dict[str, type] = {}

    def walk(tree: dict, prefix: str) -> None:
        for name, node in tree.items():
            if isinstance(node, Group):
                walk(node.commands, f"{prefix}{name} ")
            elif isinstance(node, Command):
                found[f"{prefix}{name}"] = _load(node.config)

    walk(COMMANDS, "")
    return found


def option_names(config: type) -> set[str]:
    """The options of a config, nested settings (``ppo.lr``) by their last name."""
    names = set()
    for f in dataclasses.fields(config):
        names.add(f.name)
        if dataclasses.is_dataclass(f.default):
            names |= option_names(type(f.default))
    return names


def test_every_trainer_takes_the_run_options_and_no_command_the_old_spellings():
    configs = commands()
    for command in TRAINERS:
        assert issubclass(configs[command], RunOptions), command
    for command, config in configs.items():
        assert not option_names(config) & RETIRED, command


@pytest.mark.parametrize("command", ["train sft", "control train"])
def test_help_states_the_resume_rule(command: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "newest intact checkpoint; refused when there is none" in text.replace("│", "").replace("  ", " ")


def test_the_loop_takes_output_dir_and_its_old_spelling(capsys: pytest.CaptureFixture[str]):
    from alignloop.loop.rounds import LoopConfig

    assert parse(LoopConfig, ["--output-dir", "runs/a"], prog="loop").run_dir == Path("runs/a")
    assert parse(LoopConfig, ["--run-dir=runs/b"], prog="loop").run_dir == Path("runs/b")
    assert "loop: --run-dir is deprecated; use --output-dir" in capsys.readouterr().err
