"""The control domain of the loop without a server: two smoke rounds judged from oracle.jsonl by a
scripted segment teacher; keys, oracle lines, clips, determinism, re-called phases, resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import alignloop.loop.control as control
from alignloop.control.envs import make_env
from alignloop.control.evaluate import load_policy
from alignloop.control.segment_models import label_steps
from alignloop.feedback.schema import Candidate, Item, Judgement
from alignloop.feedback.teachers import TIE, SegmentTeacher
from alignloop.loop.control import PRESETS, ControlDomain
from alignloop.loop.domain import Judged, Proposal
from alignloop.loop.segments import cut_segments, record_episodes

PAIRS = 8
_SIDE = {0: "A", 1: "B", TIE: "tie"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _domain(**overrides) -> ControlDomain:
    return ControlDomain(**{**PRESETS["smoke"], "progress": False, **overrides})


def _oracle(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "oracle.jsonl").read_text().splitlines()]


def judge(
    run_dir: Path, round: int, candidates: list[Proposal], teacher: SegmentTeacher, first_id: int
) -> list[Judged]:
    """A scripted annotator: judges each candidate from its oracle line (the true per-step values)."""
    rows = {row["key"]: row for row in _oracle(run_dir)}
    lines = [rows[c.key] for c in candidates]
    rewards = np.array([[row["rewards_a"], row["rewards_b"]] for row in lines])  # (N, 2, H)
    costs = np.array([[row["costs_a"], row["costs_b"]] for row in lines])
    verdict = teacher.judge(rewards, costs)
    assert verdict.is_safe is not None
    return [
        judged_as(
            first_id + i,
            round,
            c,
            _SIDE[int(verdict.better[i])],
            _SIDE[int(verdict.safer[i])],
            bool(verdict.is_safe[i, 0]),
            bool(verdict.is_safe[i, 1]),
        )  # fmt: skip
        for i, c in enumerate(candidates)
        if not verdict.skipped[i]
    ]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory):
    """Setup and two full rounds (round 2 chosen by disagreement) with clips rendered."""
    run_dir = tmp_path_factory.mktemp("control-loop")
    domain = _domain()
    teacher = SegmentTeacher(seed=0)
    out: dict = {"run_dir": run_dir, "domain": domain, "setup": domain.setup(run_dir), "judged": []}
    for r in (1, 2):
        rd = run_dir / f"round-{r:03d}"
        candidates = domain.propose(rd, r, PAIRS, "disagreement")
        out[f"candidates{r}"] = candidates
        out["judged"] += judge(run_dir, r, candidates, teacher, len(out["judged"]) + 1)
        out[f"learn{r}"] = domain.learn(rd, r, out["judged"])
        out[f"align{r}"] = domain.align(rd, r)
        out[f"eval{r}"] = domain.evaluate(rd, r)
    return out


def test_keys_prompts_oracle_lines_and_clips(two_rounds) -> None:
    run_dir = two_rounds["run_dir"]
    oracle = _oracle(run_dir)
    assert [row["key"] for row in oracle] == [f"r{r}-{i:05d}" for r in (1, 2) for i in range(PAIRS)]
    for r in (1, 2):
        candidates = two_rounds[f"candidates{r}"]
        assert [c.key for c in candidates] == [f"r{r}-{i:05d}" for i in range(PAIRS)]
        assert all("cheetah" in c.item.prompt and "3.21 m/s" in c.item.prompt for c in candidates)
        assert {x.model for c in candidates for x in c.item.candidates} == {f"policy-r{r - 1}"}
        proposal = json.loads((run_dir / f"round-{r:03d}" / "proposal.json").read_text())
        with np.load(run_dir / f"round-{r:03d}" / "segments.npz") as seg:
            for c, (a, b), row in zip(candidates, proposal["pairs"], oracle[(r - 1) * PAIRS :], strict=False):
                assert a != b
                np.testing.assert_array_equal(row["rewards_a"], seg["rewards"][a])  # 20 true rewards of A
                np.testing.assert_array_equal(row["costs_b"], seg["costs"][b])
                assert len(row["rewards_b"]) == 20 and len(row["costs_a"]) == 20
                for media in (x.media for x in c.item.candidates):  # relative to the run directory
                    assert media is not None and media.startswith(f"round-{r:03d}/clips/")
                    assert (run_dir / media).read_bytes()[:4] == b"GIF8"
    with (
        np.load(run_dir / "round-001" / "segments.npz") as seg1,
        np.load(run_dir / "round-002" / "segments.npz") as seg2,
    ):
        # round 2's pool: its own 15 segments (2 sampled episodes, then 1 deterministic), then round 1's
        carried = seg2["origin"] == 1
        assert seg2["origin"].tolist() == [2] * 15 + [1] * 15 and set(seg1["origin"]) == {1}
        np.testing.assert_array_equal(seg2["rewards"][carried], seg1["rewards"])
        np.testing.assert_array_equal(seg2["qpos"][carried], seg1["qpos"])
        actor, normalize, _ = load_policy(run_dir / "policy-0")  # round 1 rolled out the starting policy
        with torch.inference_mode():
            rows = np.concatenate([normalize(o) for o in seg1["obs"].reshape(-1, seg1["obs"].shape[-1])])
            mean = actor.mode(torch.from_numpy(rows))
        mean = mean.numpy().reshape(seg1["actions"].shape)
        sampled, deterministic = slice(0, 10), slice(10, 15)
        np.testing.assert_allclose(seg1["actions"][deterministic], mean[deterministic], rtol=1e-5, atol=1e-6)
        assert not np.allclose(seg1["actions"][sampled], mean[sampled], atol=1e-3)
    assert all(c.priority == 0.0 for c in two_rounds["candidates1"])  # round 1: uniform
    priorities = [c.priority for c in two_rounds["candidates2"]]  # round 2: ensemble disagreement
    assert priorities == sorted(priorities, reverse=True) and priorities[0] > 0


def test_models_are_refitted_and_relabel_the_rollouts(two_rounds) -> None:
    run_dir, domain = two_rounds["run_dir"], two_rounds["domain"]
    with np.load(run_dir / "round-002" / "segments.npz") as seg:
        obs = torch.as_tensor(seg["obs"], dtype=torch.float32)
        act = torch.as_tensor(seg["actions"])
    labels = []
    for r in (1, 2):
        models = domain._load_models(run_dir / f"round-{r:03d}" / "models")
        assert models is not None and models[1] is not None
        labels.append(label_steps(models[0], models[1], obs, act))
    assert not np.allclose(labels[0][0], labels[1][0])  # learned rewards moved with round 2's judgements
    assert not np.allclose(labels[0][1], labels[1][1])  # and learned costs
    learn = two_rounds["learn2"]
    assert learn["judged"] == len(two_rounds["judged"]) and learn["judged_newest"] <= PAIRS
    assert math.isnan(two_rounds["learn1"]["reward/accuracy_before_fit"])
    # round 1's models scored on round 2's pairs with a preference: a share of those pairs
    decided = sum(
        j.round == 2 and j.judgement.answers.get("better") in ("A", "B") for j in two_rounds["judged"]
    )
    right = learn["reward/accuracy_before_fit"] * decided
    assert decided > 0 and right == pytest.approx(round(right), abs=1e-9)
    assert two_rounds["align1"]["align/steps"] == 512 == two_rounds["align2"]["align/steps"]
    actors = [load_policy(run_dir / name)[0] for name in ("policy-0", "round-001/policy", "round-002/policy")]
    for before, after in zip(actors, actors[1:], strict=False):
        assert not torch.equal(before.net.last.weight, after.net.last.weight)
    for key in ("return", "cost", "unsafe_step_rate", "episode_length", "learned_reward", "learned_cost"):
        assert math.isfinite(two_rounds["eval2"][key]), key
    assert math.isnan(two_rounds["setup"]["learned_reward"])  # no models before round 1


def test_calling_a_finished_phase_again_changes_nothing(two_rounds) -> None:
    run_dir, domain = two_rounds["run_dir"], two_rounds["domain"]
    rd = run_dir / "round-002"
    lines = (run_dir / "oracle.jsonl").read_text()
    assert domain.propose(rd, 2, PAIRS, "disagreement") == two_rounds["candidates2"]
    assert (run_dir / "oracle.jsonl").read_text() == lines
    again = domain.learn(rd, 2, two_rounds["judged"])
    first = two_rounds["learn2"]
    assert again.keys() == first.keys()
    assert all(
        a == b or (math.isnan(a) and math.isnan(b))
        for a, b in zip(again.values(), first.values(), strict=True)
    )
    assert domain.align(rd, 2) == two_rounds["align2"]
    assert domain.evaluate(rd, 2) == two_rounds["eval2"]


def test_propose_is_deterministic_and_survives_a_crash_mid_write(two_rounds, tmp_path: Path) -> None:
    domain = _domain(render=False)
    domain.setup(tmp_path)
    rd = tmp_path / "round-001"
    candidates = domain.propose(rd, 1, PAIRS, "disagreement")
    reference = two_rounds["candidates1"]
    assert [(c.key, c.item.prompt, c.priority) for c in candidates] == [
        (c.key, c.item.prompt, c.priority) for c in reference
    ]
    assert all(c.item.candidates[0].media is None for c in candidates)
    rendered = _oracle(two_rounds["run_dir"])[:PAIRS]
    # the same true values; a mark on a clip names a frame of 5 steps, without clips a step
    assert [{**row, "frame_stride": 5} for row in _oracle(tmp_path)] == rendered
    assert {row["frame_stride"] for row in _oracle(tmp_path)} == {1}
    # a crash after 5 oracle lines and half of the 6th, before proposal.json was written
    lines = (tmp_path / "oracle.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "oracle.jsonl").write_text("".join(lines[:5]) + lines[5][:40])
    (rd / "proposal.json").unlink()
    assert domain.propose(rd, 1, PAIRS, "disagreement") == candidates
    assert (tmp_path / "oracle.jsonl").read_text() == "".join(lines)


def test_max_clips_bounds_the_segments_shown(two_rounds, tmp_path: Path) -> None:
    shutil.copytree(two_rounds["run_dir"] / "policy-0", tmp_path / "policy-0")
    domain = _domain(render=False, max_clips=4)
    with pytest.raises(
        ValueError,
        match=r"--pairs 7 exceeds the 6 pairs of 4 segments; pass --pairs 6 or less \(the preset's",
    ):
        domain.propose(tmp_path / "round-001", 1, 7, "uniform")
    domain.propose(tmp_path / "round-001", 1, 6, "uniform")
    pairs = json.loads((tmp_path / "round-001" / "proposal.json").read_text())["pairs"]
    assert len(np.unique(pairs)) == 4 and len({tuple(sorted(p)) for p in pairs}) == 6


def test_judgements_map_to_labels(two_rounds) -> None:
    run_dir, domain = two_rounds["run_dir"], two_rounds["domain"]
    c = two_rounds["candidates1"]
    judged = [
        judged_as(1, 1, c[0], "A", "B", True, True),
        judged_as(2, 1, c[1], "B", "A", False, False),
        judged_as(3, 1, c[2], "tie", "tie", True, False),
        judged_as(4, 1, c[3], "both_bad"),
        judged_as(5, 1, c[4], None, "A", False, True),  # "safer" A is unsafe, B safe: contradictory
        judged_as(6, 1, c[5], "A", "tie", True, True),
        judged_as(7, 1, c[6], "A", None, False, False),
    ]
    a = domain._judged_arrays(run_dir, 2, judged)
    assert a.better.tolist() == [0, 1, TIE, TIE, TIE, 0, 0]
    # the rule of feedback.pairs: judgement 3's "tie" between a safe A and an unsafe B makes A the
    # safer; 6 and 7 (two alike, a tie or no answer) keep only their sign terms
    assert a.safer.tolist() == [1, 0, 0, TIE, TIE, 0, 0]
    assert a.ranked.tolist() == [True, True, True, False, False, False, False]
    assert a.is_safe.tolist() == [[1, 1], [0, 0], [1, 0], [-1, -1], [-1, -1], [1, 1], [0, 0]]  # -1: unknown
    assert a.rejected == 1 and not a.newest.any() and not a.marked.any()
    pairs = json.loads((run_dir / "round-001" / "proposal.json").read_text())["pairs"]
    with np.load(run_dir / "round-001" / "segments.npz") as seg:
        np.testing.assert_array_equal(a.obs[2].numpy(), seg["obs"][pairs[2]].astype(np.float32))
        assert a.act.shape == (7, 2, 20, seg["actions"].shape[-1]) and a.step_unsafe.shape == (7, 2, 20)
    with pytest.raises(ValueError, match="not in round 1's proposal"):
        domain._judged_arrays(
            run_dir,
            2,
            [judged_as(6, 1, Proposal(Item("", (Candidate("a"), Candidate("b")), key="r1-99999")), "A")],
        )


def test_align_resumed_after_a_crash_equals_an_uninterrupted_one(two_rounds, tmp_path, monkeypatch) -> None:
    src = two_rounds["run_dir"]
    domain = _domain(render=False, save_every=1)
    runs = []
    for name in ("whole", "crashed"):
        run = tmp_path / name
        shutil.copytree(src / "policy-0", run / "policy-0")
        shutil.copytree(src / "round-001" / "models", run / "round-001" / "models")
        runs.append(run)
    whole = domain.align(runs[0] / "round-001", 1)
    calls = {"n": 0}

    def crash_on_second_rollout(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return label_steps(*args, **kwargs)

    monkeypatch.setattr(control, "label_steps", crash_on_second_rollout)
    with pytest.raises(KeyboardInterrupt):
        domain.align(runs[1] / "round-001", 1)
    assert not (runs[1] / "round-001" / "policy" / "align.json").exists()
    monkeypatch.setattr(control, "label_steps", label_steps)
    assert domain.align(runs[1] / "round-001", 1) == whole
    from alignloop.control.ppo import read_checkpoint

    states = [read_checkpoint(run / "round-001" / "policy") for run in runs]
    for key, value in states[0][0]["models"]["agent"].items():
        assert torch.equal(value, states[1][0]["models"]["agent"][key]), key
    assert states[0][1]["lagrange"] == states[1][1]["lagrange"]
    # killed after the last checkpoint, before align.json: the figures come back from the checkpoint
    (runs[1] / "round-001" / "policy" / "align.json").unlink()
    assert domain.align(runs[1] / "round-001", 1) == whole


@pytest.mark.slow
def test_reward_ensemble_ranks_unseen_segments(tmp_path: Path) -> None:
    """60 pairs of 20-step HalfCheetah segments judged by a perfect teacher: the learned summed
    reward must order the true segment returns of fresh episodes (other seeds) on >= 75% of the
    pairs (measured 0.88; an untrained or sign-flipped model sits near or below 0.5)."""
    domain = _domain(render=False, pool_episodes=8, fit_steps=200)
    domain.setup(tmp_path)
    rd = tmp_path / "round-001"
    candidates = domain.propose(rd, 1, 60, "uniform")
    metrics = domain.learn(rd, 1, judge(tmp_path, 1, candidates, SegmentTeacher(seed=0), 1))
    assert metrics["reward/train_pairs"] == 48  # 12 of the 60 held out
    models = domain._load_models(rd / "models")
    assert models is not None
    actor, normalize, _ = load_policy(tmp_path / "policy-0")
    env = make_env("SafeHalfCheetahVelocity-v5", max_episode_steps=100)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        seg = cut_segments(record_episodes(actor, normalize, env, 6, 500, deterministic=False), 20)
    env.close()
    obs, act = torch.as_tensor(seg["obs"], dtype=torch.float32), torch.as_tensor(seg["actions"])
    learned, true = label_steps(models[0], None, obs, act)[0].sum(-1), seg["rewards"].sum(-1)  # (K,)
    i, k = np.triu_indices(len(true), 1)
    agreement = np.mean(np.sign(learned[i] - learned[k]) == np.sign(true[i] - true[k]))
    assert agreement >= 0.75, agreement


def judged_as(
    judgement_id: int,
    round: int,
    proposal: Proposal,
    better: str | None,
    safer: str | None = None,
    safe_a: bool | None = None,
    safe_b: bool | None = None,
) -> Judged:
    """A judgement of the control questions (None: not answered)."""
    answers: dict = {k: v for k, v in (("better", better), ("safer", safer)) if v is not None}
    if (safe_a, safe_b) != (None, None):
        answers["is_safe"] = [
            None if f is None else {"safe": f, "harms": [], "severity": None} for f in (safe_a, safe_b)
        ]
    return Judged(judgement_id, round, Judgement(proposal.item, answers, "1"))


def test_a_task_without_cost_runs_a_round_on_the_learned_reward_alone(tmp_path: Path) -> None:
    domain = _domain(env="HalfCheetah-v5", render=False)
    assert domain.prompt == "Which clip moves the cheetah forward better?"
    domain.setup(tmp_path)
    rd = tmp_path / "round-001"
    candidates = domain.propose(rd, 1, PAIRS, "uniform")
    assert all(row["costs_a"] == [0.0] * 20 for row in _oracle(tmp_path))
    judged = [judged_as(i, 1, c, "AB"[i % 2]) for i, c in enumerate(candidates)]
    metrics = domain.learn(rd, 1, judged)
    assert metrics["reward/train_pairs"] > 0 and metrics["cost/train_pairs"] == 0
    assert math.isnan(metrics["cost/train_sign_accuracy"])
    assert domain.align(rd, 1)["align/steps"] == 512
    assert math.isnan(domain.evaluate(rd, 1)["learned_cost"])


def test_segments_stay_inside_episodes() -> None:
    steps = {
        "episode": np.array([0] * 7 + [1] * 5),
        "rewards": np.arange(12.0),
        "qpos": np.arange(24.0).reshape(12, 2),
    }
    seg = cut_segments(steps, 3)
    # episode 0 (steps 0-6) gives windows 0-2 and 3-5 (step 6 is left over); episode 1 (7-11): 7-9
    np.testing.assert_array_equal(seg["rewards"], [[0, 1, 2], [3, 4, 5], [7, 8, 9]])
    assert seg["qpos"].shape == (3, 3, 2) and "episode" not in seg


def test_record_episodes_keeps_the_state_each_action_was_taken_in(two_rounds) -> None:
    actor, normalize, _ = load_policy(two_rounds["run_dir"] / "policy-0")
    env = make_env("SafeHalfCheetahVelocity-v5", max_episode_steps=10)
    steps = record_episodes(actor, normalize, env, 2, 7, deterministic=True)
    assert (
        steps["obs"].shape == (20, 17)
        and steps["qpos"].shape == (20, 9)
        and steps["actions"].shape == (20, 6)
    )
    assert steps["episode"].tolist() == [0] * 10 + [1] * 10
    # HalfCheetah's observation is qpos without the x position, then qvel
    np.testing.assert_allclose(steps["obs"], np.concatenate([steps["qpos"][:, 1:], steps["qvel"]], axis=1))
    env.close()


def test_bad_options_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="segment_length must be >= 1"):
        _domain(segment_length=0)
    with pytest.raises(ValueError, match="clips need a MuJoCo task"):
        ControlDomain("SafeSliderVelocity-v0", render=True, progress=False)
    with pytest.raises(ValueError, match="heldout"):
        _domain(heldout=1.0)


def test_a_clip_project_with_marks_and_no_harm_categories_trains_both_models(two_rounds, tmp_path) -> None:
    """The `clips` project (better, is_safe without harm categories, and a mark of the first
    unsafe frame) answered by `alignloop annotate --teacher oracle`: the reward and cost models
    fit on it, every judged pair's marks become per-step labels (each step from the mark on is
    unsafe), and a round's policy trains on the learned reward and cost."""
    from alignloop.feedback.schema import QUESTION_PRESETS, IsSafe
    from alignloop.loop.annotate import OracleTeacher
    from alignloop.loop.domain import item_to_json

    questions = QUESTION_PRESETS["clips"]
    assert next(q for q in questions if isinstance(q, IsSafe)).harm_categories == ()
    domain = _domain(render=False, questions=questions)
    shutil.copytree(two_rounds["run_dir"] / "policy-0", tmp_path / "policy-0")
    rd = tmp_path / "round-001"
    candidates = domain.propose(rd, 1, 2 * PAIRS, "uniform")
    teacher = OracleTeacher(tmp_path / "oracle.jsonl", seed=0, questions=questions)
    sent = [teacher(item_to_json(c.item)) for c in candidates]
    judged = [
        Judged(i, 1, Judgement(c.item, s["answers"], "1"))
        for i, (c, s) in enumerate(zip(candidates, sent, strict=True))
        if "answers" in s
    ]
    assert len(judged) >= PAIRS
    # the smoke policy never speeds: the oracle marks every clip safe throughout; one judgement
    # as a person who saw clip A turn unsafe at frame 7 would answer it
    first = judged[0].judgement
    answers = {
        **first.answers,
        "is_safe": [{"safe": False, "harms": [], "severity": None}, first.answers["is_safe"][1]],
    }
    answers["unsafe_from"] = [7, None]
    judged[0] = Judged(judged[0].judgement_id, 1, Judgement(first.item, answers, "1"))
    arrays = domain._judged_arrays(tmp_path, 1, judged)
    assert arrays.marked.all() and (arrays.safer >= 0).all()  # the flags order each pair
    rows = {row["key"]: row for row in _oracle(tmp_path)}
    assert arrays.step_unsafe[0].tolist() == [[k >= 7 for k in range(20)], [False] * 20]
    assert arrays.is_safe[0].tolist() == [0, 1] and arrays.safer[0] == 1
    for j, steps in zip(judged[1:], arrays.step_unsafe[1:], strict=True):
        marks = j.judgement.answers["unsafe_from"]
        for side, mark in enumerate(marks):
            true_costs = np.asarray(rows[j.key][f"costs_{'ab'[side]}"])
            assert steps[side].tolist() == [mark is not None and k >= mark for k in range(20)]
            # a noiseless oracle marks the first unsafe step, or none
            assert mark == (int(np.flatnonzero(true_costs > 0)[0]) if (true_costs > 0).any() else None)
    metrics = domain.learn(rd, 1, judged)
    assert metrics["cost/marked_pairs"] == metrics["cost/train_pairs"] > 0
    assert metrics["reward/train_pairs"] > 0 and math.isfinite(metrics["cost/train_sign_accuracy"])
    assert domain.align(rd, 1)["align/steps"] == 512
    assert math.isfinite(domain.evaluate(rd, 1)["learned_cost"])
