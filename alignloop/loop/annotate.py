"""`alignloop annotate`: a scripted annotator that labels a platform project over HTTP.

It logs in like a person would, asks for its next assignment, answers the project's questions
(whatever kinds it asks: `alignloop.feedback.teachers.ScriptedAnnotator`) and submits, exactly
through the API the web page uses, so the loop on the other side cannot tell it from a person.
Three teachers:

- ``toyworld``: the toy world's ground-truth judges (helpfulness, harm) with the toy world's
  noise, the annotator the toy-world loop is measured against; it corrects unsafe responses into
  the toy world's safest helpful answer (`alignloop.lm.aligner.toy_correction`);
- ``reward-model``: a reward model's scores as helpfulness and a cost model's as harm (cost
  > 0 = unsafe), behind Bradley-Terry noise: any prompts, for the loop on any language model;
- ``oracle``: judges trajectory clips from the per-step true rewards and costs that the control
  loop writes to ``run_dir/oracle.jsonl`` for each item key (the platform never sees them),
  playing a person watching the clips: segment sums for choices, rankings and ratings
  (`SegmentTeacher`'s rule for two clips), the frame that shows the first unsafe step for
  marks (the clip's `frame_stride` steps a frame, from its line).

    alignloop annotate --url http://127.0.0.1:8000 --project loop --user ann-1 \\
        --password-file ann-1.txt --teacher toyworld
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alignloop.checks import closest, http_url, read_password
from alignloop.errors import UserError
from alignloop.feedback.schema import Question, parse_questions
from alignloop.feedback.teachers import ScriptedAnnotator, TeacherNoise, Truth
from alignloop.platform.client import PlatformClient, PlatformError, item_from_json

TOKEN_ENV = "ALIGNLOOP_TOKEN"
Teacher = Callable[[dict[str, Any]], dict[str, Any]]
SKIP = {"skipped": True, "skip_reason": "declined to judge"}


def _labels(answers: dict[str, Any] | None) -> dict[str, Any]:
    return SKIP if answers is None else {"answers": answers}


@dataclass(frozen=True)
class AnnotateConfig:
    """A scripted annotator: labels a project's items through the platform's HTTP API."""

    url: str = "http://127.0.0.1:8000"
    """The platform's address."""
    project: str = "alignloop-loop"
    """Name of the project to label."""
    user: str | None = None
    """Annotator account name (with --password-file); without it, a token from $ALIGNLOOP_TOKEN."""
    password_file: Path | None = None
    """File whose first line is the account's password."""
    teacher: Literal["toyworld", "oracle", "reward-model"] = "toyworld"
    """toyworld: the toy world's judges; oracle: per-step true rewards/costs in --oracle;
    reward-model: judges with --reward-model (and --cost-model) on any prompts."""
    oracle: Path | None = None
    """The control loop's oracle.jsonl (teacher oracle)."""
    reward_model: Path | None = None
    """Reward model folder (`alignloop train reward`) of --teacher reward-model."""
    cost_model: Path | None = None
    """Cost model folder (`alignloop train cost`) of --teacher reward-model: cost > 0 is unsafe
    (without it, safety questions are answered as if every response were safe)."""
    beta: float = 1.0
    """Rationality of --teacher reward-model: P(prefer A) = sigmoid(beta (r_A - r_B)), 1 = the
    reward model's own Bradley-Terry probability (inf = always the higher score)."""
    world_seed: int = 0
    """Toy world seed (must match the loop's)."""
    seed: int = 0
    """Seed of the teacher's own noise (give each annotator its own)."""
    mistake_rate: float = 0.0
    """oracle: probability of flipping a choice (the toy world has its own noise)."""
    idle_exit: float = 0.0
    """Exit after this many seconds with nothing to label (0 = keep waiting until stopped)."""
    poll: float = 1.0
    """Seconds between asks when there is nothing to label."""
    limit: int = 0
    """Stop after this many judgements (0 = no limit)."""
    pace: float = 0.0
    """Seconds spent on each item before submitting, as a person reading it would (0 = none), so
    that several annotators share a batch instead of the first one taking all of it."""


