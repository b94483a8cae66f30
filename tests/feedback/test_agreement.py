"""Agreement statistics against the worked examples of Krippendorff (2011) and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignloop.feedback.agreement import (
    cohen_kappa,
    coincidence_matrix,
    krippendorff_alpha,
    majority,
    pairwise_kappa,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: nominal data,
# 4 observers (columns A-D), 12 units (rows), missing values.
C = None
NOMINAL = [
    [1, 1, C, 1],
    [2, 2, 3, 2],
    [3, 3, 3, 3],
    [3, 3, 3, 3],
    [2, 2, 2, 2],
    [1, 2, 3, 4],
    [4, 4, 4, 4],
    [1, 1, 2, 1],
    [2, 2, 2, 2],
    [C, 5, 5, 5],
    [C, C, 1, 1],
    [C, 3, C, C],  # one value: not pairable
]
# Example A: binary data, two observers, no missing values (items as rows).
BINARY_A = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
BINARY_B = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]


def test_coincidence_matrix_of_the_nominal_example() -> None:
    # Working: o_cc += n_uc (n_uc - 1) / (m_u - 1), o_ck += n_uc n_uk / (m_u - 1).
    # o_11 = 3 (unit 1: 3*2/2) + 2 (unit 8: 3*2/3) + 2 (unit 11: 2*1/1) = 7
    # o_22 = 2 (unit 2) + 4 (unit 5) + 4 (unit 9) = 10;  o_33 = 4 + 4 = 8;  o_44 = 4;  o_55 = 3
    # o_12 = 1/3 (unit 6) + 1 (unit 8) = 4/3;  o_23 = 1 (unit 2) + 1/3 (unit 6) = 4/3
    # o_13 = o_14 = o_24 = o_34 = 1/3 (unit 6);  label 5 only with itself
    third = 1 / 3
    expected = np.array(
        [
            [7, 4 * third, third, third, 0],
            [4 * third, 10, 4 * third, third, 0],
            [third, 4 * third, 8, third, 0],
            [third, third, third, 4, 0],
            [0, 0, 0, 0, 3],
        ]
    )
    # codes follow first appearance: 1, 2, 3, 4, 5 -> 0..4
    np.testing.assert_allclose(coincidence_matrix(NOMINAL), expected, rtol=1e-12)


def test_krippendorff_alpha_nominal_example() -> None:
    # n_c = (9, 13, 10, 5, 3), n = 40, Σ o_cc = 32
    # α = 1 - (n - 1)(n - Σ o_cc) / (n² - Σ n_c²) = 1 - 39 * 8 / (1600 - 384) = 1 - 312 / 1216 = 0.743421...
    assert krippendorff_alpha(NOMINAL) == pytest.approx(1 - 312 / 1216, rel=1e-12)
    assert round(krippendorff_alpha(NOMINAL), 3) == 0.743  # the value the paper reports


def test_krippendorff_alpha_binary_example() -> None:
    # o_00 = 2 * 5 (units 4, 5, 7, 8, 10), o_11 = 2 (unit 2), o_01 = o_10 = 4 (units 1, 3, 6, 9)
    # n_0 = 14, n_1 = 6, n = 20: α = 1 - 19 * 8 / (400 - 196 - 36) = 1 - 152 / 168 = 0.0952 (paper: 0.095)
    ratings = [list(pair) for pair in zip(BINARY_A, BINARY_B, strict=True)]
    assert krippendorff_alpha(ratings) == pytest.approx(1 - 152 / 168, rel=1e-12)


def test_krippendorff_alpha_edge_cases() -> None:
    assert krippendorff_alpha([["A", "A"], ["B", "B"], ["tie", "tie", None]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([["A", "A"], ["A", "A"]]))  # one value: undefined
    assert math.isnan(krippendorff_alpha([["A", None], [None, "B"]]))  # nothing pairable
    assert math.isnan(krippendorff_alpha([]))
    with_nan = [[1.0, 1.0, float("nan")], [2.0, float("nan"), 2.0], [1.0, 2.0, 2.0]]
    with_none = [[1.0, 1.0, None], [2.0, None, 2.0], [1.0, 2.0, 2.0]]
    assert krippendorff_alpha(with_nan) == krippendorff_alpha(with_none)


def test_cohen_kappa_binary_example() -> None:
    # A\B: (0,0) 5, (0,1) 3, (1,0) 1, (1,1) 1 -> p_o = 6/10
    # p_A(0) = 0.8, p_B(0) = 0.6 -> p_e = 0.8*0.6 + 0.2*0.4 = 0.56; κ = 0.04 / 0.44 = 1/11
    assert cohen_kappa(BINARY_A, BINARY_B) == pytest.approx(1 / 11, rel=1e-12)


def test_cohen_kappa_textbook_table() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, κ = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, rel=1e-12)


def test_cohen_kappa_missing_and_edge_cases() -> None:
    assert cohen_kappa(BINARY_A + [None, 1], BINARY_B + [1, None]) == pytest.approx(1 / 11, rel=1e-12)
    assert cohen_kappa(["A", "B"], ["A", "B"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["A", "A"], ["A", "A"]))
    assert math.isnan(cohen_kappa([None], ["A"]))
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["A"], ["A", "B"])


def test_pairwise_kappa() -> None:
    ratings = [[a, b, a] for a, b in zip(BINARY_A, BINARY_B, strict=True)] + [[None, None, 1]]
    kappas = pairwise_kappa(ratings)
    assert kappas[(0, 1)] == pytest.approx(1 / 11)
    assert kappas[(0, 2)] == pytest.approx(1.0)
    assert kappas[(1, 2)] == pytest.approx(1 / 11)
    assert pairwise_kappa(ratings, min_shared=11) == {}


def test_majority() -> None:
    assert majority(["A", "A", "B", None]) == ("A", pytest.approx(2 / 3))
    assert majority(["A", "B"]) == (None, 0.5)
    label, share = majority([None])
    assert label is None and math.isnan(share)


def test_against_krippendorff_package() -> None:
    import krippendorff  # in the test extras: the cross-check runs, it never skips

    reliability = np.array([[np.nan if x is None else x for x in row] for row in NOMINAL], dtype=float).T
    expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")
    assert krippendorff_alpha(NOMINAL) == pytest.approx(expected, rel=1e-9)


def test_against_sklearn() -> None:
    from sklearn import metrics  # in the test extras

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 200).tolist(), rng.integers(0, 3, 200).tolist()
    assert cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b), rel=1e-9)


# Krippendorff (2011), example C again, read as ordinal and interval data: the paper gives
# alpha = 0.815 (ordinal) and 0.849 (interval) for it (nominal: 0.743).
@pytest.mark.parametrize(
    ("metric", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_alpha_of_the_worked_example_for_every_metric(metric: str, published: float) -> None:
    assert abs(krippendorff_alpha(NOMINAL, metric) - published) < 5e-4  # type: ignore[arg-type]


def test_alpha_agrees_with_the_krippendorff_package() -> None:
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    table = rng.integers(1, 6, size=(30, 4)).astype(float)  # 30 items, 4 annotators, scores 1-5
    table[rng.random(table.shape) < 0.2] = np.nan
    table[:10] = table[:10, :1]  # some agreement
    ratings = [[None if np.isnan(v) else int(v) for v in row] for row in table]
    for metric in ("nominal", "ordinal", "interval"):
        expected = krippendorff.alpha(reliability_data=table.T, level_of_measurement=metric)
        assert math.isclose(krippendorff_alpha(ratings, metric), expected, rel_tol=1e-5)  # type: ignore[arg-type]
