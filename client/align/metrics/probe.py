"""Linear probe of a representation on odd-one-out triplets (METHODS.md section 3).

A probe learns ``W`` (p x p) and optionally ``b`` so that ``E = X' W + b``, with
``X' = (X - mean) / std`` (ONE global scalar mean and std over the whole matrix),
predicts human odd-one-out choices through the dot products ``e_i . e_j`` (cosine when
``normalize=True``). Training minimises the softmax cross-entropy over the three
similarities of a triplet with the human pair ``(a, b)`` as the target, computed as
``logsumexp(s) - s_ab``, plus ``reg * R(W)``.

Numerics: the paper's public code computes ``-log(exp(s_ab) / sum(exp(s)))``; on real
features of large norm the exponentials overflow, the loss turns NaN and its tie rule
then counts every NaN prediction as correct (accuracy 1.0). Here the loss is a
log-softmax and any NaN or infinity in the loss, gradients, weights or predictions
raises :class:`~align.errors.NumericalError`; nothing non-finite is ever scored.

Evaluation is object-disjoint (:class:`~align.metrics.splits.ObjectKFold`) and the
regularisation strength is chosen by the lowest mean held-out cross-entropy
(:func:`cross_validate_probe`).

Export format (``TripletProbe.save``): ``transform.npz`` with ``weights`` (p x p
float32), ``bias`` (p,) when the probe has one, and scalar ``mean`` and ``std``. This is
what thingsvision's ``align()``/gLocal transform reads; it applies
``((X - mean) / std) @ weights`` then adds ``bias`` if the key is present (checked
against thingsvision's ``thingsvision/core/alignment/transforms.py``). Extra keys are
ignored there; we add ``align_options`` (a JSON string) so :meth:`TripletProbe.load`
restores ``normalize`` and the other options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError, NumericalError
from ..results import Result, to_jsonable
from .splits import ObjectKFold, check_triplets
from .transfer import read_transform_file, save_transform, transform_from_arrays

__all__ = [
    "LAMBDA_GRID",
    "ObjectKFold",
    "ProbeResult",
    "TripletProbe",
    "cross_validate_probe",
]

LAMBDA_GRID: tuple[float, ...] = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
REG_KINDS = ("frobenius", "squared", "identity")
INITS = ("normal", "identity")
OPTIMIZERS = ("lbfgs", "adam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_MAX_ITER = {"lbfgs": 300, "adam": 100}  # L-BFGS iterations / Adam epochs
MIN_TRAIN_TRIPLETS = 3
MIN_TEST_TRIPLETS = 1
INIT_STD = 1e-3  # paper code: W ~ N(0, 1e-3^2)


# ----------------------------------------------------------------------------- input checks


def check_features(X: object, field: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """Validate a feature matrix; return it as float64 and the mask of missing rows.

    A row that is entirely NaN marks a missing stimulus (DESIGN.md); any other NaN or
    infinity raises NumericalError naming the entry.
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InvalidInputError(
            field, f"has {arr.ndim} dimension(s), shape {arr.shape}", "a 2-D (n, p) array"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(field, f"is empty, shape {arr.shape}", "at least one row/column")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InvalidInputError(field, f"has dtype {arr.dtype}", "real numbers")
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    missing = np.isnan(arr).all(axis=1)
    bad = ~finite & ~missing[:, None]
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise NumericalError(
            f"{field}[{r}, {c}] is {arr[r, c]}: only an all-NaN row (a missing stimulus) "
            "may hold NaN; infinities are never accepted"
        )
    if missing.all():
        raise InvalidInputError(field, "has only all-NaN (missing) rows", "some present rows")
    return arr, missing


def _check_no_missing(trip: np.ndarray, missing: np.ndarray, field: str) -> None:
    if missing.any() and trip.size:
        touch = missing[trip].any(axis=1)
        if touch.any():
            row = int(np.flatnonzero(touch)[0])
            raise InvalidInputError(
                f"{field}[{row}]",
                f"touches a missing stimulus (all-NaN row) {trip[row].tolist()}",
                "triplets over present stimuli (cross_validate_probe drops the others)",
            )


def _real(value: object, field: str, *, positive: bool = False, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(field, f"is {value!r}", "a real number")
    v = float(value)
    if not math.isfinite(v) or v < minimum or (positive and v <= 0):
        cond = "> 0" if positive else f">= {minimum:g}"
        raise InvalidInputError(field, f"is {value!r}", f"a finite number {cond}")
    return v


def _int(value: object, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(field, f"is {value!r}", f"an integer >= {minimum}")
    return int(value)


def _choice(value: object, field: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidInputError(field, f"is {value!r}", "one of " + ", ".join(map(repr, allowed)))
    return str(value)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- torch core


def _similarities_t(E: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(m, 3) dot products [s_ab, s_ac, s_bc] of rows of E for local triplets t."""
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    return torch.stack(((a * b).sum(1), (a * c).sum(1), (b * c).sum(1)), dim=1)


def _cross_entropy_t(S: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``logsumexp(s) - s_ab`` (log-softmax; never log(sum(exp)))."""
    per = torch.logsumexp(S, dim=1) - S[:, 0]
    if w is None:
        return per.mean()
    return (per * w).sum() / w.sum()


def _compress(trip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge repeated responses: (a, b) is unordered, c is the odd one out."""
    ab = np.sort(trip[:, :2], axis=1)
    canon = np.concatenate([ab, trip[:, 2:]], axis=1)
    uniq, counts = np.unique(canon, axis=0, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.float64)


def _localise(trip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Objects used by ``trip`` and the triplets re-indexed into that list."""
    objs, inv = np.unique(trip, return_inverse=True)
    return objs, inv.reshape(-1, 3).astype(np.int64)


def _softmax_np(S: np.ndarray) -> np.ndarray:
    Z = S - S.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def _predict_from_similarities(S: np.ndarray) -> np.ndarray:
    """Odd-one-out position: pair ab -> 2, ac -> 1, bc -> 0; a full tie -> -1 (wrong).

    A partial tie takes the first maximal pair in the order (ab, ac, bc), the zero-shot
    rule of METHODS.md section 2, so probe and zero-shot accuracies use one rule.
    """
    pair = np.argmax(S, axis=1)
    odd = np.array([2, 1, 0], dtype=np.int64)[pair]
    full_tie = (S[:, 0] == S[:, 1]) & (S[:, 1] == S[:, 2])
    odd[full_tie] = -1
    return odd


# ----------------------------------------------------------------------------- the probe


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
    tol: L-BFGS stops when the loss changes by less than this between iterations.
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
        matrix (same result up to convergence; slower when n_objects < p).

    Fitted attributes: ``mean_``, ``std_`` (floats), ``weights_`` (p, p), ``bias_`` (p,)
    or None, ``n_iter_``, ``loss_curve_`` (training objective per iteration / epoch),
    ``val_curve_`` (Adam only), ``n_features_in_``.
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
        self._validate()

    # -- parameters ------------------------------------------------------------------

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        import inspect

        return tuple(p for p in inspect.signature(TripletProbe.__init__).parameters if p != "self")

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> TripletProbe:
        known = self.param_names()
        for name, value in params.items():
            if name not in known:
                raise InvalidInputError(
                    name, "is not a TripletProbe option", "one of " + ", ".join(known)
                )
            setattr(self, name, value)
        self._validate()
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _validate(self) -> None:
        self.reg = _real(self.reg, "reg")
        _choice(self.reg_kind, "reg_kind", REG_KINDS)
        _choice(self.init, "init", INITS)
        self.tau = _real(self.tau, "tau", positive=True)
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise InvalidInputError("normalize", f"is {self.normalize!r}", "True or False")
        for flag in ("bias", "reduce"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise InvalidInputError(flag, f"is {getattr(self, flag)!r}", "True or False")
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        if self.max_iter is not None:
            self.max_iter = _int(self.max_iter, "max_iter", 1)
        self.tol = _real(self.tol, "tol")
        self.lr = _real(self.lr, "lr", positive=True)
        self.batch_size = _int(self.batch_size, "batch_size", 1)
        self.patience = _int(self.patience, "patience", 1)
        self.val_fraction = _real(self.val_fraction, "val_fraction")
        if self.val_fraction >= 1:
            raise InvalidInputError("val_fraction", f"is {self.val_fraction}", "a value in [0, 1)")
        _choice(self.dtype, "dtype", tuple(DTYPES))
        self.seed = _int(self.seed, "seed", 0)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(
                "device", f"is {self.device!r}", "a torch device such as 'cpu'"
            ) from exc
        if self.n_threads is not None:
            self.n_threads = _int(self.n_threads, "n_threads", 1)

    # -- fitting ---------------------------------------------------------------------

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=DTYPES[self.dtype], device=torch.device(self.device))

    def _embed_t(self, Xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        E = Xs @ W
        if b is not None:
            E = E + b
        if self.normalize:
            E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return E

    def _penalty_t(self, W: torch.Tensor) -> torch.Tensor:
        if self.reg_kind == "frobenius":
            return torch.linalg.norm(W)
        if self.reg_kind == "squared":
            return (W * W).sum()
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return ((W - torch.diagonal(W).mean() * eye) ** 2).sum()

    def _check_finite(self, what: str, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if t is not None and not bool(torch.isfinite(t).all()):
                raise NumericalError(
                    f"probe {what} became NaN or infinite (reg={self.reg:g}, "
                    f"optimizer={self.optimizer}, dtype={self.dtype}); not scoring it"
                )

    def fit(
        self,
        X: object,
        triplets: object,
        X_val: object | None = None,
        val_triplets: object | None = None,
    ) -> TripletProbe:
        """Fit on ``triplets`` (m, 3; column 2 the odd one out) over rows of ``X``.

        ``X_val``/``val_triplets`` serve Adam's early stopping (``val_triplets`` index
        ``X_val`` when given, else ``X``); L-BFGS ignores them.
        """
        Xa, trip, val = self._check_fit_inputs(X, triplets, X_val, val_triplets)
        self._fit_validated(Xa, trip, val)
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
        self._validate()
        Xa, missing = check_features(X, "X")
        trip = check_triplets(triplets, Xa.shape[0], "triplets")
        if trip.shape[0] == 0:
            raise InvalidInputError("triplets", "is empty", "at least one triplet")
        _check_no_missing(trip, missing, "triplets")
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
            _check_no_missing(vt, vmissing, "val_triplets")
            if vt.shape[0]:
                val = (Xv, vt)
        elif X_val is not None:
            raise InvalidInputError("val_triplets", "is missing", "triplets indexing X_val")
        return Xa, trip, val

    def _fit_prepared(self, Xa: np.ndarray, trip: np.ndarray, W_init: np.ndarray | None) -> None:
        """``fit(Xa, trip)`` for inputs already checked by cross_validate_probe (float64,
        triplets over present rows), starting from ``W_init`` (p, p) when given."""
        self._validate()
        present = Xa[~np.isnan(Xa).all(axis=1)]
        self.mean_, self.std_ = float(present.mean()), float(present.std())
        if not self.std_ > 0 or not math.isfinite(self.std_):
            raise InvalidInputError("X", "is constant (global std 0)", "features that vary")
        self.n_features_in_ = Xa.shape[1]
        self._fit_validated(Xa, trip, None, W_init)

    def _initial_weights(self, p: int) -> np.ndarray:
        """The seeded initial ``W0`` (p, p) of ``init`` (float64)."""
        if self.init == "normal":
            gen = torch.Generator().manual_seed(self.seed)
            return (torch.randn(p, p, generator=gen, dtype=torch.float64) * INIT_STD).numpy()
        return np.eye(p) * self.tau

    def _fit_validated(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        W_init: np.ndarray | None = None,
        local: np.ndarray | None = None,
    ) -> None:
        """Fit on checked inputs (``mean_``/``std_`` set), from ``W_init`` when given
        (a warm start) or else from the seeded ``init``. ``local``: unlabeled rows for
        a subclass's extra loss term (:meth:`_local_setup`, :meth:`_mix_local`)."""
        p = Xa.shape[1]
        rng = np.random.default_rng(self.seed)
        dt = DTYPES[self.dtype]
        with _threads(self.n_threads):
            W0 = torch.as_tensor(self._initial_weights(p) if W_init is None else W_init)
            W = W0.to(dtype=dt, device=torch.device(self.device)).requires_grad_(True)
            b = (
                torch.zeros(p, dtype=dt, device=torch.device(self.device), requires_grad=True)
                if self.bias
                else None
            )
            if self.optimizer == "lbfgs":
                self._fit_lbfgs(Xa, trip, W, b, local)
            else:
                if val is None and self.val_fraction > 0 and trip.shape[0] >= 10:
                    perm = rng.permutation(trip.shape[0])
                    n_val = max(1, round(self.val_fraction * trip.shape[0]))
                    val = (Xa, trip[perm[:n_val]])
                    trip = trip[perm[n_val:]]
                self._fit_adam(Xa, trip, W, b, val, rng, local)

    def _local_setup(
        self, Ls: np.ndarray, full_batch: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Extra-term state from the standardised unlabeled rows ``Ls`` (float64):
        (targets, row chunks). The plain probe has no extra term."""
        return [], []

    def _mix_local(
        self,
        ce: torch.Tensor,
        Ls: torch.Tensor | None,
        targets: list[torch.Tensor],
        chunks: list[torch.Tensor],
        W: torch.Tensor,
        b: torch.Tensor | None,
        step: int | None,
    ) -> torch.Tensor:
        """The data term from the triplet cross-entropy ``ce`` (the plain probe: ``ce``);
        ``step`` is the Adam batch counter, None for the full-batch objective."""
        return ce

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) / self.std_

    def _reducible(self) -> bool:
        return bool(self.reduce) and not self.bias and self.reg_kind in ("frobenius", "squared")

    def _fit_lbfgs(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        W: torch.Tensor,
        b: torch.Tensor | None,
        local: np.ndarray | None = None,
    ) -> None:
        uniq, counts = _compress(trip)
        objs, tloc = _localise(uniq)
        Xs64 = self._standardise(Xa[objs])
        Ls64 = None if local is None else self._standardise(local)
        targets64, chunk_rows = ([], []) if Ls64 is None else self._local_setup(Ls64, True)
        basis: tuple[np.ndarray, np.ndarray] | None = None
        stacked = Xs64 if Ls64 is None else np.vstack([Xs64, Ls64])
        if self._reducible() and stacked.shape[0] < stacked.shape[1]:
            # Exact reduction (see the class docstring): W = V B Q with V (p, r) spanning
            # the training (and unlabeled) rows and Q (r, p) the row space of V^T W0, so
            # optimise B (r, r). With at least as many rows as features it cannot reduce.
            _, sv, Vt = np.linalg.svd(stacked, full_matrices=False)
            r = int(np.sum(sv > sv[0] * 1e-10)) if sv.size and sv[0] > 0 else 0
            if r == 0:
                raise InvalidInputError("X", "training rows are constant", "varying features")
            V = Vt[:r].T
            A0 = V.T @ W.detach().to("cpu", torch.float64).numpy()
            Qm, Rm = np.linalg.qr(A0.T)
            basis = (V, Qm.T)
            Xs64 = Xs64 @ V
            if Ls64 is not None:
                Ls64 = Ls64 @ V
            with torch.no_grad():
                W = self._tensor(np.ascontiguousarray(Rm.T)).clone().requires_grad_(True)
        Xs = self._tensor(Xs64)
        Ls = None if Ls64 is None else self._tensor(Ls64)
        targets = [self._tensor(t_.numpy()) for t_ in targets64]
        chunks = [c_.to(Xs.device) for c_ in chunk_rows]
        t = torch.as_tensor(tloc, device=Xs.device)
        w = self._tensor(counts)
        params = [W] if b is None else [W, b]
        max_iter = self.max_iter or DEFAULT_MAX_ITER["lbfgs"]
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_iter * 2,
            tolerance_grad=self.tol * 1e-3,
            tolerance_change=self.tol,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        curve: list[float] = []

        def closure() -> torch.Tensor:
            opt.zero_grad()
            E = self._embed_t(Xs, W, b)
            ce = _cross_entropy_t(_similarities_t(E, t), w)
            ce = self._mix_local(ce, Ls, targets, chunks, W, b, None)
            loss = ce + self.reg * self._penalty_t(W)
            self._check_finite("loss", loss)
            loss.backward()
            self._check_finite("gradient", W.grad, None if b is None else b.grad)
            curve.append(float(loss.detach()))
            return loss

        opt.step(closure)
        self._check_finite("weights", W, b)
        self.n_iter_ = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
        self.loss_curve_ = curve
        self.val_curve_ = []
        if basis is None:
            self._store(W, b)
        else:
            B = W.detach().to("cpu", torch.float64).numpy()
            self.weights_ = basis[0] @ B @ basis[1]
            self.bias_ = None

    def _objective_np(
        self, Xa: np.ndarray, trip: np.ndarray, W: torch.Tensor, b: torch.Tensor | None
    ) -> float:
        uniq, counts = _compress(trip)
        objs, local = _localise(uniq)
        with torch.no_grad():
            E = self._embed_t(self._tensor(self._standardise(Xa[objs])), W, b)
            S = _similarities_t(E, torch.as_tensor(local, device=E.device))
            ce = _cross_entropy_t(S, self._tensor(counts))
        self._check_finite("validation loss", ce)
        return float(ce)

    def _fit_adam(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        W: torch.Tensor,
        b: torch.Tensor | None,
        val: tuple[np.ndarray, np.ndarray] | None,
        rng: np.random.Generator,
        local: np.ndarray | None = None,
    ) -> None:
        objs_all, local_all = _localise(trip)
        Xs = self._tensor(self._standardise(Xa[objs_all]))
        Ls64 = None if local is None else self._standardise(local)
        Ls = None if Ls64 is None else self._tensor(Ls64)
        targets, chunks = ([], []) if Ls64 is None else self._local_setup(Ls64, False)
        chunks = [c_.to(Xs.device) for c_ in chunks]
        step = 0
        params = [W] if b is None else [W, b]
        opt = torch.optim.Adam(params, lr=self.lr)
        epochs = self.max_iter or DEFAULT_MAX_ITER["adam"]
        m = local_all.shape[0]
        best = math.inf
        best_state = [p.detach().clone() for p in params]
        bad = 0
        curve: list[float] = []
        val_curve: list[float] = []
        n_epochs = 0
        for _ in range(epochs):
            n_epochs += 1
            perm = rng.permutation(m)
            total = 0.0
            for start in range(0, m, self.batch_size):
                batch = local_all[perm[start : start + self.batch_size]]
                rows, local = _localise(batch)
                E = self._embed_t(Xs[torch.as_tensor(rows, device=Xs.device)], W, b)
                S = _similarities_t(E, torch.as_tensor(local, device=Xs.device))
                ce = self._mix_local(_cross_entropy_t(S), Ls, targets, chunks, W, b, step)
                loss = ce + self.reg * self._penalty_t(W)
                step += 1
                self._check_finite("loss", loss)
                opt.zero_grad()
                loss.backward()
                self._check_finite("gradient", W.grad, None if b is None else b.grad)
                opt.step()
                total += float(loss.detach()) * batch.shape[0]
            self._check_finite("weights", W, b)
            curve.append(total / m)
            if val is None:
                continue
            v = self._objective_np(val[0], val[1], W, b)
            val_curve.append(v)
            if v < best:
                best, bad = v, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if val is not None:
            with torch.no_grad():
                for p_, s_ in zip(params, best_state, strict=True):
                    p_.copy_(s_)
        self.n_iter_ = n_epochs
        self.loss_curve_ = curve
        self.val_curve_ = val_curve
        self._store(W, b)

    def _store(self, W: torch.Tensor, b: torch.Tensor | None) -> None:
        self.weights_ = W.detach().to("cpu", torch.float64).numpy().copy()
        self.bias_ = None if b is None else b.detach().to("cpu", torch.float64).numpy().copy()

    # -- using a fitted probe --------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise InvalidInputError("probe", "is not fitted", "fit() or TripletProbe.load() first")

    def transform(self, X: object) -> np.ndarray:
        """``((X - mean) / std) @ W + b`` (rows L2-normalised when ``normalize``).

        All-NaN rows (missing stimuli) stay all-NaN.
        """
        self._check_fitted()
        Xa, missing = check_features(X, "X")
        p = self.weights_.shape[0]
        if Xa.shape[1] != p:
            raise InvalidInputError("X", f"has {Xa.shape[1]} columns", f"{p}, as in training")
        E = self._standardise(Xa) @ self.weights_
        if self.bias_ is not None:
            E = E + self.bias_
        if self.normalize:
            E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        E[missing] = np.nan
        if not np.isfinite(E[~missing]).all():
            raise NumericalError("transformed features hold NaN or infinity; not scoring them")
        return E

    def similarities(self, X: object, triplets: object) -> np.ndarray:
        """(m, 3) probe similarities ``[s_ab, s_ac, s_bc]``."""
        E = self.transform(X)
        trip = check_triplets(triplets, E.shape[0], "triplets")
        _check_no_missing(trip, np.isnan(E).all(axis=1), "triplets")
        a, b, c = E[trip[:, 0]], E[trip[:, 1]], E[trip[:, 2]]
        S = np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)
        if not np.isfinite(S).all():
            raise NumericalError("probe similarities hold NaN or infinity; not scoring them")
        return S

    def predict_proba(self, X: object, triplets: object) -> np.ndarray:
        """(m, 3) softmax probabilities of the pairs (ab, ac, bc) being the most similar."""
        return _softmax_np(self.similarities(X, triplets))

    def predict(self, X: object, triplets: object) -> np.ndarray:
        """(m,) predicted odd-one-out position (2 for pair ab, ...; -1 for a full tie)."""
        return _predict_from_similarities(self.similarities(X, triplets))

    def score(self, X: object, triplets: object) -> float:
        """Accuracy: share of triplets whose predicted odd one out is column 2."""
        pred = self.predict(X, triplets)
        if pred.size == 0:
            raise InvalidInputError("triplets", "is empty", "at least one triplet")
        return float(np.mean(pred == 2))

    def loss(self, X: object, triplets: object) -> float:
        """Mean cross-entropy ``logsumexp(s) - s_ab`` over triplets (no penalty)."""
        S = self.similarities(X, triplets)
        if S.shape[0] == 0:
            raise InvalidInputError("triplets", "is empty", "at least one triplet")
        top = S.max(axis=1)
        lse = top + np.log(np.exp(S - top[:, None]).sum(axis=1))
        value = float(np.mean(lse - S[:, 0]))
        if not math.isfinite(value):
            raise NumericalError("probe cross-entropy is not finite; not scoring it")
        return value

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``transform.npz`` (thingsvision format; see the module docstring), with
        the probe's options as an extra ``align_options`` JSON string."""
        self._check_fitted()
        options = {k: v for k, v in self.get_params().items() if k != "n_threads"}
        extra = {"align_options": np.asarray(json.dumps(to_jsonable(options)))}
        return save_transform(self, path, extra=extra)

    @classmethod
    def load(cls, path: str | Path) -> TripletProbe:
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
        probe.bias = t.bias is not None
        probe.weights_, probe.bias_ = t.weights, t.bias
        probe.mean_, probe.std_ = t.mean, t.std
        probe.n_features_in_ = p
        return probe


# ----------------------------------------------------------------------------- cross-validation


@dataclasses.dataclass
class ProbeResult(Result):
    """Cross-validated probe: held-out accuracy and cross-entropy at the chosen lambda.

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
    **probe_params: Any,
) -> ProbeResult:
    """Object-disjoint k-fold probe evaluation with lambda chosen by held-out cross-entropy.

    For every fold and lambda a :class:`TripletProbe` is fitted on the fold's training
    triplets and scored on its held-out triplets. The lambda with the lowest mean
    held-out cross-entropy wins (ties: the larger lambda); ``accuracy`` is the mean
    held-out accuracy over folds at that lambda. Triplets touching a missing stimulus
    (all-NaN row of ``X``) are dropped first (``n_dropped``). With ``refit`` the probe
    is refit on all triplets at the chosen lambda (``result.probe``).

    ``warm_start=True``: within a fold the lambdas run from large to small and each
    fit starts from the previous lambda's weights (unless those collapsed to a norm
    below the initialisation's) instead of the seeded init. Same objective and the
    same training optimum within tolerance, but in the over-fitting regime (small
    lambda, a non-convex objective with flat directions) the held-out cross-entropy
    can differ by a few hundredths either way, so it is opt-in (bench/README.md
    "probe" has the measured speed and losses).
    """
    Xa, missing = check_features(X, "X")
    trip = check_triplets(triplets, Xa.shape[0], "triplets")
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Sequence) or not lambdas:
        raise InvalidInputError("lambdas", f"is {lambdas!r}", "a non-empty sequence of numbers")
    grid = [_real(v, f"lambdas[{i}]") for i, v in enumerate(lambdas)]
    k = _int(k, "k", 2)
    seed = _int(seed, "seed", 0)
    if not isinstance(warm_start, (bool, np.bool_)):
        raise InvalidInputError("warm_start", f"is {warm_start!r}", "True or False")
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
    template = TripletProbe(seed=seed, **probe_params)  # validates values early

    keep = ~missing[trip].any(axis=1) if trip.size else np.ones(0, dtype=bool)
    n_dropped = int((~keep).sum())
    trip = trip[keep]
    if trip.shape[0] == 0:
        raise InvalidInputError("triplets", "has no triplet over present stimuli", "triplets")

    splits = ObjectKFold(k, seed).split(Xa.shape[0], trip)
    for i, (train, test) in enumerate(splits):
        if len(train) < MIN_TRAIN_TRIPLETS or len(test) < MIN_TEST_TRIPLETS:
            raise InvalidInputError(
                "triplets",
                f"fold {i} of {k} keeps {len(train)} training and {len(test)} held-out "
                "triplets after the object-disjoint split",
                f">= {MIN_TRAIN_TRIPLETS} training and >= {MIN_TEST_TRIPLETS} held-out "
                "triplets per fold (more triplets or fewer folds)",
            )

    params = template.get_params()
    params.pop("reg")
    ce = np.zeros((len(grid), k))
    acc = np.zeros((len(grid), k))
    iters = np.zeros((len(grid), k), dtype=np.int64)
    # Warm start: per fold, lambdas from large to small, each fit starting from the
    # previous lambda's solution unless that one has collapsed (||W||_F below the
    # initialisation's: a strong unsquared penalty drives W to ~0, a poor start).
    order = sorted(range(len(grid)), key=lambda j_: -grid[j_])
    init_norm = float(np.linalg.norm(template._initial_weights(Xa.shape[1])))
    for i, (train, test) in enumerate(splits):
        prev: np.ndarray | None = None
        for j in order:
            probe = TripletProbe(reg=grid[j], **params)
            if warm_start:
                probe._fit_prepared(Xa, trip[train], prev)
                if float(np.linalg.norm(probe.weights_)) > init_norm:
                    prev = probe.weights_
            else:
                probe.fit(Xa, trip[train])
            ce[j, i] = probe.loss(Xa, trip[test])
            acc[j, i] = probe.score(Xa, trip[test])
            iters[j, i] = probe.n_iter_
    mean_ce = ce.mean(axis=1)
    best = int(np.argmin(mean_ce))  # first minimum = larger lambda on ties
    folds = [
        {
            "fold": i,
            "n_train": len(train),
            "n_test": len(test),
            "accuracy": float(acc[best, i]),
            "cross_entropy": float(ce[best, i]),
            "n_iter": int(iters[best, i]),
        }
        for i, (train, test) in enumerate(splits)
    ]
    cv = [
        {
            "lambda": lam,
            "cross_entropy": float(mean_ce[j]),
            "accuracy": float(acc[j].mean()),
            "fold_cross_entropy": ce[j].tolist(),
            "fold_accuracy": acc[j].tolist(),
        }
        for j, lam in enumerate(grid)
    ]
    final = TripletProbe(reg=grid[best], **params).fit(Xa, trip) if refit else None
    options = {k_: v for k_, v in params.items() if k_ not in ("n_threads", "seed")}
    options["similarity"] = "cosine" if params["normalize"] else "dot"
    options["lambdas"] = grid
    return ProbeResult(
        accuracy=float(acc[best].mean()),
        cross_entropy=float(mean_ce[best]),
        lambda_=grid[best],
        folds=folds,
        cv=cv,
        k=k,
        seed=seed,
        n_triplets=int(trip.shape[0]),
        n_dropped=n_dropped,
        options=options,
        probe=final,
    )