def toyworld_teacher(world_seed: int, seed: int, questions: tuple[Question, ...]) -> Teacher:
    """The toy world's judges behind the toy world's teacher noise, for any questions; an item
    whose prompt is not a toy-world prompt is a `UserError` (nothing is submitted for it)."""
    import random

    from alignloop.lm.aligner import toy_correction
    from alignloop.lm.tasks import ToyWorldTask
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(seed=world_seed)
    task = ToyWorldTask(seed=world_seed)
    annotator = ScriptedAnnotator(questions, world.teacher(seed).noise, seed=seed)
    rng = random.Random(seed)

    def judge(raw: dict[str, Any]) -> dict[str, Any]:
        item = item_from_json(raw)
        if not task.can_judge(item.prompt):
            shown = item.prompt if len(item.prompt) <= 80 else item.prompt[:77] + "..."
            raise UserError(
                f"item {item.key!r}: --teacher toyworld cannot judge the prompt {shown!r}: its judges know "
                "only the toy world's prompts; label this project with people, or point the annotator "
                "at a toy-world project (`alignloop loop --demo toyworld`)"
            )
        texts = [item.text(i) for i in range(len(item.candidates))]
        values = np.asarray([world.helpfulness(item.prompt, t) for t in texts])
        truth = Truth(
            values,
            values,
            costs=np.asarray([float(world.harm(item.prompt, t)) for t in texts]),
            harms=[world.harm_labels(item.prompt, t) for t in texts],
            corrected=lambda i: toy_correction(world, item.prompt, texts[i], rng),
        )
        return _labels(annotator.answer(truth))

    return judge


def reward_model_teacher(
    reward_model: Path,
    cost_model: Path | None,
    seed: int,
    questions: tuple[Question, ...],
    beta: float = 1.0,
) -> Teacher:
    """Judges any prompts with a reward model (helpfulness: its scores) and a cost model (cost
    > 0 = unsafe), behind Bradley-Terry noise of rationality `beta`; corrections are not offered."""
    from alignloop.lm.evaluate import score_texts
    from alignloop.lm.models import ScoreModel, load_tokenizer

    models = {"reward": reward_model, "cost": cost_model}
    loaded = {k: (ScoreModel.from_pretrained(p).eval(), load_tokenizer(p)) for k, p in models.items() if p}
    annotator = ScriptedAnnotator(questions, TeacherNoise(beta=beta, cost_threshold=0.0), seed=seed)

    def scores(kind: str, prompt: str, texts: list[str]) -> np.ndarray:
        model, tokenizer = loaded[kind]
        context = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        values = score_texts(model, tokenizer, [prompt] * len(texts), texts, max_length=context)
        return values.double().numpy()

    def judge(raw: dict[str, Any]) -> dict[str, Any]:
        item = item_from_json(raw)
        texts = [item.text(i) for i in range(len(item.candidates))]
        rewards = scores("reward", item.prompt, texts)
        costs = scores("cost", item.prompt, texts) if "cost" in loaded else np.full(len(texts), -1.0)
        return _labels(annotator.answer(Truth(rewards, rewards, costs=costs)))

    return judge


