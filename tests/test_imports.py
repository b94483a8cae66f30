"""Every module imports cleanly, and the feedback platform never pulls in torch."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import alignloop


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(alignloop.__path__, "alignloop."))


def test_every_module_imports() -> None:
    failures = {}
    for name in all_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure at once
            failures[name] = repr(exc)
    assert not failures, failures


def test_torch_free_layers_do_not_import_torch() -> None:
    """`feedback` and `platform` import no torch (the platform runs without it); the evaluation
    metrics are numpy only."""
    torch_free = [m for m in all_modules() if m.startswith(("alignloop.feedback", "alignloop.platform"))]
    torch_free.append("alignloop.eval.metrics")
    code = (
        "import sys, importlib\n"
        f"for m in {torch_free!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
