"""The `alignloop` command in a subprocess: help on every level, version, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alignloop import __version__
from alignloop.cli import COMMANDS, Command, Group, available


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "alignloop.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def leaf_paths(tree=COMMANDS, prefix=()):
    for name, node in tree.items():
        if isinstance(node, Group):
            yield prefix + (name,)
            yield from leaf_paths(node.commands, prefix + (name,))
        else:
            yield prefix + (name,)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"alignloop {__version__}"


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("train", "data", "demo", "control", "serve", "loop", "eval"):
        assert f"  {name}" in result.stdout


@pytest.mark.parametrize("path", list(leaf_paths()), ids=lambda p: " ".join(p))
def test_help_on_every_level(path: tuple[str, ...]) -> None:
    node: Command | Group = Group("", COMMANDS)
    for name in path:
        assert isinstance(node, Group)
        node = node.commands[name]
    if isinstance(node, Command) and not available(node):
        pytest.skip(f"{' '.join(path)} is not part of this version")
    result = run_cli(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout.lower()
    if isinstance(node, Command):  # every command can start from a YAML file, and says so
        assert "--config FILE.yaml" in result.stdout and "YAML file of options" in result.stdout


def test_unknown_command_is_a_clear_error() -> None:
    result = run_cli("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr
    assert "train" in result.stderr
