"""Safe preference-based RL: a policy trained on a reward and a cost learned from judgements.

The loop (Christiano et al. 2017, "Deep RL from Human Preferences"; Lee et al. 2021, B-Pref
and PEBBLE, for the teacher model and query selection), run inside PPO's iterations:

1. every rollout is cut into segments of ``segment_length`` steps that lie inside one episode;
   the most recent ``pool_size`` segments form the query pool;
2. every ``round_every`` iterations, while feedback budget is left, ``queries_per_round`` pairs
   are chosen from the pool and judged by a scripted teacher
   (`alignloop.feedback.teachers.SegmentTeacher`: which segment is better by true reward, and
   whether each is safe / which is safer by true cost, with rationality, myopia, mistakes,
   skips and ties). On a safe task a share ``cost_queries`` of them are the pairs where the cost
   model is least sure a segment is safe; the rest (all of them otherwise) by `SELECTIONS`;
3. the reward model, an ensemble of per-step nets ``r(s, a)``, is fitted with the Bradley-Terry
   loss over summed per-step rewards, each member on its own bootstrap resample of the pairs;
4. the cost model, a per-step net giving the logit ``z(s, a)`` of "this step is unsafe", is
   fitted with the Safe RLHF cost-model loss (`alignloop.core.losses.cost_model_loss`). A
   segment's cost score is the log-odds that at least one of its steps is unsafe under a
   noisy-or, ``C = logit(1 - prod_t (1 - sigmoid(z_t)))``, so the sign term of that loss is the
   cross-entropy of the teacher's safe/unsafe label and its ranking term orders the safer pair
   (ties keep their sign terms). The noisy-or ranks steps well but its probabilities
   under-count unsafe steps, so the policy's per-step cost is a count instead: 1 where ``z_t``
   is above the threshold that best reproduces the teacher's labels when steps are counted
   (`alignloop.core.segments.count_threshold`), 0 elsewhere, in the true cost's unit
   (1 per unsafe step) and that of ``cost_limit``. With ``--marks`` the teacher also marks the
   step where each segment first becomes unsafe (the first step over the limit, with noise); by the rule of
   `alignloop.feedback.pairs.step_labels` every step from the mark on is unsafe and every step
   of a segment marked safe throughout is safe, and those per-step labels are fitted too
   (`alignloop.core.losses.step_cost_loss`, the per-step sign terms) and join the threshold's
   choice;
5. the rollout is relabelled with the updated models (mean of the ensemble for the reward) and
   PPO-Lagrangian trains on the learned reward and cost (plain PPO when the task has no cost).
   The pool is always scored with the current models, so it is relabelled after every update.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from alignloop.checks import output_dir
from alignloop.control.ppo import PPOSettings, check_setup, has_checkpoint, train_policy
from alignloop.control.rollouts import Rollout
from alignloop.control.segment_models import (
    SELECTIONS,
    cost_sign_uncertainty,
    fit_cost_model,
    fit_reward_models,
    label_steps,
    new_models,
)
from alignloop.control.train import TrainConfig, fill_run_dir, upgrade_output_args
from alignloop.feedback.pairs import preference, safety_order, step_labels
from alignloop.feedback.teachers import NO_MARK, SegmentTeacher, TeacherNoise, answer_letter
from alignloop.runstack.checkpoint import to_numpy, to_plain
from alignloop.runstack.layout import RunLayout
from alignloop.runstack.metrics import check_report_to
from alignloop.runstack.options import RunOptions, upgrade_args


class PreferenceLearner:
    """The segment pool, the teacher, the labelled pairs and the models; called by PPO once
    per iteration as its ``relabel`` hook. The statistics of each fit wait in `pop_stats` for
    the run's logger; `state_dict` holds everything a resumed run needs (checkpointed with PPO's
    state at the same iteration)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        teacher: SegmentTeacher,
        *,
        safe: bool,
        budget: int,
        queries_per_round: int,
        round_every: int,
        segment_length: int,
        pool_size: int,
        candidates: int,
        select: str,
        cost_queries: float,
        threshold_pairs: int | None,
        cost_ensemble: int,
        ensemble: int,
        fit_steps: int,
        lr: float,
        seed: int,
        marks: bool = False,
    ):
        self.teacher, self.safe, self.budget = teacher, safe, budget
        self.marks = marks and safe
        self.stats: dict[str, float] = {}
        self.queries_per_round, self.round_every = queries_per_round, round_every
        self.h, self.pool_size, self.candidates, self.select = segment_length, pool_size, candidates, select
        self.fit_steps, self.cost_queries, self.threshold_pairs = fit_steps, cost_queries, threshold_pairs
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed alone
            torch.manual_seed(seed)
            self.reward_models, self.cost_model = new_models(
                obs_dim, act_dim, ensemble, segment_length, cost_ensemble
            )
        self.reward_opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in self.reward_models]
        self.cost_opt = torch.optim.Adam(self.cost_model.parameters(), lr=lr)
        self.pool: dict[str, np.ndarray] = {}
        self.pairs: dict[str, list[np.ndarray]] = {
            k: [] for k in ("obs", "act", "better", "safer", "is_safe", *("mark",) * self.marks)
        }
        self.asked = self.skipped = 0
        self.fitted = False

    def add_segments(self, ro: Rollout) -> None:
        """Cut each env's rollout into windows of H steps; keep those inside one episode."""
        steps, n = ro.rewards.shape
        ends = ro.terminated | ro.truncated  # (T, N)
        segs: dict[str, list[np.ndarray]] = {"obs": [], "act": [], "reward": [], "cost": []}
        for start in range(0, steps - self.h + 1, self.h):
            inside = ~ends[start : start + self.h - 1].any(0)  # (N,) no episode end before the last step
            for i in np.flatnonzero(inside):
                segs["obs"].append(ro.raw_obs[start : start + self.h, i])
                act = ro.actions[start : start + self.h, i]
                segs["act"].append(act.reshape(self.h, -1).astype(np.float32))
                segs["reward"].append(ro.rewards[start : start + self.h, i])
                segs["cost"].append(ro.costs[start : start + self.h, i])
        for key, values in segs.items():
            if not values:
                continue
            new = np.stack(values)
            old = self.pool.get(key)
            self.pool[key] = (new if old is None else np.concatenate([old, new]))[-self.pool_size :]

    def query(self) -> None:
        """Choose pairs from the pool, ask the teacher, keep the judged pairs."""
        q = min(self.queries_per_round, self.budget - self.asked)
        size = len(self.pool["obs"])
        by_cost = round(q * self.cost_queries) if self.safe and self.fitted else 0
        cand = q if self.select == "uniform" and not by_cost else q * self.candidates
        idx = torch.randint(size, (cand, 2), generator=self.gen).numpy()
        idx = idx[idx[:, 0] != idx[:, 1]]
        obs = torch.as_tensor(self.pool["obs"][idx], dtype=torch.float32)  # (P, 2, H, D)
        act = torch.as_tensor(self.pool["act"][idx])  # (P, 2, H, A)
        if not self.fitted:  # set the input statistics once, from the first pool
            for model in self.reward_models:
                model.set_input_stats(obs, act)
            self.cost_model.set_input_stats(obs, act)
        # first the pairs where the cost model is least sure a segment is safe, then the rule's
        doubt = np.zeros(0, dtype=np.int64)
        if by_cost:
            doubt = (
                cost_sign_uncertainty(self.cost_model, obs, act).argsort(descending=True)[:by_cost].numpy()
            )
        rest = np.setdiff1d(np.arange(len(idx)), doubt)
        score = SELECTIONS[self.select](self.reward_models, obs[rest], act[rest])
        top = np.concatenate([doubt, rest[score.argsort(descending=True)[: q - len(doubt)].numpy()]])
        idx, obs_np, act_np = idx[top], obs.numpy()[top], act.numpy()[top]
        judged = self.teacher.judge(self.pool["reward"][idx], self.pool["cost"][idx] if self.safe else None)
        self.asked += len(idx)
        keep = ~judged.skipped
        self.skipped += int((~keep).sum())
        for key, value in (
            ("obs", obs_np),
            ("act", act_np),
            ("better", judged.better),
            ("safer", judged.safer),
        ):
            self.pairs[key].append(value[keep])
        flags = judged.is_safe if judged.is_safe is not None else np.ones((len(idx), 2), bool)
        self.pairs["is_safe"].append(flags[keep])
        if self.marks:  # (q, 2) the step each segment is marked unsafe at, NO_MARK: safe throughout
            self.pairs["mark"].append(self.teacher.mark(self.pool["cost"][idx])[keep])

    def fit(self, iteration: int) -> None:
        obs = torch.as_tensor(np.concatenate(self.pairs["obs"]))
        act = torch.as_tensor(np.concatenate(self.pairs["act"]))
        stats = {"pbrl/queries": float(self.asked), "pbrl/skipped": float(self.skipped)}
        # the teacher's answers read by the rule of `feedback.pairs`: ties give no preference
        # pair; a safety tie keeps its two sign terms (ranked False)
        wins = [preference(answer_letter(b)) for b in np.concatenate(self.pairs["better"])]
        decided = torch.as_tensor([w is not None for w in wins])
        chosen = torch.as_tensor([w[0] if w is not None else 0 for w in wins])
        if decided.sum() > 1:
            stats["pbrl/reward_accuracy"] = fit_reward_models(
                self.reward_models, self.reward_opts, obs[decided], act[decided], chosen[decided],
                self.fit_steps, 64, self.gen,
            )  # fmt: skip
        if self.safe:
            flags = np.concatenate(self.pairs["is_safe"])
            orders = [
                safety_order(answer_letter(s), (bool(f[0]), bool(f[1])))
                for s, f in zip(np.concatenate(self.pairs["safer"]), flags, strict=True)
            ]
            safer = torch.as_tensor([o.safer for o in orders if o is not None]).long()
            ranked = torch.as_tensor([o.ranked for o in orders if o is not None])
            steps = None
            if self.marks:  # the rule of `feedback.pairs`: unsafe from the marked step on
                steps = torch.as_tensor(
                    [
                        [step_labels(None if m == NO_MARK else int(m), self.h) for m in pair]
                        for pair in np.concatenate(self.pairs["mark"])
                    ],
                    dtype=torch.bool,
                )  # (P, 2, H)
            stats["pbrl/cost_sign_accuracy"] = fit_cost_model(
                self.cost_model, self.cost_opt, obs, act, safer, torch.as_tensor(flags), ranked,
                self.fit_steps, 64, self.gen, self.threshold_pairs, steps,
            )  # fmt: skip
            stats["pbrl/cost_threshold"] = float(self.cost_model.threshold.mean())
            stats |= self.cost_calibration()
        self.fitted = True
        self.stats = stats

    def pop_stats(self) -> dict[str, float]:
        """The statistics of the fit since the last call (none when there was none)."""
        stats, self.stats = self.stats, {}
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The models and their optimisers, the pool, the judged pairs, the counters and the
        random generators, as tensors and plain values."""
        return {
            "reward_models": [m.state_dict() for m in self.reward_models],
            "reward_opts": [o.state_dict() for o in self.reward_opts],
            "cost_model": self.cost_model.state_dict(),
            "cost_opt": self.cost_opt.state_dict(),
            "pool": to_plain(self.pool),
            "pairs": to_plain(self.pairs),
            "counts": [self.asked, self.skipped, int(self.fitted)],
            "gen": self.gen.get_state(),
            "teacher_rng": self.teacher.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for model, weights in zip(self.reward_models, state["reward_models"], strict=True):
            model.load_state_dict(weights)
        for optimizer, saved in zip(self.reward_opts, state["reward_opts"], strict=True):
            optimizer.load_state_dict(saved)
        self.cost_model.load_state_dict(state["cost_model"])
        self.cost_opt.load_state_dict(state["cost_opt"])
        self.pool = to_numpy(state["pool"])
        self.pairs = to_numpy(state["pairs"])
        self.asked, self.skipped, fitted = state["counts"]
        self.fitted = bool(fitted)
        self.gen.set_state(state["gen"])
        self.teacher.rng.bit_generator.state = state["teacher_rng"]

    @torch.no_grad()
    def cost_calibration(self) -> dict[str, float]:
        """Mean learned per-step cost on the pool's truly unsafe and truly safe steps (the pool
        holds the true costs, which the teacher judges from): 1 and 0 when exact."""
        obs = torch.as_tensor(self.pool["obs"], dtype=torch.float32)  # (S, H, D)
        cost = self.cost_model.step_costs(obs, torch.as_tensor(self.pool["act"])).numpy()  # (S, H)
        unsafe = self.pool["cost"] > 0
        stats = {"pbrl/true_unsafe_step_share": float(unsafe.mean())}
        if unsafe.any():
            stats["pbrl/cost_on_unsafe_steps"] = float(cost[unsafe].mean())
        if (~unsafe).any():
            stats["pbrl/cost_on_safe_steps"] = float(cost[~unsafe].mean())
        return stats

    def label(self, ro: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """Learned per-step rewards (ensemble mean) and costs (counted unsafe steps) of a rollout, (T, N)."""
        steps, n = ro.rewards.shape
        obs = torch.as_tensor(ro.raw_obs, dtype=torch.float32)  # (T, N, D)
        act = torch.as_tensor(ro.actions.reshape(steps, n, -1), dtype=torch.float32)
        return label_steps(self.reward_models, self.cost_model if self.safe else None, obs, act)

    def __call__(self, ro: Rollout, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        self.add_segments(ro)
        if iteration % self.round_every == 0 and self.asked < self.budget and "obs" in self.pool:
            self.query()
            self.fit(iteration)
        return self.label(ro)


@dataclass(frozen=True)
class PbrlConfig(RunOptions):
    """Safe preference-based RL: learned reward and cost from a scripted teacher's judgements."""

    output_dir: Path = Path("runs/control/{env}-pbrl-{select}-s{seed}")
    """Run folder ({env}, {select} and {seed} are filled in): run.json, metrics.jsonl, tb/,
    checkpoints/ and the learned reward and cost models in final/models.pt."""
    env: str = "HalfCheetah-v5"
    """Gymnasium id or a safe task (SafeHalfCheetahVelocity-v5: learn a cost model too)."""
    cost: Literal["velocity"] | None = None
    """Safety cost the teacher judges (Safe ids imply velocity)."""
    feedback: int = 1000
    """Feedback budget: pairs shown to the teacher over the whole run."""
    teacher: Literal["scripted"] = "scripted"
    """Who judges: the scripted teacher of alignloop.feedback.teachers (true reward and cost)."""
    select: Literal["uniform", "disagreement", "entropy"] = "uniform"
    """Query selection rule."""
    queries_per_round: int = 50
    """Pairs asked per round (the budget must hold at least one round)."""
    round_every: int = 1
    """Ask a round of queries every this many PPO iterations until the budget is spent."""
    segment_length: int = 50
    """Steps per segment shown to the teacher."""
    pool_size: int = 2000
    """Most recent segments kept as query candidates."""
    candidates: int = 10
    """disagreement/entropy score this many candidate pairs per query asked."""
    cost_queries: float = 0.5
    """Safe tasks: share of each round's pairs chosen where the cost model is least sure a
    segment is safe (the rest by --select; the first round is all by --select)."""
    threshold_pairs: int | None = 250
    """Safe tasks: fit the cost model's step-counting threshold on the most recent this many
    judged pairs, the states the policy is in now (None: on all of them)."""
    cost_ensemble: int = 3
    """Cost models in the ensemble (each on its own bootstrap); a step counts as unsafe when
    any of them counts it."""
    ensemble: int = 3
    """Reward models in the ensemble (each on its own bootstrap of the judgements)."""
    fit_steps: int = 200
    """Gradient steps per model and round."""
    model_lr: float = 1e-3
    """Adam learning rate of the reward and cost models."""
    teacher_beta: float = math.inf
    """Teacher rationality beta (inf: always the better segment)."""
    teacher_gamma: float = 1.0
    """Teacher myopia gamma (1: every step counts the same)."""
    teacher_mistake: float = 0.0
    """Teacher mistake rate epsilon: probability of flipping a choice."""
    teacher_safety_mistake: float = 0.0
    """Probability of flipping each safe/unsafe label (and a safer choice between equals)."""
    teacher_safety_equal: float = 0.5
    """Call the safer choice a tie when the unsafe-step counts differ by less than this
    (0.5: equal counts, such as two safe segments, are a tie)."""
    teacher_skip: float | None = None
    """Skip a pair when both segment returns are below this."""
    marks: bool = False
    """Safe tasks: the teacher also marks the step where each segment first becomes unsafe (or
    marks it safe throughout), and the cost model learns per-step labels from the marks (every
    step from the mark on is unsafe, `feedback.pairs.step_labels`) beside the segment labels."""
    teacher_mark_noise: float = 2.0
    """With --marks: standard deviation, in steps, of where the teacher's mark lands around the
    first truly unsafe step (Gaussian, rounded, kept inside the segment)."""
    teacher_equal: float = 0.0
    """Call a tie when the segment returns differ by less than this."""
    total_env_steps: int = 1_000_000
    """Environment steps of the policy's training."""
    save_every: int = 10
    """Checkpoint every this many PPO iterations, and at the end (0 = only at the end); the envs
    are re-seeded at each checkpoint, so it is part of what a seed's run is."""
    ppo: PPOSettings = PPOSettings()

    RENAMED: ClassVar[dict[str, str]] = TrainConfig.RENAMED
    """Deprecated spellings of options (they still work, with a note)."""

    @classmethod
    def upgrade_args(cls, args: list[str], prog: str) -> list[str]:
        """The command line with the deprecated spellings replaced (old --name: ENV-pbrl-SELECT-sSEED)."""
        args = upgrade_output_args(upgrade_args(args, cls.RENAMED, prog), prog)
        return [a.replace("{env}-{algo}-s{seed}", "{env}-pbrl-{select}-s{seed}") for a in args]

    def run_dir(self) -> Path:
        """The output folder with {env}, {select} and {seed} filled in."""
        return fill_run_dir(
            self.output_dir, env=self.env.replace("/", "_"), select=self.select, seed=self.seed
        )


