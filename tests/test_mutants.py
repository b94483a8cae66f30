"""The kept set of deliberate breaks (`make mutants`): the list still applies to the code, and
the script tells a caught break from a survivor and a stale one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


mutants = _script()


def test_every_break_applies_to_the_code_and_names_tests_that_exist() -> None:
    """When code a break edits moves or changes, this fails: move the break along with it."""
    breaks = mutants.load()
    stale = {b.id: why for b in breaks if (why := mutants.staleness(ROOT, b)) is not None}
    assert stale == {}
    for b in breaks:
        paths = [t.split("::")[0] for t in b.tests if t.startswith("tests/")]
        assert paths, f"{b.id}: no test file among {b.tests}"
        assert all((ROOT / p).is_file() for p in paths), (b.id, paths)
    areas = {b.area for b in breaks}
    assert {"core", "lm", "control", "feedback", "platform", "loop"} <= areas
    assert len(breaks) >= 30
    ids = {b.id for b in breaks}  # the four breaks the suite once missed stay in the list
    assert {
        "lm-ppo-kl-dropped",
        "control-gae-truncated-dropped",
        "lm-generation-no-early-stop",
        "loop-timeout-exit-code",
    } <= ids


def test_malformed_entries_name_the_entry_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "breaks.yaml"
    path.write_text("- id: a\n  file: f.py\n  find: x\n  replace: y\n  why: w\n")
    with pytest.raises(SystemExit, match=r"break 1 \(a\): missing tests"):
        mutants.load(path)
    path.write_text("- {id: a, file: f.py, find: x, replace: x, tests: [t.py], why: w}\n")
    with pytest.raises(SystemExit, match="replace is the same text as find"):
        mutants.load(path)
    path.write_text("- {id: a, file: f.py, find: x, replace: y, tests: t.py, why: w}\n")
    with pytest.raises(SystemExit, match="tests must be a non-empty list"):
        mutants.load(path)


def test_a_run_tells_caught_survived_and_stale_apart(tmp_path: Path) -> None:
    """A tiny repository with one tested function: flipping its sign is caught, editing an
    untested line survives, a break whose text is gone is stale; the run fails."""
    repo = tmp_path / "repo"
    (repo / "alignloop" / "core").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "alignloop" / "__init__.py").write_text("")
    (repo / "alignloop" / "core" / "__init__.py").write_text("")
    (repo / "alignloop" / "core" / "maths.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef untested():\n    return 1\n"
    )
    (repo / "tests" / "test_maths.py").write_text(
        "from alignloop.core.maths import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    (repo / "pyproject.toml").write_text('[tool.pytest.ini_options]\nmarkers = ["slow: slow"]\n')
    (repo / "breaks.yaml").write_text(
        textwrap.dedent(
            """\
            - {id: caught, file: alignloop/core/maths.py, find: "a + b", replace: "a - b",
               tests: [tests/test_maths.py], why: a sign flipped}
            - {id: survives, file: alignloop/core/maths.py, find: "return 1", replace: "return 2",
               tests: [tests/test_maths.py], why: an untested line}
            - {id: stale, file: alignloop/core/maths.py, find: "a * b", replace: "a / b",
               tests: [tests/test_maths.py], why: code that has moved}
            """
        )
    )
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    report = tmp_path / "report.md"
    code = mutants.main(
        ["--root", str(repo), "--list", str(repo / "breaks.yaml"), "--jobs", "1", "--markdown", str(report)]
    )
    assert code == 1
    rows = {line.split(" | ")[0].strip("| `"): line for line in report.read_text().splitlines()[2:-2]}
    assert " caught " in rows["caught"] and " SURVIVED " in rows["survives"] and " STALE " in rows["stale"]
    assert "1 of 3 caught" in report.read_text()
    assert (repo / "alignloop" / "core" / "maths.py").read_text().count("a + b") == 1  # untouched
