"""How much annotators agree: Krippendorff's α (nominal, ordinal, interval), Cohen's κ, majority labels.

Ratings are an items × annotators table of labels (any hashable: "A", "B", "tie", True, 3);
None or NaN marks an item an annotator did not label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations
from typing import Any, Literal

import numpy as np


def _missing(label: Any) -> bool:
    return label is None or (isinstance(label, float) and math.isnan(label))


def _codes(ratings: Sequence[Sequence[Any]], order: Sequence[Any] | None = None) -> tuple[np.ndarray, int]:
    """Labels as integer codes (items, annotators), -1 = missing; and the number of labels.
    Codes follow `order` when given (every label must be in it), else order of appearance."""
    index: dict[Hashable, int] = {v: i for i, v in enumerate(order)} if order is not None else {}
    rows = [[-1 if _missing(x) else index.setdefault(x, len(index)) for x in row] for row in ratings]
    width = max((len(row) for row in rows), default=0)
    codes = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        codes[i, : len(row)] = row
    return codes, len(index)


def coincidence_matrix(ratings: Sequence[Sequence[Any]], order: Sequence[Any] | None = None) -> np.ndarray:
    """Krippendorff's coincidence matrix o (K, K) over the pairable items (≥ 2 labels).

    An item u with m_u labels, n_uc of them equal to c, adds n_uc n_uk / (m_u - 1) to o[c, k]
    for c ≠ k and n_uc (n_uc - 1) / (m_u - 1) to o[c, c]. Labels are coded in `order` (else in
    order of appearance).
    """
    codes, k = _codes(ratings, order)
    counts = np.zeros((len(codes), k))  # (U, K): n_uc
    for label in range(k):
        counts[:, label] = (codes == label).sum(axis=1)
    m = counts.sum(axis=1)  # (U,)
    pairable = m >= 2
    counts, m = counts[pairable], m[pairable]
    weighted = counts / (m - 1)[:, None]  # (U, K)
    return weighted.T @ counts - np.diag(weighted.sum(axis=0))


Metric = Literal["nominal", "ordinal", "interval"]


def _differences(values: np.ndarray, n_c: np.ndarray, metric: Metric) -> np.ndarray:
    """δ²(c, k) of Krippendorff (2011) between sorted values (K,), with n_c their marginals."""
    if metric == "nominal":
        return 1.0 - np.eye(len(values))
    if metric == "interval":
        return (values[:, None] - values[None, :]) ** 2
    cumulative = np.cumsum(n_c)  # ordinal: (sum of n_g for g from c to k - (n_c + n_k) / 2)^2
    between = cumulative[None, :] - cumulative[:, None] + n_c[:, None]  # sum over g in [c, k] for c <= k
    between = np.where(np.arange(len(values))[None, :] >= np.arange(len(values))[:, None], between, between.T)
    return (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2


def krippendorff_alpha(ratings: Sequence[Sequence[Any]], metric: Metric = "nominal") -> float:
    """Krippendorff's α = 1 - (n - 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck.

    Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability". `nominal` labels may be
    anything hashable (δ² = 1 between different labels, which gives the nominal formula
    1 - (n - 1)(n - Σ_c o_cc) / (n² - Σ_c n_c²)); `ordinal` and `interval` labels are numbers
    (ranks, scores, frames), ordered by value. NaN when fewer than two labels are pairable or only
    one label value occurs (α is undefined there).
    """
    order = None
    if metric != "nominal":
        order = sorted({x for row in ratings for x in row if not _missing(x)})
    o = coincidence_matrix(ratings, order)
    n_c = o.sum(axis=1)  # (K,)
    n = n_c.sum()
    if n < 2 or len(n_c) < 2:
        return math.nan
    delta = _differences(
        np.asarray(order if order is not None else range(len(n_c)), dtype=float), n_c, metric
    )
    expected = float((np.outer(n_c, n_c) * delta).sum())
    if expected <= 0:
        return math.nan
    return float(1.0 - (n - 1) * float((o * delta).sum()) / expected)


def cohen_kappa(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> float:
    """Cohen's κ = (p_o - p_e) / (1 - p_e) over the items both annotators labelled.

    p_o is the share of items they agree on, p_e = Σ_c p_a(c) p_b(c) the agreement expected from
    their label frequencies. NaN when no item is shared or p_e = 1 (both always say the same label).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"the two annotators must label the same items: {len(labels_a)} != {len(labels_b)}")
    codes, k = _codes([[a, b] for a, b in zip(labels_a, labels_b, strict=True)])
    shared = codes[(codes >= 0).all(axis=1)]  # (N, 2)
    if len(shared) == 0:
        return math.nan
    p_observed = float(np.mean(shared[:, 0] == shared[:, 1]))
    p_a = np.bincount(shared[:, 0], minlength=k) / len(shared)
    p_b = np.bincount(shared[:, 1], minlength=k) / len(shared)
    p_expected = float(p_a @ p_b)
    if p_expected >= 1.0:
        return math.nan
    return (p_observed - p_expected) / (1.0 - p_expected)


def pairwise_kappa(ratings: Sequence[Sequence[Any]], *, min_shared: int = 1) -> dict[tuple[int, int], float]:
    """Cohen's κ for every pair of annotator columns that share at least `min_shared` items."""
    width = max((len(row) for row in ratings), default=0)
    columns = [[row[j] if j < len(row) else None for row in ratings] for j in range(width)]
    out = {}
    for i, j in combinations(range(width), 2):
        shared = sum(not _missing(a) and not _missing(b) for a, b in zip(columns[i], columns[j], strict=True))
        if shared >= min_shared:
            out[(i, j)] = cohen_kappa(columns[i], columns[j])
    return out


def majority(labels: Sequence[Any]) -> tuple[Any, float]:
    """(the most frequent label, its share of the given labels); the label is None on a tie.

    Missing labels are left out. An empty list gives (None, nan).
    """
    counts = Counter(x for x in labels if not _missing(x))
    if not counts:
        return None, math.nan
    (top, top_count), *rest = counts.most_common()
    share = top_count / sum(counts.values())
    if rest and rest[0][1] == top_count:
        return None, share
    return top, share
