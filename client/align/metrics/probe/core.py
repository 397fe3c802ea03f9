"""The probe's optimiser core: loss, penalty, gradients and the L-BFGS / Adam loops.

No estimator state lives here: :func:`fit_weights` takes the checked inputs, the
validated options (:class:`FitOptions`) and the standardisation, and returns the
fitted weights (:class:`FitOutput`). :class:`~align.metrics.probe.TripletProbe` (and
every subclass, e.g. gLocal) calls it; a subclass adds a loss term through an
:class:`ExtraTerm` instead of copying the loops.

The loss is the softmax cross-entropy over the three similarities of a triplet with the
human pair ``(a, b)`` as the target, computed as ``logsumexp(s) - s_ab`` (log-softmax;
never ``log(sum(exp))``), plus ``reg * R(W)``. Any NaN or infinity in the loss,
gradients or weights raises :class:`~align.errors.NumericalError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.optim.lbfgs import _strong_wolfe  # torch's line search (torch pinned)

from ...errors import InvalidInputError, NumericalError

__all__ = [
    "DEFAULT_MAX_ITER",
    "DTYPES",
    "INITS",
    "INIT_STD",
    "OPTIMIZERS",
    "REDUCTIONS",
    "REG_KINDS",
    "ExtraTerm",
    "FitOptions",
    "FitOutput",
    "ReductionCache",
    "TripletObjective",
    "all_finite",
    "compress",
    "cross_entropy_t",
    "fit_weights",
    "fold_jobs",
    "initial_weights",
    "localise",
    "map_chains",
    "predict_from_similarities",
    "similarities_t",
    "softmax_np",
    "threads",
    "triangular_basis",
]

REG_KINDS = ("frobenius", "squared", "identity")
INITS = ("normal", "identity")
OPTIMIZERS = ("lbfgs", "adam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_MAX_ITER = {"lbfgs": 300, "adam": 100}  # L-BFGS iterations / Adam epochs
INIT_STD = 1e-3  # paper code: W ~ N(0, 1e-3^2)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """The probe's options after validation (TripletProbe documents each one)."""

    reg: float
    reg_kind: str
    init: str
    tau: float
    normalize: bool
    bias: bool
    optimizer: str
    max_iter: int | None
    tol: float
    lr: float
    batch_size: int
    patience: int
    val_fraction: float
    dtype: str
    seed: int
    device: str
    n_threads: int | None
    reduce: bool


@dataclasses.dataclass
class FitOutput:
    """What a fit produces: ``weights`` (p, p) and ``bias`` (p,) or None (float64),
    iterations / epochs, the training objective per iteration / epoch and (Adam) the
    validation cross-entropy per epoch."""

    weights: np.ndarray
    bias: np.ndarray | None
    n_iter: int
    loss_curve: list[float]
    val_curve: list[float]


