"""Probes that are honest on the small THINGS set (METHODS.md section 3, "Small data").

The 20,000-response THINGS file has 1,000 distinct triplets; a p x p probe overfits it.
Two remedies, both used by ``align report`` / ``align reproduce``:

- a LOW-RANK, IDENTITY-REGULARISED probe (``PROBE_FIT``): fitted on the first ``rank``
  principal components of
  the standardised THINGS features (unsupervised; no labels), and the fitted (rank x
  rank) probe is composed back into an ordinary p x p transform of rank ``rank``
  (:func:`compose_lowrank`), so it saves, transfers and loads like any probe;
- SIMULATED SUPERVISION (variant (b)): training triplets sampled from a human embedding
  with SPoSE's own choice model (the odd one out drawn with probabilities
  ``softmax(s_ab, s_ac, s_bc)`` of its dot-product similarities) over the TRAINING
  objects of each object fold, evaluated on the REAL human responses over the held-out
  objects. Every number from it is labelled "simulated supervision".

Selection of lambda: as :func:`~align.metrics.probe.cross_validate_probe`, the lambda
with the lowest mean held-out cross-entropy (on the real held-out responses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..metrics.transfer import LinearTransform

LAMBDAS: tuple[float, ...] = (10.0, 1.0, 1e-1, 1e-2, 1e-3)
#: Report probes: regularised toward a scaled identity and started there (gLocal's
#: penalty, METHODS §3), so the strongest lambda is the zero-shot dot-product geometry of
#: the rank-r space with a fitted temperature, and the lambda grid decides how far the
#: human (or simulated) triplets may move it. L-BFGS to 1e-6.
PROBE_FIT: dict[str, Any] = {
    "max_iter": 100,
    "tol": 1e-6,
    "reg_kind": "identity",
    "init": "identity",
}
SIMULATED_LABEL = "simulated supervision (SPoSE choice model, METHODS §3 (b))"


@dataclass(frozen=True)
class PCABasis:
    """Standardise with THINGS' global scalar mean/std, centre columns, project on P."""

    mean: float
    std: float
    center: np.ndarray  # (p,) column means of the standardised rows
    components: np.ndarray  # (p, k) orthonormal columns

    @property
    def rank(self) -> int:
        return int(self.components.shape[1])

    def project(self, X: np.ndarray) -> np.ndarray:
        """(n, k) scores; all-NaN rows stay all-NaN."""
        Xf = np.asarray(X, dtype=np.float64)
        missing = np.isnan(Xf).all(axis=1)
        out = np.full((Xf.shape[0], self.rank), np.nan)
        out[~missing] = ((Xf[~missing] - self.mean) / self.std - self.center) @ self.components
        return out


def fit_pca(X: np.ndarray, rank: int) -> PCABasis:
    """PCA basis of the present rows of ``X`` after global scalar standardisation."""
    Xf = np.asarray(X, dtype=np.float64)
    present = Xf[~np.isnan(Xf).all(axis=1)]
    if present.shape[0] < 3:
        raise InvalidInputError("features", f"has {present.shape[0]} present rows", ">= 3 rows")
    mean, std = float(present.mean()), float(present.std())
    if not std > 0:
        raise InvalidInputError("features", "are constant", "features that vary")
    Xs = (present - mean) / std
    center = Xs.mean(axis=0)
    _, sv, Vt = np.linalg.svd(Xs - center, full_matrices=False)
    k = int(min(rank, int(np.sum(sv > sv[0] * 1e-10)), Xs.shape[1]))
    return PCABasis(mean, std, center, Vt[:k].T.copy())


