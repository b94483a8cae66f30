"""Deliberate breaks that the test suite must catch (`make mutants`).

Each break in `scripts/mutants.yaml` is one edit to one file of the package: a sign flipped in
a loss, a term dropped, a flag not passed, a guard removed, a field dropped from an export, an
exit code changed. For every break this script

1. copies the working tree (tracked files and new ones git does not ignore) to a scratch folder,
   once per parallel job, and checks that the listed tests pass there unbroken;
2. applies the break: the break's ``find`` text must occur exactly once in its file, else the
   break is *stale* (the code it breaks has moved or changed) and the run fails;
3. runs the break's tests (``pytest -x``, slow tests left out unless the break says
   ``slow: true``) with the scratch copy first on the path; a failing test means *caught*, a
   passing run means *survived*;
4. puts the file back.

It prints one line per break and a table at the end, with the total time, and exits 0 only when
every break was caught. Run it from the repository root with the project's virtualenv::

    .venv/bin/python scripts/mutants.py                 # every break, 2 at a time
    .venv/bin/python scripts/mutants.py --only lm-ppo-kl-dropped control-gae-truncated-dropped
    .venv/bin/python scripts/mutants.py --check         # only that every break still applies

A break is a few lines of YAML::

    - id: core-bt-sign-flipped            # unique, area first
      file: alignloop/core/losses.py
      find: "loss = -F.logsigmoid(diff).mean()"
      replace: "loss = F.logsigmoid(diff).mean()"
      tests: [tests/core/test_losses.py]  # pytest arguments: files, node ids, -k expressions
      why: the Bradley-Terry loss rewards the rejected response
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

LIST = Path(__file__).with_name("mutants.yaml")
FIELDS = {"id", "file", "find", "replace", "tests", "why", "slow"}
REQUIRED = FIELDS - {"slow"}
CAUGHT, SURVIVED, STALE, ERROR = "caught", "SURVIVED", "STALE", "ERROR"
PYTEST_FAILED = {1, 2}  # tests failed; errors while collecting (the break made a module unimportable)


@dataclass(frozen=True)
class Break:
    id: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    why: str
    slow: bool = False

    @property
    def area(self) -> str:
        """The package directory the break is in: core, lm, control, ..."""
        parts = Path(self.file).parts
        return parts[1] if len(parts) > 2 and parts[0] == "alignloop" else parts[0]


@dataclass
class Outcome:
    brk: Break
    result: str
    seconds: float = 0.0
    detail: str = ""
    output: str = field(default="", repr=False)


def load(path: Path = LIST) -> list[Break]:
    """The breaks of a list file; a malformed entry is an error naming the entry and the field."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a list of breaks")
    breaks, seen = [], set()
    for n, entry in enumerate(entries, start=1):
        label = entry.get("id", "no id") if isinstance(entry, dict) else repr(entry)
        where = f"{path}: break {n} ({label})"
        if not isinstance(entry, dict):
            raise SystemExit(f"{where}: expected a mapping with {', '.join(sorted(REQUIRED))}")
        if missing := REQUIRED - entry.keys():
            raise SystemExit(f"{where}: missing {', '.join(sorted(missing))}")
        if unknown := entry.keys() - FIELDS:
            raise SystemExit(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        tests = entry["tests"]
        if isinstance(tests, str) or not tests or not all(isinstance(t, str) for t in tests):
            raise SystemExit(f"{where}: tests must be a non-empty list of pytest arguments")
        if entry["find"] == entry["replace"]:
            raise SystemExit(f"{where}: replace is the same text as find")
        if entry["id"] in seen:
            raise SystemExit(f"{where}: the id is used twice")
        seen.add(entry["id"])
        breaks.append(
            Break(
                id=str(entry["id"]),
                file=str(entry["file"]),
                find=str(entry["find"]),
                replace=str(entry["replace"]),
                tests=tuple(tests),
                why=str(entry["why"]),
                slow=bool(entry.get("slow", False)),
            )
        )
    return breaks


def staleness(root: Path, brk: Break) -> str | None:
    """Why the break no longer applies to the tree at `root`, or None when it does."""
    path = root / brk.file
    if not path.is_file():
        return f"{brk.file} does not exist"
    count = path.read_text(encoding="utf-8").count(brk.find)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times (make it unique)"
        return f"the text to break is {where} in {brk.file}"
    return None


def tree_files(root: Path) -> list[str]:
    """The files of the working tree: tracked ones and new ones that git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def copy_tree(root: Path, files: Sequence[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def test_env(scratch: Path) -> dict[str, str]:
    """The scratch copy first on the path (subprocesses of the tests inherit it), no bytecode
    written (an edit and its undo within one second could otherwise reuse a stale .pyc), one
    thread per process."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(scratch), *filter(None, [env.get("PYTHONPATH")])]),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MUJOCO_GL=env.get("MUJOCO_GL", "egl"),
    )
    return env


