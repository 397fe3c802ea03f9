"""Representational similarity analysis (METHODS.md section 5).

A model RDM (``1 - cosine``, ``1 - Pearson`` or euclidean distance between feature rows)
is compared with the human RDM over the upper triangle (diagonal excluded) by Spearman
(default), Pearson or Kendall's tau-a. Human similarity matrices (RSMs) are turned into
dissimilarities by negation, explicitly, and the result records it.

Scales (METHODS.md section 5, corrected). With several subjects the headline score is
the MEAN OVER SUBJECTS of the correlation between the model RDM and each subject's RDM
(rsatoolbox ``eval_fixed``): the quantity the leave-one-subject-out noise ceiling
bounds, reported beside it. The correlation with the subject-MEAN RDM (higher: the mean
averages noise away) is reported apart as ``group``, never against that ceiling. A
single group matrix (things48, peterson-animals) has one scale; it gets a ceiling only
from split halves (Spearman-Brown of the split-half correlation). The bootstrap CI
resamples stimuli (subjects are held fixed: the interval is over stimuli only).

Speed: the bootstrap never recomputes an RDM. Rebuilding both RDMs from resampled rows
and dropping the pairs that pair a stimulus with its own duplicate leaves exactly the
original pairs ``(i, j)``, each repeated ``c_i * c_j`` times (``c`` = how often each
stimulus was drawn). So every resample is a *weighted* comparison of the two fixed
pair vectors: weighted ranks from one pre-computed sort (ties handled as average
ranks of the repeated values), weighted Pearson, or a weighted tau-a count. This is the
same number the naive rebuild gives, to float rounding (tests check it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError, NumericalError
from ..results import Result
from .bootstrap import check_bootstrap_options, percentile_interval, resample_indices
from .validation import check_features

RDM_METRICS = ("cosine", "correlation", "euclidean")
METHODS = ("spearman", "pearson", "kendall_tau_a")
MATRIX_KINDS = ("dissimilarity", "similarity")
POOLINGS = ("mean", "normalized")
_KIND_ALIASES = {"rdm": "dissimilarity", "rsm": "similarity"}


@dataclass
class NoiseCeiling(Result):
    """Bounds on the best score any model can reach given inter-subject variability.

    lower: mean over subjects of corr(subject, mean of the OTHER subjects);
    upper: mean over subjects of corr(subject, mean of ALL subjects).
    """

    lower: float
    upper: float
    method: str = "spearman"
    n_subjects: int = 0
    pooling: str = "mean"


@dataclass
class GroupScore(Result):
    """Correlations of the model RDM with the subject-MEAN human RDM (another scale than
    the per-subject mean and the noise ceiling), ``ci`` for ``method`` over stimuli."""

    spearman: float
    pearson: float
    kendall_tau_a: float
    ci: tuple[float, float] | None


@dataclass
class RSAResult(Result):
    """RSA of a model RDM against human RDMs.

    ``score`` is the value of ``method``. With several subjects ``spearman``, ``pearson``
    and ``kendall_tau_a`` are MEANS OVER SUBJECTS of the correlation with each subject's
    RDM (rsatoolbox ``eval_fixed``; ``per_subject`` holds ``method``'s values), on the
    scale of ``noise_ceiling``; ``normalized`` = score / the leave-one-subject-out
    (lower) bound, ``normalized_upper`` = score / the upper bound;
    ``group`` holds the correlations with the subject-mean RDM. With one matrix they are
    the correlations with it (``scale`` "group matrix", ``group`` None). ``ci`` is the
    percentile bootstrap CI of ``score`` over stimuli (subjects fixed). ``human_kind``
    is what the human matrices were ("dissimilarity" or "similarity"); ``converted`` is
    True when similarities were negated into dissimilarities before comparing.
    """

    score: float
    method: str
    spearman: float
    pearson: float
    kendall_tau_a: float
    ci: tuple[float, float] | None
    confidence: float
    noise_ceiling: NoiseCeiling | None
    n_stimuli: int
    n_pairs: int
    n_dropped: int
    n_subjects: int
    rdm_metric: str
    human_kind: str
    converted: bool
    n_bootstrap: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    scale: str = "group matrix"
    group: GroupScore | None = None
    per_subject: tuple[float, ...] | None = None
    normalized: float | None = None
    normalized_upper: float | None = None


# -- RDMs ---------------------------------------------------------------------------------


def _as_features(X: Any, name: str = "features", n_rows: int | None = None) -> np.ndarray:
    """The one feature rule (:func:`~align.metrics.validation.check_features`; all-NaN
    rows mark missing stimuli). Float32 stays float32 (cheap RDMs); integers -> float64."""
    expected = None
    if n_rows is not None:
        expected = (
            f"{n_rows} rows, one per stimulus, in the order of the {n_rows}x{n_rows} matrices"
        )
    X, _ = check_features(X, name, n_rows=n_rows, rows_expected=expected, as_float64=False)
    return X


def _check_metric(metric: str) -> str:
    if metric not in RDM_METRICS:
        raise InvalidInputError("rdm_metric", f"is {metric!r}", f"one of {', '.join(RDM_METRICS)}")
    return metric


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInputError("method", f"is {method!r}", f"one of {', '.join(METHODS)}")
    return method


def compute_rdm(X: Any, metric: str = "cosine") -> np.ndarray:
    """Model RDM of the rows of ``X`` (n, p): (n, n), symmetric, zero diagonal.

    ``cosine``: 1 - cosine similarity (default); ``correlation``: 1 - Pearson correlation
    of rows; ``euclidean``: euclidean distance. Float32 input gives a float32 RDM (one
    matrix product, so thousands of stimuli are cheap); anything else gives float64.
    All values must be finite (``rsa`` drops all-NaN rows before calling this).
    """
    _check_metric(metric)
    X = _as_features(X)
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise NumericalError(
            f"features: row {row} has NaN or infinite values; compute_rdm needs finite "
            "features (rsa() drops all-NaN rows, which mark missing stimuli)"
        )
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    X = X.astype(dtype, copy=False)
    n = X.shape[0]
    if metric in ("cosine", "correlation"):
        Z = X - X.mean(axis=1, keepdims=True) if metric == "correlation" else X
        norms = np.linalg.norm(Z.astype(np.float64), axis=1)
        zero = norms == 0
        if zero.any():
            row = int(np.flatnonzero(zero)[0])
            what = "zero norm" if metric == "cosine" else "constant values"
            raise InvalidInputError(
                "features",
                f"row {row} has {what}, so its {metric} distance is undefined "
                f"({int(zero.sum())} such rows)",
                "rows with non-zero variation" if metric == "correlation" else "non-zero rows",
            )
        Z = (Z / norms[:, None].astype(dtype)).astype(dtype, copy=False)
        D = Z @ Z.T
        np.subtract(dtype(1.0), D, out=D)
        np.clip(D, 0.0, 2.0, out=D)
    else:
        Z = X - X.mean(axis=0, keepdims=True)  # translation-invariant; better rounding
        sq = np.einsum("ij,ij->i", Z, Z)
        D = Z @ Z.T
        D *= dtype(-2.0)
        D += sq[:, None]
        D += sq[None, :]
        np.maximum(D, 0.0, out=D)
        np.sqrt(D, out=D)
    D = np.asarray(D, dtype=dtype)
    D[np.arange(n), np.arange(n)] = 0.0
    # symmetrise exactly (the product can differ in the last bit between (i,j) and (j,i))
    iu = np.triu_indices(n, 1)
    D[(iu[1], iu[0])] = D[iu]
    return D


def triu_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (i < j) of the upper triangle of an (n, n) matrix."""
    i, j = np.triu_indices(n, 1)
    return i.astype(np.intp), j.astype(np.intp)


def upper_triangle(M: Any, name: str = "matrix") -> np.ndarray:
    """The strict upper triangle (diagonal excluded) of a square matrix, row-major."""
    arr = np.asarray(M)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InvalidInputError(name, f"has shape {arr.shape}", "a square (n, n) matrix")
    return arr[np.triu_indices(arr.shape[0], 1)]


def to_dissimilarity(matrices: Any, matrix_kind: str) -> tuple[np.ndarray, bool]:
    """Human matrices as dissimilarities: an RSM is negated (``rdm = -rsm``), an RDM kept.

    Returns (matrices (s, n, n) float64, converted). Validates shape, finiteness and
    symmetry, naming the subject and cell at fault.
    """
    kind = _check_kind(matrix_kind)
    M = _check_matrices(matrices)
    if kind == "similarity":
        return -M, True
    return M, False


def _check_kind(matrix_kind: str) -> str:
    kind = _KIND_ALIASES.get(str(matrix_kind).lower(), str(matrix_kind).lower())
    if kind not in MATRIX_KINDS:
        raise InvalidInputError(
            "matrix_kind",
            f"is {matrix_kind!r}",
            "'dissimilarity' (an RDM) or 'similarity' (an RSM, e.g. ratings)",
        )
    return kind


def _check_matrices(matrices: Any) -> np.ndarray:
    try:
        M = np.asarray(matrices, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            "matrices", f"cannot be read as numbers ({exc})", "(n, n) or (subjects, n, n)"
        ) from exc
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3 or M.shape[1] != M.shape[2] or M.shape[0] < 1:
        raise InvalidInputError(
            "matrices", f"has shape {M.shape}", "a square (n, n) or (subjects, n, n) array"
        )
    if M.shape[1] < 3:
        raise InvalidInputError("matrices", f"are {M.shape[1]}x{M.shape[1]}", "n >= 3 stimuli")
    finite = np.isfinite(M)
    if not finite.all():
        s, i, j = (int(v) for v in np.argwhere(~finite)[0])
        raise InvalidInputError(
            "matrices",
            f"subject {s} has a non-finite value ({M[s, i, j]}) at ({i}, {j}); "
            f"{int((~finite).sum())} such cells",
            "finite dissimilarities or similarities (no NaN for missing cells)",
        )
    asym = np.abs(M - M.transpose(0, 2, 1))
    scale = float(np.abs(M).max())
    tol = 1e-8 * max(scale, 1.0)
    if (asym > tol).any():
        s, i, j = (int(v) for v in np.unravel_index(int(np.argmax(asym)), asym.shape))
        raise InvalidInputError(
            "matrices",
            f"subject {s} is not symmetric: [{i}, {j}] = {M[s, i, j]!r} but "
            f"[{j}, {i}] = {M[s, j, i]!r}",
            "symmetric matrices",
        )
    return M


# -- comparisons --------------------------------------------------------------------------


def _pair_vector(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2:
        return upper_triangle(arr, name)
    if arr.ndim == 1:
        return arr
    raise InvalidInputError(name, f"has shape {arr.shape}", "a square (n, n) RDM or a pair vector")


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float:
    """Compare two RDMs over their upper triangles (diagonal excluded).

    ``a`` and ``b`` are (n, n) matrices (or 1-D vectors of pair values in the same pair
    order). ``method``: "spearman" (default; Pearson of average ranks), "pearson", or
    "kendall_tau_a" ((concordant - discordant) / (N (N - 1) / 2), ties count as neither).
    """
    _check_method(method)
    x = _pair_vector(a, "a")
    y = _pair_vector(b, "b")
    if x.shape != y.shape:
        raise InvalidInputError(
            "b", f"has {y.size} pairs", f"{x.size} pairs, the same stimuli as a"
        )
    if x.size < 2:
        raise InvalidInputError("a", f"has {x.size} pairs", "at least 2 pairs (n >= 3)")
    for name, v in (("a", x), ("b", y)):
        if not np.isfinite(v).all():
            raise NumericalError(f"{name}: has NaN or infinite dissimilarities")
    return _compare_vectors(x, y, method)


def _compare_vectors(x: np.ndarray, y: np.ndarray, method: str) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise NumericalError(f"{method} is undefined: one RDM has the same value for every pair")
    if method == "kendall_tau_a":
        return kendall_tau_a(x, y)
    if method == "spearman":
        from scipy.stats import rankdata

        x, y = rankdata(x), rankdata(y)
    value = _pearson(x, y)
    if not math.isfinite(value):
        raise NumericalError(
            f"{method} correlation is undefined: one RDM has the same value for every pair"
        )
    return value


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two 1-D float arrays without BLAS: a multithreaded BLAS ``ddot``
    is many times slower than one core on a busy machine, and this is the hot loop."""
    return float(np.einsum("i,i->", a, b))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(_dot(xc, xc) * _dot(yc, yc))
    if denom == 0.0:
        return math.nan
    return float(np.clip(_dot(xc, yc) / denom, -1.0, 1.0))


def kendall_tau_a(x: Any, y: Any, weights: Any = None) -> float:
    """Kendall's tau-a of two equal-length vectors, in O(N log N).

    tau-a = (concordant - discordant) / (N (N - 1) / 2): tied pairs (in x, in y, or both)
    count as neither and stay in the denominator (unlike tau-b). ``weights`` (optional,
    non-negative integers) repeats each element that many times, as in a bootstrap
    resample; pairs among copies of one element are joint ties.
    """
    xv = np.asarray(x, dtype=np.float64).ravel()
    yv = np.asarray(y, dtype=np.float64).ravel()
    if xv.shape != yv.shape:
        raise InvalidInputError("y", f"has {yv.size} values", f"{xv.size}, like x")
    w = np.ones(xv.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != xv.shape:
        raise InvalidInputError("weights", f"has {w.size} values", f"{xv.size}, like x")
    return _TauA(xv, yv).tau(w)


class _TauA:
    """Weight-independent structure for (weighted) tau-a: lexicographic order, tie groups."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        order = np.lexsort((y, x))
        xs, ys = x[order], y[order]
        self.order = order
        n = xs.size
        # x tie groups and joint (x, y) tie groups are contiguous in lexicographic order
        xnew = np.r_[True, xs[1:] != xs[:-1]] if n else np.zeros(0, bool)
        jnew = xnew | np.r_[True, ys[1:] != ys[:-1]] if n else np.zeros(0, bool)
        self.x_starts = np.flatnonzero(xnew)
        self.j_starts = np.flatnonzero(jnew)
        _, self.y_dense = np.unique(ys, return_inverse=True)
        self.y_dense = self.y_dense.astype(np.int64).ravel()
        self.n_y = int(self.y_dense.max()) + 1 if n else 0

    def tau(self, w: np.ndarray, degenerate: float = 0.0) -> float:
        """tau-a under weights ``w``; ``degenerate`` is returned when x or y has a
        single distinct value (tau-a is 0 there, but a bootstrap wants NaN)."""
        ws = w[self.order]
        total = float(ws.sum())
        n_pairs_total = total * (total - 1.0) / 2.0
        if n_pairs_total <= 0:
            return math.nan

        def ties(groups: np.ndarray) -> float:
            return float((groups * (groups - 1.0)).sum() / 2.0)

        x_ties = ties(np.add.reduceat(ws, self.x_starts))
        j_ties = ties(np.add.reduceat(ws, self.j_starts))
        y_ties = ties(np.bincount(self.y_dense, weights=ws, minlength=self.n_y))
        if x_ties == n_pairs_total or y_ties == n_pairs_total:
            return degenerate
        disc = _weighted_strict_inversions(self.y_dense, ws, self.n_y)
        con_minus_dis = n_pairs_total - x_ties - y_ties + j_ties - 2.0 * disc
        return float(np.clip(con_minus_dis / n_pairs_total, -1.0, 1.0))


def _weighted_strict_inversions(v: np.ndarray, w: np.ndarray, n_values: int) -> float:
    """sum over i < j with v[i] > v[j] of w[i] * w[j]: bottom-up merge sort, vectorised.

    The array is padded to a power of two with the largest value and weight 0 (which adds
    nothing), so every level is a regular (blocks, 2, width) reshape. At each level the
    weight of the larger elements in the left half of a block is read, for every element
    of the right half, from a prefix sum found by ``searchsorted`` on keys
    ``block * (n_values + 1) + value``; the halves are then merged by scatter.
    """
    n = v.size
    if n < 2:
        return 0.0
    size = 1 << (n - 1).bit_length()
    m = n_values + 1
    V = np.full(size, n_values, dtype=np.int64)
    V[:n] = v
    W = np.zeros(size)
    W[:n] = w
    total = 0.0
    width = 1
    while width < size:
        nb = size // (2 * width)
        V3 = V.reshape(nb, 2, width)
        W3 = W.reshape(nb, 2, width)
        blocks = np.arange(nb, dtype=np.int64)[:, None]
        lk = (V3[:, 0, :] + blocks * m).ravel()
        rk = (V3[:, 1, :] + blocks * m).ravel()
        # per right element: left elements of its block with value <= its value
        le = np.searchsorted(lk, rk, side="right").reshape(nb, width) - blocks * width
        cum = np.zeros((nb, width + 1))
        np.cumsum(W3[:, 0, :], axis=1, out=cum[:, 1:])
        greater = cum[:, -1:] - np.take_along_axis(cum, le, axis=1)
        total += float(np.einsum("ij,ij->", W3[:, 1, :], greater))
        # stable merge positions: left before right on equal values
        lt = np.searchsorted(rk, lk, side="left").reshape(nb, width) - blocks * width
        base = blocks * 2 * width + np.arange(width)[None, :]
        lpos, rpos = (base + lt).ravel(), (base + le).ravel()
        new_v = np.empty_like(V)
        new_w = np.empty_like(W)
        new_v[lpos], new_v[rpos] = V3[:, 0, :].ravel(), V3[:, 1, :].ravel()
        new_w[lpos], new_w[rpos] = W3[:, 0, :].ravel(), W3[:, 1, :].ravel()
        V, W = new_v, new_w
        width *= 2
    return total


class _RankedPairs:
    """One vector of pair values, sorted once; weighted average ranks per resample."""

    def __init__(self, values: np.ndarray) -> None:
        self.order = np.argsort(values, kind="stable")
        vs = values[self.order]
        new = np.r_[True, vs[1:] != vs[:-1]]
        self.ties = not bool(new.all())
        self.starts = np.flatnonzero(new)
        self.sizes = np.diff(np.r_[self.starts, vs.size])

    def sorted_ranks(self, w_sorted: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Average ranks (1-based) of the multiset, in this vector's sorted order, and
        the sum of cubed tie-group weights (None without ties: then the groups are the
        single pairs and the caller knows the sum in closed form)."""
        if not self.ties:
            ranks = np.cumsum(w_sorted)
            ranks -= 0.5 * w_sorted
            ranks += 0.5
            return ranks, None
        g = np.add.reduceat(w_sorted, self.starts)
        rank_g = np.cumsum(g) - (g - 1.0) / 2.0
        return np.repeat(rank_g, self.sizes), _dot(g, g * g)


def _weighted_corr(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    total = w.sum()
    if total <= 0:
        return math.nan
    xc = x - _dot(w, x) / total
    yc = y - _dot(w, y) / total
    wx = w * xc
    sxx = _dot(wx, xc)
    syy = _dot(w * yc, yc)
    if sxx <= 0 or syy <= 0:
        return math.nan
    return float(np.clip(_dot(wx, yc) / math.sqrt(sxx * syy), -1.0, 1.0))


class _PairComparer:
    """Compares a model and a human pair vector under pair weights (bootstrap engine).

    Everything that does not depend on the weights (sorts, tie groups, the permutation
    between the two sort orders) is computed once here.
    """

    def __init__(self, model: np.ndarray, human: np.ndarray, n: int, method: str) -> None:
        self.method = method
        i, j = triu_pairs(n)
        if method == "spearman":
            rm, rh = _RankedPairs(model), _RankedPairs(human)
            self.rm, self.rh = rm, rh
            # everything is laid out in the model's sorted order
            self.i, self.j = i[rm.order], j[rm.order]
            # human-sorted position of each pair, then pairs in model order -> that position
            hpos = np.empty(model.size, dtype=np.intp)
            hpos[rh.order] = np.arange(model.size)
            self.h_of_m = hpos[rm.order]
            self.hi, self.hj = i[rh.order], j[rh.order]
        elif method == "pearson":
            self.i, self.j = i, j
            self.x, self.y = model, human
        else:
            self.i, self.j = i, j
            self.tau_a = _TauA(model, human)

    def compare(self, counts: np.ndarray) -> float:
        if self.method == "spearman":
            return self._spearman(counts)
        c = counts.astype(np.float64)
        w = c[self.i] * c[self.j]
        if self.method == "pearson":
            return _weighted_corr(self.x, self.y, w)
        return self.tau_a.tau(w, degenerate=math.nan)

    def _spearman(self, counts: np.ndarray) -> float:
        """Weighted Spearman with the rank variances in closed form.

        For a multiset of W values in tie groups of weight G, the ranks have mean
        (W + 1) / 2 and sum of squared deviations (W^3 - sum G^3) / 12, so only the
        cross product needs a pass over the pairs.
        """
        ci = counts.astype(np.int64)
        s1, s2, s3, s6 = (int((ci**k).sum()) for k in (1, 2, 3, 6))
        total = (s1 * s1 - s2) // 2  # number of pairs in the resample
        cube_single = float((s3 * s3 - s6) // 2)  # sum over pairs of (c_i c_j)^3
        if total < 2:
            return math.nan
        c = counts.astype(np.float64)
        wm = np.take(c, self.i)
        wm *= np.take(c, self.j)
        wh = np.take(c, self.hi)
        wh *= np.take(c, self.hj)
        r_m, g3_m = self.rm.sorted_ranks(wm)
        r_h, g3_h = self.rh.sorted_ranks(wh)
        r_h = np.take(r_h, self.h_of_m)
        r_m *= wm
        cross = _dot(r_m, r_h)
        wt = float(total)
        mean = (wt + 1.0) / 2.0
        cov = cross - wt * mean * mean
        var_m = (wt**3 - (cube_single if g3_m is None else g3_m)) / 12.0
        var_h = (wt**3 - (cube_single if g3_h is None else g3_h)) / 12.0
        if var_m <= 0 or var_h <= 0:
            return math.nan
        return float(np.clip(cov / math.sqrt(var_m * var_h), -1.0, 1.0))


def _bootstrap(
    model: np.ndarray,
    human: np.ndarray,
    n: int,
    method: str,
    n_bootstrap: int,
    seed: int,
) -> np.ndarray:
    """Scores of ``n_bootstrap`` stimulus resamples (NaN where a resample is degenerate)."""
    return _bootstrap_many([model], [human], n, method, n_bootstrap, seed)[:, 0]


def _bootstrap_many(
    models: list[np.ndarray],
    humans: list[np.ndarray],
    n: int,
    method: str,
    n_bootstrap: int,
    seed: int,
) -> np.ndarray:
    """(n_bootstrap, len(models)): on each stimulus resample (the same for every model),
    the mean over ``humans`` of each model's comparison with that human vector."""
    rng = np.random.default_rng(seed)
    engines = [[_PairComparer(m, h, n, method) for h in humans] for m in models]
    out = np.empty((n_bootstrap, len(models)))
    for b in range(n_bootstrap):
        counts = np.bincount(resample_indices(rng, n), minlength=n)
        for k, row in enumerate(engines):
            out[b, k] = float(np.mean([e.compare(counts) for e in row]))
    return out


# -- noise ceiling ------------------------------------------------------------------------


def _pooled(vectors: np.ndarray, method: str, pooling: str) -> np.ndarray:
    """Per-subject vectors as they are averaged: raw ("mean") or as the method sees them
    ("normalized": ranks for spearman / tau-a, z-scores for pearson)."""
    if pooling == "mean":
        return vectors
    if method == "pearson":
        c = vectors - vectors.mean(axis=1, keepdims=True)
        return np.asarray(c / c.std(axis=1, keepdims=True))
    from scipy.stats import rankdata

    return np.asarray(rankdata(vectors, axis=1))


def rsa_noise_ceiling(
    matrices: Any,
    method: str = "spearman",
    matrix_kind: str = "dissimilarity",
    pooling: str = "mean",
) -> NoiseCeiling:
    """Noise ceiling of multi-subject RDMs (s >= 2).

    lower = mean over subjects k of compare(RDM_k, mean of the other subjects' RDMs);
    upper = mean over k of compare(RDM_k, mean of all subjects' RDMs). ``pooling="mean"``
    (default, METHODS.md) averages the RDMs themselves; ``"normalized"`` averages them as
    the method sees them (ranks for spearman / tau-a, z-scores for pearson), as Nili et
    al. 2014 and rsatoolbox's ``boot_noise_ceiling`` do.
    """
    _check_method(method)
    if pooling not in POOLINGS:
        raise InvalidInputError("pooling", f"is {pooling!r}", f"one of {', '.join(POOLINGS)}")
    M, _ = to_dissimilarity(matrices, matrix_kind)
    return _noise_ceiling(M, method, pooling)


def _noise_ceiling(M: np.ndarray, method: str, pooling: str) -> NoiseCeiling:
    s, n = M.shape[0], M.shape[1]
    if s < 2:
        raise InvalidInputError(
            "matrices", f"has {s} subject", "at least 2 subjects' matrices for a noise ceiling"
        )
    iu = np.triu_indices(n, 1)
    vectors = M[:, iu[0], iu[1]]
    pooled = _pooled(vectors, method, pooling)
    total = pooled.sum(axis=0)
    mean_all = total / s
    lower, upper = [], []
    if method == "spearman":
        # rank every vector once: Spearman = Pearson of average ranks
        from scipy.stats import rankdata

        for k, v in enumerate(vectors):
            if np.ptp(v) == 0:
                raise NumericalError(f"matrices: subject {k} has the same value for every pair")
        ranked = pooled if pooling == "normalized" else np.asarray(rankdata(vectors, axis=1))
        mean_ranked = rankdata(mean_all)
        for k in range(s):
            others = rankdata((total - pooled[k]) / (s - 1))
            lower.append(_pearson(ranked[k], others))
            upper.append(_pearson(ranked[k], mean_ranked))
    else:
        for k in range(s):
            others = (total - pooled[k]) / (s - 1)
            lower.append(_compare_vectors(vectors[k], others, method))
            upper.append(_compare_vectors(vectors[k], mean_all, method))
    if not np.isfinite(lower).all() or not np.isfinite(upper).all():
        raise NumericalError("noise ceiling is undefined: a mean RDM is constant")
    return NoiseCeiling(
        lower=float(np.mean(lower)),
        upper=float(np.mean(upper)),
        method=method,
        n_subjects=s,
        pooling=pooling,
    )


# -- rsa ----------------------------------------------------------------------------------


def split_half_ceiling(
    halves: Any, method: str = "spearman", matrix_kind: str = "dissimilarity"
) -> NoiseCeiling:
    """Ceiling of a single group matrix from its two split halves (Peterson et al.):
    the Spearman-Brown corrected split-half correlation ``2 r / (1 + r)`` with
    ``r = compare(half 1, half 2)``; lower = upper = that value."""
    _check_method(method)
    M, _ = to_dissimilarity(halves, matrix_kind)
    if M.shape[0] != 2:
        raise InvalidInputError("halves", f"has {M.shape[0]} matrices", "exactly 2 split halves")
    iu = np.triu_indices(M.shape[1], 1)
    r = _compare_vectors(M[0][iu], M[1][iu], method)
    sb = 2.0 * r / (1.0 + r) if r > -1.0 else math.nan
    return NoiseCeiling(lower=sb, upper=sb, method=method, n_subjects=2, pooling="split-half")


def _prepare(
    X: Any, matrices: Any, matrix_kind: str
) -> tuple[np.ndarray, np.ndarray, str, bool, int, np.ndarray | None]:
    """Validate; drop missing stimuli (all-NaN rows) from features and matrices.

    Returns (features, human (s, m, m), kind, converted, n_dropped, kept rows or None).
    """
    kind = _check_kind(matrix_kind)
    human, converted = to_dissimilarity(matrices, kind)
    n = human.shape[1]
    features = _as_features(X, n_rows=n)
    missing = np.isnan(features).all(axis=1)
    n_dropped = int(missing.sum())
    keep = None
    if n_dropped:
        warnings.warn(
            f"rsa: dropped {n_dropped} missing stimuli (all-NaN feature rows) from both RDMs",
            stacklevel=3,
        )
        keep = np.flatnonzero(~missing)
        if keep.size < 3:
            raise InvalidInputError(
                "features",
                f"has only {keep.size} stimuli left after dropping {n_dropped} all-NaN rows",
                "at least 3 present stimuli",
            )
        features = features[keep]
        human = human[:, keep[:, None], keep[None, :]]
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0] if not n_dropped else np.flatnonzero(~missing)[bad][0])
        raise NumericalError(
            f"features: row {row} has NaN or infinite values; only all-NaN rows (missing "
            f"stimuli) are allowed ({int(bad.sum())} bad rows)"
        )
    return features, human, kind, converted, n_dropped, keep


def _model_vector(features: np.ndarray, rdm_metric: str) -> np.ndarray:
    m = features.shape[0]
    iu = np.triu_indices(m, 1)
    vec = compute_rdm(features, rdm_metric)[iu].astype(np.float64)
    if np.ptp(vec) == 0:
        raise NumericalError(
            "features: every pair of stimuli has the same model dissimilarity; RSA is undefined"
        )
    return vec


def _human_vectors(human: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-subject pair vectors (s, N), subject-mean pair vector (N,))."""
    iu = np.triu_indices(human.shape[1], 1)
    subjects = human[:, iu[0], iu[1]]
    mean = human.mean(axis=0)[iu]
    if np.ptp(mean) == 0:
        raise NumericalError(
            "matrices: the human RDM has the same value for every pair; RSA is undefined"
        )
    for k, v in enumerate(subjects):
        if subjects.shape[0] > 1 and np.ptp(v) == 0:
            raise NumericalError(f"matrices: subject {k} has the same value for every pair")
    return subjects, mean


def rsa(
    X: Any,
    matrices: Any,
    matrix_kind: str = "dissimilarity",
    method: str = "spearman",
    rdm_metric: str = "cosine",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ceiling_pooling: str = "mean",
    split_halves: Any = None,
) -> RSAResult:
    """RSA of features ``X`` (n, p) against human ``matrices`` ((s,) n, n).

    ``matrix_kind``: "dissimilarity" (RDM) or "similarity" (RSM: negated into an RDM,
    recorded in ``converted``). The model RDM (``rdm_metric``) is compared by Spearman,
    Pearson and Kendall's tau-a; ``score`` is ``method``. With s >= 2 subjects each is
    the mean over subjects of the correlation with that subject's RDM (the noise
    ceiling's scale); ``group`` has the correlations with the subject-mean RDM. With one
    matrix, the correlations with it; ``split_halves`` (2, n, n) of that matrix give its
    Spearman-Brown ceiling. All-NaN rows of ``X`` are missing stimuli: dropped from both
    RDMs with a warning (``n_dropped``). The CI resamples stimuli ``n_bootstrap`` times
    (0: no CI); subjects are not resampled.
    """
    _check_method(method)
    _check_metric(rdm_metric)
    if ceiling_pooling not in POOLINGS:
        raise InvalidInputError(
            "ceiling_pooling", f"is {ceiling_pooling!r}", f"one of {', '.join(POOLINGS)}"
        )
    check_bootstrap_options(n_bootstrap, confidence, seed)
    features, human, kind, converted, n_dropped, keep = _prepare(X, matrices, matrix_kind)
    s = human.shape[0]
    m = features.shape[0]
    model_vec = _model_vector(features, rdm_metric)
    subjects, mean_vec = _human_vectors(human)
    group_scores = {name: _compare_vectors(model_vec, mean_vec, name) for name in METHODS}
    per_subject: dict[str, list[float]] = {}
    if s >= 2:
        per_subject = {
            name: [_compare_vectors(model_vec, v, name) for v in subjects] for name in METHODS
        }
        scores = {name: float(np.mean(vals)) for name, vals in per_subject.items()}
    else:
        scores = group_scores

    ci = group_ci = None
    n_valid = 0
    if n_bootstrap > 0:
        humans = list(subjects) if s >= 2 else [mean_vec]
        boot = _bootstrap_many([model_vec], humans, m, method, int(n_bootstrap), int(seed))[:, 0]
        n_valid = int(np.isfinite(boot).sum())
        ci = percentile_interval(boot, float(confidence))
        if s >= 2:
            gboot = _bootstrap(model_vec, mean_vec, m, method, int(n_bootstrap), int(seed))
            group_ci = percentile_interval(gboot, float(confidence))

    ceiling: NoiseCeiling | None = None
    if s >= 2:
        ceiling = _noise_ceiling(human, method, ceiling_pooling)
    elif split_halves is not None:
        halves, _ = to_dissimilarity(split_halves, kind)
        if halves.shape[1] != human.shape[1] + n_dropped:
            raise InvalidInputError(
                "split_halves", f"are {halves.shape[1]}x{halves.shape[1]}", "the matrix's size"
            )
        if keep is not None:
            halves = halves[:, keep[:, None], keep[None, :]]
        ceiling = split_half_ceiling(halves, method)
    normalized = normalized_upper = None
    if ceiling is not None and ceiling.lower > 0:
        normalized = scores[method] / ceiling.lower
        normalized_upper = scores[method] / ceiling.upper
    return RSAResult(
        score=scores[method],
        method=method,
        spearman=scores["spearman"],
        pearson=scores["pearson"],
        kendall_tau_a=scores["kendall_tau_a"],
        ci=ci,
        confidence=float(confidence),
        noise_ceiling=ceiling,
        n_stimuli=m,
        n_pairs=int(model_vec.size),
        n_dropped=n_dropped,
        n_subjects=s,
        rdm_metric=rdm_metric,
        human_kind=kind,
        converted=converted,
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        options={
            "ceiling_pooling": ceiling_pooling,
            "n_bootstrap_valid": n_valid,
            "ci_kind": "percentile, stimuli resampled, subjects fixed",
        },
        scale="mean over subjects" if s >= 2 else "group matrix",
        group=(
            GroupScore(
                spearman=group_scores["spearman"],
                pearson=group_scores["pearson"],
                kendall_tau_a=group_scores["kendall_tau_a"],
                ci=group_ci,
            )
            if s >= 2
            else None
        ),
        per_subject=tuple(per_subject[method]) if s >= 2 else None,
        normalized=normalized,
        normalized_upper=normalized_upper,
    )


@dataclass
class PairedRSA(Result):
    """RSA of two feature sets of the same stimuli against the same human matrices, and
    the difference ``b - a`` with a paired stimulus-bootstrap interval (both RDMs are
    rebuilt from the same resampled stimuli)."""

    a: float
    b: float
    delta: float
    ci_delta: tuple[float, float] | None
    method: str
    scale: str
    n_bootstrap: int
    confidence: float
    seed: int


def paired_rsa_delta(
    X_a: Any,
    X_b: Any,
    matrices: Any,
    matrix_kind: str = "dissimilarity",
    method: str = "spearman",
    rdm_metric: str = "cosine",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedRSA:
    """``rsa(X_b).score - rsa(X_a).score`` (same scale as :func:`rsa`'s score) with a
    paired percentile interval over stimulus resamples. Both feature sets must miss the
    same stimuli."""
    _check_method(method)
    _check_metric(rdm_metric)
    check_bootstrap_options(n_bootstrap, confidence, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa, human, _, _, _, keep_a = _prepare(X_a, matrices, matrix_kind)
        fb, _, _, _, _, keep_b = _prepare(X_b, matrices, matrix_kind)
    if (keep_a is None) != (keep_b is None) or (
        keep_a is not None and keep_b is not None and not np.array_equal(keep_a, keep_b)
    ):
        raise InvalidInputError("X_b", "misses other stimuli than X_a", "the same missing rows")
    m = fa.shape[0]
    va, vb = _model_vector(fa, rdm_metric), _model_vector(fb, rdm_metric)
    subjects, mean_vec = _human_vectors(human)
    humans = list(subjects) if human.shape[0] >= 2 else [mean_vec]
    a = float(np.mean([_compare_vectors(va, h, method) for h in humans]))
    b = float(np.mean([_compare_vectors(vb, h, method) for h in humans]))
    ci = None
    if n_bootstrap > 0:
        boot = _bootstrap_many([va, vb], humans, m, method, int(n_bootstrap), int(seed))
        ci = percentile_interval(boot[:, 1] - boot[:, 0], float(confidence))
    return PairedRSA(
        a=a,
        b=b,
        delta=b - a,
        ci_delta=ci,
        method=method,
        scale="mean over subjects" if len(humans) > 1 else "group matrix",
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
    )
