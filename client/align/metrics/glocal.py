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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from .probe.estimator import TripletProbe
from .validation import check_features, check_scalar

__all__ = ["GLocalProbe", "LocalNeighbourhoodTerm", "knn_overlap", "local_loss"]


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
    tau = check_scalar(temperature, "temperature", minimum=0, include_minimum=False)
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
    k = int(check_scalar(k, "k", integer=True, minimum=1, maximum=n - 1))

    def neighbours(A: np.ndarray) -> np.ndarray:
        U = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1, kind="stable")[:, :k]

    a, b = neighbours(Xa), neighbours(Ea)
    shared = [len(set(a[i]).intersection(b[i])) for i in range(n)]
    return float(np.mean(shared) / k)


# ----------------------------------------------------------------------------- the probe


class LocalNeighbourhoodTerm:
    """The gLocal local term as the probe core's extra loss term
    (:class:`~align.metrics.probe.core.ExtraTerm`): ``(1 - alpha) ce + alpha L_local``."""

    def __init__(self, alpha: float, temperature: float, local_batch_size: int, seed: int):
        self.alpha = alpha
        self.temperature = temperature
        self.local_batch_size = local_batch_size
        self.seed = seed

    def chunks(self, n: int) -> list[np.ndarray]:
        """Fixed, seeded row chunks of the ``n`` unlabeled rows (each >= 2 rows)."""
        perm = np.random.default_rng([self.seed, 7919]).permutation(n)
        size = self.local_batch_size
        chunks = [perm[i : i + size] for i in range(0, n, size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:  # a 1-row chunk has no neighbours
            chunks[-2] = np.concatenate([chunks[-2], chunks[-1]])
            chunks.pop()
        return chunks

    def setup(
        self, Ls: np.ndarray, full_batch: bool, to_tensor: Callable[[np.ndarray], torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher matrices and row chunks of the standardised unlabeled rows ``Ls``.

        Full batch (L-BFGS): teachers in float64 from the rows before any reduction;
        Adam: in the fit dtype."""
        chunk_rows = self.chunks(Ls.shape[0])
        if full_batch:
            teachers = [_teacher_t(torch.as_tensor(Ls[r]), self.temperature) for r in chunk_rows]
        else:
            Lt = to_tensor(Ls)
            teachers = [
                _teacher_t(Lt[torch.as_tensor(r, device=Lt.device)], self.temperature)
                for r in chunk_rows
            ]
        return teachers, [torch.as_tensor(r) for r in chunk_rows]

    def mix(
        self,
        ce: torch.Tensor,
        Ls: torch.Tensor,
        targets: list[torch.Tensor],
        chunks: list[torch.Tensor],
        embed: Callable[[torch.Tensor], torch.Tensor],
        step: int | None,
    ) -> torch.Tensor:
        """``(1 - alpha) ce + alpha L_local``: all chunks averaged (full batch) or chunk
        ``step`` mod the number of chunks (Adam)."""
        alpha = self.alpha
        if alpha <= 0:
            return ce
        if step is None:
            total = Ls.new_zeros(())
            for teacher, rows in zip(targets, chunks, strict=True):
                total = total + _local_loss_t(teacher, embed(Ls[rows]), self.temperature)
            return (1.0 - alpha) * ce + alpha * (total / len(chunks))
        j = step % len(chunks)
        El = embed(Ls[chunks[j]])
        return (1.0 - alpha) * ce + alpha * _local_loss_t(targets[j], El, self.temperature)


class GLocalProbe(TripletProbe):
    """:class:`TripletProbe` plus the gLocal local-neighbourhood term (module docstring).

    Extra parameters
    ----------------
    alpha: weight of ``L_local`` in ``(1 - alpha) L_global + alpha L_local`` (0..1,
        default 0.5; 0 is the plain probe).
    temperature: ``tau`` of the local softmaxes (default 0.1).
    local_batch_size: rows of the unlabeled set per local batch (default 512).

    Every other parameter is TripletProbe's (``**probe_params``; ``param_names`` lists
    them after these three). Like TripletProbe, ``__init__`` only stores them; ``fit``
    checks them.

    ``fit(X, triplets, X_local=...)``: ``X_local`` (N, p) are the unlabeled rows (e.g.
    the features of a second image set); required when ``alpha > 0``. All-NaN rows of
    ``X_local`` are ignored.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 0.1,
        local_batch_size: int = 512,
        **probe_params: Any,
    ) -> None:
        self.alpha = alpha
        self.temperature = temperature
        self.local_batch_size = local_batch_size
        super().__init__(**probe_params)

    def local_term(self) -> LocalNeighbourhoodTerm:
        """The checked local term (InvalidInputError naming a bad parameter)."""
        alpha = check_scalar(self.alpha, "alpha", minimum=0, maximum=1)
        temperature = check_scalar(
            self.temperature, "temperature", minimum=0, include_minimum=False
        )
        lbs = int(check_scalar(self.local_batch_size, "local_batch_size", integer=True, minimum=2))
        seed = self.fit_options().seed
        return LocalNeighbourhoodTerm(alpha, temperature, lbs, seed)

    # -- fitting ---------------------------------------------------------------------

    def fit(  # type: ignore[override]
        self,
        X: object,
        triplets: object,
        X_local: object | None = None,
        X_val: object | None = None,
        val_triplets: object | None = None,
        init_weights: np.ndarray | None = None,
    ) -> GLocalProbe:
        """Fit on ``triplets`` over rows of ``X`` and, when ``alpha > 0``, keep the
        neighbourhoods of the rows of ``X_local`` (module docstring)."""
        term = self.local_term()
        self.fit_options()
        Xa, trip, val = self._check_fit_inputs(X, triplets, X_val, val_triplets)
        p = Xa.shape[1]
        local: np.ndarray | None = None
        if term.alpha > 0:
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
        # TripletProbe's fit (same random draws, same optimisers) with the local term;
        # alpha = 0 is the plain probe, term by term.
        self._fit_with(Xa, trip, val, init_weights, local, None if local is None else term)
        return self