# plugins no break's tests use, left out because importing them costs about 2 s a run
UNUSED_PLUGINS = ("schemathesis", "hypothesispytest", "typeguard")


def pytest_command(tests: Sequence[str], slow: bool) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]
    command += [arg for name in UNUSED_PLUGINS for arg in ("-p", f"no:{name}")]
    return command + ([] if slow else ["-m", "not slow"]) + list(tests)


def run_tests(scratch: Path, tests: Sequence[str], slow: bool, timeout: float) -> tuple[int | None, str]:
    """pytest's exit code (None on a timeout) and the tail of its output. pytest runs in a
    session of its own: on a timeout it is killed with every process it started (servers,
    trainers)."""
    process = subprocess.Popen(
        pytest_command(tests, slow),
        cwd=scratch,
        env=test_env(scratch),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return None, out[-4000:]
    return process.returncode, out[-4000:]


@contextmanager
def applied(scratch: Path, brk: Break) -> Iterator[None]:
    path = scratch / brk.file
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(brk.find, brk.replace, 1), encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(original, encoding="utf-8")


def try_break(scratch: Path, brk: Break, timeout: float) -> Outcome:
    why = staleness(scratch, brk)
    if why is not None:
        return Outcome(brk, STALE, detail=why)
    started = time.perf_counter()
    with applied(scratch, brk):
        code, output = run_tests(scratch, brk.tests, brk.slow, timeout)
    seconds = time.perf_counter() - started
    if code is None:
        return Outcome(brk, ERROR, seconds, f"the tests ran past {timeout:.0f} s", output)
    if code == 0:
        return Outcome(brk, SURVIVED, seconds, "every listed test passed with the break in place", output)
    if code in PYTEST_FAILED:
        failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return Outcome(brk, CAUGHT, seconds, failed[0] if failed else f"pytest exit code {code}", output)
    return Outcome(brk, ERROR, seconds, f"pytest exit code {code}: the listed tests did not run", output)


def check_scratch(scratch: Path) -> None:
    """The scratch copy must be what the tests import, not the installed package."""
    found = subprocess.run(
        [sys.executable, "-c", "import alignloop; print(alignloop.__file__)"],
        cwd=scratch,
        env=test_env(scratch),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(scratch.resolve()):
        raise SystemExit(
            f"the tests would import alignloop from {found}, not from the scratch copy {scratch}"
        )


def baseline(scratch: Path, breaks: Sequence[Break], timeout: float) -> None:
    """Every listed test must pass on the unbroken tree, or a failure would prove nothing."""
    for slow in (False, True):
        group = [b for b in breaks if b.slow == slow]
        with_options = [b for b in group if any(t.startswith("-") for t in b.tests)]
        # files and node ids run together; a break with options (-k ...) runs on its own, so
        # that its options do not filter the others' tests
        runs = [list(dict.fromkeys(t for b in group if b not in with_options for t in b.tests))]
        runs += [list(tests) for tests in dict.fromkeys(b.tests for b in with_options)]
        for tests in filter(None, runs):
            code, output = run_tests(scratch, tests, slow, timeout)
            if code != 0:
                raise SystemExit(
                    f"the listed tests fail on the unbroken tree (exit code {code}); fix them first:\n"
                    f"  {' '.join(pytest_command(tests, slow))}\n{output}"
                )


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("break", "area", "result", "s", "why / first failure")]
    for o in outcomes:
        rows.append((o.brk.id, o.brk.area, o.result, f"{o.seconds:.1f}", o.detail or o.brk.why))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
    ]
    return "\n".join(lines)


