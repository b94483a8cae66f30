"""tests/README_CLAIMS.md names, for each claim of README.md, the test that guards it: every
file and test it names must exist, or the list has drifted from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)*)")


def _tests_in(path: Path) -> dict[str, set[str]]:
    """Module-level test functions, and test classes with their methods."""
    found: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            found[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return found


def test_every_test_the_claims_list_names_exists() -> None:
    text = (ROOT / "tests" / "README_CLAIMS.md").read_text()
    missing = []
    last_file = None
    for match in re.finditer(r"`(tests/[\w/]+\.py)?((?:::\w+)+)?", text):
        file, names = match.group(1), match.group(2)
        if file is None and names is None:
            continue
        file = file or last_file  # "`::name`" continues the file named before it in the row
        last_file = file
        if not (ROOT / file).is_file():
            missing.append(file)
            continue
        if names:
            parts = names.strip(":").split("::")
            tests = _tests_in(ROOT / file)
            if parts[0] not in tests or (len(parts) > 1 and parts[1] not in tests[parts[0]]):
                missing.append(f"{file}{names}")
    assert not missing, missing
    assert REFERENCE.search(text)