class ExtraTerm(Protocol):
    """A loss term added to the triplet cross-entropy from unlabeled rows (gLocal).

    ``setup`` gets the standardised unlabeled rows (float64, before any reduction) and
    returns (targets, row chunks); ``mix`` turns the triplet cross-entropy ``ce`` into
    the data term, given the (possibly reduced) unlabeled rows ``Ls`` as a tensor and
    ``embed`` (rows -> transformed rows). ``step`` is the Adam batch counter, None for
    the full-batch (L-BFGS) objective.
    """

    def setup(
        self, Ls: np.ndarray, full_batch: bool, to_tensor: Callable[[np.ndarray], torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...

    def mix(
        self,
        ce: torch.Tensor,
        Ls: torch.Tensor,
        targets: list[torch.Tensor],
        chunks: list[torch.Tensor],
        embed: Callable[[torch.Tensor], torch.Tensor],
        step: int | None,
    ) -> torch.Tensor: ...


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (None: leave torch's setting)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fold_jobs(n_jobs: int | None, k: int, n_threads: int | None) -> int:
    """Folds to fit at once: ``n_jobs`` (checked), or None -> torch's thread count (at
    most ``k``), 1 when the estimator pins its own ``n_threads``."""
    if n_jobs is None:
        return 1 if n_threads is not None else max(1, min(k, torch.get_num_threads()))
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise InvalidInputError("n_jobs", f"is {n_jobs!r}", "None or an integer >= 1")
    return min(n_jobs, k)


def map_chains(step: Callable[[int, int], None], k: int, length: int, n_jobs: int) -> None:
    """``step(i, pos)`` for ``k`` chains of ``length`` steps: within a chain in order
    (pos 0, 1, ...; a step may use the one before it), chains in ``n_jobs`` threads
    that split torch's intra-op threads between them (restored afterwards).

    A free thread takes the next step of the chain with the most steps left (ties: the
    lower ``i``) among the chains not running, so 3 folds on 2 threads keep both busy
    until the last steps (fold by fold, the third fold would run alone on one thread at
    the end). Serial (``n_jobs <= 1``): chain after chain. The first exception is
    re-raised after the running steps end; no new step starts after it.
    """
    if n_jobs <= 1 or k <= 1:
        for i in range(k):
            for pos in range(length):
                step(i, pos)
        return
    total = torch.get_num_threads()
    per = max(1, total // n_jobs)
    cond = threading.Condition()
    next_pos = [0] * k
    running = [False] * k
    errors: list[BaseException] = []

    def worker() -> None:
        torch.set_num_threads(per)
        while True:
            with cond:
                while True:
                    if errors or all(p_ >= length for p_ in next_pos):
                        return
                    free = [i for i in range(k) if not running[i] and next_pos[i] < length]
                    if free:
                        break
                    cond.wait()
                i = min(free, key=lambda i_: (next_pos[i_], i_))
                running[i] = True
                pos = next_pos[i]
            try:
                step(i, pos)
            except BaseException as exc:  # re-raised in the caller's thread
                with cond:
                    errors.append(exc)
                    running[i] = False
                    cond.notify_all()
                return
            with cond:
                running[i] = False
                next_pos[i] += 1
                cond.notify_all()

    workers = [
        threading.Thread(target=worker, name=f"align-fold-{n}") for n in range(min(n_jobs, k))
    ]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        torch.set_num_threads(total)
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- pieces


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, without a boolean mask of ``t``'s size.

    A float64 sum of the entries is finite exactly when every entry is (an infinity or a
    NaN propagates; a float64 sum of finite float32 values cannot overflow), so a finite
    sum decides at the cost of one read; only a non-finite sum (a float64 tensor summing
    past 1e308) falls back to the element-wise test. 5-10x cheaper than
    ``isfinite(t).all()`` at p x p, and it runs at every L-BFGS evaluation.
    """
    if not t.is_floating_point():
        return True
    if math.isfinite(float(t.detach().sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(t).all())


def similarities_t(E: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(m, 3) dot products [s_ab, s_ac, s_bc] of rows of E for local triplets t."""
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    return torch.stack(((a * b).sum(1), (a * c).sum(1), (b * c).sum(1)), dim=1)


def cross_entropy_t(S: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``logsumexp(s) - s_ab`` (log-softmax; never log(sum(exp)))."""
    per = torch.logsumexp(S, dim=1) - S[:, 0]
    if w is None:
        return per.mean()
    return (per * w).sum() / w.sum()


def compress(trip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge repeated responses: (a, b) is unordered, c is the odd one out."""
    ab = np.sort(trip[:, :2], axis=1)
    canon = np.concatenate([ab, trip[:, 2:]], axis=1)
    uniq, counts = np.unique(canon, axis=0, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.float64)


def localise(trip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Objects used by ``trip`` and the triplets re-indexed into that list."""
    objs, inv = np.unique(trip, return_inverse=True)
    return objs, inv.reshape(-1, 3).astype(np.int64)


def softmax_np(S: np.ndarray) -> np.ndarray:
    Z = S - S.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def predict_from_similarities(S: np.ndarray) -> np.ndarray:
    """Odd-one-out position: pair ab -> 2, ac -> 1, bc -> 0; a full tie -> -1 (wrong).

    A partial tie takes the first maximal pair in the order (ab, ac, bc), the zero-shot
    rule of METHODS.md section 2, so probe and zero-shot accuracies use one rule.
    """
    pair = np.argmax(S, axis=1)
    odd = np.array([2, 1, 0], dtype=np.int64)[pair]
    full_tie = (S[:, 0] == S[:, 1]) & (S[:, 1] == S[:, 2])
    odd[full_tie] = -1
    return odd


def initial_weights(init: str, tau: float, seed: int, p: int) -> np.ndarray:
    """The seeded initial ``W0`` (p, p) of ``init`` (float64). The normal draw is
    read-only and kept for the last ``(seed, p)``: a lambda grid's fits share it (the
    draw costs as much as a short fit's setup)."""
    if init == "normal":
        return _seeded_normal(seed, p)
    return np.eye(p) * tau


@functools.lru_cache(maxsize=1)
def _seeded_normal(seed: int, p: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    W = (torch.randn(p, p, generator=gen, dtype=torch.float64) * INIT_STD).numpy()
    W.setflags(write=False)
    return W


# ----------------------------------------------------------------------------- L-BFGS

#: L-BFGS also stops when the objective fell by less than ``STALL_FACTOR * tol *
#: max(1, |f|)`` per iteration on average over the last STALL_WINDOW iterations (scipy's
#: relative-decrease rule ``(f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol``, over a window
#: so that one short step does not end a fit): 1e-6 at the default ``tol = 1e-7``. In the
#: over-fitting regime (small lambda) the objective creeps along flat directions for
#: hundreds of iterations while the held-out loss gets worse (bench/README.md, "Issue
#: 14"); a smaller ``tol`` tightens both rules.
STALL_FACTOR = 10.0
STALL_WINDOW = 10
LBFGS_HISTORY = 20

Evaluate = Callable[
    [torch.Tensor, torch.Tensor | None], tuple[float, torch.Tensor, torch.Tensor | None]
]


class LbfgsHistory:
    """L-BFGS's inverse-Hessian approximation ``H`` from the last ``size`` accepted pairs
    ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` (Nocedal & Wright, Algorithm 7.4, with
    ``H_0 = gamma I``, ``gamma = s.y / y.y`` of the newest pair, as torch's L-BFGS).

    The two-loop recursion reads every pair twice and rewrites ``q`` 2k times: 4k vector
    passes of memory traffic per iteration, which at 20 pairs of r^2 = 340k floats cost
    more than the objective. Here the pairs live in two ring buffers (rows of ``S`` and
    ``Y``) with their inner products kept (float64, k x k: ``s_i . y_j`` for ``i`` older
    than ``j``, the only ones the recursion reads, and ``Y Y^T``), so the same recursion
    runs on scalars: one pass over the buffers gives ``S [g, y_new]`` and ``Y [g, y_new]``,
    a second writes ``d = -gamma g - gamma Y^T alpha + S^T (alpha - beta)``. The direction
    equals the two-loop's up to rounding (tested).
    """

    def __init__(self, size: int, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.size = size
        self.S = torch.empty((size, n), dtype=dtype, device=device)
        self.Y = torch.empty((size, n), dtype=dtype, device=device)
        self.rhs = torch.empty((2, n), dtype=dtype, device=device)  # g, y: one pass
        self.order: list[int] = []  # ring slots, oldest pair first
        self.rho = np.zeros(size)
        self.SY = np.zeros((size, size))  # SY[i, j] = s_i . y_j, by slot, i older than j
        self.YY = np.zeros((size, size))
        self.gamma = 1.0

    def direction(
        self, g: torch.Tensor, step: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """``-H g`` after adding ``step = (s, y)`` when ``s.y > 1e-10`` (torch's rule: a
        pair with too little curvature is skipped, the history kept as it was)."""
        rows = 1
        slot = -1
        if step is not None:
            s, y = step
            ys = float(y.dot(s))
            if ys > 1e-10:
                slot = self.order.pop(0) if len(self.order) == self.size else len(self.order)
                self.S[slot].copy_(s)
                self.Y[slot].copy_(y)
                self.rho[slot] = 1.0 / ys
                self.order.append(slot)
                self.rhs[1].copy_(y)
                rows = 2
        k = len(self.order)
        if k == 0:
            return torch.mul(g, -self.gamma)
        self.rhs[0].copy_(g)
        rhs = self.rhs[:rows]  # (rows, n) @ (n, k): one pass over each buffer
        PS = (rhs @ self.S[:k].T).T.to("cpu", torch.float64).numpy()
        PY = (rhs @ self.Y[:k].T).T.to("cpu", torch.float64).numpy()
        if rows == 2:
            self.SY[:k, slot] = PS[:, 1]  # s_i . y_new (the recursion reads only s_old . y_new)
            self.YY[:k, slot] = PY[:, 1]
            self.YY[slot, :k] = PY[:, 1]
            self.gamma = (1.0 / self.rho[slot]) / self.YY[slot, slot]
        sg, yg = PS[:, 0], PY[:, 0]
        # the two loops on the pairs in age order (position 0 the oldest): each reads
        # only SYo[a, b] = s_a . y_b with a older than b (the entries below are stale)
        idx, gamma = np.array(self.order), self.gamma
        age = np.ix_(idx, idx)
        SYo, rho = self.SY[age], self.rho[idx]
        alpha, sgo = np.zeros(k), sg[idx]
        for a in range(k - 1, -1, -1):  # newest to oldest: q = -g - sum alpha_b y_b
            alpha[a] = rho[a] * (-sgo[a] - SYo[a, a + 1 :] @ alpha[a + 1 :])
        base = gamma * (-yg[idx] - self.YY[age] @ alpha)  # y_a . gamma q
        beta = np.zeros(k)
        for a in range(k):  # oldest to newest: r += (alpha_a - beta_a) s_a
            beta[a] = rho[a] * (base[a] + SYo[:a, a] @ (alpha[:a] - beta[:a]))
        cs, cy = np.zeros(k), np.zeros(k)  # by ring slot
        cs[idx], cy[idx] = alpha - beta, -gamma * alpha
        dt = self.S.dtype
        d = torch.mul(g, -gamma)
        d.addmv_(self.S[:k].T, torch.from_numpy(cs).to(self.S.device, dt))
        d.addmv_(self.Y[:k].T, torch.from_numpy(cy).to(self.S.device, dt))
        return d


def lbfgs_minimise(
    params: list[torch.Tensor],
    evaluate: Evaluate,
    *,
    max_iter: int,
    tol: float,
    stall_tol: float | None = None,
    window: int = STALL_WINDOW,
) -> int:
    """Minimise ``evaluate(W, b) -> (f, dW, db)`` over ``params = [W]`` or ``[W, b]`` by
    L-BFGS with torch's algorithm and settings (history 20, ``H_0 = gamma I``, first step
    ``min(1, 1/||g||_1)``, then 1, torch's strong Wolfe line search), at most ``max_iter``
    iterations and ``2 max_iter`` evaluations (the last line search may finish past it);
    returns the iterations done. The direction comes from :class:`LbfgsHistory` (the
    two-loop's, without its memory traffic); ``W`` and ``b`` are views of one flat vector.

    Stopping rules, checked after every iteration in torch's order: the iteration or
    evaluation budget; largest gradient entry ``<= tol * 1e-3``; largest step entry
    ``<= tol``; loss change ``< tol``; the stall rule (:func:`stalled`, ``stall_tol``
    None: ``STALL_FACTOR * tol``, 0: off). Before any iteration: the gradient rule, and
    no descent direction (``g.d > -tol``) ends the fit.
    """
    W = params[0]
    b = params[1] if len(params) > 1 else None
    if stall_tol is None:
        stall_tol = STALL_FACTOR * tol
    q = W.numel()
    n = q + (0 if b is None else b.numel())
    x = torch.empty(n, dtype=W.dtype, device=W.device)
    evals = 0

    def at(v: torch.Tensor) -> tuple[float, torch.Tensor]:
        nonlocal evals
        f, gW, gb = evaluate(v[:q].view(W.shape), None if b is None else v[q:])
        evals += 1
        g = gW.reshape(-1) if gb is None else torch.cat([gW.reshape(-1), gb])
        return float(f), g

    def along(v: torch.Tensor, t: Any, d: torch.Tensor) -> tuple[float, torch.Tensor]:
        return at(torch.add(v, d, alpha=float(t)))  # the line search's trial point

    values: list[float] = []
    n_iter = 0
    with torch.no_grad():
        x[:q].copy_(W.reshape(-1))
        if b is not None:
            x[q:].copy_(b)
        f, g = at(x)
        if max_abs(g) > tol * 1e-3:
            hist = LbfgsHistory(LBFGS_HISTORY, n, x.dtype, x.device)
            d = g.neg()
            t = min(1.0, 1.0 / float(torch.linalg.vector_norm(g, 1)))
            g_prev = g
            while True:
                n_iter += 1
                if n_iter > 1:
                    d = hist.direction(g, (d.mul(t), g.sub(g_prev)))
                    t = 1.0
                g_prev, f_prev = g, f
                gtd = g.dot(d)
                if gtd > -tol:
                    break
                f, g, t, _ = _strong_wolfe(along, x, t, d, f, g, gtd, max_ls=2 * max_iter - evals)
                t = float(t)
                x.add_(d, alpha=t)
                values.append(f)
                if n_iter >= max_iter or evals >= 2 * max_iter:
                    break
                if max_abs(g) <= tol * 1e-3:
                    break
                if max_abs(d) * abs(t) <= tol:
                    break
                if abs(f - f_prev) < tol:
                    break
                if stall_tol > 0 and stalled(values, window, stall_tol):
                    break
        W.copy_(x[:q].view(W.shape))
        if b is not None:
            b.copy_(x[q:])
    return n_iter


def max_abs(v: torch.Tensor) -> float:
    """The largest ``|v_i|`` (the infinity norm of a finite ``v``) from one min-max pass:
    ``vector_norm(v, inf)`` takes 20x longer on the CPU (its reduction is not vectorised)."""
    lo, hi = torch.aminmax(v)
    return max(-float(lo), float(hi))


def stalled(values: list[float], window: int, stall_tol: float) -> bool:
    """The stall rule on the objective values at the accepted iterates (oldest first):
    the last ``window`` iterations lowered it by at most ``stall_tol * window *
    max(1, |f|)``, ``f`` the latest value; False while there are ``window`` or fewer."""
    if len(values) <= window:
        return False
    drop = values[-1 - window] - values[-1]
    return drop <= stall_tol * window * max(1.0, abs(values[-1]))


# ----------------------------------------------------------------------------- reduction


def _digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.sha256()  # with SHA instructions 2.5x blake2b (19 vs 50 ms for 19 MB)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.view(np.uint8).data if a.size else b"")
    return h.digest()


def triangular_basis(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal basis ``V`` (p, r) of the rows' span in which the rows are lower
    trapezoidal: ``rows = L V^T`` (up to rows' components below 1e-10 of the largest
    singular value) with ``L = rows V`` (n, r), ``L[i, j] = 0`` for ``j > i`` exactly.

    Fewer rows than features (n < p): ``r`` is the numerical rank (singular values above
    1e-10 of the largest, from the SVD), the SVD basis turned by the QR factorisation of
    ``(U_r S_r)^T``. Otherwise: ``r = p`` and ``V`` is the ``Q`` of ``rows^T = Q R`` (a
    rotation, no reduction; ``L = R^T``). Any orthonormal basis of the span gives the same
    fit (the objective depends on ``W`` through ``rows W``, the penalty through ``||W||_F``);
    this one makes ``L B`` and ``L^T D`` triangular products at about half the flops
    (:class:`TripletObjective`). In torch on the calling thread's threads (numpy's OpenBLAS
    pool fights torch's OpenMP threads: 2-30x slower).
    """
    Z = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
    n, p = Z.shape
    if n < p:
        U, sv, Vt = torch.linalg.svd(Z, full_matrices=False)
        r = int((sv > sv[0] * 1e-10).sum())  # 0 for constant (all-zero) rows
        if r == 0:
            raise InvalidInputError("X", "training rows are constant", "varying features")
        Q1, R1 = torch.linalg.qr((U[:, :r] * sv[:r]).T)  # (r, n) = Q1 R1
        V, L = Vt[:r].T @ Q1, R1.T
    else:
        if not bool(Z.any()):
            raise InvalidInputError("X", "training rows are constant", "varying features")
        V, R = torch.linalg.qr(Z.T)  # (p, n) = V R, V (p, p)
        L = R.T
    return np.ascontiguousarray(V.numpy()), np.ascontiguousarray(torch.tril(L).numpy())


class ReductionCache:
    """The exact r x r reduction's factorisations, kept for the next fits on the same rows.

    ``reduction(rows, W0)`` returns ``(V, L, Q, R)``: :func:`triangular_basis` ``(V, L)``,
    ``V`` (p, r) an orthonormal basis of the rows' span (r = numerical rank when there are
    fewer rows than features, else ``r = p``: a rotation) and ``L = rows V`` lower
    trapezoidal; and from the QR factorisation ``(V^T W0)^T = Q_m R_m``: ``Q = Q_m^T``
    (r, p, orthonormal rows) and ``R = R_m^T`` (r, r), the reduced start (``W0`` None:
    ``Q`` and ``R`` empty). ``get(rows, W0)`` returns ``(V, Q, R)``. The factorisations
    depend only on the rows (and ``W0``), not on the penalty: a lambda grid over one fold
    computes them once; recomputing them cost ~2-3 CPU s per fit at p = 1280 (more than
    the L-BFGS iterations at large lambda).
    Keys are content digests of the arrays (never identities), so a hit returns exactly
    what a recomputation would; at most ``size`` entries of each kind are kept (least
    recently used dropped; ``size = 0`` turns caching off). Thread-safe. The arrays
    returned are shared: read them, never write them.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._bases: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._starts: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _lookup(self, table: OrderedDict[bytes, Any], key: bytes) -> Any:
        with self._lock:
            hit = table.get(key)
            if hit is not None:
                table.move_to_end(key)
            return hit

    def _store(self, table: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > self.size:
                table.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._bases.clear()
            self._starts.clear()

    def get(self, rows: np.ndarray, W0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        V, _L, Q, R = self.reduction(rows, W0)
        return V, Q, R

    def reduction(
        self, rows: np.ndarray, W0: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(V, L, Q, R)`` of :meth:`basis` and :meth:`get` with one digest of ``rows``
        (``W0`` None: ``Q`` and ``R`` are empty)."""
        key = _digest(rows)
        basis = self._lookup(self._bases, key)
        if basis is None:
            basis = triangular_basis(rows)
            self._store(self._bases, key, basis)
        V, L = basis
        if W0 is None:
            return V, L, np.empty((0, 0)), np.empty((0, 0))
        skey = key + _digest(W0)
        start = self._lookup(self._starts, skey)
        if start is None:
            A0 = torch.from_numpy(V).T @ torch.from_numpy(np.ascontiguousarray(W0))
            Qm, Rm = torch.linalg.qr(A0.T)
            start = (np.ascontiguousarray(Qm.T.numpy()), np.ascontiguousarray(Rm.T.numpy()))
            self._store(self._starts, skey, start)
        return V, L, start[0], start[1]


#: The process-wide cache the L-BFGS fits use (``REDUCTIONS.size = 0`` disables it).
REDUCTIONS = ReductionCache()


# ----------------------------------------------------------------------------- the fit


class _Fit:
    """One fit: the options, the standardisation and the helpers the loops share."""

    def __init__(self, opts: FitOptions, mean: float, std: float, extra: ExtraTerm | None):
        self.o = opts
        self.mean = mean
        self.std = std
        self.extra = extra
        self.device = torch.device(opts.device)

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=DTYPES[self.o.dtype], device=self.device)

    def standardise(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.std

    def embed(self, Xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        E = Xs @ W
        if b is not None:
            E = E + b
        if self.o.normalize:
            E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return E

    def penalty(self, W: torch.Tensor) -> torch.Tensor:
        if self.o.reg_kind == "frobenius":
            return torch.linalg.norm(W)
        if self.o.reg_kind == "squared":
            return (W * W).sum()
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return ((W - torch.diagonal(W).mean() * eye) ** 2).sum()

    def check_finite(self, what: str, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if t is not None and not all_finite(t):
                raise NumericalError(
                    f"probe {what} became NaN or infinite (reg={self.o.reg:g}, "
                    f"optimizer={self.o.optimizer}, dtype={self.o.dtype}); not scoring it"
                )

    def mix(
        self,
        ce: torch.Tensor,
        Ls: torch.Tensor | None,
        targets: list[torch.Tensor],
        chunks: list[torch.Tensor],
        W: torch.Tensor,
        b: torch.Tensor | None,
        step: int | None,
    ) -> torch.Tensor:
        if self.extra is None or Ls is None:
            return ce
        return self.extra.mix(ce, Ls, targets, chunks, lambda R: self.embed(R, W, b), step)

    def reducible(self) -> bool:
        o = self.o
        return bool(o.reduce) and not o.bias and o.reg_kind in ("frobenius", "squared")

    @staticmethod
    def weights_out(W: torch.Tensor) -> np.ndarray:
        return W.detach().to("cpu", torch.float64).numpy().copy()

    # -- L-BFGS ----------------------------------------------------------------------

    def lbfgs(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        W: torch.Tensor,
        b: torch.Tensor | None,
        local: np.ndarray | None,
    ) -> FitOutput:
        """Full-batch L-BFGS (:func:`lbfgs_minimise`) on the objective with its closed-form
        gradient (:class:`TripletObjective`, no autograd graph); repeated responses are
        merged into distinct triplets with counts (the same weighted mean)."""
        uniq, counts = compress(trip)
        objs, tloc = localise(uniq)
        Xs64 = self.standardise(Xa[objs])
        Ls64 = None if local is None else self.standardise(local)
        targets64: list[torch.Tensor] = []
        chunk_rows: list[torch.Tensor] = []
        if Ls64 is not None and self.extra is not None:
            targets64, chunk_rows = self.extra.setup(Ls64, True, self.tensor)
        basis: tuple[torch.Tensor, torch.Tensor] | None = None
        stacked = Xs64 if Ls64 is None else np.vstack([Xs64, Ls64])
        W0 = W.detach().to("cpu", torch.float64).numpy()
        if self.reducible():
            # Exact reduction (TripletProbe's docstring): W = V B Q with V (p, r) spanning
            # the training (and unlabeled) rows and Q (r, p) the row space of V^T W0, so
            # optimise B (r, r); with at least as many rows as features r = p (a rotation).
            # V is the basis in which the rows are lower trapezoidal (triangular_basis), so
            # the objective's two products per evaluation are triangular (half the flops).
            # Both factorisations depend only on the rows and W0, not on the penalty: a
            # lambda grid over one fold computes them once (REDUCTIONS, same arrays).
            V, L, Qt, Rm = REDUCTIONS.reduction(stacked, W0)
            basis = (torch.from_numpy(V), torch.from_numpy(Qt))
            Xs64 = L[: Xs64.shape[0]]  # a prefix of lower-trapezoidal rows: lower too
            if Ls64 is not None:
                Ls64 = L[Xs64.shape[0] :]
            W0 = np.ascontiguousarray(Rm)
        objective = TripletObjective(
            self,
            Xs64,
            tloc,
            counts,
            b is not None,
            Ls64,
            targets64,
            chunk_rows,
            lower=basis is not None,  # the rows are in the triangular basis
        )
        with torch.no_grad():
            W = self.tensor(np.ascontiguousarray(W0)).clone().requires_grad_(True)
        params = [W] if b is None else [W, b]
        max_iter = self.o.max_iter or DEFAULT_MAX_ITER["lbfgs"]
        n_iter = lbfgs_minimise(params, objective.evaluate, max_iter=max_iter, tol=self.o.tol)
        self.check_finite("weights", W, b)
        curve = objective.curve
        if basis is None:
            weights = self.weights_out(W)
            bias = None if b is None else self.weights_out(b)
        else:
            B = W.detach().to("cpu", torch.float64)
            weights, bias = (basis[0] @ B @ basis[1]).numpy(), None
        return FitOutput(weights, bias, n_iter, curve, [])

    # -- Adam ------------------------------------------------------------------------

    def objective_np(
        self, Xa: np.ndarray, trip: np.ndarray, W: torch.Tensor, b: torch.Tensor | None
    ) -> float:
        uniq, counts = compress(trip)
        objs, local = localise(uniq)
        with torch.no_grad():
            E = self.embed(self.tensor(self.standardise(Xa[objs])), W, b)
            S = similarities_t(E, torch.as_tensor(local, device=E.device))
            ce = cross_entropy_t(S, self.tensor(counts))
        self.check_finite("validation loss", ce)
        return float(ce)

    def adam(
        self,
        Xa: np.ndarray,
        trip: np.ndarray,
        W: torch.Tensor,
        b: torch.Tensor | None,
        val: tuple[np.ndarray, np.ndarray] | None,
        rng: np.random.Generator,
        local: np.ndarray | None,
    ) -> FitOutput:
        o = self.o
        objs_all, local_all = localise(trip)
        Xs = self.tensor(self.standardise(Xa[objs_all]))
        Ls64 = None if local is None else self.standardise(local)
        Ls = None if Ls64 is None else self.tensor(Ls64)
        targets: list[torch.Tensor] = []
        chunks: list[torch.Tensor] = []
        if Ls64 is not None and self.extra is not None:
            targets, chunks = self.extra.setup(Ls64, False, self.tensor)
        chunks = [c_.to(Xs.device) for c_ in chunks]
        step = 0
        params = [W] if b is None else [W, b]
        opt = torch.optim.Adam(params, lr=o.lr)
        epochs = o.max_iter or DEFAULT_MAX_ITER["adam"]
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
            for start in range(0, m, o.batch_size):
                batch = local_all[perm[start : start + o.batch_size]]
                rows, loc = localise(batch)
                E = self.embed(Xs[torch.as_tensor(rows, device=Xs.device)], W, b)
                S = similarities_t(E, torch.as_tensor(loc, device=Xs.device))
                ce = self.mix(cross_entropy_t(S), Ls, targets, chunks, W, b, step)
                loss = ce + o.reg * self.penalty(W)
                step += 1
                self.check_finite("loss", loss)
                opt.zero_grad()
                loss.backward()
                self.check_finite("gradient", W.grad, None if b is None else b.grad)
                opt.step()
                total += float(loss.detach()) * batch.shape[0]
            self.check_finite("weights", W, b)
            curve.append(total / m)
            if val is None:
                continue
            v = self.objective_np(val[0], val[1], W, b)
            val_curve.append(v)
            if v < best:
                best, bad = v, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= o.patience:
                    break
        if val is not None:
            with torch.no_grad():
                for p_, s_ in zip(params, best_state, strict=True):
                    p_.copy_(s_)
        return FitOutput(
            self.weights_out(W),
            None if b is None else self.weights_out(b),
            n_epochs,
            curve,
            val_curve,
        )


#: Row blocks of a lower-trapezoidal product: about this many along the triangle (the
#: flops are (k + 1) / 2k of the dense product's; smaller blocks cost BLAS efficiency).
TRIANGLE_BLOCKS = 8
MIN_TRIANGLE_BLOCK = 48


def triangular_blocks(X: torch.Tensor) -> list[tuple[int, int]]:
    """Row blocks ``[a, b)`` covering the triangle ``[0, q)`` of ``X`` (n, q), n >= q, for
    :func:`lower_product`; empty (dense products) when ``X`` is too small to gain."""
    n, q = X.shape
    if n < q or q < 2 * MIN_TRIANGLE_BLOCK:
        return []
    step = max(MIN_TRIANGLE_BLOCK, -(-q // TRIANGLE_BLOCKS))
    return [(a, min(a + step, q)) for a in range(0, q, step)]


def lower_product(X: torch.Tensor, W: torch.Tensor, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """``X @ W`` for ``X`` (n, q) lower trapezoidal (``X[i, j] = 0`` for ``j > i``): rows
    ``[a, b)`` of the triangle need only columns ``[0, b)``; rows from ``q`` on are dense.
    ``blocks`` from :func:`triangular_blocks` (empty: the dense product)."""
    if not blocks:
        return X @ W
    n, q = X.shape
    E = torch.empty((n, W.shape[1]), dtype=W.dtype, device=W.device)
    for a, b in blocks:
        torch.mm(X[a:b, :b], W[:b], out=E[a:b])
    if n > q:
        torch.mm(X[q:], W, out=E[q:])
    return E


def lower_transposed_product(
    X: torch.Tensor, D: torch.Tensor, blocks: list[tuple[int, int]]
) -> torch.Tensor:
    """``X.T @ D`` for ``X`` lower trapezoidal: output rows ``[a, b)`` (columns of ``X``)
    have non-zeros only in rows ``a`` and below of ``X``."""
    if not blocks:
        return X.T @ D
    G = torch.empty((X.shape[1], D.shape[1]), dtype=D.dtype, device=D.device)
    for a, b in blocks:
        torch.mm(X[a:, a:b].T, D[a:], out=G[a:b])
    return G


def pair_matrix(pattern: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The sparse (CSR) matrix with ``pattern``'s structure and ``values``."""
    return _csr(pattern.crow_indices(), pattern.col_indices(), values, pattern.shape[0])


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags CSR support as beta on first use
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        # built by pair_pattern: sorted, in range, so torch's invariant checks are skipped
        return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)


def pair_pattern(
    tloc: np.ndarray, n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric sparsity pattern (n x n CSR, float64 zeros) of the pairs ``(a, b)``,
    ``(a, c)``, ``(b, c)`` of every triplet and their mirrors, and ``slot`` (6m,): where
    in the pattern's values each pair lies, first the m triplets' ``ab, ac, bc`` in
    order, then the mirrored ``ba, ca, cb``. ``A En`` with the pair weights at ``slot``
    is the gradient's scatter, the pattern's entries of ``En En^T`` the similarities,
    both without an (m, 3, q) copy of the triplets' rows."""
    t = torch.as_tensor(tloc, dtype=torch.int64)
    first, second = t[:, [0, 0, 1]].reshape(-1), t[:, [1, 2, 2]].reshape(-1)
    key = torch.cat([first * n + second, second * n + first])
    entries, slot = torch.unique(key, return_inverse=True)  # sorted: row-major CSR order
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(entries // n, minlength=n), 0)
    pattern = _csr(crow, entries % n, torch.zeros(entries.shape[0], dtype=torch.float64), n)
    return pattern.to(device), slot.to(device)


class TripletObjective:
    """The full-batch objective ``f(x) = data(W, b) + reg * R(W)`` and its gradient.

    ``x`` is ``[vec(W), b]`` (float64; ``W`` (q, q) over the columns of ``Xs``, the
    reduced ``B`` after the exact reduction). ``data`` is the count-weighted mean of
    ``logsumexp(s) - s_ab`` over the distinct triplets (each distinct triplet once, with
    its number of responses as weight: the same mean as over responses), passed through
    the extra term's ``mix`` when there is one.

    Gradient in closed form: with ``g = w * (softmax(s) - e_ab)`` per triplet,
    ``dE_a = g_ab e_b + g_ac e_c`` (and likewise for b, c), back through the row
    normalisation when ``normalize``, then ``dW = Xs^T dE`` and ``db = sum(dE)``. The
    similarities and that scatter go through the sparse pattern of the triplets' pairs
    (:func:`pair_pattern`): the pattern's entries of ``E E^T``, and ``dE = A E`` with the
    pair weights in ``A``. The
    penalties: ``W / ||W||_F`` (unsquared; 0 at W = 0), ``2 W`` (squared), ``2 (W - mean(diag
    W) I)`` (identity; the mean's own derivative cancels because the deviations of the
    diagonal sum to zero). An extra term (gLocal) gets autograd for its own part only:
    ``mix`` runs on a leaf ``ce`` so that ``d mix / d ce`` scales the closed-form
    gradient and the rest comes from the local term's graph.

    Precision: the matrices (``W``, ``Xs W``, ``Xs^T dE``, the gradient; the two matmuls
    are the costly part) are in the fit's ``dtype``, as is the L-BFGS history; the
    per-triplet terms (similarities, log-softmax, ``dE`` before its cast) and the
    objective's sums are float64, so the loss L-BFGS compares against ``tol`` carries
    no float32 rounding from the sums.
    ``curve`` collects the objective at every evaluation.
    """

    def __init__(
        self,
        fit: _Fit,
        Xs: np.ndarray,
        tloc: np.ndarray,
        counts: np.ndarray,
        bias: bool,
        Ls: np.ndarray | None = None,
        targets: list[torch.Tensor] | None = None,
        chunks: list[torch.Tensor] | None = None,
        lower: bool = False,
    ) -> None:
        self.fit = fit
        self.dt = DTYPES[fit.o.dtype]
        dev = fit.device
        self.Xs = torch.as_tensor(Xs, dtype=self.dt, device=dev)
        self.blocks = triangular_blocks(self.Xs) if lower else []
        self.pattern, self.pair_slot = pair_pattern(tloc, self.Xs.shape[0], dev)
        self.w = torch.as_tensor(counts / counts.sum(), dtype=torch.float64, device=dev)
        q = self.Xs.shape[1]
        self.shape = (q, q)
        self.bias = bias
        self.Ls = None if Ls is None else torch.as_tensor(Ls, dtype=self.dt, device=dev)
        self.targets = [fit.tensor(t_.cpu().numpy()) for t_ in (targets or [])]
        self.chunks = [c_.to(dev) for c_ in (chunks or [])]
        self.curve: list[float] = []

    def penalty(self, W: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``R(W)`` (a Python float) and its gradient (``W``'s dtype)."""
        kind = self.fit.o.reg_kind
        if kind == "frobenius":
            nrm = float(torch.linalg.vector_norm(W))
            return nrm, (W / nrm if nrm > 0 else torch.zeros_like(W))
        if kind == "squared":
            return float((W * W).sum()), 2.0 * W
        D = W - torch.diagonal(W).mean() * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return float((D * D).sum()), 2.0 * D

    def data_term(
        self, W: torch.Tensor, b: torch.Tensor | None
    ) -> tuple[float, torch.Tensor, torch.Tensor | None]:
        """The data term (a Python float) and its gradients in ``W`` and ``b`` (in the
        fit's dtype, on the device)."""
        fit = self.fit
        E = lower_product(self.Xs, W.to(self.dt), self.blocks)
        if b is not None:
            E = E + b.to(self.dt)
        E64 = E.to(torch.float64)
        if fit.o.normalize:
            nrm = E64.norm(dim=1, keepdim=True)
            scale = nrm.clamp_min(1e-12)
            En = E64 / scale
        else:
            En = E64
        # s_ab, s_ac, s_bc: the entries of En En^T at the triplets' pairs only
        K = torch.sparse.sampled_addmm(self.pattern, En, En.T, beta=0.0)
        S = K.values()[self.pair_slot[: self.pair_slot.shape[0] // 2]].view(-1, 3)
        # a fit in float32 must fail where float32 similarities would overflow, even
        # though they are summed in float64 here (no silent rescue by the wider type)
        fit.check_finite("similarities", S if self.dt == torch.float64 else S.to(self.dt))
        ce = ((torch.logsumexp(S, dim=1) - S[:, 0]) * self.w).sum()
        G = torch.softmax(S, dim=1)
        G[:, 0] -= 1.0
        G *= self.w[:, None]
        # dE_a = g_ab e_b + g_ac e_c (likewise b, c): dEn = A En with A the symmetric
        # sparse matrix of the pair weights (a pair in several triplets: their sum)
        g = G.reshape(-1)
        weights = torch.zeros_like(K.values())
        weights.index_add_(0, self.pair_slot, torch.cat([g, g]))
        # (addmm with beta 0 into a fresh buffer: a quarter of the time of `A @ En`)
        dEn = torch.addmm(torch.empty_like(En), pair_matrix(self.pattern, weights), En, beta=0.0)
        if fit.o.normalize:
            radial = (dEn * En).sum(1, keepdim=True)
            dE = torch.where(nrm > 1e-12, dEn - En * radial, dEn) / scale
        else:
            dE = dEn
        gW = lower_transposed_product(self.Xs, dE.to(self.dt), self.blocks)
        gb = dE.sum(0).to(self.dt) if b is not None else None
        value = float(ce)
        if fit.extra is not None and self.Ls is not None:
            ce_leaf = ce.detach().to(self.dt).requires_grad_(True)
            Wl = W.detach().to(self.dt).requires_grad_(True)
            bl = None if b is None else b.detach().to(self.dt).requires_grad_(True)
            with torch.enable_grad():  # lbfgs_minimise evaluates under no_grad
                total = fit.extra.mix(
                    ce_leaf,
                    self.Ls,
                    self.targets,
                    self.chunks,
                    lambda R: fit.embed(R, Wl, bl),
                    None,
                )
                if total.requires_grad:
                    total.backward()
            d_ce = 0.0 if ce_leaf.grad is None else float(ce_leaf.grad)
            value = float(total.detach())
            gW = d_ce * gW
            if Wl.grad is not None:
                gW = gW + Wl.grad
            if gb is not None:
                gb = d_ce * gb
                if bl is not None and bl.grad is not None:
                    gb = gb + bl.grad
        return value, gW, gb

    def evaluate(
        self, W: torch.Tensor, b: torch.Tensor | None
    ) -> tuple[float, torch.Tensor, torch.Tensor | None]:
        """The objective (a Python float) and its gradients in ``W`` and ``b`` (the fit's
        dtype); appended to ``curve``; NumericalError when anything is NaN or infinite."""
        fit = self.fit
        value, gW, gb = self.data_term(W, b)
        pen, gpen = self.penalty(W.detach().to(self.dt))
        reg = fit.o.reg
        f = value + reg * pen
        gW.add_(gpen, alpha=reg)
        if not math.isfinite(f):
            fit.check_finite("loss", torch.tensor(f))
        fit.check_finite("gradient", gW, gb)
        self.curve.append(f)
        return f, gW, gb

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """``(f, gradient)`` at the flat float64 vector ``x = [vec(W), b]``."""
        q = self.shape[0] * self.shape[1]
        xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
        W = xt[:q].reshape(self.shape).to(self.fit.device)
        b = xt[q:].to(self.fit.device) if self.bias else None
        f, gW, gb = self.evaluate(W, b)
        g = gW.reshape(-1) if gb is None else torch.cat([gW.reshape(-1), gb])
        return f, g.to("cpu", torch.float64).numpy()


def fit_weights(
    opts: FitOptions,
    Xa: np.ndarray,
    trip: np.ndarray,
    mean: float,
    std: float,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    W_init: np.ndarray | None = None,
    local: np.ndarray | None = None,
    extra: ExtraTerm | None = None,
) -> FitOutput:
    """Fit ``W`` (and ``b``) on checked inputs.

    ``Xa`` (n, p) float64; ``trip`` (m, 3) triplets over present rows of ``Xa``;
    ``mean``/``std`` the global scalar standardisation; ``val`` (X, triplets) for Adam's
    early stopping; ``W_init`` (p, p) a warm start (else the seeded ``init``);
    ``local`` unlabeled rows for ``extra`` (both or neither).
    """
    fit = _Fit(opts, mean, std, extra)
    p = Xa.shape[1]
    rng = np.random.default_rng(opts.seed)
    dt = DTYPES[opts.dtype]
    with threads(opts.n_threads):
        if W_init is None:
            W_init = initial_weights(opts.init, opts.tau, opts.seed, p)
        # a copy: the fit writes its result into W, never into the caller's (or the
        # cached, read-only) start
        W = torch.tensor(np.asarray(W_init), dtype=dt, device=fit.device).requires_grad_(True)
        b = torch.zeros(p, dtype=dt, device=fit.device, requires_grad=True) if opts.bias else None
        if opts.optimizer == "lbfgs":
            return fit.lbfgs(Xa, trip, W, b, local)
        if val is None and opts.val_fraction > 0 and trip.shape[0] >= 10:
            perm = rng.permutation(trip.shape[0])
            n_val = max(1, round(opts.val_fraction * trip.shape[0]))
            val = (Xa, trip[perm[:n_val]])
            trip = trip[perm[n_val:]]
        return fit.adam(Xa, trip, W, b, val, rng, local)
