"""What README.md says `make setup`, `make test` and `make mutants` do, read from the Makefile
and the files it uses (running them would rebuild the environment)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _target(makefile: str, name: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile rule."""
    match = re.search(rf"^{re.escape(name)}:([^\n]*)\n((?:\t[^\n]*\n)*)", makefile, re.MULTILINE)
    assert match is not None, f"no rule for {name}"
    return match.group(1).split(), [line.strip() for line in match.group(2).splitlines()]


def test_setup_installs_torch_first_and_keeps_it_pinned() -> None:
    makefile = (ROOT / "Makefile").read_text()
    _, recipe = _target(makefile, "$(STAMP)")
    torch = next(i for i, line in enumerate(recipe) if "pip install" in line and "torch==2.13.0" in line)
    package = next(i for i, line in enumerate(recipe) if '-e ".[test]"' in line)
    assert torch < package and "-c requirements/constraints.txt" in recipe[package]
    assert "torch==2.13.0" in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    assert re.search(r"^export HF_HUB_OFFLINE := 1$", makefile, re.MULTILINE)  # no hub, ever
    system = (ROOT / "scripts" / "setup_system.sh").read_text()
    assert "need+=(chromium)" in system and "need+=(postgresql)" in system


def test_demo_and_test_set_up_first_and_mutants_stay_outside_test() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert _target(makefile, "demo")[0] == ["setup"]
    assert _target(makefile, "test")[0] == ["setup", "lint", "typecheck", "pytest"]
    prerequisites, recipe = _target(makefile, "mutants")
    assert prerequisites == ["setup"] and recipe == ["$(BIN)/python scripts/mutants.py"]


def test_the_cross_checks_peers_are_test_dependencies() -> None:
    block = re.search(
        r"^test = \[\n(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL
    )
    assert block is not None, "no test extras in pyproject.toml"
    names = {
        re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0].lower() for spec in re.findall(r'"([^"]+)"', block[1])
    }
    assert {"krippendorff", "scikit-learn", "trl", "stable-baselines3"} <= names
