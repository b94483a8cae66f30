"""A run: its folder, its process group, its checkpoints, the one ``--resume`` rule.

`Run.start` is the first thing every trainer does. It applies the one ``--resume`` rule (its
``--help`` text is `alignloop.runstack.options.RunOptions.resume`'s):

- with ``--resume`` the run folder must hold an intact checkpoint (else the run is refused,
  naming the folder), and the options that define the model (``must_match``: another model,
  another ``--env``) must equal those in the folder's run.json (else the run is refused,
  naming each differing option); other changed options are listed on stderr;
- without ``--resume`` the run starts afresh; checkpoints an earlier run left in the folder
  are removed (saying so), so they can never be mistaken for this run's.

Then the resolved configuration is written to run.json (`RunLayout.config`), one format for
every command: ``{"command", "alignloop", "config": {...}}``: at once for a fresh run, and for a
resume only once its checkpoint has been restored (`Run.restore`), so a resume refused on the way
leaves the run's run.json as it was and the next ``--resume`` is checked against the run's options.

Extending a run (a larger ``--max-steps``) never restarts or silently stretches its
learning-rate schedule: `check_schedule` refuses a resume whose schedule length differs from
the checkpoint's unless ``--total-steps`` says which length to use.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignloop import __version__
from alignloop.errors import UserError
from alignloop.runstack.checkpoint import Checkpointer, CheckpointError, Stateful
from alignloop.runstack.distributed import DistributedContext, init_distributed
from alignloop.runstack.layout import RunLayout
from alignloop.runstack.metrics import MetricsLogger

QUIET_OPTIONS = frozenset({"resume", "progress"})
"""Options whose change on resume is not worth a note."""


class ResumeError(UserError):
    """A resume that would not continue the run it names."""


def to_json(value: Any) -> Any:
    """A configuration value as JSON: paths as text, tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: {"ppo": {"lr": 1}} -> {"ppo.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def flag(option: str) -> str:
    """The command-line spelling of a (dotted) option name."""
    return "--" + option.replace("_", "-")


def read_run_config(layout: RunLayout) -> dict[str, Any] | None:
    """The configuration stored in a run's run.json (None when there is none)."""
    if not layout.config.is_file():
        return None
    try:
        record = json.loads(layout.config.read_text())
        return dict(record["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ResumeError(
            f"{layout.config}: unreadable ({exc}); start the run afresh without --resume"
        ) from exc


def compare_configs(
    saved: Mapping[str, Any], current: Mapping[str, Any], must_match: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(options that define the model and differ, other options that differ), each as
    ``--flag saved -> current``; options absent from `saved` (added since) do not count."""
    old, new = flatten(dict(saved)), flatten(dict(current))
    keys = set(must_match)
    blocking, changed = [], []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], json.loads(json.dumps(new[key]))
        if a == b:
            continue
        text = f"{flag(key)} {a!r} -> {b!r}"
        if key in keys:
            blocking.append(text)
        elif key not in QUIET_OPTIONS:
            changed.append(text)
    return blocking, changed


def check_schedule(
    run_dir: Path,
    saved_steps: int,
    steps: int,
    explicit: bool,
    constant: bool,
    length_option: str | None = "--total-steps",
) -> None:
    """Refuse a resume that would change the length of a run's learning-rate schedule from
    `saved_steps` to `steps` unless `length_option` (``--total-steps``) set it (`explicit`); a
    `constant` schedule (after warm-up) has no length to keep. Without a `length_option` the
    schedule follows the run's length, which a resume must then keep."""
    if saved_steps == steps or constant:
        return
    if length_option is None:
        raise ResumeError(
            f"{run_dir}: the run's learning-rate schedule decays over {saved_steps} steps and this resume "
            f"would make it {steps}, restarting its decay mid-way; resume with the run's length, or start a new run"
        )
    if not explicit:
        raise ResumeError(
            f"{run_dir}: the run's learning-rate schedule is {saved_steps} steps long and this resume would "
            f"make it {steps}, restarting its decay mid-way; pass {length_option} {saved_steps} to keep the "
            f"run's schedule (the rate stays at its end value after step {saved_steps}) or {length_option} "
            f"{steps} to stretch it to the new length"
        )
    print(f"{run_dir}: learning-rate schedule stretched from {saved_steps} to {steps} steps", file=sys.stderr)


@dataclass
class Run:
    """One run of a trainer: where it writes, its processes, its checkpoints, whether it resumed."""

    layout: RunLayout
    ctx: DistributedContext
    checkpointer: Checkpointer
    resume: bool
    pending: dict[str, Any] | None = None
    """The run.json record a resume writes once its checkpoint is restored (None once written)."""

    @classmethod
    def start(
        cls,
        output_dir: str | Path,
        *,
        command: str,
        config: Any,
        resume: bool,
        keep_checkpoints: int = 2,
        must_match: Sequence[str] = (),
        ctx: DistributedContext | None = None,
    ) -> Run:
        """Apply the ``--resume`` rule (module docstring); write run.json now unless resuming."""
        ctx = ctx or init_distributed()
        layout = RunLayout(Path(output_dir))
        checkpointer = Checkpointer(layout.root, keep_checkpoints, ctx)
        current = to_json(config)
        if resume:
            saved = read_run_config(layout)
            if saved is not None:
                blocking, changed = compare_configs(saved, current, must_match)
                if blocking:
                    raise ResumeError(
                        f"{layout.root}: --resume with options that define another model than the run's: "
                        f"{'; '.join(blocking)}; resume with the run's options, or start a new run in "
                        "another --output-dir"
                    )
                if changed and ctx.is_main:
                    print(
                        f"{layout.root}: resuming with changed options: {'; '.join(changed)}", file=sys.stderr
                    )
            if checkpointer.latest() is None:
                found = len(layout.checkpoint_dirs())
                what = f"none of its {found} checkpoint(s) is intact" if found else "it holds no checkpoint"
                raise CheckpointError(f"--resume: {layout.root}: {what}; start the run without --resume")
        else:
            removed = len(layout.checkpoint_dirs())
            if removed:
                checkpointer.clear()
                if ctx.is_main:
                    print(
                        f"{layout.checkpoints}: removed {removed} checkpoint(s) of an earlier run, starting "
                        "afresh (pass --resume to continue it instead)",
                        file=sys.stderr,
                    )
        ctx.barrier()  # every process has read the old run.json before it is replaced
        run = cls(
            layout,
            ctx,
            checkpointer,
            resume,
            {"command": command, "alignloop": __version__, "config": current},
        )
        if not resume:
            run.write_config()
        return run

    def write_config(self) -> None:
        """Write the pending run.json record (main process; atomically), once."""
        if self.pending is not None and self.ctx.is_main:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            tmp = self.layout.config.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.pending, indent=2) + "\n")
            tmp.replace(self.layout.config)
        self.pending = None

    def restore(
        self,
        models: Mapping[str, Stateful],
        optimizers: Mapping[str, Stateful] | None = None,
        schedulers: Mapping[str, Stateful] | None = None,
        states: Mapping[str, Stateful] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Restore the newest intact checkpoint when resuming: (step, extra); (0, {}) otherwise.
        A resume's run.json is written once the checkpoint is in (module docstring)."""
        if not self.resume:
            return 0, {}
        restored = self.checkpointer.restore(models, optimizers, schedulers, states)
        self.write_config()
        return restored

    def restore_checked(
        self,
        models: Mapping[str, Stateful],
        optimizers: Mapping[str, Stateful] | None = None,
        schedulers: Mapping[str, Stateful] | None = None,
        states: Mapping[str, Stateful] | None = None,
        *,
        schedule_steps: int,
        explicit: bool,
        constant: bool,
        length_option: str | None = "--total-steps",
        saved_as: str = "schedule_steps",
    ) -> tuple[int, dict[str, Any]]:
        """`restore`, then, when resuming, `check_schedule` of the checkpoint's schedule length
        (its extra record `saved_as`) against this run's `schedule_steps`; run.json is written
        only once both have passed."""
        if not self.resume:
            return 0, {}
        step, extra = self.checkpointer.restore(models, optimizers, schedulers, states)
        check_schedule(
            self.layout.root, int(extra[saved_as]), schedule_steps, explicit, constant, length_option
        )
        self.write_config()
        return step, extra

    def logger(
        self,
        *,
        total_steps: int | None,
        description: str,
        resume_step: int | None,
        progress: bool = True,
        log_dir: Path | None = None,
        report_to: Sequence[str] = ("tensorboard",),
    ) -> MetricsLogger:
        """The run's metrics logger (writing on the main process only)."""
        return MetricsLogger(
            self.layout.root,
            total_steps=total_steps,
            log_dir=log_dir,
            enabled=self.ctx.is_main,
            progress=progress,
            resume_step=resume_step if self.resume else None,
            description=description,
            report_to=report_to,
        )

    def close(self) -> None:
        """Wait for every process, then leave the process group if this run joined it."""
        self.ctx.barrier()
        self.ctx.close()
