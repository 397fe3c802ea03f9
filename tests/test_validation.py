"""align.metrics.validation: one rule per input kind, and every metric uses it.

Each rule is tested on its own (every refusal names the field), then the same bad input
is given to the metrics that take it: they refuse it with the same message, because
they call the same check.
"""

from __future__ import annotations

import numpy as np
import pytest
from align.errors import InvalidInputError, NumericalError
from align.metrics.validation import (
    _SCAN_ROWS,
    check_bool,
    check_choice,
    check_features,
    check_present,
    check_scalar,
    check_triplets,
)

# ---------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("X", "problem"),
    [
        (np.zeros((3, 2), dtype=bool), "has dtype bool"),
        (np.zeros((3, 2), dtype=complex), "has dtype complex128"),
        (np.array([["a", "b"]]), "has dtype <U1"),
        (np.zeros(4), "has shape (4,)"),
        (np.zeros((2, 2, 2)), "has shape (2, 2, 2)"),
        (np.zeros((0, 3)), "is empty, shape (0, 3)"),
        (np.zeros((3, 0)), "is empty, shape (3, 0)"),
        ([[1.0, 2.0], [3.0]], "is not array-like"),
        (np.full((2, 3), np.nan), "has only all-NaN (missing) rows"),
    ],
)
def test_features_refusals_name_the_field(X: object, problem: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        check_features(X, "feats")
    assert err.value.field == "feats"
    assert err.value.problem.startswith(problem)


def test_features_missing_rows_and_non_finite_values() -> None:
    X = np.arange(12.0).reshape(4, 3)
    X[1] = np.nan  # a missing stimulus
    out, missing = check_features(X, "X")
    assert missing.tolist() == [False, True, False, False]
    assert out.dtype == np.float64 and out.flags.c_contiguous
    assert np.shares_memory(out, X)  # float64 C-contiguous input: no copy
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[2, 1] = bad
        with pytest.raises(NumericalError, match=r"X\[2, 1\] is .*row 2 'c' column 1"):
            check_features(Y, "X", row_names=["a", "b", "c", "d"])


def test_features_row_count_dtype_and_integers() -> None:
    with pytest.raises(InvalidInputError) as err:
        check_features(np.ones((3, 2)), "features", n_rows=4, rows_expected="4 rows, one each")
    assert (err.value.field, err.value.problem, err.value.expected) == (
        "features",
        "has 3 rows",
        "4 rows, one each",
    )
    f32 = np.ones((3, 2), dtype=np.float32)
    assert check_features(f32, as_float64=False)[0].dtype == np.float32
    assert check_features(f32)[0].dtype == np.float64
    ints, _ = check_features(np.ones((3, 2), dtype=np.int8), as_float64=False)
    assert ints.dtype == np.float64


# ---------------------------------------------------------------------------- triplets


@pytest.mark.parametrize(
    ("T", "field", "problem"),
    [
        (np.zeros((0, 3), dtype=int), "t", "is empty"),
        ([], "t", "has shape (0,)"),
        ([[0, 1]], "t", "has shape (1, 2)"),
        ([[0, 1, 2], [0, 1, 9]], "t[1]", "is [0, 1, 9], out of range"),
        ([[0, 1, 2], [-1, 1, 2]], "t[1]", "is [-1, 1, 2], out of range"),
        ([[0, 1, 2], [3, 1, 3]], "t[1]", "repeats a stimulus: [3, 1, 3]"),
        ([[0.0, 1.0, 2.0], [0.5, 1.0, 2.0]], "t[1]", "is [0.5, 1.0, 2.0]"),
        ([[0.0, 1.0, np.nan]], "t[0]", "is [0.0, 1.0, nan]"),
        (np.ones((1, 3), dtype=bool), "t", "has dtype bool"),
        (np.array([["0", "1", "2"]]), "t", "has dtype <U1"),
    ],
)
def test_triplet_refusals_name_the_field_and_row(T: object, field: str, problem: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        check_triplets(T, 5, "t")
    assert err.value.field == field
    assert err.value.problem == problem


def test_triplets_accept_whole_floats_and_return_int64() -> None:
    out = check_triplets(np.array([[0.0, 1.0, 2.0], [4.0, 3.0, 2.0]]), 5)
    assert out.dtype == np.int64 and out.flags.c_contiguous
    assert out.tolist() == [[0, 1, 2], [4, 3, 2]]


B = _SCAN_ROWS


@pytest.mark.parametrize(
    ("bad", "row", "problem"),
    [
        # B = _SCAN_ROWS, the scan's block: the cases span several blocks whatever it is
        # a repeat in a later block, another one later still: the first row is named
        ({B + 5: [7, 7, 1], 3 * B: [2, 0, 2]}, B + 5, "repeats"),
        # a repeat in an early block, out of range in a later one: range is checked first
        ({3: [4, 4, 1], 2 * B + 1: [0, 1, 50]}, 2 * B + 1, "out of range"),
        ({B - 1: [-3, 1, 2]}, B - 1, "out of range"),
        ({3 * B + 9: [0, 1, 49]}, None, None),  # the largest index is in range
    ],
)
def test_triplet_scan_over_blocks_agrees_with_whole_array_checks(
    bad: dict[int, list[int]], row: int | None, problem: str | None
) -> None:
    """The block-by-block scan (several blocks here) refuses exactly what the plain
    whole-array rules refuse, naming the same row."""
    rng = np.random.default_rng(0)
    T = np.stack([rng.permutation(np.arange(3)) + 3 * rng.integers(0, 16, 3) for _ in range(4)])
    T = np.tile(T, ((3 * B + 20) // 4, 1))
    for r, v in bad.items():
        T[r] = v
    n = 50
    out_of_range = np.flatnonzero(((T < 0) | (T >= n)).any(axis=1))
    repeats = np.flatnonzero((T[:, 0] == T[:, 1]) | (T[:, 0] == T[:, 2]) | (T[:, 1] == T[:, 2]))
    expected = out_of_range[0] if out_of_range.size else (repeats[0] if repeats.size else None)
    assert expected == row  # the reference agrees with the case as written
    if row is None:
        assert np.array_equal(check_triplets(T, n), T)
        return
    with pytest.raises(InvalidInputError) as err:
        check_triplets(T, n, "t")
    assert err.value.field == f"t[{row}]"
    assert problem is not None and problem in err.value.problem


def test_present_refuses_triplets_over_missing_rows() -> None:
    T = np.array([[0, 1, 2], [1, 3, 4]])
    check_present(T, np.zeros(5, dtype=bool))  # nothing missing: accepted
    with pytest.raises(InvalidInputError) as err:
        check_present(T, np.array([False, False, False, True, False]), "val")
    assert err.value.field == "val[1]"


# ---------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (True, {}, "a finite number"),
        (np.bool_(True), {}, "a finite number"),
        ("1", {}, "a finite number"),
        (float("nan"), {}, "a finite number"),
        (float("inf"), {"minimum": 0}, "a finite number >= 0"),
        (-1e-9, {"minimum": 0}, "a finite number >= 0"),
        (0.0, {"minimum": 0, "include_minimum": False}, "a finite number > 0"),
        (1.0, {"minimum": 0, "maximum": 1, "include_maximum": False}, "a finite number in [0, 1)"),
        (2.5, {"integer": True}, "an integer"),
        (1, {"integer": True, "minimum": 2}, "an integer >= 2"),
        (3, {"maximum": 2}, "a finite number <= 2"),
        (2, {"maximum": 2, "include_maximum": False}, "a finite number < 2"),
        (0.0, {"minimum": 0, "maximum": 1, "include_minimum": False}, "a finite number in (0, 1]"),
        (1.5, {"minimum": 0, "maximum": 1}, "a finite number in [0, 1]"),
    ],
)
def test_scalar_refusals(value: object, kwargs: dict, expected: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        check_scalar(value, "lam", **kwargs)
    assert (err.value.field, err.value.problem, err.value.expected) == (
        "lam",
        f"is {value!r}",
        expected,
    )


def test_scalar_accepts_and_converts() -> None:
    assert check_scalar(1, "x", minimum=0, maximum=1) == 1.0  # bounds included by default
    assert check_scalar(0, "x", minimum=0, maximum=1, include_maximum=False) == 0.0
    assert check_scalar(np.float32(0.5), "x", minimum=0, maximum=1) == 0.5
    v = check_scalar(np.int64(3), "n", integer=True, minimum=1)
    assert v == 3 and type(v) is int
    assert type(check_scalar(2, "x")) is float


def test_choice_and_bool() -> None:
    assert check_choice("dot", "similarity", ("cosine", "dot")) == "dot"
    with pytest.raises(InvalidInputError) as err:
        check_choice("pearson", "similarity", ("cosine", "dot"))
    assert err.value.field == "similarity" and err.value.expected == "one of 'cosine', 'dot'"
    with pytest.raises(InvalidInputError, match="similarity"):
        check_choice(["dot"], "similarity", ("cosine", "dot"))
    assert check_bool(np.bool_(False), "flag") is False
    assert check_bool(True, "flag") is True and check_bool(np.bool_(True), "flag") is True
    for bad in (0, 1, "yes", None):
        with pytest.raises(InvalidInputError) as err:
            check_bool(bad, "flag")
        assert err.value.field == "flag" and err.value.expected == "True or False"


# ---------------------------------------------------------- one rule, used everywhere


def _metric_calls(X: object) -> dict[str, object]:
    """Every metric entry point that takes a feature matrix, on ``X``."""
    from align.metrics.oddoneout import odd_one_out
    from align.metrics.rsa import compute_rdm

    T = np.array([[0, 1, 2], [1, 2, 3], [0, 2, 3]])
    calls = {
        "odd_one_out": lambda: odd_one_out(X, T, n_bootstrap=0),
        "compute_rdm": lambda: compute_rdm(X),
    }
    try:
        from align.metrics.glocal import knn_overlap
        from align.metrics.probe import TripletProbe

        calls["probe"] = lambda: TripletProbe().fit(X, T)
        calls["knn_overlap"] = lambda: knn_overlap(X, np.ones((4, 2)), k=1)
    except ImportError:  # pragma: no cover - torch is a core dependency here
        pass
    return calls


@pytest.mark.parametrize(
    ("X", "field_problem"),
    [
        (np.zeros((4, 2), dtype=bool), "has dtype bool"),
        (np.zeros(4), "has shape (4,)"),
        (np.full((4, 2), np.nan), "has only all-NaN (missing) rows"),
    ],
)
def test_every_metric_refuses_bad_features_with_the_same_message(
    X: np.ndarray, field_problem: str
) -> None:
    messages = set()
    for name, call in _metric_calls(X).items():
        with pytest.raises(InvalidInputError) as err:
            call()  # type: ignore[operator]
        assert err.value.problem.startswith(field_problem), name
        messages.add((err.value.problem, err.value.expected))
    assert len(messages) == 1


def test_every_metric_names_a_partly_nan_row_the_same_way() -> None:
    X = np.arange(8.0).reshape(4, 2)
    X[2, 1] = np.inf
    for name, call in _metric_calls(X).items():
        with pytest.raises(NumericalError, match=r"\[2, 1\] is inf \(row 2 column 1\)"):
            call()  # type: ignore[operator]
        assert name


def test_evaluate_names_the_stimulus_and_the_dataset_rows() -> None:
    from types import SimpleNamespace

    from align.evaluation import check_features as evaluate_features

    ds = SimpleNamespace(stimulus_ids=("cat", "dog", "yo-yo"), id="toy")  # what it reads
    X = np.ones((3, 2), dtype=np.float32)
    assert evaluate_features(X, ds).dtype == np.float32  # float dtype kept
    X[2, 0] = np.nan
    with pytest.raises(NumericalError, match=r"features\[2, 0\] is nan \(row 2 'yo-yo' column 0\)"):
        evaluate_features(X, ds)
    with pytest.raises(InvalidInputError) as err:
        evaluate_features(np.ones((2, 2)), ds)
    assert err.value.field == "features" and "stimulus of 'toy'" in str(err.value.expected)


def test_defaults_and_boundaries_of_features_and_triplets() -> None:
    # the default field names
    with pytest.raises(InvalidInputError) as err:
        check_features(np.zeros(3))
    assert err.value.field == "features"
    with pytest.raises(InvalidInputError) as err:
        check_triplets([[0, 1, 5]], 5)
    assert err.value.field == "triplets[0]"
    with pytest.raises(InvalidInputError) as err:
        check_present(np.array([[0, 1, 2]]), np.array([True, False, False]))
    assert err.value.field == "triplets[0]"
    # one row and one column are a feature matrix; the missing mask is per row
    out, missing = check_features(np.ones((1, 1)))
    assert out.shape == (1, 1) and missing.tolist() == [False]
    _, missing = check_features(np.ones((3, 5)))
    assert missing.dtype == bool and missing.shape == (3,) and not missing.any()
    # index n_objects is out of range (0-based), and is the row named
    with pytest.raises(InvalidInputError) as err:
        check_triplets([[0, 1, 2], [0, 1, 3]], 3, "t")
    assert err.value.field == "t[1]"
    # a repeat in the first two positions
    with pytest.raises(InvalidInputError, match="repeats a stimulus"):
        check_triplets([[2, 2, 1]], 3)
