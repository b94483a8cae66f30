"""`alignloop data validate` and `alignloop data convert`: check and convert feedback files."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import tyro

from alignloop.checks import output_dir
from alignloop.feedback.formats import (
    FORMATS,
    FormatError,
    ReadResult,
    container_of,
    read_records,
    write_records,
)
from alignloop.feedback.judged import JudgedItem
from alignloop.feedback.schema import Comparison, Correction, PromptRecord, SupervisedPair

InputFormat = Literal[
    "auto", "pku-saferlhf", "hh-rlhf", "preference", "prompt", "supervised", "judgements", "correction"
]
OutputFormat = Literal[
    "pku-saferlhf", "hh-rlhf", "preference", "prompt", "supervised", "judgements", "correction"
]
assert get_args(OutputFormat) == FORMATS and get_args(InputFormat) == (
    "auto",
    *FORMATS,
)  # one list of formats


@dataclass(frozen=True)
class ValidateConfig:
    """Check a feedback file and report each bad row by file, line (or row index) and field."""

    file: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="FILE")]]
    """The file to check: .jsonl, .json (a list), .csv, .parquet, or a folder saved by `datasets`."""
    format: InputFormat = "auto"
    """The file's format; `auto` tells it from the fields of the first row."""
    max_errors: int = 20
    """How many bad rows to list (all of them are counted)."""


@dataclass(frozen=True)
class ConvertConfig:
    """Convert a feedback file to another format or container (the output's suffix picks it)."""

    input: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="IN")]]
    """The file to read: .jsonl, .json, .csv, .parquet, or a folder saved by `datasets`."""
    output: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """Where to write: .jsonl, .json, .csv, .parquet, or a path without suffix for a `datasets` folder."""
    to: OutputFormat
    """The format to write."""
    format: InputFormat = "auto"
    """The input's format; `auto` tells it from the fields of the first row."""
    skip_invalid: bool = False
    """Leave out bad rows (and records the output format cannot hold) and report how many."""
    overwrite: bool = False
    """Replace the output if it exists."""
    max_errors: int = 20
    """How many bad rows to list (all of them are counted)."""


@contextmanager
def _row_progress(path: Path) -> Iterator[Callable[[int], None] | None]:
    """A live count of rows read (on a terminal only)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}: {task.completed} rows"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"reading {path}", total=None)
        yield lambda rows: bar.update(task, completed=rows)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def summarize(result: ReadResult) -> list[str]:
    """Lines describing what a file holds: record kinds and the labels of its comparisons."""
    kinds = Counter(type(r).__name__ for r in result.records)
    lines = [f"  format: {result.format or 'unknown (no rows)'}"]
    names = {
        Comparison.__name__: "comparisons",
        PromptRecord.__name__: "prompts",
        SupervisedPair.__name__: "supervised pairs",
        Correction.__name__: "corrections",
        JudgedItem.__name__: "judged items",
    }
    lines += [f"  {names[kind]}: {count}" for kind, count in sorted(kinds.items())]
    judged = [r for r in result.records if isinstance(r, JudgedItem)]
    if judged:
        answered = [j for r in judged for j in r.answered()]
        asked = sorted({q.name for r in judged for q in r.questions})
        lines += [
            f"    judgements: {sum(len(r.judgements) for r in judged)}, skipped: {sum(len(r.judgements) for r in judged) - len(answered)}",
            f"    annotators: {len({j.annotator for r in judged for j in r.judgements})}",
            "    answered: " + ", ".join(f"{n} {sum(n in j.answers for j in answered)}" for n in asked),
        ]
    pairs = [r for r in result.records if isinstance(r, Comparison)]
    if pairs:
        flags = [flag for r in pairs for flag in r.is_safe]
        lines += [
            f"    better: {sum(r.better == 0 for r in pairs)} first, {sum(r.better == 1 for r in pairs)} second, "
            f"{sum(r.better is None for r in pairs)} no preference",
            f"    safer labelled: {sum(r.safer is not None for r in pairs)}",
            f"    responses judged for safety: {sum(f is not None for f in flags)}, unsafe: {sum(f is False for f in flags)}",
            f"    with harm categories: {sum(any(r.harm_categories) for r in pairs)}",
        ]
    return lines


def _report_errors(errors: list[FormatError], skipped: int) -> None:
    for error in errors:
        _error(str(error))
    if skipped > len(errors):
        _error(f"... and {skipped - len(errors)} more")


def validate(cfg: ValidateConfig) -> int:
    """Exit 0 when every row is valid and there is at least one, else 1."""
    fmt = None if cfg.format == "auto" else cfg.format
    try:
        with _row_progress(cfg.file) as progress:
            result = read_records(
                cfg.file, fmt, skip_invalid=True, max_errors=cfg.max_errors, progress=progress
            )
    except FormatError as exc:
        _error(str(exc))
        return 1
    print(f"{cfg.file}: {result.rows} rows, {len(result.records)} valid, {result.skipped} invalid")
    print("\n".join(summarize(result)))
    _report_errors(result.errors, result.skipped)
    if result.skipped:
        _error(f"{cfg.file}: {result.skipped} of {result.rows} rows are invalid")
        return 1
    if not result.records:
        _error(f"{cfg.file}: holds no records")
        return 1
    print("ok")
    return 0


def convert(cfg: ConvertConfig) -> int:
    """Exit 0 when the output was written, 1 when bad rows stopped it (see --skip-invalid)."""
    fmt = None if cfg.format == "auto" else cfg.format
    if cfg.output.exists() and not cfg.overwrite:
        _error(f"{cfg.output}: already exists; pass --overwrite to replace it")
        return 1
    output_dir(cfg.output.parent, "OUT", create=False)
    try:
        container_of(cfg.output, for_writing=True)
        with _row_progress(cfg.input) as progress:
            result = read_records(
                cfg.input, fmt, skip_invalid=cfg.skip_invalid, max_errors=cfg.max_errors, progress=progress
            )
        written = write_records(
            result.records, cfg.output, cfg.to, skip_invalid=cfg.skip_invalid, max_errors=cfg.max_errors
        )
    except FormatError as exc:
        _error(str(exc))
        if not cfg.skip_invalid:
            _error("nothing was written; pass --skip-invalid to leave bad rows out")
        return 1
    _report_errors(result.errors, result.skipped)
    _report_errors(written.errors, written.skipped)
    print(
        f"{cfg.input} ({result.format}) -> {cfg.output} ({cfg.to}): {written.written} records written, "
        f"{result.skipped} invalid rows skipped, {written.skipped} records {cfg.to} cannot hold skipped"
    )
    return 0
