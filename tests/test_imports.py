"""Every module imports cleanly, the import arrows of DESIGN.md point one way, the feedback
platform never pulls in torch, and the run stack never pulls in transformers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import alignloop

ROOT = Path(alignloop.__file__).parent
SHARED = {"errors", "config", "checks"}
"""Top-level modules every layer may import (they import nothing of ours but `errors`)."""
ARROWS = {
    "core": set(),
    "feedback": set(),
    "platform": {"feedback"},
    "runstack": {"core"},
    "lm": {"core", "feedback", "runstack"},
    "control": {"core", "feedback", "runstack"},
    "eval": {"core", "feedback", "runstack", "lm", "control"},
    "loop": {"core", "feedback", "runstack", "lm", "control", "platform", "eval"},
}
"""What each package may import besides itself and `SHARED` (imports inside functions included)."""


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(alignloop.__path__, "alignloop."))


def imported_layers(path: Path) -> set[str]:
    """The alignloop layers (top-level package or module names) a source file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = (
                [node.module] if node.module != "alignloop" else [f"alignloop.{a.name}" for a in node.names]
            )
        found |= {n.split(".")[1] for n in names if n.startswith("alignloop.")}
    return found


def test_every_module_imports() -> None:
    failures = {}
    for name in all_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure at once
            failures[name] = repr(exc)
    assert not failures, failures


def test_the_arrows_point_one_way() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ARROWS), "a new package needs its row in ARROWS"
    wrong = {}
    for package, allowed in ARROWS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imported_layers(path) - allowed - SHARED - {package, "__version__"}
            if bad:
                wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, wrong


def test_the_table_catches_a_wrong_arrow(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from alignloop.lm.models import ScoreModel\n    import alignloop.loop\n")
    assert imported_layers(source) == {"lm", "loop"}


def _modules_without(prefixes: tuple[str, ...], banned: tuple[str, ...]) -> None:
    modules = [m for m in all_modules() if m.startswith(prefixes)]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = [m for m in {banned!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_torch_free_layers_do_not_import_torch() -> None:
    """`feedback` and `platform` import no torch (the platform runs without it); the evaluation
    metrics are numpy only."""
    torch_free = ("alignloop.feedback", "alignloop.platform", "alignloop.eval.metrics")
    _modules_without(torch_free, ("torch", "transformers"))


def test_the_run_stack_does_not_import_transformers() -> None:
    """The control trainers share the run stack without paying for transformers."""
    _modules_without(("alignloop.runstack",), ("transformers",))
