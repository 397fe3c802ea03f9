"""Object-disjoint cross-validation of a triplet estimator over a lambda grid.

:func:`cross_validate` is the one lambda x fold loop (like scikit-learn's GridSearchCV
over one parameter): it takes an ESTIMATOR (any :class:`TripletProbe`, e.g. gLocal's)
and a SPLITTER (:class:`~align.metrics.splits.ObjectKFold`), clones the estimator for
every (lambda, fold) with ``reg`` set to the lambda (the estimator passed in is never
fitted or changed), scores each clone on the fold's held-out triplets and picks the
lambda with the lowest mean held-out cross-entropy (ties: the earlier lambda in the
grid, i.e. the larger one on a descending grid). A ``training_set`` hook replaces a
fold's training triplets and adds fit arguments (simulated supervision; gLocal's
unlabeled rows) without a second copy of the loop.

:func:`cross_validate_probe` is the classic entry point: a :class:`TripletProbe` built
from keyword options, ``ObjectKFold(k, seed)``, result as :class:`ProbeResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import InvalidInputError
from ...results import Result, to_jsonable
from ..bootstrap import check_bootstrap_options, distinct_triplet_groups, paired_cluster_difference
from ..splits import ObjectKFold
from ..validation import check_bool, check_features, check_scalar, check_triplets
from .core import fold_jobs, map_chains, predict_from_similarities
from .estimator import TripletProbe, clone, mean_cross_entropy

__all__ = [
    "COLLAPSED_SIMILARITY",
    "LAMBDA_GRID",
    "MIN_TEST_TRIPLETS",
    "MIN_TRAIN_TRIPLETS",
    "LambdaSearch",
    "ProbeResult",
    "TrainingSet",
    "collapsed_start",
    "cross_validate",
    "cross_validate_probe",
    "heldout_statistics",
    "identity_probe",
]

LAMBDA_GRID: tuple[float, ...] = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
MIN_TRAIN_TRIPLETS = 3
MIN_TEST_TRIPLETS = 1

#: ``training_set(fold, objects, triplets) -> (triplets, fit kwargs)``: ``fold`` is the
#: fold index (None for the final refit on all objects), ``objects`` the training
#: objects (present and not held out), ``triplets`` the real training triplets. Returns
#: the triplets to fit on and extra keyword arguments for ``fit`` (e.g. ``X_local``).
TrainingSet = Callable[[int | None, np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, Any]]]


@dataclasses.dataclass
class LambdaSearch:
    """Everything :func:`cross_validate` measured.

    ``cross_entropy``/``accuracy``/``n_iter``: (n_lambdas, k) held-out numbers per lambda
    and fold; ``correct[j][i]``: (t_i,) bool, right or wrong per held-out triplet of
    fold ``i`` at lambda ``j``; ``splits``: per fold (train, test) row indices into
    ``triplets`` (the triplets kept: those over present stimuli); ``n_train``: the
    triplets each fold's estimator was fitted on; ``best``: index of the chosen lambda;
    ``estimator``: refit on all objects at the chosen lambda (None without ``refit``);
    ``baseline[i]``: (t_i,) bool, right or wrong per held-out triplet of fold ``i`` for
    the transform switched off (:func:`identity_probe`: same space, same centring).
    """

    lambdas: list[float]
    cross_entropy: np.ndarray
    accuracy: np.ndarray
    n_iter: np.ndarray
    correct: list[list[np.ndarray]]
    splits: list[tuple[np.ndarray, np.ndarray]]
    n_train: list[int]
    triplets: np.ndarray
    n_dropped: int
    best: int
    estimator: TripletProbe | None
    baseline: list[np.ndarray] = dataclasses.field(default_factory=list)

    @property
    def lambda_(self) -> float:
        return self.lambdas[self.best]

    @property
    def mean_cross_entropy(self) -> np.ndarray:
        return np.asarray(self.cross_entropy.mean(axis=1))


def identity_probe(estimator: TripletProbe, X: object) -> TripletProbe:
    """The probe with its transform switched off: a clone of ``estimator`` with
    ``W = I`` and no bias, standardised with the same global scalar mean/std as a fit on
    ``X`` and scored with the same similarity (dot, or cosine when ``normalize``). The
    baseline every probe lift is measured against: the same pipeline on the same
    held-out triplets, only the learned transform removed (the lambda -> infinity limit
    of the identity-regularised probe; for a probe pulled toward 0, it is the identity
    the probe would have to learn back)."""
    Xa, missing = check_features(X, "X")
    present = Xa[~missing]
    est = clone(estimator)
    est.mean_, est.std_ = float(present.mean()), float(present.std())
    p = Xa.shape[1]
    est.n_features_in_ = p
    est.weights_, est.bias_ = np.eye(p), None
    est.n_iter_ = 0
    return est


def check_lambdas(lambdas: object) -> list[float]:
    """A non-empty sequence of finite numbers >= 0."""
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Sequence) or not lambdas:
        raise InvalidInputError("lambdas", f"is {lambdas!r}", "a non-empty sequence of numbers")
    return [check_scalar(v, f"lambdas[{i}]", minimum=0) for i, v in enumerate(lambdas)]


#: A warm start is refused when every similarity it gives is provably below this in
#: absolute value (collapsed_start).
COLLAPSED_SIMILARITY = 1e-3


def collapsed_start(est: TripletProbe, X: np.ndarray, triplets: np.ndarray) -> bool:
    """True when ``est``'s fitted transform has collapsed onto ``W = 0`` for the rows of
    ``triplets`` and must not be used as the next lambda's start.

    At ``W = 0`` every similarity is 0 and the cross-entropy's gradient vanishes too
    (``dE = G E = 0``): a start there (the kink a strong unsquared penalty drives ``W``
    to) never leaves it. The test bounds every similarity of the training rows:
    ``|e_i . e_j| <= ||W||_2^2 max_i ||x'_i||^2 <= ||W||_F^2 max_i ||x'_i||^2`` (plus the
    bias), and calls the fit collapsed when that bound is below
    :data:`COLLAPSED_SIMILARITY` (a probe within 1e-3 of chance on every triplet). It
    replaces the earlier rule "norm below the initialisation's", which refused every
    start in practice: fitted weights are routinely smaller than the N(0, 1e-3^2) init
    (||W||_F 0.17 vs 1.28 at p = 1280, lambda = 1) yet far from collapsed. With
    ``normalize`` (cosine) the similarities are scale-free: only ``W = 0`` collapses.
    """
    W = est.weights_
    w2 = float(np.sum(W * W))
    if est.normalize:
        return w2 == 0.0 and (est.bias_ is None or not np.any(est.bias_))
    rows = np.unique(triplets)
    Z = (X[rows] - est.mean_) / est.std_
    bound = w2 * float(np.max(np.einsum("ij,ij->i", Z, Z)))
    if est.bias_ is not None:
        b2 = float(np.dot(est.bias_, est.bias_))
        bound += 2.0 * np.sqrt(b2 * bound) + b2
    return bound < COLLAPSED_SIMILARITY


def cross_validate(
    estimator: TripletProbe,
    X: object,
    triplets: object,
    *,
    lambdas: Sequence[float] = LAMBDA_GRID,
    cv: ObjectKFold | None = None,
    refit: bool = True,
    warm_start: bool = False,
    training_set: TrainingSet | None = None,
    n_jobs: int | None = None,
) -> LambdaSearch:
    """Object-disjoint k-fold evaluation of ``estimator`` for every ``reg`` in ``lambdas``.

    Triplets touching a missing stimulus (all-NaN row of ``X``) are dropped first
    (``n_dropped``). Per fold and lambda a clone of ``estimator`` with ``reg=lambda`` is
    fitted on the fold's training triplets (or the ``training_set`` hook's) and scored
    on the held-out ones. With ``refit`` a clone at the chosen lambda is fitted on all
    triplets (the hook's fold ``None``). ``warm_start``: within a fold the lambdas run
    from large to small and each fit starts from the previous lambda's weights (unless
    those collapsed onto ``W = 0``: :func:`collapsed_start`); see
    :func:`cross_validate_probe`. ``n_jobs``: folds fitted at the same time, in
    threads that share torch's threads (None: as many as torch has threads, at most
    ``k``; 1 when the estimator sets its own ``n_threads``).
    """
    if not isinstance(estimator, TripletProbe):
        raise InvalidInputError(
            "estimator", f"is a {type(estimator).__name__}", "a TripletProbe (or subclass)"
        )
    cv = ObjectKFold() if cv is None else cv
    if not isinstance(cv, ObjectKFold):
        raise InvalidInputError("cv", f"is a {type(cv).__name__}", "an ObjectKFold splitter")
    grid = check_lambdas(lambdas)
    warm_start = check_bool(warm_start, "warm_start")
    refit = check_bool(refit, "refit")
    Xa, missing = check_features(X, "X")
    trip = check_triplets(triplets, Xa.shape[0], "triplets")
    keep = ~missing[trip].any(axis=1)
    n_dropped = int((~keep).sum())
    trip = trip[keep]
    if trip.shape[0] == 0:
        raise InvalidInputError("triplets", "has no triplet over present stimuli", "triplets")

    k = cv.get_n_splits()
    n = Xa.shape[0]
    splits = cv.split(n, trip)
    held_out = cv.object_folds(n)
    present = np.flatnonzero(~missing)
    train_sets: list[tuple[np.ndarray, dict[str, Any]]] = []
    for i, (train, test) in enumerate(splits):
        train_trip: np.ndarray = trip[train]
        fit_kw: dict[str, Any] = {}
        if training_set is not None:
            objects = np.setdiff1d(present, held_out[i])
            train_trip, fit_kw = training_set(i, objects, train_trip)
        if len(train_trip) < MIN_TRAIN_TRIPLETS or len(test) < MIN_TEST_TRIPLETS:
            raise InvalidInputError(
                "triplets",
                f"fold {i} of {k} keeps {len(train_trip)} training and {len(test)} held-out "
                "triplets after the object-disjoint split",
                f">= {MIN_TRAIN_TRIPLETS} training and >= {MIN_TEST_TRIPLETS} held-out "
                "triplets per fold (more triplets or fewer folds)",
            )
        train_sets.append((train_trip, fit_kw))

    ce = np.zeros((len(grid), k))
    acc = np.zeros((len(grid), k))
    iters = np.zeros((len(grid), k), dtype=np.int64)
    correct: list[list[np.ndarray]] = [[np.zeros(0, dtype=bool)] * k for _ in grid]
    # Warm start: per fold, lambdas from large to small, each fit starting from the
    # previous lambda's solution unless that one has collapsed (collapsed_start).
    order = sorted(range(len(grid)), key=lambda j_: -grid[j_])
    prev: list[np.ndarray | None] = [None] * k

    def run_step(i: int, pos: int) -> None:
        j = order[pos]
        test = splits[i][1]
        train_trip, fit_kw = train_sets[i]
        est = clone(estimator).set_params(reg=grid[j])
        if warm_start:
            est.fit(Xa, train_trip, init_weights=prev[i], **fit_kw)
            prev[i] = None if collapsed_start(est, Xa, train_trip) else est.weights_
        else:
            est.fit(Xa, train_trip, **fit_kw)
        S = est.similarities(Xa, trip[test])  # one transform for both numbers
        ce[j, i] = mean_cross_entropy(S)
        hit = predict_from_similarities(S) == 2
        correct[j][i] = hit
        acc[j, i] = float(np.mean(hit))
        iters[j, i] = est.n_iter_

    # folds are independent: with n_jobs > 1 they run in threads, torch's threads split
    # between them, a fold's lambdas in order (core.map_chains keeps every thread busy
    # while any fold has a lambda left); every fit is the same computation either way
    map_chains(run_step, k, len(order), fold_jobs(n_jobs, k, estimator.n_threads))
    off = identity_probe(estimator, Xa)
    baseline = [off.predict(Xa, trip[test]) == 2 for _train, test in splits]
    best = int(np.argmin(ce.mean(axis=1)))  # first minimum = larger lambda on ties
    final: TripletProbe | None = None
    if refit:
        all_trip: np.ndarray = trip
        fit_kw = {}
        if training_set is not None:
            all_trip, fit_kw = training_set(None, present, trip)
        final = clone(estimator).set_params(reg=grid[best]).fit(Xa, all_trip, **fit_kw)
    return LambdaSearch(
        lambdas=grid,
        cross_entropy=ce,
        accuracy=acc,
        n_iter=iters,
        correct=correct,
        splits=splits,
        n_train=[len(t) for t, _ in train_sets],
        triplets=trip,
        n_dropped=n_dropped,
        best=best,
        estimator=final,
        baseline=baseline,
    )


@dataclasses.dataclass
class ProbeResult(Result):
    """Cross-validated probe: held-out accuracy and cross-entropy at the chosen lambda.

    ``accuracy`` pools the held-out responses of all folds (mean over responses) and
    ``ci`` resamples their distinct triplets (one estimator for both; the mean of the
    fold accuracies is ``fold_mean_accuracy``). ``baseline`` is the same pipeline with
    the transform switched off (:func:`identity_probe`) on the same responses:
    ``{"accuracy", "ci"}``; ``lift`` = ``{"value": accuracy - baseline accuracy, "ci":
    paired cluster-bootstrap interval}``. ``n_heldout`` / ``n_heldout_distinct``: held-out
    responses and distinct triplets. ``rank`` says which probe this is.

    ``cv`` lists every lambda with its mean held-out cross-entropy and accuracy; ``folds``
    the per-fold numbers at the chosen lambda. ``probe`` is the transform refit on all
    triplets with the chosen lambda (summarised, not serialised, by ``to_dict``; save it
    with ``result.probe.save(path)``). ``to_dict`` names ``lambda_`` ``"lambda"``.
    """

    accuracy: float
    cross_entropy: float
    lambda_: float
    folds: list[dict[str, Any]]
    cv: list[dict[str, Any]]
    k: int
    seed: int
    n_triplets: int
    n_dropped: int
    options: dict[str, Any]
    chance: float = 1.0 / 3.0
    selection: str = "lowest mean held-out cross-entropy"
    probe: TripletProbe | None = dataclasses.field(default=None, repr=False, compare=False)
    ci: tuple[float, float] | None = None
    baseline: dict[str, Any] | None = None
    lift: dict[str, Any] | None = None
    n_heldout: int = 0
    n_heldout_distinct: int = 0
    fold_mean_accuracy: float | None = None
    rank: str = "full-rank (paper): p x p transform"
    estimator: str = (
        "held-out responses of all folds pooled: accuracy = mean over responses, "
        "intervals resample distinct triplets"
    )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "probe":
                continue
            key = "lambda" if f.name == "lambda_" else f.name
            out[key] = to_jsonable(getattr(self, f.name))
        if self.probe is not None:
            out["transform"] = {
                "shape": list(self.probe.weights_.shape),
                "bias": self.probe.bias_ is not None,
                "n_iter": getattr(self.probe, "n_iter_", None),
                "mean": self.probe.mean_,
                "std": self.probe.std_,
            }
        return out


def cross_validate_probe(
    X: object,
    triplets: object,
    lambdas: Sequence[float] = LAMBDA_GRID,
    k: int = 3,
    seed: int = 0,
    refit: bool = True,
    warm_start: bool = False,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    **probe_params: Any,
) -> ProbeResult:
    """Object-disjoint k-fold probe evaluation with lambda chosen by held-out cross-entropy.

    :func:`cross_validate` of ``TripletProbe(seed=seed, **probe_params)`` with
    ``ObjectKFold(k, seed)``. The lambda with the lowest mean held-out cross-entropy
    wins (ties: the larger lambda); ``accuracy`` is the mean held-out accuracy over
    folds at that lambda. Triplets touching a missing stimulus (all-NaN row of ``X``)
    are dropped first (``n_dropped``). With ``refit`` the probe is refit on all
    triplets at the chosen lambda (``result.probe``).

    ``warm_start=True``: within a fold the lambdas run from large to small and each
    fit starts from the previous lambda's weights (unless those collapsed onto
    ``W = 0``: :func:`collapsed_start`) instead of the seeded init. Same objective, but
    in the over-fitting regime (small lambda, a non-convex objective with flat
    directions) it ends in other optima: measured on the THINGS bench (2026-12-02) it
    is 2-3x faster yet its held-out cross-entropy is higher than the cold path's by more
    than the cold path's own run-to-run spread at lambda <= 0.1, so it stays opt-in
    (bench/README.md, "Issue 14", probe).
    """
    k = int(check_scalar(k, "k", integer=True, minimum=2))
    seed = int(check_scalar(seed, "seed", integer=True, minimum=0))
    check_bootstrap_options(n_bootstrap, confidence, seed)
    for bad_key in ("reg", "seed"):
        if bad_key in probe_params:
            raise InvalidInputError(
                bad_key, "is set by cross_validate_probe", "lambdas=... / seed=... instead"
            )
    known = TripletProbe.param_names()
    for name in probe_params:
        if name not in known:
            raise InvalidInputError(
                name,
                "is not a probe option",
                "one of " + ", ".join(n for n in known if n not in ("reg", "seed")),
            )
    estimator = TripletProbe(seed=seed, **probe_params)
    opts = estimator.fit_options()  # checks the options before any fitting
    search = cross_validate(
        estimator,
        X,
        triplets,
        lambdas=lambdas,
        cv=ObjectKFold(k, seed),
        refit=refit,
        warm_start=warm_start,
    )
    ce, acc, best = search.cross_entropy, search.accuracy, search.best
    mean_ce = search.mean_cross_entropy
    folds = [
        {
            "fold": i,
            "n_train": search.n_train[i],
            "n_test": len(test),
            "accuracy": float(acc[best, i]),
            "cross_entropy": float(ce[best, i]),
            "n_iter": int(search.n_iter[best, i]),
        }
        for i, (_train, test) in enumerate(search.splits)
    ]
    cv = [
        {
            "lambda": lam,
            "cross_entropy": float(mean_ce[j]),
            "accuracy": float(acc[j].mean()),
            "fold_cross_entropy": ce[j].tolist(),
            "fold_accuracy": acc[j].tolist(),
        }
        for j, lam in enumerate(search.lambdas)
    ]
    params = dataclasses.asdict(opts)
    options = {k_: v for k_, v in params.items() if k_ not in ("reg", "n_threads", "seed")}
    options["similarity"] = "cosine" if opts.normalize else "dot"
    options["lambdas"] = search.lambdas
    stats = heldout_statistics(search, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return ProbeResult(
        accuracy=stats["accuracy"],
        cross_entropy=float(mean_ce[best]),
        lambda_=search.lambda_,
        folds=folds,
        cv=cv,
        k=k,
        seed=seed,
        n_triplets=int(search.triplets.shape[0]),
        n_dropped=search.n_dropped,
        options=options,
        probe=search.estimator,
        ci=stats["ci"],
        baseline=stats["baseline"],
        lift=stats["lift"],
        n_heldout=stats["n_heldout"],
        n_heldout_distinct=stats["n_heldout_distinct"],
        fold_mean_accuracy=float(acc[best].mean()),
    )


def heldout_statistics(
    search: LambdaSearch,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Pooled held-out accuracy of the chosen lambda, the switched-off baseline on the
    same responses and the lift, every interval from the same distinct-triplet
    resamples (:func:`~align.metrics.bootstrap.paired_cluster_difference`)."""
    test = np.concatenate([t for _train, t in search.splits])
    probe_hit = np.concatenate(search.correct[search.best]).astype(np.float64)
    base_hit = np.concatenate(search.baseline).astype(np.float64)
    groups = distinct_triplet_groups(search.triplets[test])
    paired = paired_cluster_difference(
        probe_hit, base_hit, groups, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
    )
    return {
        "accuracy": paired.a,
        "ci": paired.ci_a,
        "baseline": {
            "accuracy": paired.b,
            "ci": paired.ci_b,
            "definition": "transform switched off: W = I, same mean/std and similarity",
        },
        "lift": {"value": paired.difference, "ci": paired.ci_difference, "paired": True},
        "n_heldout": int(test.size),
        "n_heldout_distinct": paired.n_units,
    }
