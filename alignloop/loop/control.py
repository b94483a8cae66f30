"""The control domain of the online loop: a MuJoCo policy aligned from judged pairs of clips.

Each round (files under ``run_dir/round-NNN``, the previous round's beside it):

- propose: the round's starting policy (``policy-0`` from `setup`, then the previous round's)
  runs ``pool_episodes`` stochastic and ``pool_deterministic`` deterministic episodes (the
  latter are what evaluation sees, and on HalfCheetah they run much faster than the samples of
  a young policy), recording per-step observations, actions, true reward, true cost and the
  MuJoCo state (qpos, qvel); the episodes are cut into segments of
  ``segment_length`` steps and joined by the previous round's (``segments.npz``); pairs are
  chosen, among at most ``max_clips`` of them, uniformly or by the previous reward ensemble's
  disagreement (`alignloop.control.segment_models.SELECTIONS`); each segment shown is rendered once to a
  looping GIF (``clips/``), and the true per-step values of every pair go to
  ``run_dir/oracle.jsonl`` for a scripted annotator; the platform never sees them;
- learn: the reward ensemble (Bradley-Terry over summed per-step rewards) and the cost model
  (an ensemble; Safe RLHF cost loss on noisy-or segment scores, steps counted against fitted
  thresholds) of `alignloop.control.segment_models` are fitted on
  the judgements of every round, warm-started from the previous round's models (``models/``);
- align: PPO-Lagrangian (`alignloop.control.ppo.train_policy`) continues from the previous
  policy, its observation statistics and its Lagrange multiplier, for ``steps_per_round``
  steps on the learned reward and cost (``policy/``, resumable from its checkpoints);
- evaluate: true mean return and cost of deterministic episodes with fixed seeds, and the
  learned models' scores of the same episodes.

Every phase may be called again: propose and align return what they saved, learn and evaluate
recompute the same numbers from the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from alignloop.config import ConfigError
from alignloop.control.envs import VELOCITY_THRESHOLDS, make_env, resolve_env
from alignloop.control.evaluate import load_policy
from alignloop.control.nets import CostModel, StepModel
from alignloop.control.ppo import PPOSettings, has_checkpoint, read_checkpoint, train_policy
from alignloop.control.segment_models import (
    SELECTIONS,
    fit_cost_model,
    fit_reward_models,
    label_steps,
    new_models,
)
from alignloop.core.losses import bradley_terry_loss, cost_model_loss
from alignloop.core.segments import segment_cost_logit
from alignloop.feedback.pairs import marks, preference_pairs, safety_pairs, step_labels
from alignloop.feedback.schema import (
    Candidate,
    IsSafe,
    Item,
    LabelError,
    Pairwise,
    Question,
    SaferChoice,
)
from alignloop.loop.domain import Judged, Proposal, Selection
from alignloop.loop.segments import append_new_lines, cut_segments, record_episodes
from alignloop.loop.state import write_atomic

__all__ = ["PRESETS", "ControlDomain"]

_SMOKE_PPO = PPOSettings(num_steps=256, minibatch_size=128, epochs=2, max_episode_steps=100, cost_limit=2.0)
PRESETS: dict[str, dict[str, Any]] = {
    "cheetah": {
        "env": "SafeHalfCheetahVelocity-v5",
        "steps_per_round": 51_200,
        "pool_episodes": 1,
        "segment_length": 50,
        "ppo": PPOSettings(cost_limit=25.0),
        "save_every": 5,
        "fit_steps": 300,
        "eval_episodes": 3,
        "clip_stride": 2,
        "clip_fps": 10,
        "max_clips": 20,
    },
    "smoke": {
        "env": "SafeHalfCheetahVelocity-v5",
        "steps_per_round": 512,
        "pool_episodes": 2,
        "segment_length": 20,
        "ppo": _SMOKE_PPO,
        "fit_steps": 30,
        "eval_episodes": 1,
        "clip_stride": 5,
        "clip_width": 96,
        "clip_height": 72,
    },
}
"""Constructor arguments of `ControlDomain` by name. cheetah: the HalfCheetah velocity task with
the Safety-Gymnasium speed limit, 51k PPO-Lagrangian steps a round, pairs among 20 clips of 50
steps shown at real speed (every 2nd state at 10 fps; the task steps at 20 Hz); the `--demo
cheetah` run, 5 rounds of 120 pairs (the 20 clips allow 190). Each round's pool holds one sampled
and one deterministic episode: a young policy's samples run far slower than its mean action, so
with sampled episodes alone both clips were safe in 357 of 360 pairs over 3 rounds, while the
evaluated policy ran at 254-428 cost. With the deterministic episode and a 3-member cost model,
measured on 2 cores with scripted annotators (about 5 min a run): true cost after round 5 is
2.7 and 18.0 (seed 0, two runs) and 0.3 (seed 1), limit 25, true return 1072, 1074 and 1312; the
policy overshoots in rounds 2-4 until the cost model has judged clips of a fast policy. smoke:
the same task cut to 100-step episodes, a few hundred PPO steps a round and 4-frame clips
(tests)."""

_ROBOT_NAMES = {"HalfCheetah": "cheetah", "Walker2d": "walker", "Slider": "slider"}


LEARN_METRICS = (
    "judged", "judged_newest", "reward/train_pairs", "reward/train_accuracy", "reward/loss",
    "reward/heldout_accuracy", "reward/accuracy_before_fit", "cost/train_pairs", "cost/train_sign_accuracy",
    "cost/loss", "cost/threshold", "cost/heldout_sign_accuracy", "cost/rejected_inconsistent", "cost/marked_pairs",
)  # fmt: skip
"""What `ControlDomain.learn` returns: judgement counts; the reward ensemble's training accuracy and
loss, its accuracy on the held-out share of the newest round and (before the fit, round 2 on) the
previous models' accuracy on the whole newest round; the same for the cost model's safe/unsafe signs,
and its step-counting threshold;
pairs whose safety labels contradicted each other (their safety labels are not used); the fitted pairs
whose clips were marked (each step from the mark on unsafe, `feedback.pairs.step_labels`)."""


@dataclasses.dataclass(frozen=True)
class JudgedArrays:
    """Judgements of pairs of segments as arrays (J judgements, H steps a segment)."""

    obs: torch.Tensor
    """(J, 2, H, D) observations of segment A and B."""
    act: torch.Tensor
    """(J, 2, H, A) actions."""
    better: np.ndarray
    """(J,) the preferred segment: 0 = A, 1 = B, -1 = none (a tie, both bad, unanswered)."""
    safer: np.ndarray
    """(J,) the safer one of a safety pair (-1: no pair)."""
    ranked: np.ndarray
    """(J,) bool; False: a tie or two alike, only the sign terms count."""
    is_safe: np.ndarray
    """(J, 2) 1 safe, 0 unsafe, -1 unknown."""
    newest: np.ndarray
    """(J,) bool: judged in the round being learned."""
    step_unsafe: np.ndarray
    """(J, 2, H) bool: the steps a mark says are unsafe (all False where not `marked`)."""
    marked: np.ndarray
    """(J,) bool: both segments were marked (a frame, or safe throughout)."""
    rejected: int
    """Judgements whose safety labels contradicted each other (their safety labels are not used)."""


class ControlDomain:
    """`alignloop.loop.domain.Domain` for Gymnasium/MuJoCo control policies.

    Args:
        env: a Gymnasium id, or a Safe...Velocity task (then safety is judged and constrained).
        seed: seeds the starting policy, the rollouts, the pair choice, the models and PPO.
        steps_per_round: PPO(-Lagrangian) environment steps in each round's align.
        segment_length: steps per segment (clip) shown to annotators.
        pool_episodes: stochastic episodes rolled out per round to cut segments from.
        pool_deterministic: deterministic episodes (the policy's mean action) added to the pool, so
            that people also judge what evaluation sees; 0: none.
        carry_pool: the pool also holds the previous round's segments, so that pairs can set the
            new policy's behaviour against the previous one's (where a learned reward was exploited).
        max_clips: pairs are drawn among at most this many segments of the pool (a random subset),
            which bounds the rendering work of a round; None: the whole pool.
        candidates: disagreement scores this many candidate pairs per pair asked.
        ppo: PPO settings (``cost_limit`` is the limit on the learned episode cost).
        save_every: PPO iterations between the checkpoints of align (where the envs are re-seeded).
        ensemble, fit_steps, model_lr: reward ensemble size, gradient steps per model and
            round, Adam learning rate (cost model too).
        cost_ensemble: members of the cost model, each on its own bootstrap of the pairs; a step
            costs 1 when any member counts it unsafe.
        heldout: share of the newest round's judgements kept out of the fit and scored.
        eval_episodes: deterministic episodes (seeds 10000, 10001, ...) per evaluation.
        clip_fps, clip_width, clip_height, clip_stride: the GIFs (every ``clip_stride``-th state).
        render: render clips (needs a MuJoCo task); without, candidates carry no media.
        questions: what annotators are asked about each pair of clips (default: better, and on a
            safe task safer and is_safe, without harm categories); a `mark` question's marks
            teach the cost model which steps are unsafe (every step from the marked frame on).
        threads: torch threads; progress: progress bars.
    """

    name = "control"
    questions: tuple[Question, ...]

    def __init__(
        self,
        env: str = "SafeHalfCheetahVelocity-v5",
        *,
        seed: int = 0,
        steps_per_round: int = 40_960,
        segment_length: int = 50,
        pool_episodes: int = 2,
        pool_deterministic: int = 1,
        candidates: int = 10,
        ppo: PPOSettings = PPOSettings(),
        save_every: int = 10,
        ensemble: int = 3,
        cost_ensemble: int = 3,
        fit_steps: int = 200,
        model_lr: float = 1e-3,
        heldout: float = 0.2,
        eval_episodes: int = 3,
        clip_fps: int = 25,
        clip_width: int = 256,
        clip_height: int = 192,
        clip_stride: int = 1,
        carry_pool: bool = True,
        max_clips: int | None = None,
        render: bool = True,
        questions: tuple[Question, ...] | None = None,
        threads: int = 1,
        progress: bool = True,
    ):
        if render:  # offscreen rendering: EGL unless set, before MuJoCo is first imported
            os.environ.setdefault("MUJOCO_GL", "egl")
        self.base_env, self.cost, threshold = resolve_env(env)
        probe = make_env(env, max_episode_steps=ppo.max_episode_steps)
        self.obs_dim = int(np.prod(probe.observation_space.shape))  # type: ignore[arg-type]
        space = probe.action_space
        self.act_dim = int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else 1
        has_mujoco = hasattr(probe.unwrapped, "data")
        probe.close()
        if render and not has_mujoco:
            raise ValueError(
                f"render: clips need a MuJoCo task; {env!r} has no MuJoCo state (pass render=False)"
            )
        counts = {
            "steps_per_round": steps_per_round, "segment_length": segment_length, "pool_episodes": pool_episodes,
            "candidates": candidates, "ensemble": ensemble, "cost_ensemble": cost_ensemble,
            "eval_episodes": eval_episodes, "clip_stride": clip_stride,
        }  # fmt: skip
        for option, value in counts.items():
            if value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        if pool_deterministic < 0:
            raise ValueError(f"pool_deterministic must be >= 0, got {pool_deterministic}")
        if max_clips is not None and max_clips < 2:
            raise ValueError(f"max_clips must be >= 2 or None, got {max_clips}")
        if not 0 <= heldout < 1:
            raise ValueError(f"heldout must be in [0, 1), got {heldout}")
        self.env, self.seed, self.steps_per_round = env, seed, steps_per_round
        self.segment_length, self.pool_episodes, self.candidates = segment_length, pool_episodes, candidates
        self.pool_deterministic, self.cost_ensemble = pool_deterministic, cost_ensemble
        self.ppo = dataclasses.replace(ppo, threads=threads)
        self.save_every = save_every
        self.ensemble, self.fit_steps, self.model_lr, self.threads = ensemble, fit_steps, model_lr, threads
        self.heldout, self.eval_episodes = heldout, eval_episodes
        self.carry_pool, self.max_clips, self.render, self.progress = carry_pool, max_clips, render, progress
        torch.set_num_threads(threads)
        self.clip_stride = clip_stride
        self.clip_fps, self.clip_size = clip_fps, (clip_width, clip_height)
        self.safe = self.cost is not None
        robot = self.base_env.split("/")[-1].split("-v")[0]
        if robot in VELOCITY_THRESHOLDS or robot == "Slider":
            self.prompt = f"Which clip moves the {_ROBOT_NAMES.get(robot, robot.lower())} forward better?"
        else:
            self.prompt = f"Which clip does the {self.base_env} task better?"
        if threshold is not None:
            self.prompt += f" Is each one safe (speed under {threshold:.2f} m/s)?"
        if questions is None:
            questions = (Pairwise("better", "Which clip does the task better?"),)
            if self.safe:  # clips have no harm categories: only safe or not
                questions += (
                    SaferChoice("safer", "Which clip is safer?"),
                    IsSafe("is_safe", "Is the clip safe?"),
                )
        self.questions = tuple(questions)
        self.frame_stride = clip_stride if render else 1
        """Steps between two frames of a clip (a mark names a frame; without clips, a step)."""

    # ---- where things live -------------------------------------------------------------------

    @staticmethod
    def _round_dir(run_dir: Path, r: int) -> Path:
        return run_dir / f"round-{r:03d}"

    def _policy_dir(self, run_dir: Path, r: int) -> Path:
        """The policy after round r (r = 0: the starting policy of `setup`)."""
        return run_dir / "policy-0" if r == 0 else self._round_dir(run_dir, r) / "policy"

    def _load_models(self, models_dir: Path) -> tuple[list[StepModel], CostModel | None] | None:
        if not (models_dir / "models.pt").is_file():
            return None
        state = torch.load(models_dir / "models.pt", weights_only=True)
        reward_models, cost_model = new_models(
            self.obs_dim,
            self.act_dim,
            len(state["reward_models"]),
            self.segment_length,
            cost_ensemble=len(state["cost_model"]["threshold"]),
        )
        for model, weights in zip(reward_models, state["reward_models"], strict=True):
            model.load_state_dict(weights)
        cost_model.load_state_dict(state["cost_model"])
        return reward_models, cost_model if self.safe else None

    # ---- the phases ----------------------------------------------------------------------------

    def setup(self, run_dir: Path) -> dict[str, float]:
        """The starting policy: the untrained actor of ``seed``, with observation statistics of
        one rollout of it (PPO at learning rate 0 on zero rewards writes it in PPO's format)."""
        out = self._policy_dir(run_dir, 0)
        if not has_checkpoint(out):
            frozen = dataclasses.replace(self.ppo, lr=0.0, epochs=1)

            def zeros(ro: Any, iteration: int) -> tuple[np.ndarray, np.ndarray]:
                return np.zeros(ro.rewards.shape), np.zeros(ro.rewards.shape)

            steps = frozen.num_envs * frozen.num_steps
            train_policy(
                out, self.env, self.cost, False, steps, self.seed, frozen, relabel=zeros, progress=False,
                save_every=0, command="loop setup",
            )  # fmt: skip
        return self._evaluate(out, None)

    def propose(self, round_dir: Path, round: int, n_pairs: int, select: Selection) -> list[Proposal]:
        """Roll out the round's starting policy, cut segments, choose and render ``n_pairs`` pairs.
        A second call returns the saved proposal (whatever its arguments)."""
        saved = round_dir / "proposal.json"
        if saved.is_file():
            return [Proposal.from_json(c) for c in json.loads(saved.read_text())["candidates"]]
        run_dir = round_dir.parent
        round_dir.mkdir(parents=True, exist_ok=True)
        segments = self._segments(round_dir, round)
        rng = np.random.default_rng([self.seed, round, 1])
        k = len(segments["rewards"])
        shown = np.sort(rng.choice(k, min(k, self.max_clips or k), replace=False))  # (S,) clip budget
        every = np.array([(i, j) for n, i in enumerate(shown) for j in shown[n + 1 :]]).reshape(-1, 2)
        if n_pairs > len(every):
            raise ConfigError(
                f"--pairs {n_pairs} exceeds the {len(every)} pairs of {len(shown)} segments; pass --pairs "
                f"{len(every)} or less (the preset's pool_episodes, max_clips and segment_length set how "
                "many segments there are)"
            )
        models = self._load_models(self._round_dir(run_dir, round - 1) / "models") if round > 1 else None
        if select == "disagreement" and models is not None:
            pool = every[rng.choice(len(every), min(len(every), self.candidates * n_pairs), replace=False)]
            obs = torch.as_tensor(segments["obs"][pool], dtype=torch.float32)  # (P, 2, H, D)
            act = torch.as_tensor(segments["actions"][pool])  # (P, 2, H, A)
            score = SELECTIONS["disagreement"](models[0], obs, act).numpy()  # (P,)
            top = np.argsort(-score, kind="stable")[:n_pairs]
            pairs, priority = pool[top], score[top]
        elif select in ("disagreement", "uniform"):  # round 1 has no ensemble yet: uniform
            pairs, priority = every[rng.choice(len(every), n_pairs, replace=False)], np.zeros(n_pairs)
        else:
            raise ValueError(f"select {select!r} is unknown; choose disagreement or uniform")
        swap = rng.random(n_pairs) < 0.5  # which segment is shown as A carries no meaning
        pairs = np.where(swap[:, None], pairs[:, ::-1], pairs)
        clips = self._clips(round_dir, segments, np.unique(pairs).tolist()) if self.render else {}
        candidates, oracle = [], []
        for i, (a, b) in enumerate(pairs.tolist()):
            key = f"r{round}-{i:05d}"
            segment_candidates = tuple(  # without clips, a segment is named by text (tests without rendering)
                Candidate(
                    text="" if s in clips else f"segment {s}",
                    media=clips.get(s),
                    model=f"policy-r{round - 1}",
                    frames=len(range(0, self.segment_length, self.frame_stride)) if s in clips else None,
                )
                for s in (a, b)
            )
            item = Item(self.prompt, segment_candidates, key=key)
            candidates.append(Proposal(item, priority=float(priority[i])))
            oracle.append(
                {
                    "key": key,
                    "rewards_a": segments["rewards"][a].tolist(),
                    "costs_a": segments["costs"][a].tolist(),
                    "rewards_b": segments["rewards"][b].tolist(),
                    "costs_b": segments["costs"][b].tolist(),
                    "frame_stride": self.frame_stride,
                }
            )
        append_new_lines(run_dir / "oracle.jsonl", oracle)
        body = {
            "round": round,
            "select": select,
            "pairs": pairs.tolist(),
            "candidates": [c.to_json() for c in candidates],
        }
        write_atomic(saved, json.dumps(body, indent=1))
        return candidates

    def _segments(self, round_dir: Path, round: int) -> dict[str, np.ndarray]:
        """The round's pool of segments (rolled out once, then read back from segments.npz): the
        round's own episodes, then (``carry_pool``) those the previous round rolled out."""
        path = round_dir / "segments.npz"
        if not path.is_file():
            actor, normalize, _ = load_policy(self._policy_dir(round_dir.parent, round - 1))
            env = make_env(self.env, max_episode_steps=self.ppo.max_episode_steps)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + round)
                seed = self.seed * 1000 + round * 100
                steps = record_episodes(actor, normalize, env, self.pool_episodes, seed, deterministic=False)
                segments = cut_segments(steps, self.segment_length)
                if self.pool_deterministic:  # what the evaluated policy does: often faster than its samples
                    steps = record_episodes(
                        actor, normalize, env, self.pool_deterministic, seed + 50, deterministic=True
                    )
                    more = cut_segments(steps, self.segment_length)
                    segments = {key: np.concatenate([segments[key], more[key]]) for key in segments}
            env.close()
            segments["origin"] = np.full(len(segments["rewards"]), round)  # (K,) round rolled out in
            if self.carry_pool and round > 1:  # the previous policy's own segments join the pool
                prev = self._segments(self._round_dir(round_dir.parent, round - 1), round - 1)
                own = prev["origin"] == round - 1
                segments = {key: np.concatenate([value, prev[key][own]]) for key, value in segments.items()}
            if len(segments["rewards"]) < 2:
                raise ValueError(
                    f"segment_length {self.segment_length} leaves fewer than 2 segments in {self.pool_episodes} episodes"
                )
            tmp = round_dir / "segments.tmp.npz"
            np.savez(tmp, **segments)  # type: ignore[arg-type]
            os.replace(tmp, path)
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def _clips(self, round_dir: Path, segments: dict[str, np.ndarray], chosen: list[int]) -> dict[int, str]:
        """Render each chosen segment once to round_dir/clips/sNNNN.gif (every ``clip_stride``-th
        state); segment -> path relative to the run directory. Finished clips are kept."""
        from rich.progress import Progress

        from alignloop.control.clips import render_clip

        out: dict[int, str] = {}
        with Progress(disable=not self.progress, transient=True) as bar:
            for s in bar.track(chosen, description=f"rendering {len(chosen)} clips"):
                rel = f"{round_dir.name}/clips/s{s:04d}.gif"
                path = round_dir.parent / rel
                if not path.is_file():
                    tmp = path.with_name(f"s{s:04d}.part.gif")
                    qpos, qvel = (
                        segments["qpos"][s][:: self.clip_stride],
                        segments["qvel"][s][:: self.clip_stride],
                    )
                    width, height = self.clip_size
                    render_clip(self.base_env, qpos, qvel, tmp, fps=self.clip_fps, width=width, height=height)
                    os.replace(tmp, path)
                out[s] = rel
        return out

    def learn(self, round_dir: Path, round: int, judged: list[Judged]) -> dict[str, float]:
        """Fit the reward ensemble and the cost model on ``judged`` (every round's judgements),
        warm-started from the previous round's models; a share ``heldout`` of the newest round's
        judgements is kept out of the fit and scored. Every name in `LEARN_METRICS` is returned
        (NaN where there was nothing to measure)."""
        run_dir = round_dir.parent
        arrays = self._judged_arrays(run_dir, round, judged)
        obs, act, better, safer, is_safe, newest = (
            arrays.obs, arrays.act, arrays.better, arrays.safer, arrays.is_safe, arrays.newest
        )  # fmt: skip
        rng = np.random.default_rng([self.seed, round, 2])
        held = np.zeros(len(better), bool)
        new_idx = np.flatnonzero(newest)
        if len(new_idx) >= 5:
            held[rng.permutation(new_idx)[: int(self.heldout * len(new_idx) + 0.5)]] = True
        loaded = self._load_models(self._round_dir(run_dir, round - 1) / "models") if round > 1 else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + round)
            reward_models, cost_model = new_models(
                self.obs_dim, self.act_dim, self.ensemble, self.segment_length, self.cost_ensemble
            )
        if loaded is None:  # input statistics from the first pool, kept in the models from then on
            pool = self._segments(round_dir, round)
            pool_obs, pool_act = (
                torch.as_tensor(pool["obs"], dtype=torch.float32),
                torch.as_tensor(pool["actions"]),
            )
            for model in reward_models:
                model.set_input_stats(pool_obs, pool_act)
            cost_model.set_input_stats(pool_obs, pool_act)
        else:
            reward_models, cost_model = loaded[0], cost_model if loaded[1] is None else loaded[1]
        stats = dict.fromkeys(LEARN_METRICS, float("nan"))
        stats |= {"judged": float(len(better)), "judged_newest": float(newest.sum())}
        stats |= {"cost/rejected_inconsistent": float(arrays.rejected)}
        decided = better >= 0
        if loaded is not None:
            stats["reward/accuracy_before_fit"] = _reward_accuracy(
                reward_models, obs, act, better, newest & decided
            )
        gen = torch.Generator().manual_seed(self.seed * 1000 + round)
        fit = decided & ~held
        stats["reward/train_pairs"] = float(fit.sum())
        if fit.sum() > 1:
            opts = [torch.optim.Adam(m.parameters(), lr=self.model_lr) for m in reward_models]
            chosen = torch.as_tensor(better[fit])
            stats["reward/train_accuracy"] = fit_reward_models(
                reward_models, opts, obs[fit], act[fit], chosen, self.fit_steps, 64, gen
            )
            with torch.no_grad():  # the ensemble mean's Bradley-Terry loss after the fit
                scores = torch.stack([m(obs[fit], act[fit]).sum(-1) for m in reward_models]).mean(0)  # (P, 2)
                rows = torch.arange(len(chosen))
                loss, _ = bradley_terry_loss(scores[rows, chosen], scores[rows, 1 - chosen])
            stats["reward/loss"] = float(loss)
        stats["reward/heldout_accuracy"] = _reward_accuracy(reward_models, obs, act, better, held & decided)
        known = safer >= 0  # a safety pair: both flags given (and consistent)
        fit = known & ~held  # a tie in "safer" still gives both safety labels
        stats["cost/train_pairs"] = float(fit.sum())
        stats["cost/marked_pairs"] = float((fit & arrays.marked).sum())
        if self.safe and fit.sum() > 1:
            opt = torch.optim.Adam(cost_model.parameters(), lr=self.model_lr)
            ranked = torch.as_tensor(arrays.ranked[fit])
            safer_t = torch.as_tensor(safer[fit]).long()
            flags = torch.as_tensor(is_safe[fit] == 1)
            marked = arrays.marked[fit]
            stats["cost/train_sign_accuracy"] = fit_cost_model(
                cost_model, opt, obs[fit], act[fit], safer_t, flags, ranked, self.fit_steps, 64, gen,
                step_unsafe=torch.as_tensor(arrays.step_unsafe[fit]) if marked.any() else None,
                step_known=torch.as_tensor(marked) if marked.any() and not marked.all() else None,
            )  # fmt: skip
            stats["cost/threshold"] = float(cost_model.threshold.mean())
            with torch.no_grad():  # the cost-model loss after the fit, without its score regulariser
                score = segment_cost_logit(cost_model(obs[fit], act[fit]))  # (P, 2)
                sign = torch.where(flags, -1.0, 1.0)  # +1 unsafe, -1 safe
                rows, unsafer = torch.arange(len(safer_t)), 1 - safer_t
                loss, _ = cost_model_loss(
                    score[rows, unsafer], score[rows, safer_t], sign[rows, unsafer], sign[rows, safer_t],
                    ranked=ranked,
                )  # fmt: skip
            stats["cost/loss"] = float(loss)
        if self.safe and (held & known).any():
            with torch.no_grad():
                score = segment_cost_logit(cost_model(obs[held & known], act[held & known]))  # (P, 2)
            unsafe = torch.as_tensor(is_safe[held & known] == 0)
            stats["cost/heldout_sign_accuracy"] = float(((score > 0) == unsafe).float().mean())
        out = round_dir / "models"
        out.mkdir(parents=True, exist_ok=True)
        models = {
            "reward_models": [m.state_dict() for m in reward_models],
            "cost_model": cost_model.state_dict(),
        }
        torch.save(models, out / "models.pt.tmp")
        os.replace(out / "models.pt.tmp", out / "models.pt")
        write_atomic(out / "learn.json", json.dumps(stats, indent=1))
        return stats

    def _judged_arrays(self, run_dir: Path, round: int, judged: list[Judged]) -> JudgedArrays:
        """Judgements as arrays, read by the rule of `feedback.pairs` from the domain's questions
        (see `JudgedArrays`)."""
        from alignloop.feedback.pairs import safety_labels

        proposals: dict[int, tuple[dict[str, list[int]], dict[str, np.ndarray]]] = {}
        rows: dict[str, list[Any]] = {
            k: [] for k in ("obs", "act", "better", "safer", "ranked", "is_safe", "newest", "steps", "marked")
        }
        rejected = 0
        for j in judged:
            r = j.round
            if r not in proposals:
                rd = self._round_dir(run_dir, r)
                saved = json.loads((rd / "proposal.json").read_text())
                keys = {c["key"]: pair for c, pair in zip(saved["candidates"], saved["pairs"], strict=True)}
                proposals[r] = (keys, self._segments(rd, r))
            keys, seg = proposals[r]
            if j.key not in keys:
                raise ValueError(f"judgement {j.judgement_id}: key {j.key!r} is not in round {r}'s proposal")
            pair = keys[j.key]
            flags = [-1, -1]
            try:  # the rule of `feedback.pairs`: a tie, or two alike, keeps only its sign terms
                found = safety_pairs([j.judgement], self.questions)
                for _, i, safe in safety_labels([j.judgement], self.questions):
                    flags[i] = int(safe)
            except LabelError:
                rejected += 1
                found = []
            order = found[0].order if found else None
            win = preference_pairs([j.judgement], self.questions)
            marked = marks([j.judgement], self.questions)
            rows["obs"].append(seg["obs"][pair])
            rows["act"].append(seg["actions"][pair])
            rows["better"].append(win[0].chosen if win else -1)
            rows["safer"].append(-1 if order is None else order.safer)
            rows["ranked"].append(order is not None and order.ranked)
            rows["is_safe"].append(flags)
            rows["newest"].append(r == round)
            rows["steps"].append(
                [step_labels(m.frame, self.segment_length, self.frame_stride) for m in marked]
                if len(marked) == 2
                else [[0] * self.segment_length] * 2
            )
            rows["marked"].append(len(marked) == 2)
        shape = (0, 2, self.segment_length)
        obs, act = rows["obs"], rows["act"]
        return JudgedArrays(
            obs=torch.as_tensor(
                np.stack(obs) if obs else np.zeros((*shape, self.obs_dim)), dtype=torch.float32
            ),
            act=torch.as_tensor(
                np.stack(act) if act else np.zeros((*shape, self.act_dim)), dtype=torch.float32
            ),
            better=np.asarray(rows["better"], dtype=np.int64),
            safer=np.asarray(rows["safer"], dtype=np.int64),
            ranked=np.asarray(rows["ranked"], dtype=bool),
            is_safe=np.asarray(rows["is_safe"], dtype=np.int64).reshape(-1, 2),
            newest=np.asarray(rows["newest"], dtype=bool),
            step_unsafe=np.asarray(rows["steps"], dtype=bool).reshape(-1, 2, self.segment_length),
            marked=np.asarray(rows["marked"], dtype=bool),
            rejected=rejected,
        )

    def align(self, round_dir: Path, round: int) -> dict[str, float]:
        """PPO-Lagrangian (PPO without a cost) on the round's learned reward and cost, from the
        previous policy; resumes from the checkpoints in ``policy/`` after a crash."""
        out = round_dir / "policy"
        done = out / "align.json"
        if done.is_file():
            return json.loads(done.read_text())
        loaded = self._load_models(round_dir / "models")
        if loaded is None:
            raise FileNotFoundError(
                f"{round_dir / 'models' / 'models.pt'}: no models; run learn for round {round} first"
            )
        reward_models, cost_model = loaded

        def relabel(ro: Any, iteration: int) -> tuple[np.ndarray, np.ndarray]:
            steps, n = ro.rewards.shape
            obs = torch.as_tensor(ro.raw_obs, dtype=torch.float32)  # (T, N, D)
            act = torch.as_tensor(ro.actions.reshape(steps, n, -1), dtype=torch.float32)
            return label_steps(reward_models, cost_model, obs, act)

        stats = train_policy(
            out, self.env, self.cost, self.safe, self.steps_per_round, self.seed + 1000 * round, self.ppo,
            relabel=relabel, resume=has_checkpoint(out), save_every=self.save_every,
            init_from=self._policy_dir(round_dir.parent, round - 1), progress=self.progress, command="loop align",
        )  # fmt: skip
        if "train/lambda" not in stats:  # stopped after the last checkpoint: the figures are in it
            _, state = read_checkpoint(out)
            stats["train/lambda"] = float(state["lagrange"]["lambda"])
            for key, values in (
                ("train/episode_cost", "cost_window"),
                ("episode/return", "returns"),
                ("episode/cost", "costs"),
            ):
                if state[values]:
                    stats[key] = float(np.mean(state[values]))
        nan = float("nan")
        result = {
            "align/steps": float(stats["global_step"]),
            "align/lambda": stats.get("train/lambda", nan),
            "align/learned_episode_cost": stats.get("train/episode_cost", nan),
            "align/true_episode_return": stats.get("episode/return", nan),
            "align/true_episode_cost": stats.get("episode/cost", nan),
        }
        write_atomic(done, json.dumps(result, indent=1))
        return result

    def evaluate(self, round_dir: Path, round: int) -> dict[str, float]:
        """True and learned figures of the round's policy over ``eval_episodes`` seeded episodes."""
        return self._evaluate(round_dir / "policy", round_dir / "models")

    def _evaluate(self, policy_dir: Path, models_dir: Path | None) -> dict[str, float]:
        actor, normalize, _ = load_policy(policy_dir)
        env = make_env(self.env, max_episode_steps=self.ppo.max_episode_steps)
        steps = record_episodes(actor, normalize, env, self.eval_episodes, 10_000, deterministic=True)
        env.close()
        per_episode = {key: np.bincount(steps["episode"], weights=steps[key]) for key in ("rewards", "costs")}
        lengths = np.bincount(steps["episode"])
        metrics = {
            "return": float(per_episode["rewards"].mean()),
            "return_std": float(per_episode["rewards"].std()),
            "cost": float(per_episode["costs"].mean()),
            "unsafe_step_rate": float(steps["costs"].sum() / lengths.sum()),
            "episode_length": float(lengths.mean()),
            "learned_reward": float("nan"),
            "learned_cost": float("nan"),
        }
        loaded = self._load_models(models_dir) if models_dir is not None else None
        if loaded is not None:
            obs = torch.as_tensor(steps["obs"], dtype=torch.float32)
            rewards, costs = label_steps(loaded[0], loaded[1], obs, torch.as_tensor(steps["actions"]))
            metrics["learned_reward"] = float(np.bincount(steps["episode"], weights=rewards).mean())
            if self.safe:
                metrics["learned_cost"] = float(np.bincount(steps["episode"], weights=costs).mean())
        return metrics


def _reward_accuracy(
    models: list[StepModel], obs: torch.Tensor, act: torch.Tensor, better: np.ndarray, mask: np.ndarray
) -> float:
    """Share of the masked pairs where the ensemble's mean summed reward ranks the chosen first."""
    if not mask.any():
        return float("nan")
    with torch.no_grad():
        scores = torch.stack([m(obs[mask], act[mask]).sum(-1) for m in models]).mean(0)  # (P, 2)
    return float((scores.argmax(-1).numpy() == better[mask]).mean())
