"""The `alignloop` command in a subprocess: help on every level, version, bad input."""

from __future__ import annotations

import json
import os
import re
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


HELP_ALL = """
import contextlib, io, json, sys
from alignloop.cli import main
out = {}
for path in json.loads(sys.argv[1]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            code = main([*path, "--help"])
        except SystemExit as exc:
            code = exc.code
    out[" ".join(path)] = {"code": code, "help": text.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict]:
    """`alignloop ... --help` of every command and group, all in one subprocess (one start-up)."""
    paths = []
    for path in leaf_paths():
        node: Command | Group = Group("", COMMANDS)
        for name in path:
            assert isinstance(node, Group)
            node = node.commands[name]
        if isinstance(node, Group) or available(node):
            paths.append(list(path))
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="120")
    result = subprocess.run(
        [sys.executable, "-c", HELP_ALL, json.dumps(paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", list(leaf_paths()), ids=lambda p: " ".join(p))
def test_help_on_every_level(path: tuple[str, ...], helps: dict[str, dict]) -> None:
    node: Command | Group = Group("", COMMANDS)
    for name in path:
        assert isinstance(node, Group)
        node = node.commands[name]
    if isinstance(node, Command) and not available(node):
        pytest.skip(f"{' '.join(path)} is not part of this version")
    shown = helps[" ".join(path)]
    assert shown["code"] == 0
    assert shown["help"].lower().startswith(f"usage: alignloop {' '.join(path)}")
    if isinstance(node, Command):  # every command can start from a YAML file, and says so
        assert "--config FILE.yaml" in shown["help"] and "YAML file of options" in shown["help"]


@pytest.mark.parametrize(
    ("path", "options"),
    [
        (
            "train ppo-lag",
            ["--kl-coef", "--clip-eps", "--cost-limit", "--lambda-init", "--lambda-lr", "--lambda-max",
             "--lambda-delay", "--ppo-epochs", "--rollout-batch-size", "--temperature", "--top-k", "--top-p",
             "--resume", "--grad-accum", "--lora-r"],
        ),
        ("train dpo", ["--loss", "--beta", "--label-smoothing", "--gamma", "--lam", "--reference", "--strategy"]),
        ("train sft", ["--model", "--train-file", "--eval-file", "--resume", "--lora-r", "--grad-accum"]),
        ("demo", ["--preset", "--unsafe-share"]),
        ("eval", ["--toyworld", "--reward-model", "--cost-model", "--tie-tolerance"]),
        ("serve", ["--db", "--workers", "--cookie-secure", "--secret-key", "--create-admin", "--password-file"]),
        ("loop", ["--demo", "--policy-update", "--timeout", "--pairs", "--overlap", "--password-file"]),
        ("annotate", ["--teacher", "--oracle", "--pace"]),
    ],
)  # fmt: skip
def test_help_lists_the_options_the_readme_names(
    path: str, options: list[str], helps: dict[str, dict]
) -> None:
    """Every option README.md names is in its command's --help, with its default."""
    text = helps[path]["help"]
    missing = [o for o in options if not re.search(rf"{re.escape(o)}[\s{{,]", text)]
    assert not missing, missing
    assert "(default: " in text


def test_unknown_command_is_a_clear_error() -> None:
    result = run_cli("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr
    assert "train" in result.stderr
