"""`alignloop loop`: rounds of collect, learn, align, evaluate, with people on the platform.

Each round:

1. propose   the domain samples prompts (or rolls out episodes), generates candidates with the
             current policy and picks the pairs to ask about (ensemble disagreement or uniform);
             the list is saved before anything leaves the machine;
2. push      clips are uploaded and the pairs pushed to the platform project with their keys and
             priorities (a re-push after a crash returns the stored items: nobody is asked twice);
3. collect   the loop waits, showing how many judgements are in, until the round's quota is met
             (or the timeout: it then exits and a restart keeps waiting); judgements are pulled
             as they arrive into run_dir/judgements.jsonl;
4. learn     reward and cost models, warm-started, on the judgements of every round so far;
5. align     the policy (PPO-Lagrangian by default; language models: Safe GRPO or DPO);
6. evaluate  the round's figures, added to report.json / report.md / rounds.png.

The judgements may come from people in the browser or from `alignloop annotate` (scripted
teachers over the same HTTP API); the loop cannot tell. Killed at any point and started again
with the same options, it goes on from the last phase it finished (`alignloop.loop.state`).

    alignloop loop --config loop.yaml          # a platform you run, people you invited
    alignloop loop --demo toyworld             # three rounds with scripted annotators
    alignloop loop --prompts p.jsonl --policy runs/sft/final --url ...   # your prompts and policy
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tyro

from alignloop.checks import http_url, output_dir
from alignloop.config import ConfigError
from alignloop.feedback.schema import Item, questions_json
from alignloop.loop.domain import Domain, Judged, Proposal, Selection, project_spec
from alignloop.loop.state import (
    JudgementStore,
    LoopState,
    load_candidates,
    round_dir,
    save_candidates,
    write_atomic,
)
from alignloop.platform.client import PlatformClient, item_json, judgement_from_json

EXIT_TIMEOUT = 3
"""Exit code when a round's quota was not met in time (the state is kept; run again to wait on)."""