class OracleTeacher:
    """Judges clips from the true per-step values the control loop recorded for their key."""

    def __init__(self, path: Path, seed: int, questions: tuple[Question, ...], mistake_rate: float = 0.0):
        from alignloop.feedback.teachers import SegmentTeacher

        self.path, self.read_bytes = path, 0
        self.values: dict[str, dict[str, Any]] = {}
        self.teacher = SegmentTeacher(TeacherNoise(mistake_rate=mistake_rate), seed=seed)
        self.questions, self.mistake_rate = questions, mistake_rate
        self.annotators: dict[int, ScriptedAnnotator] = {}

    def annotator(self, frame_stride: int) -> ScriptedAnnotator:
        """The annotator for clips of `frame_stride` steps a frame (all draw on one generator)."""
        if frame_stride not in self.annotators:
            self.annotators[frame_stride] = ScriptedAnnotator(
                self.questions,
                TeacherNoise(mistake_rate=self.mistake_rate),
                seed=self.teacher.rng,
                value_range=(-50.0, 250.0),
                frame_stride=frame_stride,
            )
        return self.annotators[frame_stride]

    def _refresh(self) -> None:
        """Read the lines appended to the oracle file since the last read."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.read_bytes)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        for line in complete.decode("utf-8").splitlines():
            row = json.loads(line)
            self.values[row["key"]] = row
        self.read_bytes += len(complete)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        key = item.get("key")
        if key not in self.values:
            self._refresh()
        if key not in self.values:
            return {"skipped": True, "skip_reason": f"no oracle values for item key {key!r}"}
        row = self.values[key]
        rewards = np.asarray(
            row.get("rewards") or [row["rewards_a"], row["rewards_b"]], dtype=float
        )  # (k, H)
        costs = np.asarray(row.get("costs") or [row["costs_a"], row["costs_b"]], dtype=float)
        values, utilities = (
            s
            for s in (
                rewards.sum(-1),
                rewards @ (self.teacher.gamma ** np.arange(rewards.shape[-1] - 1, -1, -1)),
            )
        )
        truth = Truth(values, utilities, costs=costs.sum(-1), step_costs=costs)
        return _labels(self.annotator(int(row.get("frame_stride", 1))).answer(truth))


def make_teacher(cfg: AnnotateConfig, questions: tuple[Question, ...]) -> Teacher:
    if cfg.teacher == "toyworld":
        return toyworld_teacher(cfg.world_seed, cfg.seed, questions)
    if cfg.teacher == "reward-model":
        assert cfg.reward_model is not None, "checked in run()"
        return reward_model_teacher(cfg.reward_model, cfg.cost_model, cfg.seed, questions, cfg.beta)
    if cfg.oracle is None:
        raise UserError("--teacher oracle needs --oracle PATH (the control loop's oracle.jsonl)")
    return OracleTeacher(cfg.oracle, cfg.seed, questions, cfg.mistake_rate)


def connect(url: str, user: str | None, password_file: Path | None) -> PlatformClient:
    """A client logged in with a name and password file, or with the token in $ALIGNLOOP_TOKEN."""
    url = http_url(url)
    if user is not None:
        if password_file is None or not password_file.is_file():
            raise UserError(f"--user {user} needs --password-file with the password (got {password_file})")
        return PlatformClient.login(url, user, read_password(password_file))
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise UserError(f"give --user and --password-file, or set ${TOKEN_ENV} to an API token")
    client = PlatformClient(url, token)
    try:
        client.projects()  # the token is checked now, not after the first item
    except PlatformError as exc:
        client.close()
        if exc.status == 401:
            raise UserError(f"{url}: the platform refused the token in ${TOKEN_ENV} ({exc.detail})") from exc
        raise
    return client


def find_project(client: PlatformClient, name: str, wait: float) -> tuple[int, tuple[Question, ...]]:
    """The id and questions of the project called `name`, waiting up to `wait` seconds for it to
    appear (the loop may create it after its annotators start); says once that it waits."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        projects = client.projects()
        found = [p for p in projects if p["name"] == name]
        if found:
            return int(found[0]["id"]), parse_questions(found[0]["questions"])
        names = [str(p["name"]) for p in projects]
        there = f"projects there: {', '.join(names)}" if names else "it has no projects yet"
        if time.monotonic() >= deadline:
            raise UserError(
                f"--project {name!r}: no such project on {client.base_url}{closest(name, names)} ({there})"
            )
        if not said:
            print(
                f"no project {name!r} on {client.base_url} yet ({there}); waiting for it"
                f"{'' if math.isinf(wait) else f' up to {wait:g} s'} (--idle-exit S gives up after S seconds)",
                file=sys.stderr,
            )
            said = True
        time.sleep(1.0)


def label(client: PlatformClient, project: int, teacher: Teacher, limit: int, pace: float = 0.0) -> int:
    """Judge assignments until none is left (or `limit`), `pace` seconds each at the least;
    returns how many were submitted."""
    done = 0
    assignment = client.next_assignment(project)
    while assignment is not None:
        labels = teacher(assignment["item"])
        time.sleep(pace)
        if limit and done + 1 >= limit:
            client.submit(assignment["id"], labels)
            return done + 1
        _, assignment = client.submit_and_next(assignment["id"], labels)
        done += 1
    return done


def run(cfg: AnnotateConfig) -> int:
    if cfg.idle_exit < 0 or cfg.poll <= 0 or cfg.limit < 0 or cfg.pace < 0:
        raise UserError("--idle-exit, --limit and --pace must be >= 0 and --poll > 0")
    if cfg.teacher == "oracle" and cfg.oracle is None:
        raise UserError("--teacher oracle needs --oracle PATH (the control loop's oracle.jsonl)")
    if cfg.teacher == "reward-model":
        from alignloop.lm.folders import model_folder

        if cfg.reward_model is None:
            raise UserError(
                "--teacher reward-model needs --reward-model DIR (and --cost-model DIR for safety)"
            )
        for folder, what in ((cfg.reward_model, "--reward-model"), (cfg.cost_model, "--cost-model")):
            if folder is not None:
                model_folder(folder, what, "score")
    client = connect(cfg.url, cfg.user, cfg.password_file)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with client:
        project, questions = find_project(client, cfg.project, wait=cfg.idle_exit or math.inf)
        teacher = make_teacher(cfg, questions)
        total, idle_since = 0, time.monotonic()
        while not stop:
            try:
                n = label(client, project, teacher, cfg.limit - total if cfg.limit else 0, cfg.pace)
            except PlatformError as exc:
                if exc.status == 409:  # the assignment expired or was taken: ask again
                    continue
                raise
            total += n
            if cfg.limit and total >= cfg.limit:
                break
            if n:
                idle_since = time.monotonic()
            elif cfg.idle_exit and time.monotonic() - idle_since > cfg.idle_exit:
                break
            else:
                time.sleep(cfg.poll)
    print(f"{cfg.user or 'annotator'}: {total} judgements")
    return 0
