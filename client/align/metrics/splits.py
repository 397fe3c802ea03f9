"""Object-disjoint cross-validation for triplet data (METHODS.md section 3).

Folds are drawn over OBJECTS, not triplets: a triplet trains in a fold when all three
of its objects are training objects and tests when all three are held-out objects;
a mixed triplet is dropped from that fold. Splitting triplets instead would let the
probe see every test object during training and overstate how well it generalises.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np

from ..errors import InvalidInputError

__all__ = ["ObjectKFold", "check_triplets"]


def check_triplets(triplets: object, n_objects: int, field: str = "triplets") -> np.ndarray:
    """Validate ``triplets`` as an ``(m, 3)`` integer array of indices in ``[0, n_objects)``.

    Returns a C-contiguous int64 copy. Raises InvalidInputError naming ``field`` and,
    where it applies, the first offending row.
    """
    arr = np.asarray(triplets)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InvalidInputError(field, f"has shape {arr.shape}", "an (m, 3) integer array")
    if arr.shape[0] and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise InvalidInputError(field, f"has dtype {arr.dtype}", "integer indices")
        if not np.all(arr == np.round(arr)):
            row = int(np.argwhere(arr != np.round(arr))[0, 0])
            raise InvalidInputError(f"{field}[{row}]", f"is {arr[row].tolist()}", "integers")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out.size:
        bad = (out < 0) | (out >= n_objects)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise InvalidInputError(
                f"{field}[{row}]",
                f"is {out[row].tolist()}, out of range",
                f"0-based indices in [0, {n_objects})",
            )
        same = (out[:, 0] == out[:, 1]) | (out[:, 0] == out[:, 2]) | (out[:, 1] == out[:, 2])
        if same.any():
            row = int(np.argwhere(same)[0, 0])
            raise InvalidInputError(
                f"{field}[{row}]", f"is {out[row].tolist()}", "three distinct objects"
            )
    return out


class ObjectKFold:
    """Split ``n`` objects into ``n_splits`` seeded folds; derive triplet splits from them.

    ``object_folds(n)`` gives the held-out objects of each fold (a partition of
    ``range(n)``, sizes differing by at most one). ``split(n, triplets)`` returns, per
    fold, ``(train_triplet_idx, test_triplet_idx)``: row indices of triplets whose three
    objects are all training (resp. all held-out) objects. Mixed triplets appear in
    neither. Equal ``(n_splits, seed, n)`` give equal folds.
    """

    def __init__(self, n_splits: int = 3, seed: int = 0) -> None:
        if not isinstance(n_splits, numbers.Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise InvalidInputError("n_splits", f"is {n_splits!r}", "an integer >= 2")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise InvalidInputError("seed", f"is {seed!r}", "a non-negative integer")
        self.n_splits: int = int(n_splits)
        self.seed: int = int(seed)

    def __repr__(self) -> str:
        return f"ObjectKFold(n_splits={self.n_splits}, seed={self.seed})"

    def get_n_splits(self) -> int:
        return self.n_splits

    def object_folds(self, n_objects: int) -> list[np.ndarray]:
        """The held-out objects of each fold (sorted int64 arrays partitioning range(n))."""
        if (
            not isinstance(n_objects, numbers.Integral)
            or isinstance(n_objects, bool)
            or n_objects < self.n_splits
        ):
            raise InvalidInputError(
                "n_objects", f"is {n_objects!r}", f"an integer >= n_splits ({self.n_splits})"
            )
        order = np.random.default_rng(self.seed).permutation(int(n_objects))
        return [np.sort(part).astype(np.int64) for part in np.array_split(order, self.n_splits)]

    def fold_of_objects(self, n_objects: int) -> np.ndarray:
        """``(n,)`` int64: the fold in which each object is held out."""
        fold = np.empty(int(n_objects), dtype=np.int64)
        for i, objs in enumerate(self.object_folds(n_objects)):
            fold[objs] = i
        return fold

    def iter_split(
        self, n_objects: int, triplets: object
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        fold = self.fold_of_objects(n_objects)
        trip = check_triplets(triplets, int(n_objects))
        f = fold[trip]  # (m, 3) fold of each object of each triplet
        for i in range(self.n_splits):
            held = f == i
            test = np.flatnonzero(held.all(axis=1))
            train = np.flatnonzero(~held.any(axis=1))
            yield train, test

    def split(self, n_objects: int, triplets: object) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per fold, ``(train_idx, test_idx)`` row indices into ``triplets`` (int64)."""
        return list(self.iter_split(n_objects, triplets))
