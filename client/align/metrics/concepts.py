"""Concept-level analysis with the VICE embedding (METHODS.md section 6).

Each THINGS triplet ``(a, b, c)`` (stored convention: ``(a, b)`` is the pair the person
judged most similar) gets a concept: the VICE dimension with the largest value in the
mean of the VICE rows of ``a`` and ``b``. Per-dimension accuracy (zero-shot and, given a
probe's predictions, probed) then shows which human concepts a model captures.

The VICE matrix must be in the same stimulus order as the triplets (the datasets loader
maps the raw VICE file to the concept-table order). Ties between dimensions go to the
lowest dimension index (``argmax``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError, NumericalError
from ..results import Result
from .oddoneout import (
    SIMILARITIES,
    Similarity,
    _check_choice,
    _predict_from_similarities,
    _split_missing,
    _triplet_similarities,
    check_triplets,
)

__all__ = ["ConceptAccuracy", "ConceptResult", "concept_of_triplets", "per_concept_accuracy"]


def _check_vice(vice: object) -> np.ndarray:
    arr = np.asarray(vice)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(
            "vice", f"has shape {arr.shape}", "a 2-D (n_stimuli, n_dimensions) VICE embedding"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidInputError("vice", f"has dtype {arr.dtype}", "a real float array")
    V = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(V).all():
        row = int(np.flatnonzero(~np.isfinite(V).all(axis=1))[0])
        raise NumericalError(f"vice: row {row} has NaN or infinity")
    return V


def concept_of_triplets(vice: object, triplets: object) -> np.ndarray:
    """``(m,)`` int64: the VICE dimension of each triplet's human-chosen pair.

    ``argmax_k (vice[a, k] + vice[b, k]) / 2`` for triplets ``(a, b, c)``.
    """
    V = _check_vice(vice)
    T = check_triplets(triplets, V.shape[0])
    return np.argmax((V[T[:, 0]] + V[T[:, 1]]) / 2.0, axis=1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ConceptAccuracy(Result):
    """Accuracy on the triplets of one VICE dimension (None where it has none)."""

    dimension: int
    label: str
    n_triplets: int
    accuracy: float | None
    probed_accuracy: float | None


@dataclasses.dataclass(frozen=True)
class ConceptResult(Result):
    """Per-dimension accuracies, in dimension order, plus the overall accuracies.

    ``source`` says where the zero-shot correctness came from: "features" (computed here
    with ``similarity``) or "correct_mask" (given). ``n_dropped`` counts triplets dropped
    because they touch a missing stimulus (all-NaN feature row).
    """

    concepts: tuple[ConceptAccuracy, ...]
    accuracy: float
    probed_accuracy: float | None
    n_triplets: int
    n_dropped: int
    n_dimensions: int
    similarity: str | None
    source: str

    def best(self, k: int = 5, min_triplets: int = 1) -> list[ConceptAccuracy]:
        """The ``k`` dimensions with the highest zero-shot accuracy."""
        rows = [c for c in self.concepts if c.accuracy is not None and c.n_triplets >= min_triplets]
        return sorted(rows, key=lambda c: (-(c.accuracy or 0.0), c.dimension))[:k]

    def worst(self, k: int = 5, min_triplets: int = 1) -> list[ConceptAccuracy]:
        """The ``k`` dimensions with the lowest zero-shot accuracy."""
        rows = [c for c in self.concepts if c.accuracy is not None and c.n_triplets >= min_triplets]
        return sorted(rows, key=lambda c: (c.accuracy or 0.0, c.dimension))[:k]


def _as_correct(value: object, m: int, field: str) -> np.ndarray:
    """A boolean correctness mask from a bool mask or predicted odd-one-out positions."""
    arr = np.asarray(value)
    if arr.shape != (m,):
        raise InvalidInputError(
            field,
            f"has shape {arr.shape}",
            f"({m},): a bool mask of correct triplets or predicted positions (0, 1, 2, -1)",
        )
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if not np.isin(arr, (-1, 0, 1, 2)).all():
            raise InvalidInputError(field, "has positions outside -1..2", "positions 0, 1, 2 or -1")
        return arr == 2  # stored convention: the human's odd one out is column 2
    raise InvalidInputError(field, f"has dtype {arr.dtype}", "bool mask or integer positions")


def per_concept_accuracy(
    features_or_correct: object,
    triplets: object,
    vice: object,
    labels: Sequence[str] | None = None,
    *,
    similarity: Similarity = "cosine",
    probed: object = None,
) -> ConceptResult:
    """Accuracy per VICE dimension (METHODS.md section 6).

    ``features_or_correct``: either the model's ``(n, p)`` features (zero-shot
    correctness is computed with ``similarity``; all-NaN rows mark missing stimuli whose
    triplets are dropped) or an ``(m,)`` bool mask of correct triplets.
    ``probed``: optional ``(m,)`` correctness of a probe on the same triplets (bool mask
    or predicted odd-one-out positions, 2 = correct).
    ``labels``: one name per VICE dimension (default ``"dimension <k>"``).
    """
    V = _check_vice(vice)
    n_dims = V.shape[1]
    if labels is None:
        names = [f"dimension {k}" for k in range(n_dims)]
    else:
        names = [str(x) for x in labels]
        if len(names) != n_dims:
            raise InvalidInputError(
                "labels", f"has {len(names)} names", f"{n_dims}, one per VICE dimension"
            )
    arr = np.asarray(features_or_correct)
    if arr.ndim == 2:
        _check_choice(similarity, "similarity", SIMILARITIES)
        X, T, keep = _split_missing(arr, triplets)
        if X.shape[0] != V.shape[0]:
            raise InvalidInputError(
                "features", f"has {X.shape[0]} rows", f"{V.shape[0]} rows, one per VICE row"
            )
        correct = np.zeros(T.shape[0], dtype=bool)
        if keep.any():
            pred = _predict_from_similarities(*_triplet_similarities(X, T[keep], similarity))
            correct[keep] = pred == 2
        source, sim_used = "features", similarity
    elif arr.ndim == 1:
        T = check_triplets(triplets, V.shape[0])
        correct = _as_correct(arr, T.shape[0], "features_or_correct")
        keep = np.ones(T.shape[0], dtype=bool)
        source, sim_used = "correct_mask", None
    else:
        raise InvalidInputError(
            "features_or_correct",
            f"has shape {arr.shape}",
            "(n, p) features or an (m,) bool mask of correct triplets",
        )
    probed_correct = None if probed is None else _as_correct(probed, T.shape[0], "probed")
    if not keep.any():
        raise InvalidInputError(
            "features", "every triplet touches a missing stimulus", "feature rows for the stimuli"
        )
    T, correct = T[keep], correct[keep]
    if probed_correct is not None:
        probed_correct = probed_correct[keep]
    concept = np.argmax((V[T[:, 0]] + V[T[:, 1]]) / 2.0, axis=1)
    counts = np.bincount(concept, minlength=n_dims)
    hits = np.bincount(concept, weights=correct, minlength=n_dims)
    probed_hits = (
        np.bincount(concept, weights=probed_correct, minlength=n_dims)
        if probed_correct is not None
        else None
    )
    rows = []
    for k in range(n_dims):
        n_k = int(counts[k])
        rows.append(
            ConceptAccuracy(
                dimension=k,
                label=names[k],
                n_triplets=n_k,
                accuracy=float(hits[k] / n_k) if n_k else None,
                probed_accuracy=(
                    float(probed_hits[k] / n_k) if n_k and probed_hits is not None else None
                ),
            )
        )
    return ConceptResult(
        concepts=tuple(rows),
        accuracy=float(correct.mean()),
        probed_accuracy=float(probed_correct.mean()) if probed_correct is not None else None,
        n_triplets=int(T.shape[0]),
        n_dropped=int((~keep).sum()),
        n_dimensions=n_dims,
        similarity=sim_used,
        source=source,
    )