@dataclass(frozen=True)
class LoopConfig:
    """Online rounds: collect judgements on the platform, learn reward and cost models, align, evaluate."""

    demo: Literal["toyworld", "cheetah"] | None = None
    """Run a demo: start a local server (SQLite in the run directory) and scripted annotators,
    then the rounds. toyworld: the toy-world language model; cheetah: safe preference-based RL
    on HalfCheetah with clips (5 rounds). The demo presets replace the options below unless given."""
    run_dir: Annotated[Path, tyro.conf.arg(name="output-dir")] = Path("runs/loop")
    """Run folder: loop.json (state), judgements.jsonl, round-NNN/, report.md, rounds.png."""
    domain: Literal["lm", "toyworld", "control"] = "lm"
    """The policy: a language model on a task (lm: --task toyworld, or --prompts FILE with
    --policy DIR), or a MuJoCo controller (control, --env). toyworld is --domain lm --task toyworld."""
    task: Literal["toyworld"] | None = None
    """lm: a built-in task (toyworld: its prompts, its careless SFT policy as the start, its
    ground-truth judges); None = the prompts of --prompts, or the toy world without them."""
    prompts: Path | None = None
    """lm: the train prompts, a prompt file in any feedback format (TRL conversational
    prompt/messages rows included); needs --policy."""
    eval_prompts: Path | None = None
    """lm with --prompts: held-out prompts every round is evaluated on (None = the first
    prompts of --prompts, not held out)."""
    policy: Path | None = None
    """lm with --prompts: the starting policy, a causal-LM folder with its tokenizer (also round
    1's KL reference)."""
    reward_model: Path | None = None
    """lm with --prompts: round 1's reward model starts from this folder (None = the policy's body)."""
    cost_model: Path | None = None
    """lm with --prompts: round 1's cost model starts from this folder (None = the policy's body)."""
    preset: str | None = None
    """Sizes of the domain's models and training: toyworld demo|smoke, a prompt file
    default|smoke, control cheetah|smoke (default: demo, default, cheetah)."""
    env: str = "SafeHalfCheetahVelocity-v5"
    """control: the task (a Safe...Velocity task judges safety too)."""
    questions: str | None = None
    """What annotators are asked and how many candidates an item shows: a question preset with
    the count (ranking4: a ranking of 4 responses; rating3: ratings of 3; pku-saferlhf: today's
    questions about 2; clips: better, is_safe and a mark about 2 clips) or a project definition
    file, JSON or YAML: {"candidates": 4, "questions": [...]} (the platform's question objects).
    Default: the domain's own (toyworld: pku-saferlhf; control: better, safer, is_safe of 2 clips)."""
    rounds: int = 3
    """Rounds to run (a finished run can be extended by raising this)."""
    pairs: int = 600
    """Items put before annotators each round (pairs, or items of --questions' candidates)."""
    select: Selection = "disagreement"
    """Which pairs to ask: highest reward/cost ensemble disagreement, or uniform."""
    policy_update: Literal["ppo-lag", "grpo-lag", "dpo"] = "ppo-lag"
    """lm: how the policy learns: PPO-Lagrangian or Safe GRPO on the round's reward and cost
    models, or DPO on the judged pairs (control: always PPO-Lagrangian)."""
    url: str = "http://127.0.0.1:8000"
    """The platform's address."""
    user: str | None = None
    """Account that pushes items and reads judgements (admin or trainer), with --password-file;
    without it, an API token from $ALIGNLOOP_TOKEN."""
    password_file: Path | None = None
    """File whose first line is the account's password."""
    project: str = "alignloop-loop"
    """Platform project of the loop's items (created when the account may, else it must exist)."""
    overlap: int = 1
    """Judgements wanted per item (set when the loop creates the project)."""
    quota: float = 1.0
    """Share of a round's items that need --overlap judgements before the round goes on."""
    timeout: float = 3600.0
    """Seconds to wait for a round's quota; then exit with code 3 (run again to keep waiting)."""
    poll: float = 1.0
    """Seconds between checks for new judgements."""
    seed: int = 0
    """Seed of the domain (prompts, models, policy)."""
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show progress bars and the live judgement count."""

    RENAMED: ClassVar[dict[str, str]] = {"--run-dir": "--output-dir"}
    """Deprecated spellings of options (they still work, with a note)."""

    @classmethod
    def upgrade_args(cls, args: list[str], prog: str) -> list[str]:
        """The command line with the deprecated spellings replaced."""
        from alignloop.runstack.options import upgrade_args

        return upgrade_args(args, cls.RENAMED, prog)


DEFAULT_PRESETS = {"toyworld": "demo", "lm": "default", "control": "cheetah"}
LM_FILE_OPTIONS = ("prompts", "eval_prompts", "policy", "reward_model", "cost_model")
"""The options of a language model on a prompt file (`--domain lm --prompts FILE`)."""


def domain_of(cfg: LoopConfig) -> str:
    """The domain the options name: toyworld (``--domain lm`` without --prompts, or
    ``--domain toyworld``), lm (a prompt file) or control."""
    if cfg.domain == "control":
        return "control"
    return "lm" if cfg.prompts is not None else "toyworld"


def preset_of(cfg: LoopConfig) -> str:
    return cfg.preset or DEFAULT_PRESETS[domain_of(cfg)]


def identity(cfg: LoopConfig) -> dict[str, Any]:
    """Options a restart must share with the run it continues."""
    files = {k: None if getattr(cfg, k) is None else str(getattr(cfg, k)) for k in LM_FILE_OPTIONS}
    return {
        "domain": domain_of(cfg),
        "preset": preset_of(cfg),
        "env": cfg.env if cfg.domain == "control" else None,
        "seed": cfg.seed,
        "select": cfg.select,
        "policy_update": cfg.policy_update,
        "pairs": cfg.pairs,
        "project": cfg.project,
        "questions": None if cfg.questions is None else project_spec(cfg.questions).to_json(),
        "task": files if domain_of(cfg) == "lm" else None,
    }


def check_config(cfg: LoopConfig) -> None:
    """Every option checked before anything is built or sent."""
    if cfg.rounds < 1 or cfg.pairs < 1 or cfg.overlap < 1:
        raise ConfigError(
            f"--rounds, --pairs and --overlap must be >= 1 (got {cfg.rounds}, {cfg.pairs}, {cfg.overlap})"
        )
    if not 0 < cfg.quota <= 1:
        raise ConfigError(f"--quota must be in (0, 1], got {cfg.quota}")
    if cfg.timeout <= 0 or cfg.poll <= 0:
        raise ConfigError("--timeout and --poll must be > 0")
    http_url(cfg.url)
    check_task_options(cfg)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_task_options(cfg: LoopConfig) -> None:
    """The task options fit the domain: a prompt file with a starting policy, the toy world with
    nothing of the kind, the control domain with neither; the files exist."""
    given = [_flag(k) for k in ("task", *LM_FILE_OPTIONS) if getattr(cfg, k) is not None]
    if cfg.domain == "control":
        if given:
            raise ConfigError(f"{given[0]} is an option of --domain lm; the control domain's task is --env")
        if cfg.policy_update != "ppo-lag":
            raise ConfigError(
                f"--policy-update {cfg.policy_update}: the control domain always updates by "
                "PPO-Lagrangian; drop the option"
            )
        return
    if cfg.prompts is None:
        extra = [g for g in given if g != "--task"]
        if extra:
            raise ConfigError(
                f"{extra[0]} is an option of a prompt file: give --prompts FILE with it, or drop it "
                "(the toy world trains its own starting policy and models)"
            )
        return
    if cfg.domain == "toyworld" or cfg.task is not None:
        which = "--domain toyworld" if cfg.domain == "toyworld" else f"--task {cfg.task}"
        raise ConfigError(f"give {which} or --prompts {cfg.prompts}, not both (--domain lm --prompts FILE)")
    if cfg.demo is not None:
        raise ConfigError(
            f"--demo {cfg.demo} runs its own task; drop --prompts and the options that go with it"
        )
    if cfg.policy is None:
        raise ConfigError(
            f"--prompts {cfg.prompts} needs --policy DIR: the starting policy (a causal-LM folder "
            "with its tokenizer, e.g. runs/sft/final)"
        )
    from alignloop.checks import input_file
    from alignloop.lm.folders import model_folder

    input_file(cfg.prompts, "--prompts", folder_ok=False)
    if cfg.eval_prompts is not None:
        input_file(cfg.eval_prompts, "--eval-prompts", folder_ok=False)
    model_folder(cfg.policy, "--policy", "causal-lm")
    for name in ("reward_model", "cost_model"):
        if getattr(cfg, name) is not None:
            model_folder(getattr(cfg, name), _flag(name), "score")


def make_domain(cfg: LoopConfig) -> Domain:
    asked: dict[str, Any] = {}
    spec = None if cfg.questions is None else project_spec(cfg.questions)
    if spec is not None and cfg.domain != "control":
        asked = {"questions": spec.questions, "candidates": spec.candidates}
    sizes: dict[str, Any] = {"seed": cfg.seed, "threads": cfg.threads, "progress": cfg.progress}
    if domain_of(cfg) == "toyworld":
        from alignloop.loop import toyworld

        if preset_of(cfg) not in toyworld.PRESETS:
            raise ConfigError(f"--preset {cfg.preset!r}: toyworld has {sorted(toyworld.PRESETS)}")
        return toyworld.toyworld_domain(preset_of(cfg), policy_update=cfg.policy_update, **sizes, **asked)
    if domain_of(cfg) == "lm":
        from alignloop.lm.tasks import FileTask
        from alignloop.loop import lm, lm_tasks

        if preset_of(cfg) not in lm.PRESETS:
            raise ConfigError(f"--preset {cfg.preset!r}: a prompt file has {sorted(lm.PRESETS)}")
        assert cfg.prompts is not None and cfg.policy is not None, "checked in check_task_options"
        sizes |= lm.PRESETS[preset_of(cfg)]
        held_out = sizes.get("eval_prompts", lm.LanguageModelDomain.eval_prompts)
        task = lm_tasks.PromptLoopTask(
            FileTask(cfg.prompts, cfg.eval_prompts, held_out),
            cfg.policy,
            reward_model=cfg.reward_model,
            cost_model=cfg.cost_model,
            seed=cfg.seed,
        )
        return lm.LanguageModelDomain(task, policy_update=cfg.policy_update, **sizes, **asked)
    from alignloop.loop import control

    if preset_of(cfg) not in control.PRESETS:
        raise ConfigError(f"--preset {cfg.preset!r}: control has {sorted(control.PRESETS)}")
    if spec is not None:
        if spec.candidates != 2:
            raise ConfigError(
                f"--questions {cfg.questions}: the control domain shows pairs of clips; ask about 2 candidates"
            )
        asked = {"questions": spec.questions}
    return control.ControlDomain(
        **{**control.PRESETS[preset_of(cfg)], "env": cfg.env},
        **sizes,
        **asked,
    )


# ------------------------------------------------------------------------------ platform side
def showable(p: Proposal) -> bool:
    """Whether every candidate has something to show (the platform refuses an empty one)."""
    return all(c.text.strip() or c.media for c in p.item.candidates)


def push(client: PlatformClient, project_id: int, run_dir: Path, proposals: list[Proposal]) -> dict[str, int]:
    """Upload the clips and push the items with their keys; key -> item id."""
    items = []
    for p in proposals:
        candidates = tuple(
            c if c.media is None else dataclasses.replace(c, media=client.upload_media(run_dir / c.media))
            for c in p.item.candidates
        )
        uploaded = Item(p.item.prompt, candidates, key=p.key, meta=dict(p.item.meta))
        items.append(item_json(uploaded, priority=p.priority if math.isfinite(p.priority) else 0.0))
    ids = client.push_items(project_id, items)
    return {p.key: i for p, i in zip(proposals, ids, strict=True)}


def pull(
    client: PlatformClient,
    project_id: int,
    state: LoopState,
    store: JudgementStore,
    run_dir: Path,
    known: dict[int, tuple[int, Proposal]],
) -> int:
    """Pull judgements newer than the cursor into the store; item id -> (round, proposal) in `known`.
    Each comes back about the proposal's own item (its clips as local paths)."""
    rows = client.judgements(project_id, after_id=state.after_id)
    if not rows:
        return 0
    fresh = []
    for row in rows:
        if row["skipped"] or row["item_id"] not in known:
            continue
        r, proposal = known[row["item_id"]]
        fresh.append(Judged(row["id"], r, judgement_from_json(row, proposal.item)))
    added = store.append(fresh)  # fsynced before the cursor moves past these ids
    state.after_id = max(row["id"] for row in rows)
    state.save(run_dir)
    return added