def check_config(cfg: PbrlConfig) -> str | None:
    """Check every option before anything is built; returns the task's cost (or None)."""
    _, cost = check_setup(cfg.env, cfg.cost, False, cfg.ppo)
    if cfg.queries_per_round < 1 or cfg.feedback < cfg.queries_per_round:
        raise ValueError(
            f"--feedback {cfg.feedback} is smaller than one round of --queries-per-round "
            f"{cfg.queries_per_round}; raise the budget or lower the round size (both >= 1)"
        )
    if not 1 <= cfg.segment_length <= cfg.ppo.num_steps:
        raise ValueError(
            f"--segment-length must be in [1, --ppo.num-steps = {cfg.ppo.num_steps}], got {cfg.segment_length}"
        )
    if not 0.0 <= cfg.cost_queries <= 1.0:
        raise ValueError(f"--cost-queries must be in [0, 1], got {cfg.cost_queries}")
    if cfg.threshold_pairs is not None and cfg.threshold_pairs < 1:
        raise ValueError(f"--threshold-pairs must be >= 1 (or None), got {cfg.threshold_pairs}")
    for name in ("round_every", "ensemble", "cost_ensemble", "candidates", "fit_steps", "pool_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.model_lr > 0:
        raise ValueError(f"--model-lr must be > 0, got {cfg.model_lr}")
    if cfg.teacher_mark_noise < 0:
        raise ValueError(f"--teacher-mark-noise must be >= 0, got {cfg.teacher_mark_noise}")
    if cfg.marks and cost is None:
        raise ValueError(f"--marks: {cfg.env} has no cost to mark; give a Safe... task or --cost velocity")
    TeacherNoise(  # its own checks: beta >= 0, rates in [0, 1]
        beta=cfg.teacher_beta,
        mistake_rate=cfg.teacher_mistake,
        equal_threshold=cfg.teacher_equal,
        safety_mistake_rate=cfg.teacher_safety_mistake,
        safety_equal_threshold=cfg.teacher_safety_equal,
    )
    return cost


def train(cfg: PbrlConfig) -> int:
    """`alignloop control pbrl`: all options are checked before any training starts."""
    import json

    import gymnasium as gym

    from alignloop.control.envs import make_env

    run_dir = cfg.run_dir()
    try:
        cost = check_config(cfg)
        if cfg.resume and not has_checkpoint(run_dir):
            raise ValueError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    except ValueError as exc:
        print(f"alignloop control pbrl: {exc}", file=sys.stderr)
        return 2
    output_dir(run_dir, "--output-dir")
    check_report_to(cfg.report_to)
    probe = make_env(cfg.env, cost)
    obs_dim = int(np.prod(probe.observation_space.shape))  # type: ignore[arg-type]
    space = probe.action_space
    act_dim = int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else 1
    probe.close()
    noise = TeacherNoise(
        beta=cfg.teacher_beta,
        mistake_rate=cfg.teacher_mistake,
        skip_threshold=cfg.teacher_skip,
        equal_threshold=cfg.teacher_equal,
        safety_mistake_rate=cfg.teacher_safety_mistake,
        safety_equal_threshold=cfg.teacher_safety_equal,
    )
    teacher = SegmentTeacher(noise, gamma=cfg.teacher_gamma, seed=cfg.seed, mark_noise=cfg.teacher_mark_noise)
    learner = PreferenceLearner(
        obs_dim,
        act_dim,
        teacher,
        safe=cost is not None,
        budget=cfg.feedback,
        queries_per_round=cfg.queries_per_round,
        round_every=cfg.round_every,
        segment_length=cfg.segment_length,
        pool_size=cfg.pool_size,
        candidates=cfg.candidates,
        select=cfg.select,
        cost_queries=cfg.cost_queries,
        threshold_pairs=cfg.threshold_pairs,
        cost_ensemble=cfg.cost_ensemble,
        ensemble=cfg.ensemble,
        fit_steps=cfg.fit_steps,
        lr=cfg.model_lr,
        seed=cfg.seed,
        marks=cfg.marks,
    )
    stats = train_policy(
        run_dir,
        cfg.env,
        cost,
        cost is not None,
        cfg.total_env_steps,
        cfg.seed,
        cfg.ppo,
        save_every=cfg.save_every,
        keep_checkpoints=cfg.keep_checkpoints,
        relabel=learner,
        relabel_stats=learner.pop_stats,
        extra_states={"learner": learner},
        resume=cfg.resume,
        progress=cfg.progress,
        command="control pbrl",
        config=cfg,
        report_to=cfg.report_to,
    )
    final = RunLayout(run_dir).final
    final.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "reward_models": [m.state_dict() for m in learner.reward_models],
            "cost_model": learner.cost_model.state_dict(),
        },
        final / "models.pt",
    )
    shown = {
        k: round(v, 3)
        for k, v in stats.items()
        if k.startswith(("episode/", "time/")) or k in ("train/episode_cost", "train/lambda")
    }
    print(json.dumps({"run_dir": str(run_dir), "queries": learner.asked, **shown}))
    return 0