def compose_lowrank(basis: PCABasis, probe: Any) -> LinearTransform:
    """The p x p transform equal to ``probe`` applied to ``basis.project(X)``, rotated
    back into feature space (dot products of rows are unchanged).

    With ``Z = X' P - c P`` (``X'`` the standardised rows) and the probe's
    ``E = ((Z - m2) / s2) W2 + b2``: ``E P^T = X' (P W2 P^T / s2) + b P^T`` where
    ``b = b2 - ((c P + m2) / s2) W2``.
    """
    P = basis.components
    W2 = np.asarray(probe.weights_, dtype=np.float64)
    m2, s2 = float(probe.mean_), float(probe.std_)
    b2 = np.zeros(W2.shape[1]) if probe.bias_ is None else np.asarray(probe.bias_)
    bias_k = b2 - ((basis.center @ P + m2) / s2) @ W2
    weights = P @ W2 @ P.T / s2
    return LinearTransform(weights, bias_k @ P.T, basis.mean, basis.std, source="low-rank probe")


def simulate_triplets(
    embedding: np.ndarray, objects: np.ndarray, n_triplets: int, seed: int = 0
) -> np.ndarray:
    """``n_triplets`` triplets over ``objects`` (distinct within a triplet), the odd one out
    sampled from ``softmax(s_ab, s_ac, s_bc)`` of dot products of ``embedding`` rows.
    Stored convention: column 2 is the odd one out."""
    objs = np.asarray(objects, dtype=np.int64)
    if objs.size < 3:
        raise InvalidInputError("objects", f"has {objs.size} objects", ">= 3 training objects")
    rng = np.random.default_rng(seed)
    picks = np.empty((n_triplets, 3), dtype=np.int64)
    for i in range(n_triplets):  # distinct triples; n_triplets is small (tens of thousands)
        picks[i] = rng.choice(objs, size=3, replace=False)
    E = np.asarray(embedding, dtype=np.float64)
    a, b, c = E[picks[:, 0]], E[picks[:, 1]], E[picks[:, 2]]
    S = np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)
    S -= S.max(axis=1, keepdims=True)
    prob = np.exp(S)
    prob /= prob.sum(axis=1, keepdims=True)
    u = rng.random(n_triplets)[:, None]
    pair = (u > np.cumsum(prob, axis=1)).sum(axis=1).clip(0, 2)  # 0: ab, 1: ac, 2: bc
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[pair]
    return np.take_along_axis(picks, order, axis=1)


@dataclass
class HeldOutProbe:
    """A probe evaluated on real held-out THINGS responses over object folds."""

    label: str
    accuracy: float
    cross_entropy: float
    lambda_: float
    rank: int
    n_test: int
    folds: list[dict[str, Any]]
    cv: list[dict[str, Any]]
    options: dict[str, Any]
    test_index: np.ndarray = field(repr=False)  # (t,) rows of the real triplets scored
    correct: np.ndarray = field(repr=False)  # (t,) bool, at the chosen lambda
    probe: Any = field(default=None, repr=False)  # refit on all objects, on Z
    transform: LinearTransform | None = field(default=None, repr=False)  # set by the caller
    knn_overlap: float | None = None
    baseline_correct: np.ndarray | None = field(default=None, repr=False)  # (t,) W = I
    statistics: dict[str, Any] = field(default_factory=dict)  # metrics.probe.heldout_statistics

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "accuracy": self.accuracy,
            "cross_entropy": self.cross_entropy,
            "lambda": self.lambda_,
            "rank": self.rank,
            "n_test": self.n_test,
            "folds": self.folds,
            "cv": self.cv,
            "options": self.options,
            "knn_overlap": self.knn_overlap,
            "transform_digest": None if self.transform is None else self.transform.digest,
            **self.statistics,
        }