def round_progress(judged: list[Judged], item_ids: dict[str, int], overlap: int) -> tuple[int, int]:
    """(judgements counted toward the round, items that have all they need)."""
    counts = {key: 0 for key in item_ids}
    for j in judged:
        if j.key in counts:
            counts[j.key] += 1
    return sum(min(n, overlap) for n in counts.values()), sum(n >= overlap for n in counts.values())


def collect(
    client: PlatformClient,
    project_id: int,
    state: LoopState,
    store: JudgementStore,
    run_dir: Path,
    r: int,
    known: dict[int, tuple[int, Proposal]],
    item_ids: dict[str, int],
    cfg: LoopConfig,
) -> bool:
    """Wait (with a live count) until the round's quota is met; False on timeout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    need_items = math.ceil(cfg.quota * len(item_ids))
    total = len(item_ids) * cfg.overlap
    deadline = time.monotonic() + cfg.timeout
    columns = [
        TextColumn(f"round {r}: judgements in"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[items]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not cfg.progress) as bar:
        task = bar.add_task("collect", total=total, items="")
        while True:
            pull(client, project_id, state, store, run_dir, known)
            counted, complete = round_progress(store.load(), item_ids, cfg.overlap)
            bar.update(
                task, completed=counted, items=f"items done {complete}/{len(item_ids)} (need {need_items})"
            )
            if complete >= need_items:
                return True
            if time.monotonic() >= deadline:
                print(
                    f"round {r}: timed out after {cfg.timeout:.0f} s with {complete} of {need_items} "
                    f"items judged ({counted}/{total} judgements); run again to keep waiting"
                )
                return False
            time.sleep(cfg.poll)


# ------------------------------------------------------------------------------------ driver
def drive(cfg: LoopConfig, client: PlatformClient, domain: Domain) -> int:
    """Run (or continue) the rounds against a platform; returns the exit code."""
    from alignloop.loop.report import write_report

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState.open(run_dir, identity(cfg))
    if state.project_id is None:
        project = client.ensure_project(
            cfg.project, overlap=cfg.overlap, questions=questions_json(domain.questions)
        )
        state.project_id = int(project["id"])
        state.save(run_dir)
    project_id = state.project_id
    store = JudgementStore(run_dir)
    if state.setup_metrics is None:
        print(f"[{domain.name}] setting up the starting policy")
        state.setup_metrics = domain.setup(run_dir)
        state.save(run_dir)
        write_report(run_dir, state, domain.name)

    # item id -> (round, proposal) of every round pushed so far, to join pulled judgements
    known: dict[int, tuple[int, Proposal]] = {}
    for earlier in range(1, cfg.rounds + 1):
        if state.done(earlier, "pushed"):
            rd = round_dir(run_dir, earlier)
            by_key = {c.key: c for c in load_candidates(rd / "candidates.jsonl")}
            known.update({i: (earlier, by_key[k]) for k, i in _read_ids(rd).items()})

    while (r := state.next_round(cfg.rounds)) is not None:
        rd = round_dir(run_dir, r)
        print(f"[{domain.name}] round {r}/{cfg.rounds}: {state.phases.get(str(r), 'starting')}")
        if not state.done(r, "proposed"):
            proposed = domain.propose(rd, r, cfg.pairs, cfg.select)
            candidates = [p for p in proposed if showable(p)]
            if len(candidates) < len(proposed):
                print(f"round {r}: left out {len(proposed) - len(candidates)} items with an empty candidate")
            if not candidates:
                raise RuntimeError(f"round {r}: the domain proposed no items to show")
            save_candidates(rd / "candidates.jsonl", candidates)
            state.finish(run_dir, r, "proposed", {"pairs": float(len(candidates))})
        candidates = load_candidates(rd / "candidates.jsonl")
        if not state.done(r, "pushed"):
            ids = push(client, project_id, run_dir, candidates)
            write_atomic(rd / "items.json", _dumps(ids))
            state.finish(run_dir, r, "pushed")
        ids = _read_ids(rd)
        by_key = {c.key: c for c in candidates}
        known.update({i: (r, by_key[k]) for k, i in ids.items()})
        if not state.done(r, "collected"):
            if not collect(client, project_id, state, store, run_dir, r, known, ids, cfg):
                return EXIT_TIMEOUT
            state.finish(run_dir, r, "collected")
        if not state.done(r, "learned"):
            pull(client, project_id, state, store, run_dir, known)  # late judgements of earlier rounds too
            judged = store.load()
            metrics = domain.learn(rd, r, judged)
            state.finish(run_dir, r, "learned", {"judgements": float(len(judged)), **metrics})
        if not state.done(r, "aligned"):
            state.finish(run_dir, r, "aligned", domain.align(rd, r))
        if not state.done(r, "evaluated"):
            state.finish(run_dir, r, "evaluated", domain.evaluate(rd, r))
            write_report(run_dir, state, domain.name)
            figures = {k: round(v, 4) for k, v in state.metrics[str(r)].items()}
            print(f"[{domain.name}] round {r} done: {figures}")
    write_report(run_dir, state, domain.name)
    print(f"report: {run_dir / 'report.md'}")
    return 0


def _dumps(ids: dict[str, int]) -> str:
    return json.dumps(ids, indent=0) + "\n"


def _read_ids(rd: Path) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads((rd / "items.json").read_text()).items()}


def run(cfg: LoopConfig) -> int:
    """Every option, the run directory and the account are checked before any work starts; a
    mistake is a `UserError` (`alignloop.cli` prints it)."""
    from alignloop.loop.annotate import connect

    check_config(cfg)
    if cfg.demo is not None:
        from alignloop.loop.demo import demo_config, run_demo

        output_dir(demo_config(cfg).run_dir, "--output-dir", create=False)
        LoopState.check(Path(demo_config(cfg).run_dir), identity(demo_config(cfg)))
        return run_demo(cfg)
    output_dir(cfg.run_dir, "--output-dir", create=False)
    LoopState.check(Path(cfg.run_dir), identity(cfg))
    domain = make_domain(cfg)
    client = connect(cfg.url, cfg.user, cfg.password_file)
    with client:
        return drive(cfg, client, domain)