def markdown(outcomes: Sequence[Outcome], total: float) -> str:
    lines = ["| break | area | what | result | tests |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        tests = "`" + " ".join(o.brk.tests) + "`"
        lines.append(f"| `{o.brk.id}` | {o.brk.area} | {o.brk.why} | {o.result} | {tests} |")
    caught = sum(o.result == CAUGHT for o in outcomes)
    lines += ["", f"{caught} of {len(outcomes)} caught in {total:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", type=Path, default=LIST, help="the breaks (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these breaks only")
    parser.add_argument("--jobs", type=int, default=2, help="breaks tested at once (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for one break's tests")
    parser.add_argument("--check", action="store_true", help="only check that every break still applies")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unbroken tree")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = args.root.resolve()
    breaks = load(args.list)
    if args.only:
        unknown = set(args.only) - {b.id for b in breaks}
        if unknown:
            raise SystemExit(f"--only: no break called {', '.join(sorted(unknown))} in {args.list}")
        breaks = [b for b in breaks if b.id in args.only]
    stale = [Outcome(b, STALE, detail=why) for b in breaks if (why := staleness(root, b)) is not None]
    if args.check:
        for o in stale:
            print(f"{o.brk.id}: STALE: {o.detail}")
        print(f"{len(breaks) - len(stale)} of {len(breaks)} breaks apply to {root}")
        return 1 if stale else 0
    live = [b for b in breaks if all(o.brk is not b for o in stale)]
    files = tree_files(root)
    jobs = max(1, min(args.jobs, len(live)))
    outcomes: dict[str, Outcome] = {o.brk.id: o for o in stale}
    with tempfile.TemporaryDirectory(prefix="alignloop-mutants-") as tmp:
        scratches: queue.Queue[Path] = queue.Queue()
        for i in range(jobs):
            scratch = Path(tmp) / f"tree-{i}"
            copy_tree(root, files, scratch)
            scratches.put(scratch)
        if live:
            first = scratches.get()
            check_scratch(first)
            if not args.no_baseline:
                print(
                    f"baseline: the listed tests of {len(live)} breaks on the unbroken tree ...", flush=True
                )
                baseline(first, live, args.timeout)
            scratches.put(first)

        def work(brk: Break) -> Outcome:
            scratch = scratches.get()
            try:
                outcome = try_break(scratch, brk, args.timeout)
            finally:
                scratches.put(scratch)
            print(f"{outcome.result:8} {outcome.seconds:6.1f} s  {brk.id}: {outcome.detail}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for outcome in pool.map(work, live):
                outcomes[outcome.brk.id] = outcome
    ordered = [outcomes[b.id] for b in breaks]
    total = time.perf_counter() - started
    print()
    print(table(ordered))
    for o in ordered:
        if o.result in (SURVIVED, ERROR) and o.output:
            print(f"\n--- {o.brk.id}: {o.result}: last lines of pytest\n{o.output[-1500:]}")
    caught = sum(o.result == CAUGHT for o in ordered)
    by_result = {r: sum(o.result == r for o in ordered) for r in (SURVIVED, STALE, ERROR)}
    summary = ", ".join(f"{n} {r.lower()}" for r, n in by_result.items() if n)
    print(
        f"\n{caught} of {len(ordered)} breaks caught"
        + (f", {summary}" if summary else "")
        + f"; {total:.0f} s in all"
    )
    if args.markdown:
        args.markdown.write_text(markdown(ordered, total), encoding="utf-8")
    return 0 if caught == len(ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
