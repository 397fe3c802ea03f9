"""Zero-shot odd-one-out accuracy, anchor accuracy and the human noise ceiling.

METHODS.md section 2. Triplets use the stored convention: ``(a, b, c)`` means the person
chose ``c`` as the odd one out, so ``(a, b)`` is the pair judged most similar. For each
triplet we compute ``s_ab, s_ac, s_bc`` and predict the stimulus outside the most
similar pair.

Similarities (``similarity=``):
  ``cosine`` (default) ``u.v / (|u| |v|)``; a zero-norm row has cosine 0 with anything.
  ``dot``              ``u.v``
  ``euclidean``        ``-|u - v|``

Tie rule (paper code): all three similarities exactly equal -> prediction -1, counted
wrong; a partial tie takes the first maximal pair in the order ``(ab, ac, bc)``.

How it stays fast and exact. Nothing loops over triplets in Python. Features are cast
to float64 once and identical rows are merged (so two stimuli with the same features
share one row and their similarities are the same float, bit for bit). When the
triplets outnumber the distinct pairs, the ``u x u`` similarity matrix of the distinct
rows is built once (BLAS ``syrk``, mirrored so that ``S[i, j]`` and ``S[j, i]`` are the
same float) and indexed; otherwise (few triplets or very many stimuli) the rows are
gathered in chunks and multiplied row-wise, each pair in canonical order
``(min, max)``, and pairs that are the same pair of distinct rows are forced equal.
Cosine is ``dot / (|u| |v|)`` from float64 dot products, so integer-valued features give
exact dot products and exact ties whatever the summation order.

Missing stimuli: an all-NaN feature row marks a stimulus the model could not embed.
Triplets touching one are dropped (``n_dropped``, and a :class:`MissingStimuliWarning`
with the count); any other NaN or infinity raises :class:`~align.errors.NumericalError`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np

from ..errors import InvalidInputError, NumericalError
from ..results import Result
from .bootstrap import check_bootstrap_options, cluster_mean
from .validation import check_choice, check_features, check_triplets

__all__ = [
    "CHANCE",
    "SIMILARITIES",
    "VARIANTS",
    "MissingStimuliWarning",
    "OddOneOutResult",
    "anchor_accuracy",
    "check_features",
    "check_triplets",
    "loo_noise_ceiling",
    "noise_ceiling",
    "odd_one_out",
    "pairwise_triplet_similarities",
    "predict_odd_one_out",
]

Similarity = Literal["cosine", "dot", "euclidean"]
Variant = Literal["responses", "majority"]
Convention = Literal["odd-one-out", "anchor"]

SIMILARITIES: tuple[str, ...] = ("cosine", "dot", "euclidean")
VARIANTS: tuple[str, ...] = ("responses", "majority")
CONVENTIONS: tuple[str, ...] = ("odd-one-out", "anchor")
CHANCE = 1.0 / 3.0
ANCHOR_CHANCE = 0.5

# Build the similarity matrix of the distinct rows only up to this many entries (float64).
_MAX_MATRIX_ENTRIES = 25_000_000
# Gathered rows per chunk in the row-wise path (elements of one gathered block).
_GATHER_BLOCK = 4_000_000


def _matrix_is_cheaper(u: int, m: int, p: int) -> bool:
    """Whether building the ``u x u`` similarity matrix (then three look-ups per triplet)
    costs less than ``m`` triplets' row-wise dot products, from per-unit costs measured on
    one core (bench/README.md, "switch rule"): the matrix takes about ``0.025 p + 6`` ns
    per entry (BLAS, then the similarity and its order codes), the row-wise path about
    ``3.7 p + 50`` ns per triplet (gathering three pairs of rows)."""
    if u * u > _MAX_MATRIX_ENTRIES:
        return False
    return u * u * (0.025 * p + 6.0) <= m * (3.7 * p + 50.0)


class MissingStimuliWarning(UserWarning):
    """Some triplets touch a stimulus whose feature row is all NaN; they were dropped."""


# --------------------------------------------------------------------------- validation


# One rule per input kind: align.metrics.validation (check_features and check_triplets
# are re-exported here for the callers that import them from this module).


# --------------------------------------------------------------------------- similarities


def _distinct_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of X without duplicates, index of each original row into them)."""
    if X.shape[0] > 1 and np.isfinite(X).all():
        # equal rows have equal projections, so distinct projections prove distinct rows
        probe = X @ np.random.default_rng(0).standard_normal(X.shape[1])
        if np.unique(probe).size == X.shape[0]:
            return X, np.arange(X.shape[0], dtype=np.int64)
    X = X + 0.0  # -0.0 -> +0.0 so equal values have equal bytes
    view = np.ascontiguousarray(X).view(np.dtype((np.void, X.dtype.itemsize * X.shape[1])))
    _, first, inverse = np.unique(view.reshape(-1), return_index=True, return_inverse=True)
    return X[first], inverse.reshape(-1).astype(np.int64)


