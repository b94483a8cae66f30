"""The metrics logger: metrics.jsonl reads as one run across a resume, a torn last line is
dropped, sinks get every record."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignloop.errors import UserError
from alignloop.runstack.layout import RunLayout
from alignloop.runstack.metrics import MetricsLogger, read_metrics


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[int, str, dict[str, float]]] = []
        self.texts: list[tuple[int, str, str]] = []
        self.closed = False

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self.records.append((step, split, values))

    def text(self, step: int, tag: str, text: str) -> None:
        self.texts.append((step, tag, text))

    def close(self) -> None:
        self.closed = True


def write_steps(run: Path, steps: range, resume_step: int | None = None) -> None:
    with MetricsLogger(run, progress=False, resume_step=resume_step, report_to=()) as logger:
        for step in steps:
            logger.log(step, {"loss": 1.0 / step})
            if step % 2 == 0:
                logger.log(step, {"accuracy": 0.5}, split="eval")


def test_resume_drops_records_past_the_checkpoint(tmp_path: Path):
    write_steps(tmp_path, range(1, 6))  # a run killed after step 5, its checkpoint at step 4
    write_steps(tmp_path, range(5, 7), resume_step=4)
    steps = [(r["step"], r["split"]) for r in read_metrics(tmp_path)]
    assert steps == [(1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (4, "eval"),
                     (5, "train"), (6, "train"), (6, "eval")]  # fmt: skip
    write_steps(tmp_path, range(1, 2))  # a fresh run starts the file afresh
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_a_torn_last_line_is_dropped_not_fatal(tmp_path: Path, capsys):
    write_steps(tmp_path, range(1, 4))
    metrics = RunLayout(tmp_path).metrics
    metrics.write_text(metrics.read_text() + '{"step": 4, "split": "tr')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3]
    write_steps(tmp_path, range(4, 5), resume_step=3)
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3, 4]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path: Path):
    write_steps(tmp_path, range(1, 4))
    metrics = RunLayout(tmp_path).metrics
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=rf"{metrics}:2: not a metrics record"):
        list(read_metrics(tmp_path))


def test_every_sink_gets_every_record_and_text(tmp_path: Path):
    sink = Recorder()
    with MetricsLogger(tmp_path, progress=False, sinks=[sink]) as logger:
        logger.log(1, {"loss": 0.25})
        logger.text(1, "samples", "| prompt | response |")
    assert sink.records == [(1, "train", {"loss": 0.25})] and sink.closed
    assert sink.texts == [(1, "samples", "| prompt | response |")]
    assert RunLayout(tmp_path).tensorboard.is_dir()  # the default sink
    assert not MetricsLogger(tmp_path / "other", enabled=False).sinks  # other processes write nothing
    with pytest.raises(UserError, match="--report-to: nowhere not one of tensorboard"):
        MetricsLogger(tmp_path, progress=False, report_to=["nowhere"])
