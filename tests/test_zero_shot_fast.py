"""The fast zero-shot paths give the reference answers exactly (METHODS §2).

``predict_positions`` decides on int16 order codes and re-decides ties on float64; the
reference is ``predict_from_similarities`` on the float64 similarities. ``_group`` sorts
once; the reference groups with a dict. ``_distinct_rows_counts`` replaces
``np.unique(axis=0)`` and must keep its order (the multinomial draws depend on it)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from align.metrics.bootstrap import _distinct_rows_counts
from align.metrics.oddoneout import (
    _distinct_rows,
    _group,
    _order_codes,
    _sorted_with_order,
    predict_from_similarities,
    predict_positions,
    triplet_similarities,
)


def _triplets(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return np.array([rng.choice(n, 3, replace=False) for _ in range(m)], dtype=np.int64)


def _reference(X: np.ndarray, T: np.ndarray, similarity: str) -> np.ndarray:
    return predict_from_similarities(*triplet_similarities(X, T, similarity))


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_fast_prediction_keeps_exact_ties(similarity: str) -> None:
    rng = np.random.default_rng(3)
    full_ties = 0
    for trial in range(60):
        n = int(rng.integers(3, 30))
        X = rng.integers(-2, 3, size=(n, int(rng.integers(1, 4)))).astype(np.float64)
        if trial % 2:
            X[rng.integers(0, n, size=n // 3)] = X[0]  # duplicate rows: forced-equal pairs
        T = _triplets(rng, n, 2000)  # many triplets: the matrix path
        got = predict_positions(X, T, similarity)
        want = _reference(X, T, similarity)
        np.testing.assert_array_equal(got, want)
        full_ties += int((want == -1).sum())
    assert full_ties > 0  # the data really exercise the tie rule


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e6])
@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_fast_prediction_on_close_values(similarity: str, scale: float) -> None:
    """Clustered features (cosines within a narrow band) give many equal int16 codes;
    tiny and huge magnitudes test the power-of-two scaling before float16."""
    rng = np.random.default_rng(5)
    X = (np.abs(rng.standard_normal((300, 32))) + 5.0) * scale
    T = _triplets(rng, 300, 30_000)
    np.testing.assert_array_equal(predict_positions(X, T, similarity), _reference(X, T, similarity))


def _dict_groups(T: np.ndarray) -> tuple[dict, dict]:
    members: dict[tuple[int, ...], list[int]] = defaultdict(list)
    answers: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for r, (a, b, c) in enumerate(T.tolist()):
        key = tuple(sorted((a, b, c)))
        members[key].append(r)
        answers[key][c] += 1
    return members, answers


def test_single_sort_grouping_matches_a_dict() -> None:
    rng = np.random.default_rng(7)
    n = 8
    T = _triplets(rng, n, 400)  # 56 possible sets: many repeats, varied answers
    groups = _group(T, "odd-one-out", n)
    members, answers = _dict_groups(T)
    assert groups.sizes.size == len(members)
    for key, rows in members.items():
        g = groups.inverse[rows[0]]
        assert (groups.inverse[rows] == g).all()
        assert groups.sizes[g] == len(rows)
        counts = answers[key]
        top = max(counts.values())
        assert groups.majority_share[g] == pytest.approx(top / len(rows))
        assert groups.n_top[g] == sum(1 for v in counts.values() if v == top)
        mine = groups.answer_group == g
        got = zip(groups.answers[mine].tolist(), groups.answer_counts[mine].tolist(), strict=True)
        assert dict(got) == dict(counts)
        assert list(groups.answers[mine]) == sorted(counts)  # answers in object order


def test_distinct_rows_counts_equals_numpy_unique() -> None:
    rng = np.random.default_rng(11)
    cases = [
        rng.integers(0, 6, size=(500, 2)).astype(np.float64),
        np.c_[rng.integers(0, 4, size=300) / rng.integers(1, 4, size=300), np.ones(300)],
        np.round(rng.random((400, 3)) * 3, 1),
        np.c_[rng.integers(0, 3, size=50).astype(np.float64), rng.integers(1, 9, size=50)],
    ]
    for rows in cases:
        got_rows, got_counts = _distinct_rows_counts(rows)
        want_rows, want_counts = np.unique(rows, axis=0, return_counts=True)
        np.testing.assert_array_equal(got_rows, want_rows)
        np.testing.assert_array_equal(got_counts, want_counts)


@pytest.mark.parametrize("key_bits", [3, 40, 62])
def test_packed_sort_is_a_stable_argsort(key_bits: int) -> None:
    """One np.sort of ``key << b | index`` gives numpy's stable argsort and the sorted keys
    (and the argsort fallback, when key and index do not fit one int64, the same)."""
    rng = np.random.default_rng(key_bits)
    for m in (1, 2, 7, 1000, 70_000):
        keys = rng.integers(0, 1 << min(key_bits, 12), size=m, dtype=np.int64)  # many equal
        if key_bits == 40:
            keys = rng.integers(0, 1 << 40, size=m, dtype=np.int64)
        order, sorted_keys = _sorted_with_order(keys, key_bits)
        expected = np.argsort(keys, kind="stable")
        assert np.array_equal(order, expected)
        assert np.array_equal(sorted_keys, keys[expected])


def test_distinct_rows_merges_equal_rows_and_keeps_distinct_ones() -> None:
    """The projection shortcut never hides a duplicate: rows equal as floats (-0.0 and
    +0.0 included) share one distinct row; a matrix without duplicates is returned as is."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 7))
    Xu, inverse = _distinct_rows(X)
    assert Xu.shape == X.shape and np.array_equal(inverse, np.arange(50))
    Y = X.copy()
    Y[10] = Y[3]
    Y[40] = 0.0
    Y[41] = -0.0  # equal to row 40 as floats
    Yu, inv = _distinct_rows(Y)
    assert Yu.shape[0] == 48
    assert inv[10] == inv[3] and inv[41] == inv[40]
    assert len(set(inv.tolist())) == 48
    assert np.array_equal(Yu[inv], Y + 0.0)  # every row is its distinct row
    # integer-valued features with many exact duplicates
    Z = rng.integers(0, 2, size=(200, 3)).astype(np.float64)
    Zu, zinv = _distinct_rows(Z)
    assert Zu.shape[0] == len({tuple(r) for r in Z.tolist()})
    assert np.array_equal(Zu[zinv], Z)


