"""Scripted teachers: each kind of noise does what it says, with counts that can fail."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from alignloop.feedback.formats import read_records, write_records
from alignloop.feedback.schema import Comparison, Severity, check_safety_consistency
from alignloop.feedback.teachers import (
    TIE,
    BradleyTerryTeacher,
    SegmentTeacher,
    TeacherNoise,
    judge_pairs,
    segment_sums,
)


def test_perfect_teacher_picks_the_better_and_the_safer() -> None:
    teacher = BradleyTerryTeacher(seed=0)
    helpfulness = [[2.0, 1.0], [0.0, 3.0], [1.0, 1.5]]
    costs = [[1.0, -1.0], [-2.0, -0.5], [0.0, 0.1]]
    judged = teacher.judge(helpfulness, costs)
    assert judged.better.tolist() == [0, 1, 1]
    assert judged.safer.tolist() == [1, 0, 0]
    # cost <= 0 (the default threshold) is safe
    assert judged.is_safe.tolist() == [[False, True], [True, True], [True, False]]
    assert not judged.skipped.any()


def test_skip_and_equal_thresholds() -> None:
    noise = TeacherNoise(skip_threshold=0.5, equal_threshold=0.25)
    judged = BradleyTerryTeacher(noise).judge([[0.1, 0.4], [0.1, 0.6], [1.0, 1.2], [1.0, 1.3]], [[0, 0]] * 4)
    # row 0: both below 0.5 -> skipped; row 2: |1.0 - 1.2| < 0.25 -> tie
    assert judged.skipped.tolist() == [True, False, False, False]
    assert judged.better.tolist() == [TIE, 1, TIE, 1]
    assert judged.safer[0] == TIE


def test_mistake_rate_one_always_flips_and_never_flips_ties() -> None:
    noise = TeacherNoise(mistake_rate=1.0, equal_threshold=0.5)
    judged = BradleyTerryTeacher(noise).judge([[1.0, 0.0], [0.0, 1.0], [0.0, 0.1]])
    assert judged.better.tolist() == [1, 0, TIE]
    assert judged.is_safe is None and judged.safer.tolist() == [TIE] * 3


def test_mistake_rate_frequency() -> None:
    n = 40_000
    judged = BradleyTerryTeacher(TeacherNoise(mistake_rate=0.2), seed=1).judge(np.tile([[1.0, 0.0]], (n, 1)))
    # binomial sd = sqrt(0.2 * 0.8 / 40000) = 0.002; 0.01 is five sd
    assert abs(np.mean(judged.better == 1) - 0.2) < 0.01


@pytest.mark.parametrize(("beta", "diff"), [(1.0, 1.0), (2.0, -0.5), (0.0, 3.0)])
def test_rationality_matches_bradley_terry(beta: float, diff: float) -> None:
    n = 40_000
    judged = BradleyTerryTeacher(TeacherNoise(beta=beta), seed=2).judge(np.tile([[diff, 0.0]], (n, 1)))
    # sigma(1 * 1) = 0.7311, sigma(2 * -0.5) = 0.2689, sigma(0) = 0.5; sd <= 0.0025
    expected = 1.0 / (1.0 + math.exp(-beta * diff))
    assert abs(np.mean(judged.better == 0) - expected) < 0.012


def test_exact_utility_tie_with_infinite_beta_is_a_fair_coin() -> None:
    judged = BradleyTerryTeacher(seed=3).judge(np.zeros((20_000, 2)))
    assert abs(np.mean(judged.better == 0) - 0.5) < 0.015


def test_same_seed_same_judgements() -> None:
    noise = TeacherNoise(beta=1.0, mistake_rate=0.1, safety_mistake_rate=0.1, safety_beta=2.0)
    scores = np.random.default_rng(0).normal(size=(200, 2))
    costs = np.random.default_rng(1).normal(size=(200, 2))
    a = BradleyTerryTeacher(noise, seed=7).judge(scores, costs)
    b = BradleyTerryTeacher(noise, seed=7).judge(scores, costs)
    c = BradleyTerryTeacher(noise, seed=8).judge(scores, costs)
    assert np.array_equal(a.better, b.better) and np.array_equal(a.safer, b.safer)
    assert np.array_equal(a.is_safe, b.is_safe)
    assert not np.array_equal(a.better, c.better)


def test_noisy_safety_labels_stay_consistent_and_flip_at_their_rate() -> None:
    n = 20_000
    rng = np.random.default_rng(4)
    costs = rng.normal(size=(n, 2))
    noise = TeacherNoise(safety_mistake_rate=0.1, safety_beta=1.0)
    judged = judge_pairs(np.zeros((n, 2)), np.zeros((n, 2)), costs, noise, np.random.default_rng(5))
    for i in range(n):
        check_safety_consistency(
            int(judged.safer[i]), (bool(judged.is_safe[i, 0]), bool(judged.is_safe[i, 1]))
        )
    flipped = np.mean(judged.is_safe != (costs <= 0))
    assert abs(flipped - 0.1) < 0.01  # sd = 0.0015


def test_compare_returns_comparisons_with_harms_and_skips() -> None:
    def helpfulness(prompt: str, response: str) -> float:
        return float(len(response))

    def cost(prompt: str, response: str) -> float:
        return 1.0 if "poison" in response else -1.0

    def harms(prompt: str, response: str) -> tuple[tuple[str, ...], Severity | None]:
        return ("Physical Harm",), Severity.SEVERE

    teacher = BradleyTerryTeacher(
        TeacherNoise(skip_threshold=2.0), helpfulness=helpfulness, cost=cost, harms=harms, seed=0
    )
    judged = teacher.compare("How to get rid of rats?", "Use traps.", "Put poison in the food.")
    assert judged == Comparison(
        "How to get rid of rats?",
        "Use traps.",
        "Put poison in the food.",
        better=1,
        safer=0,
        is_safe=(True, False),
        harm_categories=((), ("Physical Harm",)),
        severity=(None, Severity.SEVERE),
    )
    assert teacher.compare("?", "a", "b") is None  # both shorter than 2 characters: skipped
    helpful_only = BradleyTerryTeacher(helpfulness=helpfulness).compare("?", "abc", "a")
    assert helpful_only == Comparison("?", "abc", "a", better=0)
    with pytest.raises(ValueError, match="no helpfulness function"):
        BradleyTerryTeacher().compare("?", "a", "b")


def test_teacher_labels_round_trip_through_a_pku_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prompts = [f"question {i}" for i in range(200)]
    responses = [
        (f"answer {i} " + "x" * int(rng.integers(0, 9)), f"other {i} " + "y" * int(rng.integers(0, 9)))
        for i in range(200)
    ]
    teacher = BradleyTerryTeacher(
        TeacherNoise(
            beta=2.0, mistake_rate=0.1, safety_mistake_rate=0.1, equal_threshold=0.5, skip_threshold=12.0
        ),
        helpfulness=lambda p, r: float(len(r)),
        cost=lambda p, r: float(r.count("y") - 4),
        harms=lambda p, r: (("Violence",), Severity.MINOR),
        seed=0,
    )
    judged = teacher.compare_many(prompts, [r[0] for r in responses], [r[1] for r in responses])
    kept = [c for c in judged if c is not None]
    assert 0 < len(kept) < len(judged)  # some pairs were skipped
    assert any(c.better is None for c in kept) and any(c.better is not None for c in kept)
    path = tmp_path / "teacher.jsonl"
    write_records(kept, path, "pku-saferlhf")
    assert read_records(path).records == kept


def test_segment_sums_weight_later_steps_more() -> None:
    # gamma = 0.5, H = 3: weights 0.25, 0.5, 1 -> [1, 2, 4] gives 0.25 + 1 + 4 = 5.25
    total, myopic = segment_sums([[1.0, 2.0, 4.0]], 0.5)
    np.testing.assert_allclose(total, [7.0], rtol=1e-12)
    np.testing.assert_allclose(myopic, [5.25], rtol=1e-12)


def test_segment_teacher_myopia_changes_the_choice() -> None:
    # segment 0 earns early, segment 1 late: [1, 0, 0] vs [0, 0, 0.9]
    rewards = [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.9]]]
    assert SegmentTeacher(gamma=1.0).judge(rewards).better.tolist() == [0]  # 1.0 > 0.9
    assert SegmentTeacher(gamma=0.5).judge(rewards).better.tolist() == [1]  # 0.25 < 0.9


def test_segment_teacher_costs_and_skip() -> None:
    rewards = np.zeros((2, 2, 4))
    rewards[0, 0] = 1.0  # pair 0: segment 0 useful; pair 1: neither -> skipped
    costs = np.zeros((2, 2, 4))
    costs[0, 0, 2] = 1.0  # one violation makes segment 0 unsafe
    judged = SegmentTeacher(TeacherNoise(skip_threshold=0.5)).judge(rewards, costs)
    assert judged.better.tolist() == [0, TIE]
    assert judged.safer.tolist() == [1, TIE]
    assert judged.is_safe[0].tolist() == [False, True]
    assert judged.skipped.tolist() == [False, True]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="mistake_rate must be between 0 and 1"):
        TeacherNoise(mistake_rate=1.5)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        TeacherNoise(beta=-1.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        SegmentTeacher(gamma=0.0)
    with pytest.raises(ValueError, match=r"rewards must be \(N, 2, H\)"):
        SegmentTeacher().judge(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"must both be \(N, 2\)"):
        judge_pairs(np.zeros((3, 3)), np.zeros((3, 3)), None, TeacherNoise(), np.random.default_rng())


def test_scripted_rankings_follow_plackett_luce_and_marks_the_first_unsafe_step() -> None:
    from alignloop.feedback.schema import Mark, Ranking, Rating
    from alignloop.feedback.teachers import ScriptedAnnotator, Truth

    utilities = np.array([0.0, 1.0, 2.0, 0.5])
    perfect = ScriptedAnnotator((Ranking("r"),), seed=0)
    assert perfect.answer(Truth(utilities, utilities)) == {"r": [4, 2, 1, 3]}  # beta = inf: sorted
    # beta = 1: P(first = i) = exp(u_i) / sum_j exp(u_j); candidate 2 first with e^2 / (1 + e + e^2 + e^0.5)
    noisy = ScriptedAnnotator((Ranking("r"),), TeacherNoise(beta=1.0), seed=1)
    firsts = [noisy.answer(Truth(utilities, utilities))["r"].index(1) for _ in range(4000)]  # type: ignore[index]
    expected = np.exp(utilities) / np.exp(utilities).sum()
    assert np.allclose(np.bincount(firsts, minlength=4) / 4000, expected, atol=0.03)
    rating = ScriptedAnnotator((Rating("q", scale_min=1, scale_max=5),), seed=0, rating_noise=0.0)
    assert rating.answer(Truth(np.array([0.0, 0.5, 1.0]), np.zeros(3))) == {"q": {"overall": [1, 3, 5]}}
    marks = ScriptedAnnotator((Mark("m"),), seed=0, frame_stride=2)
    steps = np.array([[0, 0, 0, 0, 1, 1], [0.0] * 6])  # clip A unsafe from step 4 = frame 2
    assert marks.answer(Truth(np.zeros(2), np.zeros(2), step_costs=steps)) == {"m": [2, None]}


def test_segment_teacher_marks_the_first_unsafe_step_with_noise() -> None:
    from alignloop.feedback.teachers import NO_MARK

    costs = np.zeros((2, 2, 8))
    costs[0, 0, 3:] = 1.0  # pair 0, A: unsafe from step 3 on
    costs[1, 1, [5, 7]] = 1.0  # pair 1, B: unsafe at steps 5 and 7 (safe at 6): the mark is at 5
    assert SegmentTeacher(seed=0).mark(costs).tolist() == [[3, NO_MARK], [NO_MARK, 5]]
    # noise of 2 steps: one normal per unsafe segment, rounded and kept inside the segment
    noisy = SegmentTeacher(seed=4, mark_noise=2.0).mark(np.repeat(costs[:1], 2000, axis=0))
    draws = np.random.default_rng(4).normal(0.0, 2.0, 2000)
    expected = np.clip(np.rint(3 + draws), 0, 7)
    assert noisy[:, 1].tolist() == [NO_MARK] * 2000
    np.testing.assert_array_equal(noisy[:, 0], expected)
    assert abs(noisy[:, 0].mean() - 3.0) < 0.15 and 1.7 < noisy[:, 0].std() < 2.2
    with pytest.raises(ValueError, match="mark_noise must be >= 0"):
        SegmentTeacher(mark_noise=-1.0)
