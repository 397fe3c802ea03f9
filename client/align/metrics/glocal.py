"""gLocal probe: a triplet probe that keeps local neighbourhoods (METHODS.md section 3).

Muttenthaler et al. (NeurIPS 2023, "Improving neural network representations using human
similarity judgments") add to the probe's global odd-one-out loss a local term that
keeps every image's neighbourhood on a second, unlabeled image set::

    total = (1 - alpha) * L_global + alpha * L_local + reg * R(W)

``L_global`` is the :class:`~align.metrics.probe.TripletProbe` loss (softmax
cross-entropy ``logsumexp(s) - s_ab`` over the three similarities, mean over triplets).
``L_local``, for a batch of unlabeled rows: teacher ``p_i = softmax_{j != i}(cos(x_i, x_j)
/ tau)`` on the probe's input space ``X' = (X - mean) / std`` (the probe's own global
scalar standardisation), student ``q_i`` the same on the transformed rows ``e = X' W +
b``; the loss is the cross-entropy ``-sum_{j != i} p_ij log q_ij`` averaged over the
rows of the batch. A transform ``W = c I`` reproduces the teacher exactly, so the local
term pulls the probe toward transforms that keep neighbourhoods.

``GLocalProbe`` is a :class:`TripletProbe` (same options, same ``transform`` /
``predict`` / ``score`` / ``loss`` / ``save`` / ``load``, same ``transform.npz``) with
three more options: ``alpha``, ``temperature`` and ``local_batch_size``. With
``alpha = 0`` the objective is the plain probe's, term by term, and the optimiser
follows the same path (tested).

Batches: the full-batch L-BFGS optimiser splits the unlabeled rows once, with a seeded
permutation, into fixed chunks of ``local_batch_size`` rows and averages the chunk
losses (a deterministic objective); Adam draws one chunk per triplet batch, cycling.

``knn_overlap(X, E, k)`` measures how much of each row's cosine k-nearest neighbourhood
survives a transform (1 = all of it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidInputError
from .probe import (
    DEFAULT_MAX_ITER,
    INIT_STD,
    TripletProbe,
    _check_no_missing,
    _compress,
    _cross_entropy_t,
    _localise,
    _real,
    _similarities_t,
    _threads,
    check_features,
)
from .splits import check_triplets

__all__ = ["GLocalProbe", "knn_overlap", "local_loss"]


# ----------------------------------------------------------------------------- local loss


def _cosine_logits_t(Z: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, N) cos(z_i, z_j) / tau with the diagonal at -inf (j != i)."""
    U = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    L = (U @ U.T) / temperature
    eye = torch.eye(L.shape[0], dtype=torch.bool, device=L.device)
    return L.masked_fill(eye, -math.inf)


def _local_loss_t(teacher: torch.Tensor, E: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student softmax over j != i against the teacher's, mean over i.

    ``teacher`` is the (N, N) teacher probability matrix (zero diagonal).
    """
    logq = torch.log_softmax(_cosine_logits_t(E, temperature), dim=1)
    eye = torch.eye(logq.shape[0], dtype=torch.bool, device=logq.device)
    logq = logq.masked_fill(eye, 0.0)  # p_ii = 0: keep 0 * (-inf) out of the sum
    return -(teacher * logq).sum(dim=1).mean()


def _teacher_t(Xs: torch.Tensor, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(_cosine_logits_t(Xs, temperature), dim=1)


def local_loss(X: object, E: object, temperature: float = 0.1) -> float:
    """``L_local`` of transformed rows ``E`` against original rows ``X`` (one batch: all
    rows). numpy in, float out; for reports and tests."""
    Xa, _ = check_features(X, "X")
    Ea, _ = check_features(E, "E")
    if Xa.shape[0] != Ea.shape[0] or Xa.shape[0] < 2:
        raise InvalidInputError(
            "E", f"has {Ea.shape[0]} rows (X has {Xa.shape[0]})", "the same rows as X, >= 2"
        )
    tau = _real(temperature, "temperature", positive=True)
    Xt = torch.as_tensor(Xa)
    with torch.no_grad():
        return float(_local_loss_t(_teacher_t(Xt, tau), torch.as_tensor(Ea), tau))


def knn_overlap(X: object, E: object, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours (cosine, itself excluded) in ``X``
    that are also among its k nearest neighbours in ``E``. Ties: the lower index first."""
    Xa, mx = check_features(X, "X")
    Ea, me = check_features(E, "E")
    if Xa.shape[0] != Ea.shape[0]:
        raise InvalidInputError("E", f"has {Ea.shape[0]} rows", f"{Xa.shape[0]} rows like X")
    keep = ~(mx | me)
    Xa, Ea = Xa[keep], Ea[keep]
    n = Xa.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise InvalidInputError("k", f"is {k!r}", f"an integer in [1, {n - 1}]")

    def neighbours(A: np.ndarray) -> np.ndarray:
        U = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1, kind="stable")[:, :k]

    a, b = neighbours(Xa), neighbours(Ea)
    shared = [len(set(a[i]).intersection(b[i])) for i in range(n)]
    return float(np.mean(shared) / k)


