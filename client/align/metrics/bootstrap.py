"""Percentile bootstrap confidence intervals, shared by every metric.

Two entry points:

- :func:`bootstrap_ci` - any statistic: it is called with the indices of one resample
  (drawn with replacement). With ``groups`` whole groups are resampled (a cluster
  bootstrap: e.g. every response to one distinct triplet travels together), and the
  statistic receives the indices of all members of the drawn groups.
- :func:`bootstrap_mean_ci` - the common case of a mean (or, with groups, a ratio of
  sums: correct answers over responses). It is exact and fast on millions of values:
  resampling ``G`` units with replacement gives each unit a multinomial count, and the
  statistic depends only on how many times each DISTINCT unit value was drawn, so we
  draw multinomial counts over the distinct values (usually a handful: 0/1, or
  (correct, size) pairs) instead of materialising ``n_bootstrap x G`` indices.
- :func:`cluster_mean` / :func:`paired_cluster_difference` - THE estimator of every
  accuracy on triplet data (zero-shot, probe, per concept, per layer; METHODS.md section
  2): the point estimate is the mean over responses (correct answers / responses) and
  its interval resamples DISTINCT triplets (all responses of one travel together).
  The paired variant takes two correctness vectors on the same responses and
  recomputes both on the same resample, giving the interval of their difference.
  Resamples are drawn explicitly, one ``rng.integers(0, G, G)`` per resample (so a
  brute-force loop with the same seed draws the same resamples); above
  ``_MAX_EXPLICIT`` group draws in all, the exact multinomial shortcut over distinct
  unit values is used instead (same distribution, different stream).

Intervals are percentile intervals: the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of the resampled statistics. Everything is seeded
(``np.random.default_rng(seed)``): equal inputs give equal intervals.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, NumericalError
from ..results import Result

__all__ = [
    "ClusterEstimate",
    "PairedEstimate",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "check_bootstrap_options",
    "cluster_mean",
    "distinct_triplet_groups",
    "paired_cluster_difference",
    "percentile_interval",
    "resample_indices",
]

# Above this many distinct unit values the multinomial shortcut stops paying off.
_MAX_DISTINCT_VALUES = 4096
# Explicit resampling (n_bootstrap x units group draws) up to this many draws in all.
_MAX_EXPLICIT = 20_000_000


def check_bootstrap_options(n_bootstrap: object, confidence: object, seed: object) -> None:
    """Raise InvalidInputError unless the three bootstrap options are usable."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral):
        raise InvalidInputError("n_bootstrap", f"is {n_bootstrap!r}", "an integer >= 0")
    if n_bootstrap < 0:
        raise InvalidInputError("n_bootstrap", f"is {n_bootstrap}", "an integer >= 0")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or not 0.0 < float(confidence) < 1.0
    ):
        raise InvalidInputError("confidence", f"is {confidence!r}", "a number in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidInputError("seed", f"is {seed!r}", "an integer >= 0")


def percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile interval of bootstrap statistics; NaN resamples are ignored.

    Returns None when no resample gave a finite statistic.
    """
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _group_members(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, sizes): members of group g are order[starts[g]:starts[g] + sizes[g]]."""
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return order, starts, sizes


def _check_groups(groups: object, n: int) -> np.ndarray:
    arr = np.asarray(groups)
    if arr.shape != (n,):
        raise InvalidInputError("groups", f"has shape {arr.shape}", f"({n},): one label per value")
    return arr


def resample_indices(
    rng: np.random.Generator, n: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Indices of one bootstrap resample of ``n`` items (whole groups when given)."""
    if groups is None:
        return rng.integers(0, n, size=n)
    order, starts, sizes = _group_members(_check_groups(groups, n))
    return _resample_groups(rng, order, starts, sizes)


def _resample_groups(
    rng: np.random.Generator, order: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    drawn = rng.integers(0, sizes.size, size=sizes.size)
    # Vectorised concatenation of the drawn groups' member ranges.
    lengths = sizes[drawn]
    offsets = np.repeat(starts[drawn] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return order[np.arange(int(lengths.sum())) + offsets]


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ``statistic(indices)`` over ``n`` items.

    ``statistic`` gets an int array of indices (with repeats) into the ``n`` items and
    returns a float; NaN results are ignored when forming the interval. With ``groups``
    (``(n,)`` labels) whole groups are drawn with replacement, as many as there are
    groups. Returns None when ``n_bootstrap`` is 0 or no resample gave a finite value.
    """
    check_bootstrap_options(n_bootstrap, confidence, seed)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InvalidInputError("n", f"is {n!r}", "an integer >= 1 (number of items)")
    if n_bootstrap == 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(n_bootstrap, dtype=np.float64)
    if groups is None:
        for b in range(n_bootstrap):
            stats[b] = statistic(rng.integers(0, n, size=n))
    else:
        order, starts, sizes = _group_members(_check_groups(groups, n))
        for b in range(n_bootstrap):
            stats[b] = statistic(_resample_groups(rng, order, starts, sizes))
    return percentile_interval(stats, confidence)


def _distinct_units(sums: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (sum, size) unit values, as a (k, 2) array, and how often each occurs."""
    max_size = int(sizes.max())
    if (sums == np.round(sums)).all() and sums.min() >= 0:
        # Integer sums (counts of correct answers): encode each pair as one integer.
        code = sums.astype(np.int64) * (max_size + 1) + sizes.astype(np.int64)
        if int(code.max()) < 10_000_000:
            tally = np.bincount(code)
            present = np.flatnonzero(tally)
            counts = tally[present]
        else:
            present, counts = np.unique(code, return_counts=True)
        pairs = np.stack([present // (max_size + 1), present % (max_size + 1)], axis=1)
        return pairs.astype(np.float64), counts
    if max_size == 1 and (sizes == 1).all():
        values, counts = np.unique(sums, return_counts=True)
        return np.stack([values, np.ones_like(values)], axis=1), counts
    distinct, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
    return distinct, counts


def bootstrap_mean_ci(
    values: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ``mean(values)``.

    Without ``groups`` each value is a unit. With ``groups`` (``(n,)`` labels) the units
    are the groups and the statistic of a resample is ``sum of drawn groups' values /
    number of their members`` (a ratio estimator; for the full sample it is the plain
    mean). Exact in distribution (multinomial counts over distinct unit values), so it
    costs O(n + n_bootstrap x distinct values) rather than O(n_bootstrap x n).
    Returns None when ``n_bootstrap`` is 0.
    """
    check_bootstrap_options(n_bootstrap, confidence, seed)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if vals.size == 0:
        raise InvalidInputError("values", "is empty", "at least one value")
    if not np.isfinite(vals).all():
        raise NumericalError("bootstrap_mean_ci: values contain NaN or infinity")
    if n_bootstrap == 0:
        return None
    sums: np.ndarray
    sizes: np.ndarray
    if groups is None:
        sums, sizes = vals, np.ones_like(vals)
    else:
        labels = _check_groups(groups, vals.size)
        if np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0:
            sizes = np.bincount(labels).astype(np.float64)
            sums = np.bincount(labels, weights=vals, minlength=sizes.size)
            used = sizes > 0
            sums, sizes = sums[used], sizes[used]
        else:
            _, inverse = np.unique(labels, return_inverse=True)
            inverse = inverse.reshape(-1)
            sums = np.bincount(inverse, weights=vals)
            sizes = np.bincount(inverse).astype(np.float64)
    n_units = sums.size
    rng = np.random.default_rng(seed)
    distinct, counts = _distinct_units(sums, sizes)
    if distinct.shape[0] <= _MAX_DISTINCT_VALUES:
        draws = rng.multinomial(n_units, counts / n_units, size=n_bootstrap).astype(np.float64)
        stats = (draws @ distinct[:, 0]) / (draws @ distinct[:, 1])
    else:
        stats = np.empty(n_bootstrap, dtype=np.float64)
        for b in range(n_bootstrap):
            idx = rng.integers(0, n_units, size=n_units)
            stats[b] = sums[idx].sum() / sizes[idx].sum()
    interval = percentile_interval(stats, float(confidence))
    if interval is None:  # pragma: no cover - finite inputs give finite ratios
        raise NumericalError("bootstrap_mean_ci: no finite resample")
    return interval


# --------------------------------------------------------------------------- clusters


@dataclasses.dataclass(frozen=True)
class ClusterEstimate(Result):
    """A mean over responses with its distinct-unit (cluster) bootstrap interval.

    ``value`` = sum of values / number of responses; ``ci`` resamples the ``n_units``
    units (distinct triplets) with replacement (None when ``n_bootstrap`` is 0).
    """

    value: float
    ci: tuple[float, float] | None
    n_units: int
    n_values: int
    n_bootstrap: int
    confidence: float
    seed: int
    unit: str


@dataclasses.dataclass(frozen=True)
class PairedEstimate(Result):
    """Two means on the same responses and their difference ``a - b``, every interval
    from the SAME cluster resamples (a paired interval for the difference)."""

    a: float
    b: float
    difference: float
    ci_a: tuple[float, float] | None
    ci_b: tuple[float, float] | None
    ci_difference: tuple[float, float] | None
    n_units: int
    n_values: int
    n_bootstrap: int
    confidence: float
    seed: int
    unit: str


def _unit_sums(
    columns: Sequence[np.ndarray], groups: object | None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-unit sums of each column and unit sizes (units: groups, or single values)."""
    n = columns[0].size
    if groups is None:
        return [c.astype(np.float64) for c in columns], np.ones(n)
    labels = _check_groups(groups, n)
    if np.issubdtype(labels.dtype, np.integer) and n and labels.min() >= 0:
        inverse = labels.astype(np.int64)
    else:
        _, inv = np.unique(labels, return_inverse=True)
        inverse = inv.reshape(-1).astype(np.int64)
    sizes = np.bincount(inverse).astype(np.float64)
    used = sizes > 0
    sums = [np.bincount(inverse, weights=c, minlength=sizes.size)[used] for c in columns]
    return sums, sizes[used]


def _cluster_ratio_stats(
    sums: list[np.ndarray], sizes: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """(n_bootstrap, len(sums)) resampled ratios sum(column) / sum(sizes)."""
    rng = np.random.default_rng(seed)
    G = sizes.size
    stacked = np.stack([*sums, sizes], axis=1)  # (G, c + 1)
    if G * n_bootstrap <= _MAX_EXPLICIT:
        totals = np.empty((n_bootstrap, stacked.shape[1]))
        for b in range(n_bootstrap):
            drawn = rng.integers(0, G, size=G)
            totals[b] = np.bincount(drawn, minlength=G).astype(np.float64) @ stacked
    else:
        distinct, counts = _distinct_rows_counts(stacked)
        if distinct.shape[0] <= _MAX_DISTINCT_VALUES:
            draws = rng.multinomial(G, counts / G, size=n_bootstrap).astype(np.float64)
            totals = draws @ distinct
        else:
            totals = np.empty((n_bootstrap, stacked.shape[1]))
            for b in range(n_bootstrap):
                totals[b] = stacked[rng.integers(0, G, size=G)].sum(axis=0)
    return totals[:, :-1] / totals[:, -1:]


def _distinct_rows_counts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_counts=True)`` in linear time for the usual case.

    Each column is coded by its value when it holds small non-negative integers (counts
    of correct answers, unit sizes) and by its rank otherwise; the codes combine into one
    integer per row that keeps the rows' lexicographic order, so the distinct rows come
    out in the same order as ``np.unique`` gives them (the multinomial draws depend on
    that order). Falls back to ``np.unique`` when the combined codes would not fit."""
    codes: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    for col in rows.T:
        code = col.astype(np.int64) if col.size and col.min() >= 0 and col.max() < 1 << 20 else None
        if code is not None and (code == col).all():  # small whole numbers: code = value
            level = np.arange(int(code.max()) + 1, dtype=np.float64)
        else:
            level, code = np.unique(col, return_inverse=True)
            code = code.reshape(-1).astype(np.int64)
        codes.append(code)
        levels.append(level)
    bases = [max(1, lv.size) for lv in levels]
    if float(np.prod(np.asarray(bases, dtype=np.float64))) >= 2.0**62:
        return np.unique(rows, axis=0, return_counts=True)  # pragma: no cover - huge codes
    key = np.zeros(rows.shape[0], dtype=np.int64)
    for code, base in zip(codes, bases, strict=True):
        key = key * base + code
    if int(key.max(initial=0)) < 10_000_000:
        tally = np.bincount(key)
        present = np.flatnonzero(tally)
        counts = tally[present]
    else:
        present, counts = np.unique(key, return_counts=True)
    out = np.empty((present.size, rows.shape[1]), dtype=np.float64)
    rest = present
    for j in range(rows.shape[1] - 1, -1, -1):
        out[:, j] = levels[j][rest % bases[j]]
        rest = rest // bases[j]
    return out, counts


def _check_values(values: object, field: str, n: int | None = None) -> np.ndarray:
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if vals.size == 0:
        raise InvalidInputError(field, "is empty", "at least one value")
    if n is not None and vals.size != n:
        raise InvalidInputError(field, f"has {vals.size} values", f"{n}, one per response")
    if not np.isfinite(vals).all():
        raise NumericalError(f"{field}: values contain NaN or infinity")
    return vals


def _cluster_resamples(
    columns: Sequence[object],
    fields: Sequence[str],
    groups: object | None,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """The checks and the resampling :func:`cluster_mean` and
    :func:`paired_cluster_difference` share: ``(checked value columns, unit sizes,
    (n_bootstrap, len(columns)) resampled means or None without a bootstrap)``. Every
    column must have the first one's length; all columns use the SAME resamples."""
    check_bootstrap_options(n_bootstrap, confidence, seed)
    first = _check_values(columns[0], fields[0])
    checked = [
        first,
        *(_check_values(c, f, first.size) for c, f in zip(columns[1:], fields[1:], strict=True)),
    ]
    sums, sizes = _unit_sums(checked, groups)
    stats = _cluster_ratio_stats(sums, sizes, int(n_bootstrap), int(seed)) if n_bootstrap else None
    return checked, sizes, stats


def cluster_mean(
    values: object,
    groups: object | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str | None = None,
) -> ClusterEstimate:
    """Mean of ``values`` (e.g. 0/1 correctness per response) with a cluster bootstrap
    interval over ``groups`` (the distinct triplet of each response; None: every value
    is its own unit). The point estimate is the full-sample value of the resampled
    statistic (responses-weighted mean), so estimate and interval agree."""
    ((vals,), sizes, stats) = _cluster_resamples(
        [values], ["values"], groups, n_bootstrap, confidence, seed
    )
    ci = None if stats is None else percentile_interval(stats[:, 0], float(confidence))
    return ClusterEstimate(
        value=float(vals.mean()),
        ci=ci,
        n_units=int(sizes.size),
        n_values=int(vals.size),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
        unit=unit or ("distinct triplet" if groups is not None else "value"),
    )


def paired_cluster_difference(
    values_a: object,
    values_b: object,
    groups: object | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str | None = None,
) -> PairedEstimate:
    """``mean(a) - mean(b)`` of two value vectors on the SAME responses, with a paired
    cluster bootstrap: each resample of the units recomputes both means, so the
    interval of the difference keeps their correlation (and ``ci_a``/``ci_b`` equal
    :func:`cluster_mean`'s intervals for the same seed when resampling explicitly)."""
    ((a, b), sizes, stats) = _cluster_resamples(
        [values_a, values_b], ["values_a", "values_b"], groups, n_bootstrap, confidence, seed
    )
    ci_a = ci_b = ci_d = None
    if stats is not None:
        ci_a = percentile_interval(stats[:, 0], float(confidence))
        ci_b = percentile_interval(stats[:, 1], float(confidence))
        ci_d = percentile_interval(stats[:, 0] - stats[:, 1], float(confidence))
    ma, mb = float(a.mean()), float(b.mean())
    return PairedEstimate(
        a=ma,
        b=mb,
        difference=ma - mb,
        ci_a=ci_a,
        ci_b=ci_b,
        ci_difference=ci_d,
        n_units=int(sizes.size),
        n_values=int(a.size),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
        unit=unit or ("distinct triplet" if groups is not None else "value"),
    )


def distinct_triplet_groups(triplets: object) -> np.ndarray:
    """``(m,)`` int64 label of each response's distinct triplet (the unordered set of its
    three objects), the unit every triplet bootstrap resamples."""
    T = np.asarray(triplets, dtype=np.int64)
    if T.ndim != 2 or T.shape[1] != 3:
        raise InvalidInputError("triplets", f"has shape {T.shape}", "an (m, 3) integer array")
    canon = np.sort(T, axis=1)
    _, inverse = np.unique(canon, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)