def _finish(dot: np.ndarray, sq_i: np.ndarray, sq_j: np.ndarray, similarity: str) -> np.ndarray:
    """Turn dot products (and squared norms of both sides) into the similarity.

    ``dot`` is overwritten (both callers pass a fresh array): at THINGS scale each fresh
    1854 x 1854 temporary costs its page faults as well as its pass over memory. The
    operations and their order are those of the plain expressions, so the floats are the
    same: ``dot / (sqrt(sq_i) sqrt(sq_j))`` (0 where a norm is 0) and
    ``-sqrt(max((sq_i + sq_j) - 2 dot, 0))``."""
    if similarity == "dot":
        return dot
    if similarity == "cosine":
        denom = np.sqrt(sq_i) * np.sqrt(sq_j)
        positive = denom > 0
        np.divide(dot, denom, out=dot, where=positive)
        if not positive.all():
            dot[~positive] = 0.0
        return dot
    d2 = sq_i + sq_j
    dot *= 2.0  # exact (a power of two)
    d2 -= dot
    np.maximum(d2, 0.0, out=d2)
    np.sqrt(d2, out=d2)
    np.negative(d2, out=d2)
    return d2


def _similarity_matrix(Xu: np.ndarray, similarity: str) -> np.ndarray:
    """Exactly symmetric ``u x u`` similarity matrix of the distinct rows."""
    G = Xu @ Xu.T
    G = np.minimum(G, G.T)  # S[i, j] and S[j, i] become the same float
    sq = np.diag(G).copy()
    S = _finish(G, sq[:, None], sq[None, :], similarity)
    if similarity == "euclidean":
        np.fill_diagonal(S, 0.0)
    return np.ascontiguousarray(S)


