"""Metrics: one logger, several sinks, and a progress bar.

A trainer calls ``logger.log(step, {"loss": ...}, split="train")``; the logger hands the record
to each sink. `MetricsLogger` always writes ``metrics.jsonl`` (one JSON line per record, what
tests, reports and the loop read back with `read_metrics`) and adds the sinks named in
``report_to`` from `SINKS` (TensorBoard by default). A sink is any object with ``log``, ``text``
and ``close`` (`Sink`); a new one is one entry in `SINKS`.

On resume the records past the checkpoint's step are dropped from metrics.jsonl (and purged
from TensorBoard) so the run reads as one uninterrupted run. A run killed while writing a line
leaves a torn last line; it is dropped, not fatal. Only the main process writes.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from alignloop.errors import UserError
from alignloop.runstack.layout import RunLayout


class Sink(Protocol):
    """Somewhere metrics go."""

    def log(self, step: int, split: str, values: dict[str, float]) -> None: ...

    def text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


def _records(path: Path) -> tuple[list[str], bool]:
    """The complete lines of a metrics file, and whether a torn last line was dropped. A bad
    line elsewhere is an error naming the file and line."""
    lines = path.read_text().splitlines()
    kept: list[str] = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a step")
        except ValueError as exc:
            if number == len(lines):
                return kept, True
            raise UserError(f"{path}:{number}: not a metrics record ({exc})") from exc
        kept.append(line)
    return kept, False


class JsonlSink:
    """metrics.jsonl: one ``{"step", "split", name: value}`` line per record, flushed as written."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and path.is_file():
            lines, torn = _records(path)
            if torn:
                print(
                    f"{path}: dropped a torn last line (the run was killed while writing it)", file=sys.stderr
                )
            kept = [line for line in lines if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self._file = path.open("a")

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self._file.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        pass

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """TensorBoard scalars as ``split/name`` and texts, in the run's tb/ folder (or `log_dir`)."""

    def __init__(self, log_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases: one wandb run per run folder, continued when the run resumes (its id is
    kept in the folder's wandb-run-id); ``WANDB_MODE=offline`` keeps it on disk."""

    def __init__(self, root: Path):
        import wandb

        id_file = root / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        root.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        project = os.environ.get("WANDB_PROJECT", "alignloop")
        self.run = wandb.init(project=project, name=root.name, id=run_id, resume="allow", dir=str(root))

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self.run.log({f"{split}/{key}": value for key, value in values.items()}, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        import wandb

        self.run.log({tag: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


SinkFactory = Callable[[RunLayout, "Path | None", "int | None"], Sink]
SINKS: dict[str, SinkFactory] = {
    "tensorboard": lambda layout, log_dir, resume_step: TensorBoardSink(
        log_dir or layout.tensorboard, resume_step
    ),
    "wandb": lambda layout, log_dir, resume_step: WandbSink(layout.root),
}
"""Sinks `MetricsLogger` can add by name (``report_to``): factory(layout, log_dir, resume_step).
``none`` (alone) names no sink."""


def check_report_to(report_to: Sequence[str]) -> None:
    """A `UserError` for ``--report-to`` values that cannot be used: unknown, none with others, or
    wandb without its package."""
    unknown = [name for name in report_to if name not in SINKS and name != "none"]
    if unknown:
        raise UserError(f"--report-to: {', '.join(unknown)} not one of {', '.join(SINKS)}, none")
    if "none" in report_to and len(report_to) > 1:
        raise UserError(f"--report-to {' '.join(report_to)}: none means no other sink; give it alone")
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError(
                "--report-to wandb needs the wandb package: pip install 'alignloop[wandb]'"
            ) from None


class ProgressBar:
    """A rich progress bar: description, bar, done/total, time left, and a short status text."""

    def __init__(self, description: str, total: int | None, completed: int = 0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, info="")

    def update(self, completed: int, info: str = "") -> None:
        self._progress.update(self._task, completed=completed, info=info)

    def close(self) -> None:
        self._progress.stop()


class MetricsLogger:
    """metrics.jsonl plus the sinks of ``report_to`` (and any given `sinks`), and a progress bar.

    Only the main process writes (``enabled``). ``resume_step`` continues a run: records past it
    are dropped. Use as a context manager, or call `close`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int | None = None,
        log_dir: str | Path | None = None,
        enabled: bool = True,
        progress: bool = True,
        resume_step: int | None = None,
        description: str = "training",
        report_to: Sequence[str] = ("tensorboard",),
        sinks: Sequence[Sink] = (),
    ):
        self.enabled = enabled
        self.layout = RunLayout(Path(run_dir))
        self.path = self.layout.metrics
        self.sinks: list[Sink] = []
        self._bar: ProgressBar | None = None
        check_report_to(report_to)
        if not enabled:
            return
        self.sinks.append(JsonlSink(self.path, resume_step))
        log_path = None if log_dir is None else Path(log_dir)
        self.sinks += [
            SINKS[name](self.layout, log_path, resume_step) for name in report_to if name != "none"
        ]
        self.sinks += list(sinks)
        if progress:
            self._bar = ProgressBar(description, total_steps, resume_step or 0)

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        """Record `metrics` (floats or 0-d tensors) at `step` under `split`."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        for sink in self.sinks:
            sink.log(step, split, values)

    def text(self, step: int, tag: str, text: str) -> None:
        """Record a text (e.g. a table of sample completions) at `step`."""
        if not self.enabled:
            return
        for sink in self.sinks:
            sink.text(step, tag, text)

    def advance(self, step: int, info: str = "") -> None:
        """Move the progress bar to `step`, with a short status text."""
        if self._bar is not None:
            self._bar.update(step, info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path, split: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of a run's metrics.jsonl (optionally one split); a torn last line is dropped."""
    lines, _ = _records(RunLayout(Path(run_dir)).metrics)
    for line in lines:
        record = json.loads(line)
        if split is None or record["split"] == split:
            yield record