# ----------------------------------------------------------------------------- the probe


class GLocalProbe(TripletProbe):
    """:class:`TripletProbe` plus the gLocal local-neighbourhood term (module docstring).

    Extra parameters
    ----------------
    alpha: weight of ``L_local`` in ``(1 - alpha) L_global + alpha L_local`` (0..1,
        default 0.5; 0 is the plain probe).
    temperature: ``tau`` of the local softmaxes (default 0.1).
    local_batch_size: rows of the unlabeled set per local batch (default 512).

    ``fit(X, triplets, X_local=...)``: ``X_local`` (N, p) are the unlabeled rows (e.g.
    the features of a second image set); required when ``alpha > 0``. All-NaN rows of
    ``X_local`` are ignored.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 0.1,
        local_batch_size: int = 512,
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
        self.alpha = alpha
        self.temperature = temperature
        self.local_batch_size = local_batch_size
        super().__init__(
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
            device=device,
            n_threads=n_threads,
            reduce=reduce,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"GLocalProbe({args})"

    def _validate(self) -> None:
        super()._validate()
        self.alpha = _real(self.alpha, "alpha")
        if self.alpha > 1:
            raise InvalidInputError("alpha", f"is {self.alpha}", "a number in [0, 1]")
        self.temperature = _real(self.temperature, "temperature", positive=True)
        lbs = self.local_batch_size
        if isinstance(lbs, bool) or not isinstance(lbs, (int, np.integer)) or lbs < 2:
            raise InvalidInputError("local_batch_size", f"is {lbs!r}", "an integer >= 2")
        self.local_batch_size = int(lbs)

    # -- fitting ---------------------------------------------------------------------

    def fit(  # type: ignore[override]
        self,
        X: object,
        triplets: object,
        X_local: object | None = None,
        X_val: object | None = None,
        val_triplets: object | None = None,
    ) -> GLocalProbe:
        """Fit on ``triplets`` over rows of ``X`` and, when ``alpha > 0``, keep the
        neighbourhoods of the rows of ``X_local`` (module docstring)."""
        self._validate()
        Xa, missing = check_features(X, "X")
        trip = check_triplets(triplets, Xa.shape[0], "triplets")
        if trip.shape[0] == 0:
            raise InvalidInputError("triplets", "is empty", "at least one triplet")
        _check_no_missing(trip, missing, "triplets")
        p = Xa.shape[1]
        local: np.ndarray | None = None
        if self.alpha > 0:
            if X_local is None:
                raise InvalidInputError(
                    "X_local",
                    "is missing",
                    f"an (N, {p}) matrix of unlabeled features when alpha > 0",
                )
            La, lmissing = check_features(X_local, "X_local")
            if La.shape[1] != p:
                raise InvalidInputError("X_local", f"has {La.shape[1]} columns", f"{p} like X")
            local = La[~lmissing]
            if local.shape[0] < 2:
                raise InvalidInputError("X_local", f"has {local.shape[0]} rows", ">= 2 rows")
        present = Xa[~missing]
        mean, std = float(present.mean()), float(present.std())
        if not std > 0 or not math.isfinite(std):
            raise InvalidInputError("X", "is constant (global std 0)", "features that vary")
        self.mean_, self.std_ = mean, std
        self.n_features_in_ = p

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

        # The same random draws, in the same order, as TripletProbe.fit.
        rng = np.random.default_rng(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        dt = self._dtype()
        dev = torch.device(self.device)
        with _threads(self.n_threads):
            if self.init == "normal":
                W0 = torch.randn(p, p, generator=gen, dtype=torch.float64) * INIT_STD
            else:
                W0 = torch.eye(p, dtype=torch.float64) * self.tau
            W = W0.to(dtype=dt, device=dev).requires_grad_(True)
            b = torch.zeros(p, dtype=dt, device=dev, requires_grad=True) if self.bias else None
            chunks = self._local_chunks(local)
            if self.optimizer == "lbfgs":
                self._fit_glocal_lbfgs(Xa, trip, local, chunks, W, b)
            else:
                if val is None and self.val_fraction > 0 and trip.shape[0] >= 10:
                    perm = rng.permutation(trip.shape[0])
                    n_val = max(1, round(self.val_fraction * trip.shape[0]))
                    val = (Xa, trip[perm[:n_val]])
                    trip = trip[perm[n_val:]]
                self._fit_glocal_adam(Xa, trip, local, chunks, W, b, val, rng)
        return self

    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    def _local_chunks(self, local: np.ndarray | None) -> list[np.ndarray]:
        """Fixed, seeded row chunks of the unlabeled set (each >= 2 rows)."""
        if local is None:
            return []
        n = local.shape[0]
        perm = np.random.default_rng([self.seed, 7919]).permutation(n)
        size = self.local_batch_size
        chunks = [perm[i : i + size] for i in range(0, n, size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:  # a 1-row chunk has no neighbours
            chunks[-2] = np.concatenate([chunks[-2], chunks[-1]])
            chunks.pop()
        return chunks

    def _local_term(
        self,
        Ls: torch.Tensor,
        teachers: list[torch.Tensor],
        chunks: list[torch.Tensor],
        W: torch.Tensor,
        b: torch.Tensor | None,
    ) -> torch.Tensor:
        total = Ls.new_zeros(())
        for teacher, rows in zip(teachers, chunks, strict=True):
            E = self._embed_t(Ls[rows], W, b)
            total = total + _local_loss_t(teacher, E, self.temperature)
        return total / len(chunks)

    def _fit_glocal_lbfgs(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        local: np.ndarray | None,
        chunk_rows: list[np.ndarray],
        W: torch.Tensor,
        b: torch.Tensor | None,
    ) -> None:
        uniq, counts = _compress(trip)
        objs, tloc = _localise(uniq)
        Xs64 = self._standardise(Xa[objs])
        Ls64 = None if local is None else self._standardise(local)
        teachers64 = (
            []
            if Ls64 is None
            else [_teacher_t(torch.as_tensor(Ls64[r]), self.temperature) for r in chunk_rows]
        )
        basis: tuple[np.ndarray, np.ndarray] | None = None
        if self._reducible():
            # TripletProbe's exact reduction, with the unlabeled rows in the spanned space
            # too: the objective depends on W only through Xs @ W and Ls @ W.
            stacked = Xs64 if Ls64 is None else np.vstack([Xs64, Ls64])
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
        teachers = [self._tensor(t.numpy()) for t in teachers64]
        chunks = [torch.as_tensor(r, device=Xs.device) for r in chunk_rows]
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
        alpha = self.alpha

        def closure() -> torch.Tensor:
            opt.zero_grad()
            E = self._embed_t(Xs, W, b)
            ce = _cross_entropy_t(_similarities_t(E, t), w)
            if alpha > 0 and Ls is not None:
                ce = (1.0 - alpha) * ce + alpha * self._local_term(Ls, teachers, chunks, W, b)
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
        self.val_curve_: list[float] = []
        if basis is None:
            self._store(W, b)
        else:
            B = W.detach().to("cpu", torch.float64).numpy()
            self.weights_ = basis[0] @ B @ basis[1]
            self.bias_ = None

    def _fit_glocal_adam(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        local: np.ndarray | None,
        chunk_rows: list[np.ndarray],
        W: torch.Tensor,
        b: torch.Tensor | None,
        val: tuple[np.ndarray, np.ndarray] | None,
        rng: np.random.Generator,
    ) -> None:
        objs_all, local_all = _localise(trip)
        Xs = self._tensor(self._standardise(Xa[objs_all]))
        Ls = None if local is None else self._tensor(self._standardise(local))
        teachers = (
            []
            if Ls is None
            else [
                _teacher_t(Ls[torch.as_tensor(r, device=Ls.device)], self.temperature)
                for r in chunk_rows
            ]
        )
        chunks = [torch.as_tensor(r, device=Xs.device) for r in chunk_rows]
        params = [W] if b is None else [W, b]
        opt = torch.optim.Adam(params, lr=self.lr)
        epochs = self.max_iter or DEFAULT_MAX_ITER["adam"]
        m = local_all.shape[0]
        best = math.inf
        best_state = [p_.detach().clone() for p_ in params]
        bad = 0
        curve: list[float] = []
        val_curve: list[float] = []
        n_epochs = 0
        step = 0
        alpha = self.alpha
        for _ in range(epochs):
            n_epochs += 1
            perm = rng.permutation(m)
            total = 0.0
            for start in range(0, m, self.batch_size):
                batch = local_all[perm[start : start + self.batch_size]]
                rows, tl = _localise(batch)
                E = self._embed_t(Xs[torch.as_tensor(rows, device=Xs.device)], W, b)
                loss = _cross_entropy_t(_similarities_t(E, torch.as_tensor(tl, device=Xs.device)))
                if alpha > 0 and Ls is not None:
                    j = step % len(chunks)
                    El = self._embed_t(Ls[chunks[j]], W, b)
                    loss = (1.0 - alpha) * loss + alpha * _local_loss_t(
                        teachers[j], El, self.temperature
                    )
                loss = loss + self.reg * self._penalty_t(W)
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
                best_state = [p_.detach().clone() for p_ in params]
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
