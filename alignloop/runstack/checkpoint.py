"""Checkpoints that cannot betray you.

A checkpoint is a folder `RunLayout.checkpoint(step)` holding

- ``state.pt``: the states of models, optimisers, schedulers and anything else with a
  ``state_dict`` (numpy arrays become tensors), and every process's random-generator states,
  all as tensors and plain values, so it is loaded with ``torch.load(..., weights_only=True)``
  and a crafted file cannot run code;
- ``meta.json``: the step, the number of processes and the trainer's extra state (its data
  position, a Lagrange multiplier, episode records) as JSON;
- ``manifest.json``: the size and SHA-256 of the two files above, written last.

It is written to a temporary folder, synced and renamed into place, so a run killed mid-save
leaves the previous checkpoints as they were. Before a checkpoint is used its files are checked
against the manifest: a truncated or corrupted one (or one without a manifest: a save that never
finished, or a folder from an older version) is named with the reason, and the newest intact
checkpoint that ``keep`` kept is used instead, saying so.

Under several processes every process calls `Checkpointer.save` (RNG states and FSDP shards are
gathered) and only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from alignloop.errors import UserError
from alignloop.runstack.distributed import DistributedContext, FullState
from alignloop.runstack.layout import MANIFEST, META, STATE, RunLayout
from alignloop.runstack.seeding import rng_state, set_rng_state

FORMAT = 1
"""Version of the checkpoint layout, stored in meta.json."""
GROUPS = ("models", "optimizers", "schedulers", "states")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: damaged, refused, or written by another set-up."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def to_plain(obj: Any) -> Any:
    """numpy arrays -> tensors, through dicts, lists and tuples (what ``weights_only`` loads)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def to_numpy(obj: Any) -> Any:
    """tensors -> numpy arrays, through dicts and lists (the inverse of `to_plain`)."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


class NumpyState:
    """An object whose ``state_dict`` holds numpy arrays, stored as tensors and given back as arrays."""

    def __init__(self, obj: Any):
        self.obj = obj

    def state_dict(self) -> Any:
        return to_plain(self.obj.state_dict())

    def load_state_dict(self, state: Any) -> None:
        self.obj.load_state_dict(to_numpy(state))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Checkpoints of one run folder (see the module docstring); keeps the newest `keep`."""

    def __init__(self, run_dir: str | Path, keep: int = 2, ctx: DistributedContext | None = None):
        self.layout = RunLayout(Path(run_dir))
        self.dir = self.layout.checkpoints
        self.keep = keep
        self.ctx = ctx or DistributedContext()
        self._checked: dict[Path, str | None] = {}  # verdicts of `damage`, so each file is hashed once

    def say(self, message: str) -> None:
        """A note for the user, on stderr, from the main process only."""
        if self.ctx.is_main:
            print(message, file=sys.stderr)

    # ---------------------------------------------------------------------- saving
    def save(
        self,
        step: int,
        models: Mapping[str, Stateful],
        optimizers: Mapping[str, Stateful] | None = None,
        schedulers: Mapping[str, Stateful] | None = None,
        extra: Mapping[str, Any] | None = None,
        states: Mapping[str, Stateful] | None = None,
    ) -> Path | None:
        """Write the checkpoint of `step` (every process calls this); returns its folder on the
        main process. `extra` must be JSON (numbers, text, lists, dicts): it goes to meta.json."""
        groups = dict(zip(GROUPS, (models, optimizers or {}, schedulers or {}, states or {}), strict=True))
        for group in groups.values():
            for obj in group.values():
                if isinstance(obj, FullState):  # a sharded model's full state: a collective
                    obj.gather()
        rng_states = self.ctx.gather_objects(rng_state())
        final = self.layout.checkpoint(step)
        if self.ctx.is_main:
            state: dict[str, Any] = {
                name: {k: to_plain(obj.state_dict()) for k, obj in group.items()}
                for name, group in groups.items()
            }
            state["rng"] = rng_states
            meta = {
                "format": FORMAT,
                "step": step,
                "world_size": self.ctx.world_size,
                "extra": dict(extra or {}),
            }
            tmp = self.layout.checkpoint_tmp(step)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with (tmp / STATE).open("wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            _write_synced(tmp / META, (json.dumps(meta, indent=1) + "\n").encode())
            manifest = {
                name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in (STATE, META)
            }
            _write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
            _fsync(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._checked.pop(final, None)
            _fsync(self.dir)
            self._prune()
        self.ctx.barrier()
        return final if self.ctx.is_main else None

    def _prune(self) -> None:
        for tmp in self.dir.glob(".tmp_*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if self.keep > 0:
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> int:
        """Remove every checkpoint (a fresh run in a used folder); returns how many there were.
        The main process removes, every process waits for it."""
        found = self.layout.checkpoint_dirs()
        if self.ctx.is_main:
            for path in found:
                shutil.rmtree(path, ignore_errors=True)
            for tmp in self.dir.glob(".tmp_*") if self.dir.is_dir() else []:
                shutil.rmtree(tmp, ignore_errors=True)
        self.ctx.barrier()
        return len(found)

    # ---------------------------------------------------------------------- checking
    def all(self) -> list[Path]:
        """Complete checkpoints (their manifest was written), oldest first; not verified."""
        return [p for p in self.layout.checkpoint_dirs() if (p / MANIFEST).is_file()]

    def damage(self, path: str | Path) -> str | None:
        """Why the checkpoint in `path` cannot be trusted (naming the file), or None when its
        files match its manifest."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return (
                f"{manifest_path}: missing (a save that never finished, or a checkpoint of an older version)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            expected = {
                name: (int(manifest[name]["size"]), str(manifest[name]["sha256"])) for name in (STATE, META)
            }
        except (ValueError, KeyError, TypeError) as exc:
            return f"{manifest_path}: unreadable ({exc})"
        for name, (size, digest) in expected.items():
            file = path / name
            if not file.is_file():
                return f"{file}: missing"
            actual = file.stat().st_size
            if actual != size:
                kind = "truncated" if actual < size else "longer than written"
                return f"{file}: {kind} ({actual} bytes, the manifest says {size})"
            if _sha256(file) != digest:
                return f"{file}: corrupted (its SHA-256 differs from the manifest's)"
        return None

    def intact(self) -> list[Path]:
        """Checkpoints whose files match their manifests, newest first; each damaged one found on
        the way is named, with the reason."""
        good: list[Path] = []
        for path in reversed(self.layout.checkpoint_dirs()):
            if path not in self._checked:
                self._checked[path] = self.damage(path)
                if self._checked[path] is not None:
                    self.say(f"checkpoint {path.name} is damaged: {self._checked[path]}")
            if self._checked[path] is None:
                good.append(path)
        return good

    def latest(self) -> Path | None:
        """The newest intact checkpoint (damaged newer ones are named on stderr), or None."""
        good = self.intact()
        return good[0] if good else None

    # ---------------------------------------------------------------------- loading
    def read_meta(self, path: str | Path) -> dict[str, Any]:
        """The step, process count and extra state of a checkpoint (from its meta.json)."""
        meta_path = Path(path) / META
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path}: unreadable ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{meta_path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT}"
            )
        return meta

    def read_state(self, path: str | Path) -> dict[str, Any]:
        """state.pt loaded with ``weights_only=True`` on the CPU; refused (naming the file) when it
        holds anything but tensors and plain values."""
        file = Path(path) / STATE
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is the file's
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{file}: cannot be loaded safely ({reason})") from exc

    def load(
        self,
        path: str | Path,
        models: Mapping[str, Stateful],
        optimizers: Mapping[str, Stateful] | None = None,
        schedulers: Mapping[str, Stateful] | None = None,
        states: Mapping[str, Stateful] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Restore the states in place (and this process's RNG); returns (step, extra)."""
        meta = self.read_meta(path)
        self._check_world_size(path, meta)
        groups = dict(zip(GROUPS, (models, optimizers or {}, schedulers or {}, states or {}), strict=True))
        return self._apply(path, meta, self.read_state(path), groups)

    def _check_world_size(self, path: str | Path, meta: dict[str, Any]) -> None:
        saved = meta["world_size"]
        if saved != self.ctx.world_size:
            fix = f"torchrun --nproc_per_node={saved}" if saved > 1 else "one process (without torchrun)"
            raise CheckpointError(
                f"{path}: saved by {saved} process(es), resumed with {self.ctx.world_size}; resume with {fix}"
            )

    def _apply(
        self,
        path: str | Path,
        meta: dict[str, Any],
        state: dict[str, Any],
        groups: dict[str, Mapping[str, Stateful]],
    ) -> tuple[int, dict[str, Any]]:
        for name, group in groups.items():
            saved = state.get(name, {})
            for key, obj in group.items():
                if key not in saved:
                    raise CheckpointError(f"{Path(path) / STATE}: holds no {name[:-1]} {key!r}")
                try:
                    obj.load_state_dict(saved[key])
                except (RuntimeError, ValueError, KeyError) as exc:
                    first = str(exc).strip().splitlines()[0]
                    raise CheckpointError(
                        f"{Path(path) / STATE}: the saved {name[:-1]} {key!r} does not fit this run ({first}); "
                        "resume with the options the run was started with"
                    ) from exc
        set_rng_state(state["rng"][self.ctx.rank])
        return int(meta["step"]), dict(meta["extra"])

    def restore(
        self,
        models: Mapping[str, Stateful],
        optimizers: Mapping[str, Stateful] | None = None,
        schedulers: Mapping[str, Stateful] | None = None,
        states: Mapping[str, Stateful] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Load the newest checkpoint that is intact and loads safely, naming each one passed
        over, and saying which one is used when it is not the newest. Raises `CheckpointError`
        when there is none."""
        groups = dict(zip(GROUPS, (models, optimizers or {}, schedulers or {}, states or {}), strict=True))
        found = self.layout.checkpoint_dirs()
        for path in self.intact():
            try:
                meta = self.read_meta(path)
                state = self.read_state(path)  # a refused file is passed over before anything is restored
            except CheckpointError as exc:
                self._checked[path] = str(exc)
                self.say(f"checkpoint {path.name} is damaged: {exc}")
                continue
            self._check_world_size(path, meta)
            step, extra = self._apply(path, meta, state, groups)
            if path != found[-1]:
                self.say(f"resuming from {path} (step {step}), the newest intact checkpoint")
            return step, extra
        if found:
            raise CheckpointError(
                f"{self.dir}: none of its {len(found)} checkpoint(s) is intact (see above); "
                "start the run afresh without --resume"
            )
        raise CheckpointError(f"{self.dir}: no checkpoint to resume from; start the run without --resume")