def heldout_probe(
    Z: np.ndarray,
    triplets: np.ndarray,
    *,
    label: str,
    simulate_from: np.ndarray | None = None,
    n_simulated: int = 20000,
    lambdas: tuple[float, ...] = LAMBDAS,
    k: int = 3,
    seed: int = 0,
    alpha: float = 0.0,
    temperature: float = 0.1,
    n_threads: int | None = 1,
    local_batch_size: int = 256,
    n_bootstrap: int = 1000,
) -> HeldOutProbe:
    """Object-fold probe on ``Z`` (n, r) scored on the real held-out ``triplets``.

    Training triplets: the real ones over training objects, or (``simulate_from`` given)
    ``n_simulated`` triplets simulated from that embedding over the training objects.
    ``alpha > 0`` fits a :class:`~align.metrics.glocal.GLocalProbe` whose unlabeled set
    is the training objects' rows of ``Z``. The final probe (``probe``, on ``Z``) is
    refit on all objects at the chosen lambda. ``accuracy`` pools the held-out responses
    of all folds; ``statistics`` holds its distinct-triplet interval, the switched-off
    baseline (W = I on the same Z, same standardisation) and the paired lift.
    """
    from ..metrics.glocal import GLocalProbe
    from ..metrics.probe import ObjectKFold, TripletProbe, cross_validate
    from ..metrics.probe.cv import heldout_statistics

    missing = np.isnan(Z).all(axis=1)
    estimator = (
        GLocalProbe(
            alpha=alpha,
            temperature=temperature,
            local_batch_size=local_batch_size,
            seed=seed,
            n_threads=n_threads,
            **PROBE_FIT,
        )
        if alpha > 0
        else TripletProbe(seed=seed, n_threads=n_threads, **PROBE_FIT)
    )

    def training_set(
        fold: int | None, objects: np.ndarray, real: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Real triplets, or simulated ones over the training objects; gLocal's unlabeled
        rows are the training objects' rows of Z."""
        train = real
        if simulate_from is not None:
            train = simulate_triplets(
                simulate_from, objects, n_simulated, seed + (k if fold is None else fold)
            )
        return train, ({"X_local": Z[objects]} if alpha > 0 else {})

    search = cross_validate(
        estimator, Z, triplets, lambdas=lambdas, cv=ObjectKFold(k, seed), training_set=training_set
    )
    # one estimator: pooled held-out responses, distinct-triplet intervals; the baseline
    # is the same pipeline with the transform switched off, the lift a paired interval
    stats = heldout_statistics(search, n_bootstrap=n_bootstrap, seed=seed)
    acc, ce, best = search.accuracy, search.cross_entropy, search.best
    mean_ce = search.mean_cross_entropy
    splits = search.splits
    test_index = np.concatenate([s[1] for s in splits])
    correct = np.concatenate(search.correct[best])
    options: dict[str, Any] = {
        "k": k,
        "seed": seed,
        "lambdas": list(lambdas),
        "selection": "lowest mean held-out cross-entropy",
        **PROBE_FIT,
        "supervision": SIMULATED_LABEL if simulate_from is not None else "human triplets",
    }
    if simulate_from is not None:
        options["n_simulated_per_fold"] = n_simulated
    if alpha > 0:
        options.update({"glocal_alpha": alpha, "glocal_temperature": temperature})
    return HeldOutProbe(
        label=label,
        accuracy=float(stats["accuracy"]),
        cross_entropy=float(mean_ce[best]),
        lambda_=float(lambdas[best]),
        rank=int(Z.shape[1]),
        n_test=int(test_index.size),
        folds=[
            {
                "fold": i,
                "n_train": search.n_train[i],
                "n_test": int(splits[i][1].size),
                "accuracy": float(acc[best, i]),
                "cross_entropy": float(ce[best, i]),
            }
            for i in range(k)
        ],
        cv=[
            {"lambda": lam, "cross_entropy": float(mean_ce[j]), "accuracy": float(acc[j].mean())}
            for j, lam in enumerate(lambdas)
        ],
        options=options,
        test_index=trip_index(triplets, missing, test_index),
        correct=correct,
        probe=search.estimator,
        baseline_correct=np.concatenate(search.baseline),
        statistics={**stats, "fold_mean_accuracy": float(acc[best].mean())},
    )


def trip_index(triplets: np.ndarray, missing: np.ndarray, kept_index: np.ndarray) -> np.ndarray:
    """Map indices into the kept triplets (those not touching a missing row) back to rows
    of the original ``triplets``."""
    trip = np.asarray(triplets, dtype=np.int64)
    kept_rows = np.flatnonzero(~missing[trip].any(axis=1))
    return kept_rows[kept_index]