def test_order_codes_never_reverse_the_float64_order() -> None:
    """``a < b`` in codes implies ``a < b`` in values, and equal values get equal codes
    (the two zeros included), on values spanning many binades and both signs."""
    rng = np.random.default_rng(9)
    values = np.concatenate(
        [
            rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 3, size=5000),
            [0.0, -0.0, 1e-300, -1e-300, 5e-324, 1.0, -1.0],
        ]
    )
    codes = _order_codes(values).astype(np.int64)
    order = np.argsort(values, kind="stable")
    v, c = values[order], codes[order]
    assert (np.diff(c) >= 0).all()  # monotone: never reversed
    equal = v[1:] == v[:-1]
    assert (c[1:][equal] == c[:-1][equal]).all()


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_an_untouched_missing_stimulus_neither_warns_nor_changes_the_codes(
    similarity: str,
) -> None:
    """An all-NaN row (a missing stimulus) that no triplet touches makes NaN rows in the
    similarity matrix: the fast path must give the loop's predictions without a float16
    overflow warning (a NaN maximum used to scale every code by 2^15) and on the
    matrix path, not by recomputing every triplet (issue 15's finding)."""
    import warnings

    from align.metrics import oddoneout
    from align.metrics.oddoneout import odd_one_out

    rng = np.random.default_rng(11)
    X = rng.standard_normal((8, 3)) * 100.0
    X[7] = np.nan
    T = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 4]] * 50, dtype=np.int64)
    calls = []
    original = oddoneout.triplet_similarities

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return original(*args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pred = predict_positions(X, T, similarity)
        oddoneout.triplet_similarities = counting
        try:
            predict_positions(X, T, similarity)
        finally:
            oddoneout.triplet_similarities = original
        res = odd_one_out(X, T, similarity, n_bootstrap=0)
    assert calls == []  # decided on the matrix, no row-wise recomputation
    np.testing.assert_array_equal(pred, _reference(X[:7], T, similarity))
    assert res.accuracy == pytest.approx(float(np.mean(_reference(X[:7], T, similarity) == 2)))
