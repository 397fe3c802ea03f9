"""Object-disjoint cross-validation for triplet data (METHODS.md section 3).

Folds are drawn over OBJECTS, not triplets: a triplet trains in a fold when all three
of its objects are training objects and tests when all three are held-out objects;
a mixed triplet is dropped from that fold. Splitting triplets instead would let the
probe see every test object during training and overstate how well it generalises.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .validation import check_scalar, check_triplets

__all__ = ["ObjectKFold", "check_triplets"]  # check_triplets: align.metrics.validation's


class ObjectKFold:
    """Split ``n`` objects into ``n_splits`` seeded folds; derive triplet splits from them.

    ``object_folds(n)`` gives the held-out objects of each fold (a partition of
    ``range(n)``, sizes differing by at most one). ``split(n, triplets)`` returns, per
    fold, ``(train_triplet_idx, test_triplet_idx)``: row indices of triplets whose three
    objects are all training (resp. all held-out) objects. Mixed triplets appear in
    neither. Equal ``(n_splits, seed, n)`` give equal folds.
    """

    def __init__(self, n_splits: int = 3, seed: int = 0) -> None:
        self.n_splits: int = int(check_scalar(n_splits, "n_splits", integer=True, minimum=2))
        self.seed: int = int(check_scalar(seed, "seed", integer=True, minimum=0))

    def __repr__(self) -> str:
        return f"ObjectKFold(n_splits={self.n_splits}, seed={self.seed})"

    def get_n_splits(self) -> int:
        return self.n_splits

    def object_folds(self, n_objects: int) -> list[np.ndarray]:
        """The held-out objects of each fold (sorted int64 arrays partitioning range(n))."""
        n_objects = int(check_scalar(n_objects, "n_objects", integer=True, minimum=self.n_splits))
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
