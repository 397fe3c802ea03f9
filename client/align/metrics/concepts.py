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
from .bootstrap import check_bootstrap_options, cluster_mean, distinct_triplet_groups
from .oddoneout import (
    SIMILARITIES,
    Similarity,
    predict_from_similarities,
    split_missing,
    triplet_similarities,
)
from .validation import check_choice, check_triplets

__all__ = [
    "ConceptAccuracy",
    "ConceptResult",
    "DimensionName",
    "concept_of_triplets",
    "name_dimensions",
    "per_concept_accuracy",
]


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
    """Accuracy on the triplets of one VICE dimension (None where it has none).

    ``n_triplets`` counts responses, ``n_distinct`` the distinct triplets among them
    (the independent units); ``ci`` / ``probed_ci`` / ``reference_ci`` resample those
    distinct triplets (the one accuracy estimator, :func:`~align.metrics.bootstrap.
    cluster_mean`). ``reference_accuracy`` is a reference embedding's accuracy on the
    same responses (SPoSE: how hard the dimension is for a human-derived embedding).
    """

    dimension: int
    label: str
    n_triplets: int
    accuracy: float | None
    probed_accuracy: float | None
    n_distinct: int = 0
    ci: tuple[float, float] | None = None
    probed_ci: tuple[float, float] | None = None
    reference_accuracy: float | None = None
    reference_ci: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class DimensionName(Result):
    """A VICE dimension named by its best-matching labelled SPoSE dimension: ``match_r``
    is the Pearson correlation of the two dimensions' loadings over the objects."""

    dimension: int
    label: str
    spose_dimension: int
    match_r: float


def name_dimensions(
    vice: object, spose: object, spose_labels: Sequence[str]
) -> list[DimensionName]:
    """Name each VICE dimension by the SPoSE dimension whose loadings over the same
    objects correlate most with it (labels from data, e.g.
    ``things_spose66d/labels_spose_66d_short.txt``), with that correlation."""
    V = _check_vice(vice)
    S = _check_vice(spose)
    if S.shape[0] != V.shape[0]:
        raise InvalidInputError(
            "spose", f"has {S.shape[0]} rows", f"{V.shape[0]}, the VICE embedding's objects"
        )
    names = [str(x) for x in spose_labels]
    if len(names) != S.shape[1]:
        raise InvalidInputError(
            "spose_labels", f"has {len(names)} names", f"{S.shape[1]}, one per SPoSE dimension"
        )

    def standardise(M: np.ndarray) -> np.ndarray:
        c = M - M.mean(axis=0)
        sd = c.std(axis=0)
        sd[sd == 0] = 1.0
        return np.asarray(c / sd)

    R = standardise(V).T @ standardise(S) / V.shape[0]  # (vice dims, spose dims)
    best = np.argmax(R, axis=1)
    return [
        DimensionName(
            dimension=k, label=names[int(j)], spose_dimension=int(j), match_r=float(R[k, j])
        )
        for k, j in enumerate(best)
    ]


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
    reference: object = None,
    reference_similarity: Similarity = "dot",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConceptResult:
    """Accuracy per VICE dimension (METHODS.md section 6).

    ``features_or_correct``: either the model's ``(n, p)`` features (zero-shot
    correctness is computed with ``similarity``; all-NaN rows mark missing stimuli whose
    triplets are dropped) or an ``(m,)`` bool mask of correct triplets.
    ``probed``: optional ``(m,)`` correctness of a probe on the same triplets (bool mask
    or predicted odd-one-out positions, 2 = correct).
    ``reference``: optional reference on the same triplets: ``(n, q)`` features of a
    human-derived embedding (SPoSE; scored with ``reference_similarity``, default dot as
    in SPoSE's choice model) or an ``(m,)`` correctness mask.
    ``labels``: one name per VICE dimension (default ``"dimension <k>"``).
    Each accuracy gets a cluster-bootstrap interval over the dimension's distinct
    triplets (``n_bootstrap`` resamples; 0: none).
    """
    check_bootstrap_options(n_bootstrap, confidence, seed)
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
        check_choice(similarity, "similarity", SIMILARITIES)
        X, T, keep = split_missing(arr, triplets)
        if X.shape[0] != V.shape[0]:
            raise InvalidInputError(
                "features", f"has {X.shape[0]} rows", f"{V.shape[0]} rows, one per VICE row"
            )
        correct = np.zeros(T.shape[0], dtype=bool)
        if keep.any():
            pred = predict_from_similarities(*triplet_similarities(X, T[keep], similarity))
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
    reference_correct = None
    if reference is not None:
        ref = np.asarray(reference)
        if ref.ndim == 2:
            check_choice(reference_similarity, "reference_similarity", SIMILARITIES)
            Xr, Tr, keep_r = split_missing(ref, T, warn=False)
            reference_correct = np.zeros(T.shape[0], dtype=bool)
            if keep_r.any():
                pred_r = predict_from_similarities(
                    *triplet_similarities(Xr, Tr[keep_r], reference_similarity)
                )
                reference_correct[keep_r] = pred_r == 2
        else:
            reference_correct = _as_correct(ref, T.shape[0], "reference")
    if not keep.any():
        raise InvalidInputError(
            "features", "every triplet touches a missing stimulus", "feature rows for the stimuli"
        )
    T, correct = T[keep], correct[keep]
    if probed_correct is not None:
        probed_correct = probed_correct[keep]
    if reference_correct is not None:
        reference_correct = reference_correct[keep]
    concept = np.argmax((V[T[:, 0]] + V[T[:, 1]]) / 2.0, axis=1)
    groups = distinct_triplet_groups(T)

    def estimate(
        values: np.ndarray | None, mask: np.ndarray
    ) -> tuple[float | None, tuple[float, float] | None]:
        if values is None or not mask.any():
            return None, None
        est = cluster_mean(
            values[mask].astype(np.float64),
            groups[mask],
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
        return est.value, est.ci

    rows = []
    for k in range(n_dims):
        mask = concept == k
        n_k = int(mask.sum())
        acc, ci = estimate(correct, mask)
        p_acc, p_ci = estimate(probed_correct, mask)
        r_acc, r_ci = estimate(reference_correct, mask)
        rows.append(
            ConceptAccuracy(
                dimension=k,
                label=names[k],
                n_triplets=n_k,
                accuracy=acc,
                probed_accuracy=p_acc,
                n_distinct=int(np.unique(groups[mask]).size),
                ci=ci,
                probed_ci=p_ci,
                reference_accuracy=r_acc,
                reference_ci=r_ci,
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