def _pair_similarities(
    Xu: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], similarity: str
) -> list[np.ndarray]:
    """Similarities of index pairs into the distinct rows Xu (vectorised)."""
    u = Xu.shape[0]
    m = pairs[0][0].size
    n_pairs = len(pairs)
    if _matrix_is_cheaper(u, n_pairs * m // 3, Xu.shape[1]):
        flat = _similarity_matrix(Xu, similarity).reshape(-1)
        out = []
        scaled: dict[int, np.ndarray] = {}  # i * u, shared by pairs with the same first index
        for i, j in pairs:
            if id(i) not in scaled:
                scaled[id(i)] = i * u
            key = scaled[id(i)] + j
            out.append(np.take(flat, key, mode="clip"))  # keys are in range
        return out
    sq = np.einsum("ij,ij->i", Xu, Xu)
    res = [np.empty(m, dtype=np.float64) for _ in pairs]
    step = max(1, _GATHER_BLOCK // max(1, Xu.shape[1]))
    for start in range(0, m, step):
        stop = min(m, start + step)
        for (i, j), r in zip(pairs, res, strict=True):
            lo = np.minimum(i[start:stop], j[start:stop])
            hi = np.maximum(i[start:stop], j[start:stop])
            dot = np.einsum("ij,ij->i", Xu[lo], Xu[hi])
            r[start:stop] = _finish(dot, sq[lo], sq[hi], similarity)
            if similarity == "euclidean":
                r[start:stop][lo == hi] = 0.0
    # The same pair of distinct rows must give the same float, whatever the alignment.
    keys = [np.minimum(i, j) * u + np.maximum(i, j) for i, j in pairs]
    for q in range(1, n_pairs):
        for p in range(q):
            same = keys[q] == keys[p]
            if same.any():
                res[q][same] = res[p][same]
    return res


def _distinct_columns(
    X: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(distinct rows of X, the triplets' three columns as indices into them)."""
    Xu, uid = _distinct_rows(X)
    if Xu.shape[0] == X.shape[0]:  # no duplicate rows: index X directly
        return X, (T[:, 0], T[:, 1], T[:, 2])
    return Xu, (uid[T[:, 0]], uid[T[:, 1]], uid[T[:, 2]])


def triplet_similarities(
    X: np.ndarray, T: np.ndarray, similarity: str, pairs: str = "ab,ac,bc"
) -> list[np.ndarray]:
    """Similarities (one (m,) array per named pair) of triplets without missing rows."""
    Xu, cols = _distinct_columns(X, T)
    where = {"ab": (0, 1), "ac": (0, 2), "bc": (1, 2)}
    chosen = [(cols[where[p][0]], cols[where[p][1]]) for p in pairs.split(",")]
    sims = _pair_similarities(Xu, chosen, similarity)
    for s in sims:
        if not np.isfinite(s).all():
            raise NumericalError(
                f"{similarity} similarities overflowed (features too large for float64); "
                "rescale the features"
            )
    return sims


def predict_from_similarities(s_ab: np.ndarray, s_ac: np.ndarray, s_bc: np.ndarray) -> np.ndarray:
    """Position of the odd one out: first maximal pair in the order (ab, ac, bc); -1 on a
    full tie."""
    ab_best = (s_ab >= s_ac) & (s_ab >= s_bc)
    ac_best = s_ac >= s_bc
    pred = np.where(ab_best, 2, np.where(ac_best, 1, 0)).astype(np.int64)
    pred[(s_ab == s_ac) & (s_ac == s_bc)] = -1
    return pred


def _order_codes(S: np.ndarray) -> np.ndarray:
    """int16 codes whose order agrees with the float64 values': ``a < b`` in codes implies
    ``a < b`` in values (equal codes say nothing).

    The values are scaled by a power of two (exact) so the largest fits float16, rounded
    to float16 (monotone), and the float16 bit patterns mapped to integers of the same
    order (negative patterns have their magnitude bits flipped). ``+ 0.0`` first turns
    -0.0 into +0.0, so the two zeros, equal as floats, get one code."""
    biggest = float(np.abs(S).max(initial=0.0))
    exponent = int(np.frexp(biggest)[1]) if biggest > 0 else 0
    scaled = np.ldexp(S, 15 - exponent)
    scaled += 0.0
    codes = scaled.astype(np.float16).view(np.int16)
    flip = codes >> 15  # -1 where negative, else 0
    flip &= 0x7FFF
    codes ^= flip
    return codes


def predict_positions(X: np.ndarray, T: np.ndarray, similarity: str) -> np.ndarray:
    """``predict_from_similarities(*triplet_similarities(X, T, similarity))``, faster, as
    int8 (position 0, 1, 2 of the odd one out; -1 on a full tie).

    Same predictions bit for bit, ties included. On the similarity-matrix path the three
    comparisons of a triplet run on small int16 codes of the float64 matrix
    (:func:`_order_codes`), chunk by chunk so that keys and gathered codes stay in cache
    (and the code table is a quarter of the matrix's size). The codes keep the matrix's
    order wherever they differ; only triplets with two EQUAL codes are decided again on
    the float64 values themselves, so nothing is approximated.
    """
    Xu, cols = _distinct_columns(X, T)
    u = Xu.shape[0]
    m = T.shape[0]
    if m == 0 or not _matrix_is_cheaper(u, m, Xu.shape[1]):
        return predict_from_similarities(*triplet_similarities(X, T, similarity)).astype(np.int8)
    S64 = _similarity_matrix(Xu, similarity)
    bad = ~np.isfinite(S64)
    if bad.any():
        # a missing stimulus (all-NaN row) that no triplet touches gives NaN rows: they
        # must neither raise nor reach _order_codes (a NaN maximum would overflow every
        # code); only a non-finite entry between rows the triplets use can be an overflow
        used = np.zeros(u, dtype=bool)
        for c in cols:
            used[c] = True
        if bad[np.ix_(used, used)].any():
            triplet_similarities(X, T, similarity)  # raises the overflow error
        S64 = np.where(bad, 0.0, S64)  # never gathered by a triplet whose pairs are finite
    flat64 = S64.reshape(-1)
    codes = _order_codes(flat64)
    pred = np.empty(m, dtype=np.int8)
    step = 1 << 14
    for start in range(0, m, step):
        stop = min(m, start + step)
        i, j, k = (c[start:stop] for c in cols)
        iu = i * u
        ab = iu + j
        iu += k
        ac = iu
        bc = j * u
        bc += k
        c_ab, c_ac, c_bc = codes.take(ab), codes.take(ac), codes.take(bc)
        # first maximal pair in the order (ab, ac, bc): 2, 1 or 0 (codes that differ)
        ab_best = c_ab > c_ac
        ab_best &= c_ab > c_bc
        ac_best = c_ac > c_bc
        ac_best &= ~ab_best
        out = pred[start:stop]
        np.add(ab_best.view(np.int8), ab_best.view(np.int8), out=out)
        out += ac_best.view(np.int8)
        # any two equal codes: decide on the float64 values themselves
        unsure = c_ab == c_ac
        unsure |= c_ab == c_bc
        unsure |= c_ac == c_bc
        if unsure.any():
            out[unsure] = predict_from_similarities(
                flat64.take(ab[unsure]), flat64.take(ac[unsure]), flat64.take(bc[unsure])
            )
    return pred


def split_missing(
    features: object, triplets: object, warn: bool = True, stacklevel: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return (X, T, keep mask over triplets). The dropped-triplets warning
    points ``stacklevel`` frames up: 3 = the caller of the public function that called
    this one directly; one more per private layer in between."""
    X, missing = check_features(features)
    T = check_triplets(triplets, X.shape[0])
    if not missing.any():
        return X, T, np.ones(T.shape[0], dtype=bool)
    keep = ~missing[T].any(axis=1)
    n_dropped = int((~keep).sum())
    if n_dropped and warn:
        warnings.warn(
            f"{n_dropped} of {T.shape[0]} triplets touch one of {int(missing.sum())} missing "
            "stimuli (all-NaN feature rows) and were dropped",
            MissingStimuliWarning,
            stacklevel=stacklevel,
        )
    return X, T, keep


def pairwise_triplet_similarities(
    features: object, triplets: object, similarity: Similarity = "cosine"
) -> np.ndarray:
    """``(m, 3)`` float64 array ``[s_ab, s_ac, s_bc]`` for each triplet ``(a, b, c)``.

    Rows of triplets that touch a missing stimulus (all-NaN feature row) are NaN.
    """
    check_choice(similarity, "similarity", SIMILARITIES)
    X, T, keep = split_missing(features, triplets)
    if keep.all():
        return np.stack(triplet_similarities(X, T, similarity), axis=1)
    out = np.full((T.shape[0], 3), np.nan)
    if keep.any():
        out[keep] = np.stack(triplet_similarities(X, T[keep], similarity), axis=1)
    return out


def predict_odd_one_out(
    features: object, triplets: object, similarity: Similarity = "cosine"
) -> np.ndarray:
    """``(m,)`` int64: position (0, 1, 2) of the predicted odd one out in each triplet.

    -1 when all three similarities are exactly equal (counts as wrong) and for triplets
    that touch a missing stimulus. The human choice is position 2 in the stored
    convention, so ``predict_odd_one_out(X, T) == 2`` is the per-triplet correctness.
    """
    check_choice(similarity, "similarity", SIMILARITIES)
    X, T, keep = split_missing(features, triplets)
    if keep.all():
        return predict_positions(X, T, similarity).astype(np.int64)
    pred = np.full(T.shape[0], -1, dtype=np.int64)
    if keep.any():
        pred[keep] = predict_positions(X, T[keep], similarity)
    return pred


# --------------------------------------------------------------------------- grouping


@dataclasses.dataclass
class _Groups:
    """Responses grouped into distinct triplets."""

    inverse: np.ndarray  # (m,) group of each response
    sizes: np.ndarray  # (g,) responses per group
    first: np.ndarray  # (g,) index of one response of each group
    majority_share: np.ndarray  # (g,) share of the group's answers that is the top answer
    answer_group: np.ndarray  # (k,) distinct (group, answer object) combinations' group
    answer_is_top: np.ndarray  # (k,) ... whether that answer ties for most common
    n_top: np.ndarray  # (g,) how many answers tie for most common
    answer_counts: np.ndarray | None = None  # (k,) responses giving each combination
    # the combinations' answer objects: given, or decoded on first use from their sort keys
    answer_objects: np.ndarray | None = None
    run_keys: np.ndarray | None = None
    n_objects: int = 0

    @property
    def answers(self) -> np.ndarray:
        """(k,) the answer object of each distinct (group, answer) combination."""
        if self.answer_objects is None:
            assert self.run_keys is not None
            self.answer_objects = _answer_objects(self.run_keys, self.n_objects)
        return self.answer_objects


def _canonical_columns(
    T: np.ndarray, convention: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the triplets' objects in a canonical order, as three columns; the answer object of
    each response).

    Odd-one-out: the unordered set of three objects sorted; answer = the odd one.
    Anchor: the anchor, then the two others sorted; answer = the one judged closer.
    """
    a, b, c = T[:, 0], T[:, 1], T[:, 2]
    if convention == "odd-one-out":
        lo = np.minimum(np.minimum(a, b), c)
        hi = np.maximum(np.maximum(a, b), c)
        mid = a + b
        mid += c
        mid -= lo
        mid -= hi
        return lo, mid, hi, c
    return a, np.minimum(b, c), np.maximum(b, c), b


def _canonical(T: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_canonical_columns` with the three columns stacked into ``(m, 3)``."""
    lo, mid, hi, answer = _canonical_columns(T, convention)
    return np.stack([lo, mid, hi], axis=1), answer


def _sorted_with_order(keys: np.ndarray, key_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, keys[order])`` for non-negative ``keys < 2**key_bits``, ``order`` a stable
    argsort. When key and index fit one int64 together, it is one ``np.sort`` of the packed
    ``key << b | index`` (a plain sort of integers is several times faster than an argsort
    plus a gather, and the packed values are distinct, so the order is the stable one)."""
    m = keys.size
    index_bits = max(1, (m - 1).bit_length())
    if key_bits + index_bits > 62:
        order = np.argsort(keys, kind="stable")
        return order, keys[order]
    packed = keys << index_bits
    packed |= np.arange(m, dtype=np.int64)
    packed.sort()
    order = packed & ((1 << index_bits) - 1)
    packed >>= index_bits
    return order, packed


def _answer_objects(keys: np.ndarray, n: int) -> np.ndarray:
    """The answer object of each sorted key ``((lo * n + mid) * n + hi) << 2 | position``
    (decoded arithmetically: sequential, where a gather through the sort order is not)."""
    position = keys & 3
    rest = keys >> 2
    out = rest % n  # hi
    rest //= n
    mid = rest % n
    np.copyto(out, mid, where=position == 1)
    rest //= n
    np.copyto(out, rest, where=position == 0)
    return out


def _group(T: np.ndarray, convention: str, n_objects: int) -> _Groups:
    """Group responses into distinct triplets and count the answers in each group.

    One sort does both: each response's key is its distinct triplet followed by the
    position (0, 1, 2) of its answer among the triplet's canonically ordered objects (two
    low bits), so sorted keys run through the groups and, inside a group, through its
    answers in the order of their object ids."""
    m = T.shape[0]
    lo, mid, hi, answer = _canonical_columns(T, convention)
    n = max(n_objects, 1)
    position = (answer != lo).astype(np.int64)
    position += answer == hi
    key_bits = (n**3).bit_length() + 2
    if key_bits <= 62:
        keys = lo * n
        keys += mid
        keys *= n
        keys += hi
        keys <<= 2
        keys |= position
        order, sorted_keys = _sorted_with_order(keys, key_bits)
        group_keys = sorted_keys >> 2
    else:  # over ~1.1 million objects the keys would overflow int64
        order = np.lexsort((position, hi, mid, lo))
        sc = np.stack([lo, mid, hi], axis=1)[order]
        group_keys = np.cumsum(np.r_[False, (sc[1:] != sc[:-1]).any(axis=1)])
        sorted_keys = (group_keys << 2) | position[order]
    new = np.empty(m, dtype=bool)
    new[0] = True
    np.not_equal(group_keys[1:], group_keys[:-1], out=new[1:])
    if new.all():  # every response is its own distinct triplet
        ones = np.ones(m, dtype=np.int64)
        ident = np.arange(m)
        return _Groups(
            ident,
            ones,
            ident,
            ones.astype(np.float64),
            ident,
            np.ones(m, dtype=bool),
            ones,
            answer_objects=answer,
        )
    starts = np.flatnonzero(new)
    sizes = np.diff(starts, append=m)
    gid_sorted = np.cumsum(new)
    gid_sorted -= 1
    inverse = np.empty(m, dtype=np.int64)
    inverse[order] = gid_sorted
    # Answer runs: equal keys are one (group, answer) combination.
    run = np.empty(m, dtype=bool)
    run[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=run[1:])
    run_starts = np.flatnonzero(run)
    counts = np.diff(run_starts, append=m)
    answer_group = gid_sorted[run_starts]
    # the runs of one group are consecutive; a run that starts a group starts it
    group_starts = np.flatnonzero(new[run_starts])
    top = np.maximum.reduceat(counts, group_starts)
    top_of_run = top[answer_group]
    is_top = counts == top_of_run
    n_top = np.add.reduceat(is_top.astype(np.int64), group_starts)
    return _Groups(
        inverse=inverse,
        sizes=sizes,
        first=order[starts],
        majority_share=top / sizes,
        answer_group=answer_group,
        answer_is_top=is_top,
        n_top=n_top,
        answer_counts=counts,
        # the keys encode the objects unless the lexsort path replaced them by group ids
        answer_objects=None if key_bits <= 62 else answer[order[run_starts]],
        run_keys=sorted_keys[run_starts] if key_bits <= 62 else None,
        n_objects=n,
    )


def _ceiling_from_groups(groups: _Groups) -> float | None:
    repeated = groups.sizes >= 2
    if not repeated.any():
        return None
    return float(groups.majority_share[repeated].mean())


def _loo_ceiling_from_groups(groups: _Groups) -> float | None:
    """Leave-one-response-out ceiling: each response of a repeated distinct triplet is
    scored against the majority of the OTHER responses (1/k when k answers tie for that
    majority and it is one of them); mean within a triplet, then over distinct triplets.

    Removing one response with answer x: if x was the unique top answer (count t), the
    others' top is t - 1, shared by x and every answer with count t - 1 (k = 1 + their
    number); otherwise some other answer has at least x's old count, so x scores 0.
    """
    repeated = groups.sizes >= 2
    if not repeated.any():
        return None
    g = groups.sizes.size
    counts = _answer_counts(groups)
    top = np.zeros(g, dtype=np.int64)
    np.maximum.at(top, groups.answer_group, counts)
    unique_top = groups.answer_is_top & (groups.n_top[groups.answer_group] == 1)
    runner = counts == (top[groups.answer_group] - 1)
    n_runner = np.bincount(groups.answer_group, weights=runner, minlength=g)
    k = 1.0 + n_runner[groups.answer_group]
    score = np.where(unique_top, counts / k, 0.0)  # every response with that answer
    per_group = np.bincount(groups.answer_group, weights=score, minlength=g) / groups.sizes
    return float(per_group[repeated].mean())


def _answer_counts(groups: _Groups) -> np.ndarray:
    """How many responses of its group gave each (group, answer) combination."""
    if groups.answer_counts is not None:
        return groups.answer_counts
    return np.ones(groups.answer_group.size, dtype=np.int64)  # every response distinct


def _ceiling_of(
    triplets: object, convention: str, from_groups: Callable[[_Groups], float | None]
) -> float:
    """Validate raw triplets, group them and apply one ceiling rule to the groups."""
    check_choice(convention, "convention", CONVENTIONS)
    arr = np.asarray(triplets)
    n_objects = int(arr.max()) + 1 if arr.size and np.issubdtype(arr.dtype, np.number) else 0
    T = check_triplets(arr, max(n_objects, 1))
    ceiling = from_groups(_group(T, convention, n_objects))
    if ceiling is None:
        raise InvalidInputError(
            "triplets",
            "no triplet was answered more than once, so there is no noise ceiling",
            "repeated responses to the same distinct triplet",
        )
    return ceiling


def loo_noise_ceiling(triplets: object, convention: Convention = "odd-one-out") -> float:
    """Leave-one-response-out human ceiling (METHODS.md section 2): each response of a
    distinct triplet answered at least twice is scored against the majority answer of the
    OTHER responses to it (1/k when k answers tie for that majority and it is one of
    them); mean over the triplet's responses, then over distinct triplets. It is the
    bound a model can actually reach (the in-sample :func:`noise_ceiling` counts each
    response in its own majority). Raises InvalidInputError when no triplet repeats.
    """
    return _ceiling_of(triplets, convention, _loo_ceiling_from_groups)


def noise_ceiling(triplets: object, convention: Convention = "odd-one-out") -> float:
    """Human noise ceiling: mean over distinct triplets answered at least twice of the
    share of answers that agree with the majority answer.

    A distinct triplet is the unordered set of its three objects (odd-one-out) or the
    anchor plus the unordered pair of the others (anchor). Ties for the majority do not
    matter here (the share is the same). Raises InvalidInputError when no triplet was
    answered more than once.
    """
    return _ceiling_of(triplets, convention, _ceiling_from_groups)


# --------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class OddOneOutResult(Result):
    """Zero-shot triplet accuracy with its CI, chance, ceiling and the options used.

    ``n_triplets`` is the number of scored units: responses (variant "responses") or
    distinct triplets (variant "majority"). ``n_dropped`` counts responses dropped
    because they touch a missing stimulus. ``ceiling_source`` is "data", "given" or None.
    ``bootstrap_unit`` is "triplet" or "distinct triplet" (None without a CI).
    ``ceiling`` is the in-sample noise ceiling (the paper's); ``ceiling_loo`` the
    leave-one-response-out ceiling (computed from data only; None for a given ceiling)
    and ``normalized_loo`` the accuracy normalized against it.
    """

    accuracy: float
    ci: tuple[float, float] | None
    chance: float
    ceiling: float | None
    normalized: float | None
    n_triplets: int
    n_responses: int
    n_distinct: int
    n_dropped: int
    n_full_ties: int
    similarity: str
    variant: str
    convention: str
    n_bootstrap: int
    confidence: float
    seed: int
    clip_normalized: bool
    ceiling_source: str | None
    bootstrap_unit: str | None
    ceiling_loo: float | None = None
    normalized_loo: float | None = None


def _check_ceiling(ceiling: object, chance: float) -> float | None:
    if ceiling is None:
        return None
    if isinstance(ceiling, bool) or not isinstance(ceiling, (int, float, np.floating)):
        raise InvalidInputError(
            "ceiling", f"is {ceiling!r}", f"None or a number in ({chance:.4g}, 1]"
        )
    value = float(ceiling)
    if not chance < value <= 1.0:
        raise InvalidInputError("ceiling", f"is {value}", f"None or a number in ({chance:.4g}, 1]")
    return value


def _score(
    features: object,
    triplets: object,
    *,
    convention: str,
    similarity: str,
    variant: str,
    ceiling: object,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    clip_normalized: bool,
) -> OddOneOutResult:
    check_choice(similarity, "similarity", SIMILARITIES)
    check_choice(variant, "variant", VARIANTS)
    check_bootstrap_options(n_bootstrap, confidence, seed)
    if not isinstance(clip_normalized, bool):
        raise InvalidInputError("clip_normalized", f"is {clip_normalized!r}", "True or False")
    chance = CHANCE if convention == "odd-one-out" else ANCHOR_CHANCE
    given_ceiling = _check_ceiling(ceiling, chance)

    # odd_one_out / majority entry -> _score -> split_missing: the user's line is 4 up
    X, T_all, keep = split_missing(features, triplets, warn=True, stacklevel=4)
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise InvalidInputError(
            "features",
            f"every one of the {T_all.shape[0]} triplets touches a missing stimulus (all-NaN row)",
            "feature rows for the stimuli in the triplets",
        )
    T = T_all if n_dropped == 0 else T_all[keep]
    n_objects = X.shape[0]
    groups = _group(T, convention, n_objects)
    repeated = bool((groups.sizes >= 2).any())

    def correct_of(trip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted answer object or -1, full-tie mask) for triplets in ``trip``."""
        if convention == "odd-one-out":
            pred = predict_positions(X, trip, similarity)
            obj = np.where(pred >= 0, trip[np.arange(trip.shape[0]), np.maximum(pred, 0)], -1)
            return obj, pred < 0
        s_ab, s_ac = triplet_similarities(X, trip, similarity, pairs="ab,ac")
        obj = np.where(s_ab > s_ac, trip[:, 1], np.where(s_ac > s_ab, trip[:, 2], -1))
        return obj, s_ab == s_ac

    if variant == "responses":
        if convention == "odd-one-out":
            # the human's odd one out is position 2 (a triplet's objects are distinct)
            position = predict_positions(X, T, similarity)
            values = (position == 2).astype(np.float64)
            ties = position < 0
        else:
            predicted, ties = correct_of(T)
            values = (predicted == T[:, 1]).astype(np.float64)
        unit_groups = groups.inverse if repeated else None
        bootstrap_unit = "distinct triplet" if repeated else "triplet"
    else:
        canon, _ = _canonical(T[groups.first], convention)
        predicted, ties = correct_of(canon)
        # Credit 1/k when the prediction is one of k answers tied for most common.
        hit = groups.answer_is_top & (groups.answers == predicted[groups.answer_group])
        credit = np.bincount(groups.answer_group, weights=hit, minlength=groups.sizes.size)
        values = credit / groups.n_top
        unit_groups = None
        bootstrap_unit = "distinct triplet"

    # one estimator for the point and its interval (mean over responses; the interval
    # resamples distinct triplets when some repeat)
    estimate = cluster_mean(
        values, unit_groups, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
    )
    accuracy, ci = estimate.value, estimate.ci
    ceil: float | None
    source: str | None
    ceil_loo: float | None = None
    if given_ceiling is not None:
        ceil, source = given_ceiling, "given"
    else:
        ceil = _ceiling_from_groups(groups)
        source = "data" if ceil is not None else None
        ceil_loo = _loo_ceiling_from_groups(groups)

    def normalize(c: float | None) -> float | None:
        if c is None or not c > chance:
            return None
        value = (accuracy - chance) / (c - chance)
        return max(0.0, value) if clip_normalized else value

    normalized = normalize(ceil)
    return OddOneOutResult(
        accuracy=accuracy,
        ci=ci,
        chance=chance,
        ceiling=ceil,
        normalized=normalized,
        n_triplets=int(values.size),
        n_responses=int(T.shape[0]),
        n_distinct=int(groups.sizes.size),
        n_dropped=n_dropped,
        n_full_ties=int(ties.sum()),
        similarity=similarity,
        variant=variant,
        convention=convention,
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
        clip_normalized=clip_normalized,
        ceiling_source=source,
        bootstrap_unit=bootstrap_unit if ci is not None else None,
        ceiling_loo=ceil_loo,
        normalized_loo=normalize(ceil_loo),
    )


def odd_one_out(
    features: object,
    triplets: object,
    similarity: Similarity = "cosine",
    variant: Variant = "responses",
    ceiling: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clip_normalized: bool = False,
) -> OddOneOutResult:
    """Zero-shot odd-one-out accuracy of ``features`` on human ``triplets``.

    ``features``: ``(n, p)`` rows in stimulus order (all-NaN row = missing stimulus).
    ``triplets``: ``(m, 3)`` stored convention, column 2 = the human's odd one out.

    Variants:
      ``responses`` (default): accuracy over responses, each response its own triplet.
      ``majority``: accuracy over distinct triplets (the unordered set of 3 objects),
        against the most common human answer. The prediction is made on the objects in
        ascending index order (so the partial-tie rule is applied once, deterministically).
        Tie handling: when k answers tie for most common, a prediction that is one of
        them earns 1/k (the expected score under a random choice among the tied
        majorities); a full similarity tie earns 0.

    CI: percentile bootstrap (``n_bootstrap`` resamples, 0 = no CI) over triplets, or over
    distinct triplets as groups when some triplet was answered more than once (and always
    over distinct triplets in the majority variant).

    ``ceiling``: None computes the noise ceiling from the (kept) triplets when some were
    answered more than once (:func:`noise_ceiling`), else ceiling and normalized are
    None. ``normalized = (accuracy - 1/3) / (ceiling - 1/3)``, not clipped unless
    ``clip_normalized`` (then clipped at 0, as Brain-Score does). In the majority variant
    the ceiling is still the human agreement with the majority, so accuracy can exceed it.
    """
    return _score(
        features,
        triplets,
        convention="odd-one-out",
        similarity=similarity,
        variant=variant,
        ceiling=ceiling,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        clip_normalized=clip_normalized,
    )


def anchor_accuracy(
    features: object,
    triplets: object,
    similarity: Similarity = "cosine",
    variant: Variant = "responses",
    ceiling: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clip_normalized: bool = False,
) -> OddOneOutResult:
    """Accuracy on anchor triplets ``(a, b, c)``: "b is closer to a than c".

    Correct when ``s(a, b) > s(a, c)``; an exact tie is wrong. Chance is 1/2 and
    ``normalized = (accuracy - 1/2) / (ceiling - 1/2)``. A distinct triplet is the anchor
    plus the unordered pair of the other two; the rest (variants, CI, ceiling, missing
    stimuli) works as in :func:`odd_one_out`. ``n_full_ties`` counts exact ties.
    """
    return _score(
        features,
        triplets,
        convention="anchor",
        similarity=similarity,
        variant=variant,
        ceiling=ceiling,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        clip_normalized=clip_normalized,
    )
