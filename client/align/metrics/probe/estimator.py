"""The probe as a scikit-learn-style estimator: :class:`TripletProbe`, ``clone``.

Estimator rules (scikit-learn's): ``__init__`` only stores its arguments; the parameter
names come from the ``__init__`` signature (``get_params`` / ``set_params``); every
check happens in ``fit`` (and in the methods that use a fitted probe); ``clone`` builds
an unfitted copy with the same parameters. A subclass whose ``__init__`` takes
``**params`` for its parent's parameters (gLocal) inherits them: the names are its own
named parameters followed by its parent's.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ...errors import InvalidInputError, NumericalError
from ...results import to_jsonable
from ..transfer import read_transform_file, save_transform, transform_from_arrays
from ..validation import (
    check_bool,
    check_choice,
    check_features,
    check_present,
    check_scalar,
    check_triplets,
)
from .core import (
    DTYPES,
    INITS,
    OPTIMIZERS,
    REG_KINDS,
    ExtraTerm,
    FitOptions,
    FitOutput,
    fit_weights,
    initial_weights,
    localise,
    predict_from_similarities,
    softmax_np,
)

__all__ = ["TripletProbe", "clone", "mean_cross_entropy"]

E_ = TypeVar("E_", bound="TripletProbe")


def clone(estimator: E_) -> E_:
    """An unfitted estimator of the same class with (deep copies of) the same parameters."""
    params = {k: copy.deepcopy(v) for k, v in estimator.get_params().items()}
    return type(estimator)(**params)


def mean_cross_entropy(S: np.ndarray) -> float:
    """Mean of ``logsumexp(s) - s_ab`` over the rows of ``S`` (m, 3) (no penalty)."""
    top = S.max(axis=1)
    lse = top + np.log(np.exp(S - top[:, None]).sum(axis=1))
    value = float(np.mean(lse - S[:, 0]))
    if not math.isfinite(value):
        raise NumericalError("probe cross-entropy is not finite; not scoring it")
    return value


class TripletProbe:
    """A linear transform fitted to odd-one-out triplets (scikit-learn estimator style).

    Parameters
    ----------
    reg: regularisation strength lambda (>= 0).
    reg_kind: ``"frobenius"`` (``||W||_F`` unsquared, paper code, default), ``"squared"``
        (``||W||_F^2``) or ``"identity"`` (gLocal: ``sum((W - mean(diag W) I)^2)``).
    init: ``"normal"`` (``W ~ N(0, 1e-3^2)``, default) or ``"identity"`` (``tau * I``).
    tau: scale of the identity initialisation.
    normalize: L2-normalise the rows of ``E`` (cosine similarity). The paper's
        "normalized" variant pairs this with ``init="identity"``.
    bias: learn ``b`` (p,) too (not regularised).
    optimizer: ``"lbfgs"`` (full-batch L-BFGS with strong-Wolfe line search, default;
        for p up to a few thousand) or ``"adam"`` (the paper's training: lr 1e-3, batch
        256 triplets, at most 100 epochs, early stopping on validation cross-entropy with
        patience 10).
    max_iter: L-BFGS iterations or Adam epochs (None: 300 / 100).
    tol: L-BFGS stops when the loss changes by less than this between iterations, or
        falls by less than ``10 tol max(1, |loss|)`` per iteration on average over the
        last 10 iterations (a stalled fit; core.STALL_FACTOR).
    lr, batch_size, patience, val_fraction: Adam settings; without explicit validation
        data ``val_fraction`` of the training triplets (seeded) is held back for early
        stopping.
    dtype: ``"float64"`` (default) or ``"float32"`` for the optimisation.
    seed, device, n_threads: randomness, torch device, torch threads during ``fit``
        (None: leave torch's setting).
    reduce: for L-BFGS with ``reg_kind`` "frobenius"/"squared" and no bias, optimise
        the exactly equivalent r x r problem (r = rank of the training rows, <= p).
        The loss depends on ``W`` only through the Gram matrix of ``E``; its gradient
        with respect to ``V^T W`` (V spanning the training rows) keeps the row space
        of the initial ``V^T W0``, and the penalty is rotation invariant, so
        ``W = V B Q`` with fixed orthonormal ``V`` (p, r), ``Q`` (r, p) and ``B`` (r, r)
        initialised from ``W0`` follows the same L-BFGS path. The components of ``W``
        outside the span of the training rows feel only the penalty and are zero at
        the optimum; they are set to zero. ``reduce=False`` optimises the full p x p
        matrix (same result up to convergence; slower when n_objects < p). With at
        least as many rows as features ``r = p``: ``V`` is then a rotation only. ``V``
        is chosen so that the training rows are lower trapezoidal in it (``X' V``; the
        SVD basis turned by a QR factorisation), which makes the two products of each
        objective evaluation triangular: about half the flops.

    The parameters are stored as given and checked by ``fit`` (InvalidInputError naming
    the parameter). Fitted attributes: ``mean_``, ``std_`` (floats), ``weights_``
    (p, p), ``bias_`` (p,) or None, ``n_iter_``, ``loss_curve_`` (training objective
    per iteration / epoch), ``val_curve_`` (Adam only), ``n_features_in_``.
    """

    weights_: np.ndarray
    bias_: np.ndarray | None
    mean_: float
    std_: float
    n_iter_: int
    loss_curve_: list[float]
    val_curve_: list[float]
    n_features_in_: int

    def __init__(
        self,
        reg: float = 1e-3,
        reg_kind: str = "frobenius",
        init: str = "normal",
        tau: float = 1.0,
        normalize: bool = False,
        bias: bool = False,
        optimizer: str = "lbfgs",
        max_iter: int | None = None,
        tol: float = 1e-7,
        lr: float = 1e-3,
        batch_size: int = 256,
        patience: int = 10,
        val_fraction: float = 0.1,
        dtype: str = "float64",
        seed: int = 0,
        device: str = "cpu",
        n_threads: int | None = None,
        reduce: bool = True,
    ) -> None:
        self.reg = reg
        self.reg_kind = reg_kind
        self.init = init
        self.tau = tau
        self.normalize = normalize
        self.bias = bias
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.tol = tol
        self.lr = lr
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.dtype = dtype
        self.seed = seed
        self.device = device
        self.n_threads = n_threads
        self.reduce = reduce

    # -- parameters ------------------------------------------------------------------

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The parameters, from the ``__init__`` signatures (module docstring)."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names += [
                p.name
                for p in params
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            ]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return tuple(dict.fromkeys(names))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """{parameter: value}, as given (``deep`` is accepted for scikit-learn's sake)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self: E_, **params: Any) -> E_:
        """Set parameters by name (checked by the next ``fit``); returns ``self``."""
        known = self.param_names()
        for name in params:
            if name not in known:
                raise InvalidInputError(
                    name, f"is not a {type(self).__name__} option", "one of " + ", ".join(known)
                )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit_options(self) -> FitOptions:
        """The parameters checked and normalised (InvalidInputError naming the bad one)."""
        reg = check_scalar(self.reg, "reg", minimum=0)
        reg_kind = check_choice(self.reg_kind, "reg_kind", REG_KINDS)
        init = check_choice(self.init, "init", INITS)
        tau = check_scalar(self.tau, "tau", minimum=0, include_minimum=False)
        normalize = check_bool(self.normalize, "normalize")
        bias = check_bool(self.bias, "bias")
        reduce = check_bool(self.reduce, "reduce")
        optimizer = check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        max_iter = None
        if self.max_iter is not None:
            max_iter = int(check_scalar(self.max_iter, "max_iter", integer=True, minimum=1))
        tol = check_scalar(self.tol, "tol", minimum=0)
        lr = check_scalar(self.lr, "lr", minimum=0, include_minimum=False)
        batch_size = int(check_scalar(self.batch_size, "batch_size", integer=True, minimum=1))
        patience = int(check_scalar(self.patience, "patience", integer=True, minimum=1))
        val_fraction = check_scalar(
            self.val_fraction, "val_fraction", minimum=0, maximum=1, include_maximum=False
        )
        dtype = check_choice(self.dtype, "dtype", tuple(DTYPES))
        seed = int(check_scalar(self.seed, "seed", integer=True, minimum=0))
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(
                "device", f"is {self.device!r}", "a torch device such as 'cpu'"
            ) from exc
        n_threads = None
        if self.n_threads is not None:
            n_threads = int(check_scalar(self.n_threads, "n_threads", integer=True, minimum=1))
        return FitOptions(
            reg=reg,
            reg_kind=reg_kind,
            init=init,
            tau=tau,
            normalize=normalize,
            bias=bias,
            optimizer=optimizer,
            max_iter=max_iter,
            tol=tol,
            lr=lr,
            batch_size=batch_size,
            patience=patience,
            val_fraction=val_fraction,
            dtype=dtype,
            seed=seed,
            device=str(self.device),
            n_threads=n_threads,
            reduce=reduce,
        )

    def initial_weights(self, p: int) -> np.ndarray:
        """The seeded initial ``W0`` (p, p) a fit starts from (float64)."""
        o = self.fit_options()
        return initial_weights(o.init, o.tau, o.seed, p)

    # -- fitting ---------------------------------------------------------------------

    def fit(
        self: E_,
        X: object,
        triplets: object,
        X_val: object | None = None,
        val_triplets: object | None = None,
        init_weights: np.ndarray | None = None,
    ) -> E_:
        """Fit on ``triplets`` (m, 3; column 2 the odd one out) over rows of ``X``.

        ``X_val``/``val_triplets`` serve Adam's early stopping (``val_triplets`` index
        ``X_val`` when given, else ``X``); L-BFGS ignores them. ``init_weights`` (p, p):
        start from these weights (a warm start) instead of the seeded ``init``.
        """
        self.fit_options()
        Xa, trip, val = self._check_fit_inputs(X, triplets, X_val, val_triplets)
        self._fit_with(Xa, trip, val, init_weights, None, None)
        return self

    def _check_fit_inputs(
        self,
        X: object,
        triplets: object,
        X_val: object | None,
        val_triplets: object | None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Check ``fit``'s inputs; set ``mean_``, ``std_``, ``n_features_in_``; return
        ``X`` (float64), the triplets and the validation pair (or None)."""
        Xa, missing = check_features(X, "X")
        trip = check_triplets(triplets, Xa.shape[0], "triplets")
        check_present(trip, missing, "triplets")
        present = Xa[~missing]
        mean, std = float(present.mean()), float(present.std())
        if not std > 0 or not math.isfinite(std):
            raise InvalidInputError("X", "is constant (global std 0)", "features that vary")
        self.mean_, self.std_ = mean, std
        self.n_features_in_ = p = Xa.shape[1]

        val: tuple[np.ndarray, np.ndarray] | None = None
        if val_triplets is not None:
            Xv, vmissing = (Xa, missing) if X_val is None else check_features(X_val, "X_val")
            if Xv.shape[1] != p:
                raise InvalidInputError("X_val", f"has {Xv.shape[1]} columns", f"{p} like X")
            vt = check_triplets(val_triplets, Xv.shape[0], "val_triplets")
            check_present(vt, vmissing, "val_triplets")
            val = (Xv, vt)
        elif X_val is not None:
            raise InvalidInputError("val_triplets", "is missing", "triplets indexing X_val")
        return Xa, trip, val

    def _fit_with(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        init_weights: np.ndarray | None,
        local: np.ndarray | None,
        extra: ExtraTerm | None,
    ) -> None:
        """For subclasses: fit checked inputs (``_check_fit_inputs``), with an extra loss
        term over the unlabeled rows ``local`` (both or neither)."""
        opts = self.fit_options()
        self._store(
            fit_weights(opts, Xa, trip, self.mean_, self.std_, val, init_weights, local, extra)
        )

    def _store(self, out: FitOutput) -> None:
        self.weights_, self.bias_ = out.weights, out.bias
        self.n_iter_ = out.n_iter
        self.loss_curve_ = out.loss_curve
        self.val_curve_ = out.val_curve

    # -- using a fitted probe --------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise InvalidInputError("probe", "is not fitted", "fit() or TripletProbe.load() first")

    def transform(self, X: object) -> np.ndarray:
        """``((X - mean) / std) @ W + b`` (rows L2-normalised when ``normalize``).

        All-NaN rows (missing stimuli) stay all-NaN.
        """
        self._check_fitted()
        check_bool(self.normalize, "normalize")
        Xa, missing = check_features(X, "X")
        p = self.weights_.shape[0]
        if Xa.shape[1] != p:
            raise InvalidInputError("X", f"has {Xa.shape[1]} columns", f"{p}, as in training")
        E = self._embed(Xa)
        E[missing] = np.nan
        if not np.isfinite(E[~missing]).all():
            raise NumericalError("transformed features hold NaN or infinity; not scoring them")
        return E

    def _embed(self, Xa: np.ndarray) -> np.ndarray:
        """``((Xa - mean) / std) @ W + b`` (normalised rows when asked), float64. The
        matmul runs in torch, on the calling thread's torch threads (numpy's OpenBLAS
        pool is process-wide and fights torch's OpenMP threads when folds run in
        threads)."""
        Z = torch.from_numpy(np.ascontiguousarray((Xa - self.mean_) / self.std_))
        E = (Z @ torch.from_numpy(np.ascontiguousarray(self.weights_, dtype=np.float64))).numpy()
        if self.bias_ is not None:
            E = E + self.bias_
        if check_bool(self.normalize, "normalize"):
            E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        return E

    def similarities(self, X: object, triplets: object) -> np.ndarray:
        """(m, 3) probe similarities ``[s_ab, s_ac, s_bc]``."""
        self._check_fitted()
        Xa, missing = check_features(X, "X")
        p = self.weights_.shape[0]
        if Xa.shape[1] != p:
            raise InvalidInputError("X", f"has {Xa.shape[1]} columns", f"{p}, as in training")
        trip = check_triplets(triplets, Xa.shape[0], "triplets")
        check_present(trip, missing, "triplets")
        # only the rows the triplets use are transformed (row by row the same numbers)
        objs, local = localise(trip)
        E = self._embed(Xa[objs])
        if not np.isfinite(E).all():
            raise NumericalError("transformed features hold NaN or infinity; not scoring them")
        a, b, c = E[local[:, 0]], E[local[:, 1]], E[local[:, 2]]
        S = np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)
        if not np.isfinite(S).all():
            raise NumericalError("probe similarities hold NaN or infinity; not scoring them")
        return S

    def predict_proba(self, X: object, triplets: object) -> np.ndarray:
        """(m, 3) softmax probabilities of the pairs (ab, ac, bc) being the most similar."""
        return softmax_np(self.similarities(X, triplets))

    def predict(self, X: object, triplets: object) -> np.ndarray:
        """(m,) predicted odd-one-out position (2 for pair ab, ...; -1 for a full tie)."""
        return predict_from_similarities(self.similarities(X, triplets))

    def score(self, X: object, triplets: object) -> float:
        """Accuracy: share of triplets whose predicted odd one out is column 2."""
        return float(np.mean(self.predict(X, triplets) == 2))

    def loss(self, X: object, triplets: object) -> float:
        """Mean cross-entropy ``logsumexp(s) - s_ab`` over triplets (no penalty)."""
        return mean_cross_entropy(self.similarities(X, triplets))

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``transform.npz`` (thingsvision format; see :mod:`align.metrics.probe`),
        with the probe's options as an extra ``align_options`` JSON string."""
        self._check_fitted()
        options = {k: v for k, v in self.get_params().items() if k != "n_threads"}
        extra = {"align_options": np.asarray(json.dumps(to_jsonable(options)))}
        return save_transform(self, path, extra=extra)

    @classmethod
    def load(cls: type[E_], path: str | Path) -> E_:
        """Read a ``transform.npz`` written by :meth:`save` or by thingsvision/gLocal."""
        data = read_transform_file(path)
        t = transform_from_arrays(data, str(path))
        p = t.weights.shape[0]
        if t.weights.shape != (p, p):
            raise InvalidInputError(
                f"{path}:weights", f"has shape {t.weights.shape}", "a square (p, p) matrix"
            )
        options: dict[str, Any] = {}
        if "align_options" in data:
            try:
                options = dict(json.loads(str(data["align_options"])))
            except (ValueError, TypeError) as exc:
                raise InvalidInputError(
                    f"{path}:align_options", "is not a JSON object", "probe options"
                ) from exc
        known = set(cls.param_names())
        probe = cls(**{k: v for k, v in options.items() if k in known})
        probe.fit_options()  # stored options are checked like fit's
        probe.bias = t.bias is not None
        probe.weights_, probe.bias_ = t.weights, t.bias
        probe.mean_, probe.std_ = t.mean, t.std
        probe.n_features_in_ = p
        return probe
