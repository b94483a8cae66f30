"""The loop's durable state: what each round has finished, kept in the run directory.

Every write is atomic (a temporary file, fsync, rename), so a loop killed at any instant finds
either the old state or the new one on restart, never half of one. What lives where:

    run_dir/loop.json          rounds, the phase each has finished, the platform project, metrics
    run_dir/judgements.jsonl   every judgement pulled so far (one per line, each id once)
    run_dir/round-NNN/candidates.jsonl   the items proposed in round NNN (saved before pushing)
    run_dir/round-NNN/items.json         key -> platform item id of those items

The platform database is the other half: items are pushed with their keys (a re-push returns
the stored ids), and judgements stay there, so a restart neither asks twice nor loses any.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignloop.config import ConfigError
from alignloop.loop.domain import Judged, Proposal

PHASES = ("proposed", "pushed", "collected", "learned", "aligned", "evaluated")
"""The phases of a round, in order; a round's state is the last one it finished."""


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class LoopState:
    """What the loop has done; `loop.json` in the run directory."""

    identity: dict[str, Any]
    """The options that must not change between a run and its restart (domain, seed, ...)."""
    project_id: int | None = None
    setup_metrics: dict[str, float] | None = None
    phases: dict[str, str] = field(default_factory=dict)
    """Round number (as a string) -> the last phase it finished."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Round number -> every figure recorded for it (learn, align and evaluate merged)."""
    after_id: int = 0
    """Judgements with ids up to this one have been pulled into judgements.jsonl."""

    @staticmethod
    def path(run_dir: Path) -> Path:
        return run_dir / "loop.json"

    @classmethod
    def open(cls, run_dir: Path, identity: dict[str, Any]) -> LoopState:
        """The run's state, or a new one; refuses a run directory made with other options."""
        path = cls.path(run_dir)
        if not path.is_file():
            state = cls(identity=identity)
            state.save(run_dir)
            return state
        try:
            state = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a loop state file ({exc})") from exc
        changed = {k: (state.identity.get(k), v) for k, v in identity.items() if state.identity.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in changed.items())
            raise ConfigError(
                f"{run_dir} holds a loop started with other options ({what}); "
                "use another run directory or the same options"
            )
        return state

    @classmethod
    def check(cls, run_dir: Path, identity: dict[str, Any]) -> None:
        """Raise the error `open` would, without creating anything."""
        if cls.path(run_dir).is_file():
            cls.open(run_dir, identity)

    def save(self, run_dir: Path) -> None:
        write_atomic(self.path(run_dir), json.dumps(asdict(self), indent=2) + "\n")

    def done(self, round: int, phase: str) -> bool:
        """Whether `round` has finished `phase`."""
        last = self.phases.get(str(round))
        return last is not None and PHASES.index(last) >= PHASES.index(phase)

    def finish(self, run_dir: Path, round: int, phase: str, metrics: dict[str, float] | None = None) -> None:
        """Record that `round` finished `phase` (with its figures), durably."""
        self.phases[str(round)] = phase
        if metrics:
            self.metrics.setdefault(str(round), {}).update(metrics)
        self.save(run_dir)

    def next_round(self, rounds: int) -> int | None:
        """The first round (1-based) that has not finished every phase, or None."""
        for r in range(1, rounds + 1):
            if not self.done(r, PHASES[-1]):
                return r
        return None


def round_dir(run_dir: Path, round: int) -> Path:
    return run_dir / f"round-{round:03d}"


def save_candidates(path: Path, proposals: list[Proposal]) -> None:
    write_atomic(path, "".join(json.dumps(p.to_json()) + "\n" for p in proposals))


def load_candidates(path: Path) -> list[Proposal]:
    return [Proposal.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


class JudgementStore:
    """judgements.jsonl: every judgement pulled, each id once, in the order pulled.

    Appends are fsynced before the cursor in `loop.json` moves past them, and a line cut short
    by a crash is dropped on reading (its judgement is pulled again: it is still on the platform).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "judgements.jsonl"
        self._rows: dict[int, Judged] | None = None  # the file's judgements by id, read once

    def _read(self) -> dict[int, Judged]:
        if self._rows is None:
            self._rows = {}
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
            for line in lines:
                try:
                    judged = Judged.from_json(json.loads(line))
                except (ValueError, TypeError, KeyError):
                    continue  # the tail of a write cut short by a crash
                self._rows.setdefault(judged.judgement_id, judged)
        return self._rows

    def load(self) -> list[Judged]:
        return list(self._read().values())

    def append(self, judged: Iterable[Judged]) -> int:
        rows = self._read()
        fresh = list({j.judgement_id: j for j in judged if j.judgement_id not in rows}.values())
        if not fresh:
            return 0
        with self.path.open("a+b") as f:
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # end a line cut short so the next one starts clean
            f.write("".join(json.dumps(j.to_json()) + "\n" for j in fresh).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        rows.update((j.judgement_id, j) for j in fresh)
        return len(fresh)
