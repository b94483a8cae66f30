"""Shared plumbing of the control benchmarks: a fresh process per run, medians and spreads.

Every run is a subprocess (`python bench/<script>.py --worker JSON`) that prints one JSON line,
so imports and memory never leak from one run into the next; runs of different systems are
interleaved seed by seed. The summary gives, per system, the median over seeds and the
spread as [min, max].
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def run_worker(
    script: str, spec: dict[str, Any], python: str = sys.executable, timeout: float = 86_400
) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh process and parse its last stdout line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    result = subprocess.run(
        [python, script, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_all(
    script: str,
    specs: list[dict[str, Any]],
    out: Path,
    jobs: int = 1,
    python: Callable[[dict[str, Any]], str] = lambda spec: sys.executable,
) -> list[dict[str, Any]]:
    """Run each spec's worker (`run_worker`), ``jobs`` at a time, in the specs' order; print each
    row and save every finished run to ``out`` at once, so a later failure loses none."""
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for row in pool.map(lambda spec: run_worker(script, spec, python=python(spec)), specs):
            print(json.dumps(row), flush=True)
            rows.append(row)
            save(out, rows, [])
    return rows


def add_ppo_arguments(parser: Any) -> None:
    """Flags that override `PPOSettings` fields of every run (default: the SB3 defaults)."""
    parser.add_argument("--num-envs", type=int, default=None, help="parallel envs per run")
    parser.add_argument("--num-steps", type=int, default=None, help="steps per env per iteration")
    parser.add_argument("--minibatch-size", type=int, default=None, help="samples per gradient step")


def ppo_overrides(args: Any) -> dict[str, int]:
    """The `PPOSettings` overrides given on the command line (only those set)."""
    names = ("num_envs", "num_steps", "minibatch_size")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def summarise(rows: list[dict[str, Any]], group: str, fields: list[str]) -> list[dict[str, Any]]:
    """Median and [min, max] of each field over the rows of each group (in first-seen order)."""
    out = []
    for name in dict.fromkeys(r[group] for r in rows):
        mine = [r for r in rows if r[group] == name]
        entry: dict[str, Any] = {group: name, "seeds": len(mine)}
        for f in fields:
            values = [float(r.get(f, "nan")) for r in mine]
            entry[f] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], group: str, fields: list[str]) -> str:
    """A table of ``median [min, max]`` per field."""
    lines = [f"| {group} | seeds | " + " | ".join(fields) + " |", "|" + " --- |" * (len(fields) + 2)]
    for entry in summary:
        cells = [f"{entry[f]['median']:.1f} [{entry[f]['min']:.1f}, {entry[f]['max']:.1f}]" for f in fields]
        lines.append(f"| {entry[group]} | {entry['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
