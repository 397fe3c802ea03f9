"""Known answers for the linear probe (METHODS.md section 3) on tiny inputs.

Every expected number is computed here from the rule text, independently of
``align.metrics.probe``: numpy loops for merging repeated responses, the odd-one-out
rule and the softmax; the stated objective (mean over responses of
``logsumexp(s) - s_ab`` plus ``reg * R(W)``) in numpy at weights chosen here; the
lambda x fold loop of the cross-validation written out with one probe per (lambda,
fold); the thingsvision transform formula; set arithmetic for folds and hooks. Small
problems (a few objects, p <= 12), so each test runs in well under a second: they are
the fast part of the probe's mutation-testing selection (tools/mutation.py), the tiny
counterparts of test_probe.py's fits on real THINGS data.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from align.errors import InvalidInputError, NumericalError  # noqa: E402
from align.metrics.probe import (  # noqa: E402
    LAMBDA_GRID,
    TripletProbe,
    core,
    cross_validate,
    cross_validate_probe,
)
from align.metrics.probe.cv import collapsed_start, identity_probe  # noqa: E402
from align.metrics.splits import ObjectKFold  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.special import softmax as scipy_softmax  # noqa: E402

from tests.test_known_answers import _local_loss_np  # noqa: E402  (gLocal's local term, written out)
from tests.test_probe import _one_torch_thread  # noqa: E402, F401  (autouse: one torch thread)

# ----------------------------------------------------------------------------- helpers


def sims(E: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(m, 3) dot products [s_ab, s_ac, s_bc], a loop over triplets."""
    out = np.zeros((len(T), 3))
    for r, (a, b, c) in enumerate(T):
        out[r] = [E[a] @ E[b], E[a] @ E[c], E[b] @ E[c]]
    return out


def odd_rule(S: np.ndarray) -> np.ndarray:
    """METHODS.md section 2: the first maximal pair in (ab, ac, bc) names the pair, its
    complement is the odd one out (ab -> 2, ac -> 1, bc -> 0); a full tie is -1."""
    out = []
    for s in S:
        if s[0] == s[1] == s[2]:
            out.append(-1)
            continue
        first = next(k for k in range(3) if s[k] == max(s))
        out.append({0: 2, 1: 1, 2: 0}[first])
    return np.asarray(out)


def penalty(W: np.ndarray, reg_kind: str) -> float:
    if reg_kind == "frobenius":
        return float(np.sqrt((W**2).sum()))
    if reg_kind == "squared":
        return float((W**2).sum())
    D = W - np.mean(np.diag(W)) * np.eye(W.shape[0])
    return float((D**2).sum())


def objective(
    X: np.ndarray,
    T: np.ndarray,
    W: np.ndarray,
    reg: float = 0.0,
    reg_kind: str = "frobenius",
    normalize: bool = False,
    b: np.ndarray | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> float:
    """The stated objective: X' = (X - mean) / std (global scalars, default X's own),
    E = X' W + b, mean over RESPONSES of logsumexp(s) - s_ab, plus reg * R(W)."""
    mean = float(X.mean()) if mean is None else mean
    std = float(X.std()) if std is None else std
    E = (X - mean) / std @ W
    if b is not None:
        E = E + b
    if normalize:
        E = E / np.linalg.norm(E, axis=1, keepdims=True)
    S = sims(E, T)
    return float(np.mean(logsumexp(S, axis=1) - S[:, 0])) + reg * penalty(W, reg_kind)


def tiny(n: int = 15, p: int = 4, m: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and triplets whose human pair follows a hidden transform (learnable),
    with 20 % label noise and every tenth response repeated."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * 1.5 + 0.3
    Z = X @ rng.normal(size=(p, p))
    rows = []
    while len(rows) < m:
        a, b, c = (int(v) for v in rng.choice(n, 3, replace=False))
        s = {(a, b): Z[a] @ Z[b], (a, c): Z[a] @ Z[c], (b, c): Z[b] @ Z[c]}
        pair = max(s, key=lambda k: s[k])
        if rng.random() < 0.2:
            pair = (pair[0], ({a, b, c} - set(pair)).pop())
        rows.append([pair[0], pair[1], ({a, b, c} - set(pair)).pop()])
    T = np.asarray(rows, dtype=np.int64)
    return X, np.concatenate([T, T[::10]])


# ----------------------------------------------------------------------------- pieces


def test_compress_merges_repeated_responses_with_the_pair_unordered():
    T = np.array([[3, 1, 2], [1, 3, 2], [1, 2, 3], [3, 1, 2], [0, 4, 1], [2, 1, 3]])
    counts: dict[tuple[int, int, int], int] = {}
    for a, b, c in T.tolist():
        key = (min(a, b), max(a, b), c)  # (a, b) unordered, c the odd one out
        counts[key] = counts.get(key, 0) + 1
    uniq, w = core.compress(T)
    assert [tuple(r) for r in uniq.tolist()] == sorted(counts)
    assert w.tolist() == [counts[k] for k in sorted(counts)]
    assert uniq.dtype == np.int64 and w.dtype == np.float64


def test_localise_reindexes_triplets_into_the_sorted_objects_used():
    T = np.array([[7, 2, 9], [9, 4, 2], [4, 7, 11]])
    objs, local = core.localise(T)
    used = sorted(set(T.ravel().tolist()))
    assert objs.tolist() == used
    assert local.tolist() == [[used.index(v) for v in row] for row in T.tolist()]
    assert local.dtype == np.int64 and local.shape == T.shape


def test_odd_one_out_prediction_is_the_first_maximal_pair_and_a_full_tie_is_wrong():
    S = np.array(
        [
            [3.0, 1.0, 2.0],  # ab -> c (2)
            [1.0, 3.0, 2.0],  # ac -> b (1)
            [1.0, 2.0, 3.0],  # bc -> a (0)
            [2.0, 2.0, 1.0],  # partial tie ab = ac: the first, ab
            [1.0, 2.0, 2.0],  # partial tie ac = bc: ac
            [2.0, 1.0, 2.0],  # partial tie ab = bc: ab
            [0.5, 0.5, 0.5],  # full tie: -1 (counted wrong)
            [0.0, 0.0, 0.0],
        ]
    )
    got = core.predict_from_similarities(S)
    assert got.tolist() == odd_rule(S).tolist() == [2, 1, 0, 2, 1, 2, -1, -1]


def test_softmax_is_scipys_on_huge_similarities():
    S = np.array([[1000.0, 999.0, -5.0], [0.0, 0.0, 0.0], [-3.0, 2.0, 7.5], [1e4, 1e4, 1e4 - 1]])
    np.testing.assert_allclose(core.softmax_np(S), scipy_softmax(S, axis=1), rtol=1e-12)


def test_similarities_and_weighted_cross_entropy_are_the_stated_sums():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(6, 3))
    T = np.array([[0, 1, 2], [3, 4, 5], [5, 0, 2], [1, 3, 4]])
    S = core.similarities_t(torch.as_tensor(E), torch.as_tensor(T)).numpy()
    np.testing.assert_allclose(S, sims(E, T), rtol=1e-12)
    per = logsumexp(S, axis=1) - S[:, 0]
    assert float(core.cross_entropy_t(torch.as_tensor(S))) == pytest.approx(per.mean(), rel=1e-12)
    w = np.array([1.0, 3.0, 2.0, 5.0])
    weighted = float(core.cross_entropy_t(torch.as_tensor(S), torch.as_tensor(w)))
    assert weighted == pytest.approx((per * w).sum() / w.sum(), rel=1e-12)
    # a count-weighted mean over distinct triplets is the mean over the repeated responses
    assert weighted == pytest.approx(np.repeat(per, w.astype(int)).mean(), rel=1e-12)


def test_initial_weights_are_tau_identity_or_seeded_normal_with_std_1e_3():
    np.testing.assert_array_equal(core.initial_weights("identity", 0.7, 0, 5), 0.7 * np.eye(5))
    probe = TripletProbe(init="identity", tau=2.5)
    np.testing.assert_array_equal(probe.initial_weights(3), 2.5 * np.eye(3))
    W = core.initial_weights("normal", 1.0, 3, 200)
    assert W.shape == (200, 200) and W.dtype == np.float64
    assert W.std() == pytest.approx(1e-3, rel=0.02) and abs(W.mean()) < 2e-5
    np.testing.assert_array_equal(W, core.initial_weights("normal", 5.0, 3, 200))  # seeded
    assert not np.array_equal(W, core.initial_weights("normal", 1.0, 4, 200))
    np.testing.assert_array_equal(TripletProbe(seed=3).initial_weights(200), W)


# ----------------------------------------------------------------------------- threads


def test_fold_jobs_rule_and_its_checks():
    torch.set_num_threads(3)
    assert core.fold_jobs(None, 2, None) == 2  # torch's threads, at most k
    assert core.fold_jobs(None, 5, None) == 3
    assert core.fold_jobs(None, 5, 2) == 1  # the estimator pins its own threads
    assert core.fold_jobs(5, 3, None) == 3
    assert core.fold_jobs(2, 3, 4) == 2
    assert core.fold_jobs(1, 3, None) == 1
    torch.set_num_threads(1)
    assert core.fold_jobs(None, 3, None) == 1
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(InvalidInputError, match="n_jobs"):
            core.fold_jobs(bad, 3, None)  # type: ignore[arg-type]


def test_threads_sets_torch_threads_and_restores_them():
    torch.set_num_threads(3)
    with core.threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3
    with core.threads(None):
        assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError), core.threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize(("k", "length", "n_jobs"), [(3, 4, 1), (3, 4, 2), (4, 3, 3), (1, 3, 2)])
def test_map_chains_runs_every_step_once_and_each_chain_in_order(k, length, n_jobs):
    torch.set_num_threads(4)
    lock = threading.Lock()
    done: list[tuple[int, int]] = []
    seen_threads: list[int] = []

    def step(i: int, pos: int) -> None:
        with lock:
            assert pos == 0 or (i, pos - 1) in done  # the step before it has ended
            assert (i, pos) not in done
            seen_threads.append(torch.get_num_threads())
        with lock:
            done.append((i, pos))

    core.map_chains(step, k, length, n_jobs)
    assert sorted(done) == [(i, pos) for i in range(k) for pos in range(length)]
    for i in range(k):
        assert [pos for j, pos in done if j == i] == list(range(length))
    if n_jobs <= 1 or k <= 1:
        assert done == [(i, pos) for i in range(k) for pos in range(length)]  # serial
        assert set(seen_threads) == {4}
    else:
        assert set(seen_threads) == {max(1, 4 // n_jobs)}  # torch's threads split
    assert torch.get_num_threads() == 4  # restored


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_chains_reraises_the_first_error_and_restores_threads(n_jobs):
    torch.set_num_threads(2)
    ran: list[tuple[int, int]] = []

    def step(i: int, pos: int) -> None:
        ran.append((i, pos))
        if (i, pos) == (0, 1):
            raise ValueError("step (0, 1) failed")

    with pytest.raises(ValueError, match=r"step \(0, 1\)"):
        core.map_chains(step, 2, 3, n_jobs)
    assert (0, 2) not in ran  # a chain stops at its failing step
    if n_jobs == 1:
        assert ran == [(0, 0), (0, 1)]
    assert torch.get_num_threads() == 2


# ----------------------------------------------------------------------------- reduction


def test_reduction_cache_basis_rank_start_and_bookkeeping():
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(5, 3)) @ rng.normal(size=(3, 9))  # 5 rows of rank 3
    W0 = rng.normal(size=(9, 9))
    cache = core.ReductionCache(size=2)
    V, Q, R = cache.get(rows, W0)
    assert V.shape == (9, 3) and Q.shape == (3, 9) and R.shape == (3, 3)  # r = rank
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rows @ V @ V.T, rows, atol=1e-10)  # V spans the rows
    np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R @ Q, V.T @ W0, atol=1e-10)
    assert cache.get(rows, W0)[1] is Q  # same rows and W0: cached
    W1 = rng.normal(size=(9, 9))
    V1, Q1, R1 = cache.get(rows, W1)  # same rows, another start: same basis, new QR
    assert V1 is V and Q1 is not Q
    np.testing.assert_allclose(R1 @ Q1, V.T @ W1, atol=1e-10)
    # least recently used goes: touch `rows`, add two others; `rows` (touched) stays
    other = rng.normal(size=(4, 9))
    cache.get(other, W0)
    assert cache.get(rows, W0)[0] is V
    cache.get(rng.normal(size=(4, 9)), W0)
    assert cache.get(rows, W0)[0] is V
    assert cache.get(other, W0)[0] is not None and len(cache._bases) == 2
    cache.clear()
    assert cache.get(rows, W0)[0] is not V  # recomputed after clear
    off = core.ReductionCache(size=0)
    first = off.get(rows, W0)[0]
    assert off.get(rows, W0)[0] is not first and len(off._bases) == 0  # caching off
    with pytest.raises(InvalidInputError, match="X"):
        cache.get(np.zeros((3, 9)), W0)


@pytest.mark.parametrize(
    ("values", "rank"),
    [
        ([0.5, 0.5e-3, 0.5e-12], 2),  # the cut is 1e-10 of the LARGEST singular value
        ([1.0, 1e-10], 1),  # exactly at the cut: not above it
        ([0.3], 1),  # one row, largest singular value below 1
        ([0.2, 0.0], 1),  # rank one
    ],
)
def test_reduction_rank_counts_singular_values_above_1e_10_of_the_largest(values, rank):
    rows = np.zeros((len(values), 5))
    rows[np.arange(len(values)), np.arange(len(values))] = values  # singular values exact
    V, Q, R = core.ReductionCache(size=0).get(rows, np.eye(5))
    assert V.shape == (5, rank) and Q.shape == (rank, 5) and R.shape == (rank, rank)
    np.testing.assert_array_equal(np.abs(V), np.eye(5)[:, :rank])


# ----------------------------------------------------------------------------- L-BFGS


def _projector(X: np.ndarray, T: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Orthogonal projector onto the span of the standardised rows the triplets use."""
    Z = (X[np.unique(T)] - mean) / std
    _u, s, Vt = np.linalg.svd(Z, full_matrices=False)
    V = Vt[s > s[0] * 1e-10].T
    return V @ V.T


@pytest.mark.parametrize("reg_kind", ["frobenius", "squared"])
def test_reduced_start_is_the_init_projected_on_the_training_rows(reg_kind):
    # 6 objects, 10 features: the exact r x r problem. Its start is W0 with the
    # components outside the rows' span set to zero, W0' = P W0 (P the projector onto
    # the standardised training rows): the first objective is the stated one at P W0.
    X, T = tiny(n=6, p=10, m=30, seed=4)
    tau, reg = 0.6, 0.4
    probe = TripletProbe(reg=reg, reg_kind=reg_kind, init="identity", tau=tau, max_iter=2)
    probe.fit(X, T)
    P = _projector(X, T, probe.mean_, probe.std_)
    assert np.linalg.matrix_rank(P) == 6
    expected = objective(X, T, tau * P, reg, reg_kind)
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)
    assert not probe.loss_curve_[0] == pytest.approx(
        objective(X, T, tau * np.eye(10), reg, reg_kind)
    )
    W = probe.weights_
    np.testing.assert_allclose(W - P @ W, 0.0, atol=1e-12)  # nothing outside the span
    assert probe.bias_ is None


@pytest.mark.parametrize(("reg_kind", "bias"), [("identity", False), ("frobenius", True)])
def test_no_reduction_with_the_identity_penalty_or_a_bias(reg_kind, bias):
    # the reduction is exact only for rotation-invariant penalties without a bias: here
    # the first objective is the stated one at W0 = tau I itself (bias 0)
    X, T = tiny(n=6, p=10, m=30, seed=4)
    tau, reg = 0.6, 0.4
    probe = TripletProbe(
        reg=reg, reg_kind=reg_kind, init="identity", tau=tau, bias=bias, max_iter=2
    ).fit(X, T)
    assert probe.loss_curve_[0] == pytest.approx(
        objective(X, T, tau * np.eye(10), reg, reg_kind), rel=1e-9
    )
    assert (probe.bias_ is not None) == bias
    if bias:
        assert probe.bias_.shape == (10,) and np.abs(probe.bias_).max() > 0


def test_reduced_fit_is_a_stationary_point_of_the_full_objective():
    # features outnumber objects: the returned p x p W (= V B Q) has zero gradient of the
    # stated objective over all p x p entries, computed here by torch autograd
    X, T = tiny(n=7, p=12, m=40, seed=5)
    reg = 0.05
    probe = TripletProbe(reg=reg, reg_kind="squared", init="identity", tol=1e-13, max_iter=500)
    probe.fit(X, T)
    Wt = torch.tensor(probe.weights_, requires_grad=True)
    Xs = torch.as_tensor((X - X.mean()) / X.std())
    E = Xs @ Wt
    t = torch.as_tensor(T)
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
    f = (torch.logsumexp(S, 1) - S[:, 0]).mean() + reg * (Wt**2).sum()
    f.backward()
    assert Wt.grad is not None
    assert np.abs(Wt.grad.numpy()).max() < 1e-5
    assert np.abs(probe.weights_).max() > 0.1  # not the trivial W = 0


def test_lbfgs_runs_max_iter_iterations_and_reports_them():
    X, T = tiny(seed=6)
    for max_iter in (1, 3):
        probe = TripletProbe(reg=1e-3, tol=0.0, init="identity", max_iter=max_iter).fit(X, T)
        assert probe.n_iter_ == max_iter
        assert probe.val_curve_ == []
    # tol: a loose tolerance stops earlier than a tight one
    loose = TripletProbe(reg=1e-2, tol=1e-2).fit(X, T)
    tight = TripletProbe(reg=1e-2, tol=1e-12).fit(X, T)
    assert loose.n_iter_ < tight.n_iter_
    assert tight.loss_curve_[-1] <= loose.loss_curve_[-1] + 1e-12


def test_lbfgs_default_is_300_iterations():
    # an ill-conditioned problem (feature scales over three decades, no penalty) that
    # L-BFGS does not finish in 300 iterations with tol = 0: only the cap stops it
    X, T = tiny(n=20, p=6, m=150, seed=1)
    X = X * np.logspace(-1.5, 1.5, 6)
    probe = TripletProbe(reg=0.0, tol=0.0, init="identity").fit(X, T)
    assert probe.n_iter_ == 300


def test_a_zero_start_is_a_fixed_point_of_the_unsquared_penalty():
    # at W = 0 every similarity is 0 and the data gradient G E vanishes; the unsquared
    # norm's (sub)gradient is taken as 0 there: the fit stays at 0, finite, no error
    X, T = tiny(seed=31)
    probe = TripletProbe(reg=0.1, reg_kind="frobenius").fit(X, T, init_weights=np.zeros((4, 4)))
    np.testing.assert_array_equal(probe.weights_, np.zeros((4, 4)))
    assert probe.loss_curve_[0] == pytest.approx(math.log(3), rel=1e-12)


def test_float32_fit_has_the_float64_first_objective():
    X, T = tiny(seed=8)
    tau, reg = 0.9, 0.1
    kw = dict(reg=reg, init="identity", tau=tau, max_iter=2)
    f32 = TripletProbe(dtype="float32", **kw).fit(X, T)
    expected = objective(X, T, tau * np.eye(X.shape[1]), reg)
    assert f32.loss_curve_[0] == pytest.approx(expected, rel=1e-5)
    assert f32.weights_.dtype == np.float64
    # with a bias too (its gradient in the fit dtype): the stated objective at (W0, 0)
    fb = TripletProbe(dtype="float32", bias=True, **kw).fit(X, T)
    assert fb.loss_curve_[0] == pytest.approx(expected, rel=1e-5)
    assert fb.bias_ is not None and fb.bias_.dtype == np.float64


def test_repeated_responses_weigh_as_responses():
    # a triplet answered three times counts three times (the mean over responses)
    X, T = tiny(seed=9)
    T3 = np.concatenate([T, T[:5], T[:5]])
    probe = TripletProbe(reg=0.2, init="identity", tau=0.5, max_iter=2).fit(X, T3)
    expected = objective(X, T3, 0.5 * np.eye(X.shape[1]), 0.2)
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)


def test_standardisation_uses_one_scalar_mean_and_std_of_the_present_rows():
    X, T = tiny(seed=10)
    X = X.copy()
    X[0] = np.nan  # a missing stimulus no triplet uses
    T = T[~(T == 0).any(axis=1)]
    X[1] *= 4.0
    probe = TripletProbe(reg=0.1, init="identity", tau=1.0, max_iter=2).fit(X, T)
    present = X[1:]
    assert probe.mean_ == pytest.approx(float(present.mean()), rel=1e-12)
    assert probe.std_ == pytest.approx(float(present.std()), rel=1e-12)
    expected = objective(present, T - 1, np.eye(X.shape[1]), 0.1)
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)
    assert probe.n_features_in_ == X.shape[1]
    with pytest.raises(InvalidInputError, match="X"):
        TripletProbe().fit(np.ones((6, 3)), np.array([[0, 1, 2], [3, 4, 5]]))


# ----------------------------------------------------------------------------- Adam


def test_adam_first_epoch_is_the_batch_weighted_objective_on_the_kept_training_part():
    # lr ~ 0: the weights stay at W0 through the first epoch, so the epoch's loss is the
    # stated objective on the training triplets (batches weighted by their size: the
    # mean over responses), the validation curve the CE on the held-back ones, and
    # round(0.25 m) of the m responses are held back: train and validation means
    # recombine into the mean over all responses at W0.
    X, T = tiny(n=12, p=3, m=20, seed=11)
    T = T[:20]
    rng = np.random.default_rng(0)
    W0 = rng.normal(size=(3, 3)) * 0.5
    for reg_kind in ("frobenius", "squared", "identity"):
        probe = TripletProbe(
            reg=0.3,
            reg_kind=reg_kind,
            optimizer="adam",
            lr=1e-12,
            batch_size=4,
            max_iter=1,
            val_fraction=0.25,
        ).fit(X, T, init_weights=W0)
        pen = 0.3 * penalty(W0, reg_kind)
        ce_all = objective(X, T, W0)
        n_val = 5
        train_ce = probe.loss_curve_[0] - pen
        assert (15 * train_ce + n_val * probe.val_curve_[0]) / 20 == pytest.approx(ce_all, rel=1e-7)
        assert probe.n_iter_ == 1 and len(probe.val_curve_) == 1
        assert not probe.val_curve_[0] == pytest.approx(ce_all, rel=1e-4)


def test_adam_counts_an_equal_validation_loss_as_no_improvement():
    # lr so small that the weights do not move in float64: every epoch's validation loss
    # equals the first, none improves on it, so early stopping ends after 1 + patience
    X, T = tiny(n=12, p=3, m=40, seed=28)
    probe = TripletProbe(reg=0.0, optimizer="adam", lr=1e-30, patience=2, max_iter=10)
    probe.fit(X, T, val_triplets=T[:6], init_weights=np.eye(3))
    assert len(set(probe.val_curve_)) == 1
    assert probe.n_iter_ == 3


def test_adam_default_is_100_epochs_and_no_validation_without_val_fraction():
    X, T = tiny(n=9, p=3, m=8, seed=12)
    T = T[:8]
    probe = TripletProbe(reg=0.0, optimizer="adam").fit(X, T)
    assert probe.n_iter_ == 100 and len(probe.loss_curve_) == 100
    X, T = tiny(n=9, p=3, m=30, seed=12)
    off = TripletProbe(reg=0.0, optimizer="adam", max_iter=4, val_fraction=0.0).fit(X, T)
    assert off.n_iter_ == 4 and off.val_curve_ == []


def test_adam_validation_uses_x_val_standardised_like_the_training_rows():
    X, T = tiny(n=12, p=3, m=40, seed=13)
    rng = np.random.default_rng(1)
    Xv = rng.normal(size=(8, 3)) * 3.0 + 1.0
    Tv = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 0], [0, 1, 2], [2, 5, 7]])
    W0 = rng.normal(size=(3, 3))
    probe = TripletProbe(reg=0.0, optimizer="adam", lr=1e-12, max_iter=1)
    probe.fit(X, T, X_val=Xv, val_triplets=Tv, init_weights=W0)
    expected = objective(Xv, Tv, W0, mean=float(X.mean()), std=float(X.std()))
    assert probe.val_curve_[0] == pytest.approx(expected, rel=1e-7)
    # validation triplets alone index X
    probe.fit(X, T, val_triplets=Tv, init_weights=W0)
    assert probe.val_curve_[0] == pytest.approx(objective(X, Tv, W0), rel=1e-7)
    with pytest.raises(InvalidInputError, match="val_triplets"):
        probe.fit(X, T, X_val=Xv)
    with pytest.raises(InvalidInputError, match="X_val"):
        probe.fit(X, T, X_val=Xv[:, :2], val_triplets=Tv)


@pytest.mark.parametrize("normalize", [False, True])
def test_adam_validation_loss_includes_the_bias_and_must_be_finite(normalize):
    X, T = tiny(n=12, p=3, m=60, seed=25)
    X = X * 0.3  # some embedded rows shorter than 1 (cosine divides by their norm)
    Tv = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [1, 5, 9]])
    probe = TripletProbe(
        reg=0.0, optimizer="adam", lr=0.2, bias=True, normalize=normalize, max_iter=1
    )
    probe.fit(X, T, val_triplets=Tv)
    assert np.abs(probe.bias_).max() > 0.05  # the bias has moved
    # the validation loss of epoch 1 is the held-out loss of the weights returned
    # (the estimator's own transform: thingsvision's formula, tested above)
    assert probe.val_curve_[0] == pytest.approx(probe.loss(X, Tv), rel=1e-9)
    with pytest.raises(NumericalError, match="probe validation loss became"):
        TripletProbe(optimizer="adam", max_iter=2).fit(X, T, X_val=X * 1e200, val_triplets=Tv)


def test_glocal_adam_uses_one_local_chunk_per_step():
    # Adam's step k takes local chunk k mod (number of chunks), not their average: with
    # one triplet batch per epoch and lr ~ 0, epoch e's loss is the objective at W0 with
    # chunk e (the chunks: LocalNeighbourhoodTerm.chunks, seeded)
    from align.metrics.glocal import GLocalProbe, LocalNeighbourhoodTerm

    X, T = tiny(n=12, p=3, m=60, seed=26)
    L = np.random.default_rng(3).normal(size=(60, 3))
    W0 = np.random.default_rng(4).normal(size=(3, 3))
    alpha, temp = 0.5, 0.5
    probe = GLocalProbe(
        alpha=alpha,
        temperature=temp,
        local_batch_size=20,
        reg=0.0,
        optimizer="adam",
        lr=1e-12,
        batch_size=1024,
        val_fraction=0.0,
        max_iter=3,
        seed=1,
    ).fit(X, T, X_local=L, init_weights=W0)
    chunks = LocalNeighbourhoodTerm(alpha, temp, 20, 1).chunks(60)
    assert len(chunks) == 3
    Ls = (L - X.mean()) / X.std()
    ce = objective(X, T, W0)
    for epoch, rows in enumerate(chunks):
        local = _local_loss_np(Ls[rows], Ls[rows] @ W0, temp)
        expected = (1 - alpha) * ce + alpha * local
        assert probe.loss_curve_[epoch] == pytest.approx(expected, rel=1e-7)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_non_finite_training_names_what_became_non_finite():
    # W0 = 1e25 I in float32: the embeddings overflow. Adam checks the batch loss first,
    # L-BFGS the similarities (before summing them in float64)
    X, T = tiny(seed=27)
    kw = {"init": "identity", "tau": 1e25, "dtype": "float32", "max_iter": 2}
    with pytest.raises(NumericalError, match="probe loss became NaN or infinite"):
        TripletProbe(optimizer="adam", **kw).fit(X, T)
    with pytest.raises(NumericalError, match="probe similarities became NaN or infinite"):
        TripletProbe(**kw).fit(X, T)


def test_adam_learns_a_bias_and_normalised_rows():
    X, T = tiny(n=12, p=3, m=60, seed=14)
    probe = TripletProbe(
        reg=0.0, optimizer="adam", lr=0.05, bias=True, normalize=True, max_iter=5, init="identity"
    ).fit(X, T)
    assert probe.bias_ is not None and probe.bias_.shape == (3,)
    assert np.abs(probe.bias_).max() > 1e-3
    assert probe.loss_curve_[-1] < probe.loss_curve_[0]


# ----------------------------------------------------------------------------- estimator


def _loaded(tmp_path, W, b=None, mean=0.4, std=2.0, options=None):
    arrays = {"weights": W.astype(np.float32), "mean": mean, "std": std}
    if b is not None:
        arrays["bias"] = b.astype(np.float32)
    if options is not None:
        arrays["align_options"] = np.asarray(json.dumps(options))
    np.savez(tmp_path / "transform.npz", **arrays)
    return TripletProbe.load(tmp_path / "transform.npz")


@pytest.mark.parametrize("normalize", [False, True])
def test_a_loaded_probe_scores_with_the_thingsvision_transform(tmp_path, normalize):
    rng = np.random.default_rng(15)
    W = rng.normal(size=(4, 4)).astype(np.float32).astype(np.float64)
    b = rng.normal(size=4).astype(np.float32).astype(np.float64)
    X = rng.normal(size=(10, 4))
    X[6] = np.nan  # a missing stimulus
    T = np.array([[0, 1, 2], [3, 4, 5], [7, 8, 9], [2, 0, 9], [5, 1, 3]])
    probe = _loaded(tmp_path, W, b, options={"normalize": normalize, "reg": 0.5})
    assert probe.normalize is normalize and probe.reg == 0.5 and probe.bias
    E = (X - 0.4) / 2.0 @ W + b
    if normalize:
        E = E / np.linalg.norm(E, axis=1, keepdims=True)
    got = probe.transform(X)
    assert np.isnan(got[6]).all()
    np.testing.assert_allclose(np.delete(got, 6, 0), np.delete(E, 6, 0), rtol=1e-10)
    S = sims(E, T)
    np.testing.assert_allclose(probe.similarities(X, T), S, rtol=1e-10)
    np.testing.assert_allclose(probe.predict_proba(X, T), scipy_softmax(S, axis=1), rtol=1e-10)
    assert probe.predict(X, T).tolist() == odd_rule(S).tolist()
    assert probe.score(X, T) == pytest.approx(float(np.mean(odd_rule(S) == 2)))
    assert probe.loss(X, T) == pytest.approx(float(np.mean(logsumexp(S, 1) - S[:, 0])))
    for call in (probe.transform, lambda Z: probe.similarities(Z, T)):
        with pytest.raises(InvalidInputError, match="X"):
            call(X[:, :3])
    for bad in (np.array([[6, 0, 1]]), np.array([[0, 1, 99]])):  # missing / out of range
        with pytest.raises(InvalidInputError) as err:
            probe.similarities(X, bad)
        assert err.value.field.startswith("triplets")
    with pytest.raises(InvalidInputError, match="probe"):
        TripletProbe().transform(X)
    for call in (probe.transform, lambda Z: probe.similarities(Z, T)):
        with pytest.raises(InvalidInputError) as err:
            call(X[0])  # one row given as a vector
        assert err.value.field == "X"
    probe.normalize = "yes"
    with pytest.raises(InvalidInputError) as err:
        probe.transform(X)
    assert err.value.field == "normalize"
    with pytest.raises(InvalidInputError, match="probe"):
        TripletProbe().similarities(X, T)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_non_finite_transform_or_similarities_raise(tmp_path):
    from align.metrics.probe.estimator import mean_cross_entropy

    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]])
    T = np.array([[0, 1, 2], [1, 2, 3]])
    inf_rows = _loaded(tmp_path, np.eye(2) * 1e30, mean=0.0, std=1e-300)
    with pytest.raises(NumericalError):
        inf_rows.transform(X)
    with pytest.raises(NumericalError):
        inf_rows.similarities(X, T)
    inf_sims = _loaded(tmp_path, np.eye(2) * 1e30, mean=0.0, std=1e-170)  # E ~ 1e200
    assert np.isfinite(inf_sims.transform(X)).all()
    with pytest.raises(NumericalError):
        inf_sims.similarities(X, T)
    S = np.array([[-1.5e308, 1.5e308, 0.0]])  # lse - s_ab overflows
    with pytest.raises(NumericalError):
        mean_cross_entropy(S)
    S = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    assert mean_cross_entropy(S) == pytest.approx(float(np.mean(logsumexp(S, 1) - S[:, 0])))


def test_save_keeps_the_options_and_load_restores_them(tmp_path):
    X, T = tiny(seed=16)
    probe = TripletProbe(
        reg=0.25, reg_kind="squared", normalize=True, max_iter=3, n_threads=1, seed=4
    ).fit(X, T)
    path = probe.save(tmp_path / "t.npz")
    with np.load(path) as npz:
        options = json.loads(str(npz["align_options"]))
        assert npz["weights"].dtype == np.float32 and "bias" not in npz.files
        assert float(npz["mean"]) == probe.mean_ and float(npz["std"]) == probe.std_
    assert "n_threads" not in options and options["reg_kind"] == "squared"
    back = TripletProbe.load(path)
    assert back.get_params() == {**probe.get_params(), "n_threads": None}
    assert back.n_features_in_ == X.shape[1] and back.bias_ is None and back.bias is False
    np.testing.assert_allclose(back.weights_, probe.weights_.astype(np.float32))
    np.save(tmp_path / "junk.npy", np.zeros(1))
    np.savez(
        tmp_path / "bad.npz", weights=np.eye(2), mean=0.0, std=1.0, align_options=np.asarray("[")
    )
    with pytest.raises(InvalidInputError, match="align_options"):
        TripletProbe.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "opt.npz", weights=np.eye(2), mean=0.0, std=1.0,
             align_options=np.asarray(json.dumps({"reg": -1.0})))  # fmt: skip
    with pytest.raises(InvalidInputError, match="reg"):
        TripletProbe.load(tmp_path / "opt.npz")  # stored options are checked
    with pytest.raises(InvalidInputError, match="probe"):
        TripletProbe().save(tmp_path / "unfitted.npz")
    np.savez(tmp_path / "wide.npz", weights=np.zeros((3, 4)), mean=0.0, std=1.0)
    with pytest.raises(InvalidInputError, match=r"wide\.npz:weights"):  # names the file
        TripletProbe.load(tmp_path / "wide.npz")
    np.savez(tmp_path / "zero.npz", weights=np.eye(3), mean=0.0, std=0.0)
    with pytest.raises(InvalidInputError, match=r"zero\.npz:std"):
        TripletProbe.load(tmp_path / "zero.npz")


def test_repr_lists_every_parameter_in_signature_order():
    probe = TripletProbe(reg=0.5, device="cpu")
    expected = ", ".join(f"{k}={getattr(probe, k)!r}" for k in TripletProbe.param_names())
    assert repr(probe) == f"TripletProbe({expected})"
    assert repr(probe).startswith("TripletProbe(reg=0.5, reg_kind='frobenius', init='normal'")


def test_objective_call_takes_and_gives_flat_float64_vectors():
    # the flat interface [vec(W), b] -> (f, gradient as float64), for a float32 fit too
    X, T = tiny(seed=24)
    uniq, counts = core.compress(T)
    objs, tloc = core.localise(uniq)
    opts = TripletProbe(reg=0.2, dtype="float32", bias=True).fit_options()
    fit = core._Fit(opts, 0.0, 1.0, None)
    obj = core.TripletObjective(fit, X[objs], tloc, counts, True)
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(4, 4)) * 0.3, rng.normal(size=4) * 0.1
    f, g = obj(np.concatenate([W.ravel(), b]))
    assert g.dtype == np.float64 and g.shape == (20,)
    expected = objective(X, T, W, 0.2, b=b, mean=0.0, std=1.0)
    assert f == pytest.approx(expected, rel=1e-5)
    assert obj.curve == [f]


def test_cosine_gradient_for_embedded_rows_shorter_than_one():
    # normalize=True back-propagates through the row normalisation for every row of
    # non-zero norm, however short (here all norms < 1): autograd of the written objective
    X, T = tiny(seed=33)
    uniq, counts = core.compress(T)
    objs, tloc = core.localise(uniq)
    opts = TripletProbe(reg=0.0, normalize=True).fit_options()
    fit = core._Fit(opts, 0.0, 1.0, None)
    obj = core.TripletObjective(fit, X[objs], tloc, counts, False)
    W = np.random.default_rng(1).normal(size=(4, 4)) * 0.02
    assert np.linalg.norm(X @ W, axis=1).max() < 1
    _f, g = obj(W.ravel())
    Wt = torch.tensor(W, requires_grad=True)
    E = torch.as_tensor(X) @ Wt
    E = E / E.norm(dim=1, keepdim=True)
    t = torch.as_tensor(T)
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
    (torch.logsumexp(S, 1) - S[:, 0]).mean().backward()
    assert Wt.grad is not None
    np.testing.assert_allclose(g.reshape(4, 4), Wt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_fit_options_boundaries_name_the_parameter():
    ok = {
        "reg": 0.0,
        "tau": 1e-9,
        "max_iter": 1,
        "tol": 0.0,
        "lr": 1e-9,
        "batch_size": 1,
        "patience": 1,
        "val_fraction": 0.0,
        "seed": 0,
        "n_threads": 1,
    }
    for name, value in ok.items():
        TripletProbe(**{name: value}).fit_options()
    assert TripletProbe(val_fraction=0.999).fit_options().val_fraction == 0.999
    bad = {
        "reg": -1e-9,
        "reg_kind": "l1",
        "init": "zeros",
        "tau": 0.0,
        "normalize": "yes",
        "bias": 1,
        "reduce": None,
        "optimizer": "sgd",
        "max_iter": 0,
        "tol": -1e-9,
        "lr": 0.0,
        "batch_size": 0,
        "patience": 0,
        "val_fraction": 1.0,
        "dtype": "float16",
        "seed": -1,
        "device": "nowhere",
        "n_threads": 0,
    }
    for name, value in bad.items():
        with pytest.raises(InvalidInputError) as err:
            TripletProbe(**{name: value}).fit_options()
        assert err.value.field == name
    for name, value in {"max_iter": 1.5, "batch_size": 2.5, "seed": 0.5, "device": []}.items():
        with pytest.raises(InvalidInputError, match=name):
            TripletProbe(**{name: value}).fit_options()
    i64 = np.int64
    o = TripletProbe(
        max_iter=i64(7), batch_size=i64(3), patience=i64(2), seed=i64(5), n_threads=i64(2)
    ).fit_options()
    assert (o.max_iter, o.batch_size, o.patience, o.seed, o.n_threads) == (7, 3, 2, 5, 2)
    assert all(isinstance(v, int) for v in (o.max_iter, o.batch_size, o.patience, o.seed))
    assert o.device == "cpu" and o.reduce is True and o.max_iter is not None
    default = TripletProbe().fit_options()
    assert default.max_iter is None and default.n_threads is None
    assert (default.reg, default.reg_kind, default.init, default.tau) == (
        1e-3,
        "frobenius",
        "normal",
        1.0,
    )
    assert (default.optimizer, default.tol, default.lr, default.batch_size) == (
        "lbfgs",
        1e-7,
        1e-3,
        256,
    )
    assert (default.patience, default.val_fraction, default.dtype) == (10, 0.1, "float64")
    assert (default.normalize, default.bias, default.seed) == (False, False, 0)


def test_fit_options_refuse_fractional_counts_and_a_negative_val_fraction():
    for name, value, expected in (
        ("patience", 2.5, "an integer >= 1"),
        ("n_threads", 1.5, "an integer >= 1"),
        ("val_fraction", -1e-9, "a finite number in [0, 1)"),
    ):
        with pytest.raises(InvalidInputError, match=name) as err:
            TripletProbe(**{name: value}).fit_options()
        assert (err.value.field, err.value.problem) == (name, f"is {value!r}")
        assert err.value.expected == expected
    o = TripletProbe(patience=1, n_threads=1, val_fraction=0.0).fit_options()
    assert (o.patience, o.n_threads, o.val_fraction) == (1, 1, 0.0)


def _refusal(call) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as err:
        call()
    return err.value


def test_fit_refusals_name_the_input_and_the_triplet_row():
    X, T = tiny(n=8, p=3, m=30, seed=41)
    X = X.copy()
    X[5] = np.nan  # a missing stimulus
    T = T[~(T == 5).any(axis=1)]
    Xv = np.random.default_rng(2).normal(size=(4, 3))
    Xv[2] = np.nan  # a missing validation stimulus
    Tv = np.array([[0, 1, 3], [3, 1, 0]])  # avoids it
    probe = TripletProbe(max_iter=1)
    err = _refusal(lambda: probe.fit(X[:, 0], T))
    assert (err.field, err.problem) == ("X", "has shape (8,)")
    bad = np.concatenate([T[:3], [[0, 5, 1]], T[3:]])
    err = _refusal(lambda: probe.fit(X, bad))
    assert err.field == "triplets[3]" and err.problem.startswith("touches a missing stimulus")
    err = _refusal(lambda: probe.fit(X, T, X_val=Xv[:, 0], val_triplets=Tv))
    assert (err.field, err.problem) == ("X_val", "has shape (4,)")
    err = _refusal(lambda: probe.fit(X, T, X_val=Xv, val_triplets=[[0, 1, 3], [0, 4, 1]]))
    assert err.field == "val_triplets[1]" and err.problem.endswith("out of range")
    err = _refusal(lambda: probe.fit(X, T, X_val=Xv, val_triplets=[[0, 1, 3], [3, 2, 0]]))
    assert err.field == "val_triplets[1]" and err.problem.startswith("touches a missing")
    err = _refusal(lambda: probe.fit(X, T, val_triplets=[[0, 1, 2], [4, 5, 6]]))  # X's row 5
    assert err.field == "val_triplets[1]" and err.problem.startswith("touches a missing")
    # the boundary: validation rows with a missing stimulus that no triplet touches
    probe.fit(X, T, X_val=Xv, val_triplets=Tv)
    assert probe.n_iter_ == 1


def test_similarities_name_a_bad_normalize_flag():
    X, T = tiny(n=8, p=3, m=30, seed=42)
    probe = TripletProbe(max_iter=1).fit(X, T)
    probe.normalize = 1  # set after the fit: not a flag
    for call in (probe.similarities, probe.predict, probe.score, probe.loss):
        err = _refusal(lambda call=call: call(X, T))
        assert (err.field, err.problem) == ("normalize", "is 1")


def test_weights_held_as_float32_transform_in_float64():
    # weights_ set by hand as float32 (e.g. from a float32 array of another tool): the
    # transform is ((X - mean) / std) @ W + b in float64, the numpy formula
    X = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.5, 0.5, -0.5], [1.0, 1.0, 1.0]])
    W = np.array([[0.5, -1.0, 0.25], [1.5, 0.1, -0.3], [0.2, 0.7, 1.1]], dtype=np.float32)
    probe = TripletProbe()
    probe.mean_, probe.std_ = 0.7, 1.3
    probe.weights_, probe.bias_ = W, np.array([0.1, -0.2, 0.3])
    expected = ((X - 0.7) / 1.3) @ W.astype(np.float64) + probe.bias_
    np.testing.assert_allclose(probe.transform(X), expected, rtol=1e-14, atol=1e-15)
    T = np.array([[0, 1, 2], [3, 2, 1]])
    np.testing.assert_allclose(probe.similarities(X, T), sims(expected, T), rtol=1e-13)


# ----------------------------------------------------------------------------- cross-validation


def _hand_search(X, T, lambdas, k, seed, **params):
    """The lambda x fold loop written out: drop triplets over missing rows, split by
    objects, fit one probe per (lambda, fold) on the fold's training triplets, score it on
    the held-out ones; lambda = lowest mean held-out CE (first on ties); refit on all."""
    missing = np.isnan(X).all(axis=1)
    kept = T[~missing[T].any(axis=1)]
    kf = ObjectKFold(k, seed)
    splits = kf.split(X.shape[0], kept)
    ce = np.zeros((len(lambdas), k))
    acc = np.zeros((len(lambdas), k))
    iters = np.zeros((len(lambdas), k), dtype=int)
    hits = {}
    for j, lam in enumerate(lambdas):
        for i, (train, test) in enumerate(splits):
            probe = TripletProbe(reg=lam, seed=seed, **params).fit(X, kept[train])
            S = probe.similarities(X, kept[test])
            ce[j, i] = float(np.mean(logsumexp(S, 1) - S[:, 0]))
            hit = odd_rule(S) == 2
            hits[j, i] = hit
            acc[j, i] = hit.mean()
            iters[j, i] = probe.n_iter_
    means = ce.mean(axis=1)
    best = int(np.flatnonzero(means == means.min())[0])
    final = TripletProbe(reg=lambdas[best], seed=seed, **params).fit(X, kept)
    return kept, splits, ce, acc, iters, hits, best, final


def cv_data(n: int = 12, m: int = 120, seed: int = 0, missing: int | None = None):
    """tiny() plus, for each fold of every ObjectKFold(3, s) used here (s = 0, 1, 2),
    the triplets over its first four present objects, so no fold is left without
    held-out triplets; object ``missing`` (if any) is an all-NaN row."""
    X, T = tiny(n=n, p=3, m=m, seed=seed)
    X = X.copy()
    extra = []
    for s in range(3):
        for fold in ObjectKFold(3, s).object_folds(n):
            objs = [int(o) for o in fold if o != missing][:4]
            extra += [list(c) for c in itertools.combinations(objs, 3)]
    T = np.concatenate([T, np.asarray(extra, dtype=np.int64)])
    if missing is not None:
        X[missing] = np.nan
    return X, T


def _missing_x():
    X, T = cv_data(n=13, seed=17, missing=5)
    return X, np.concatenate([T, T[::3]])  # many responses repeated


def test_cross_validate_is_the_written_out_lambda_fold_loop():
    X, T = _missing_x()
    lambdas = [0.01, 0.05]  # ascending on purpose: every lambda is scored, in its place
    # (cold starts, the default: 0.01 from 0.05's weights would end elsewhere)
    params = {"max_iter": 15, "reg_kind": "squared"}
    kept, splits, ce, acc, iters, hits, best, final = _hand_search(X, T, lambdas, 3, 2, **params)
    est = TripletProbe(seed=2, **params)
    search = cross_validate(est, X, T, lambdas=lambdas, cv=ObjectKFold(3, 2), n_jobs=1)
    np.testing.assert_allclose(search.cross_entropy, ce, rtol=1e-12)
    np.testing.assert_array_equal(search.accuracy, acc)
    np.testing.assert_array_equal(search.n_iter, iters)
    assert search.n_iter.dtype == np.int64  # iteration counts
    for (j, i), hit in hits.items():
        np.testing.assert_array_equal(search.correct[j][i], hit)
    assert search.lambdas == lambdas and search.best == best
    assert search.lambda_ == lambdas[best]
    np.testing.assert_allclose(search.mean_cross_entropy, ce.mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(search.triplets, kept)
    assert search.n_dropped == int((T == 5).any(axis=1).sum()) > 0
    assert search.n_train == [len(tr) for tr, _ in splits]
    for (tr, te), (tr2, te2) in zip(search.splits, splits, strict=True):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)
    np.testing.assert_array_equal(search.estimator.weights_, final.weights_)
    assert search.estimator.reg == lambdas[best] and not hasattr(est, "weights_")
    # the baseline: W = I, the same global standardisation, the same rule
    present = X[~np.isnan(X).all(axis=1)]
    Z = (X - present.mean()) / present.std()
    for (_tr, te), base in zip(splits, search.baseline, strict=True):
        np.testing.assert_array_equal(base, odd_rule(sims(Z, kept[te])) == 2)
    # threads give the same numbers; no refit leaves the estimator out
    threaded = cross_validate(
        est, X, T, lambdas=lambdas, cv=ObjectKFold(3, 2), n_jobs=3, refit=False
    )
    np.testing.assert_array_equal(threaded.cross_entropy, search.cross_entropy)
    assert threaded.estimator is None


def test_cross_validate_default_grid_and_splitter():
    X, T = cv_data(seed=18)
    calls: list[float] = []

    class Count(TripletProbe):
        def fit(self, *args, **kwargs):
            calls.append(self.reg)
            return super().fit(*args, **kwargs)

    search = cross_validate(Count(max_iter=2), X, T, refit=False)
    assert search.lambdas == list(LAMBDA_GRID) == [10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
    assert sorted(calls) == sorted(list(LAMBDA_GRID) * 3)  # ObjectKFold() = 3 folds
    kept = T
    for (tr, te), (tr2, te2) in zip(search.splits, ObjectKFold(3, 0).split(12, kept), strict=True):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)


def test_cross_validate_picks_the_earlier_lambda_on_a_tie():
    X, T = cv_data(seed=19)
    search = cross_validate(
        TripletProbe(max_iter=5), X, T, lambdas=[0.5, 0.5, 0.1], cv=ObjectKFold(3, 0)
    )
    ce = search.mean_cross_entropy
    assert ce[0] == ce[1]
    assert search.best == int(np.flatnonzero(ce == ce.min())[0])


def test_training_set_hook_gets_fold_objects_and_real_triplets():
    X, T = _missing_x()
    kf = ObjectKFold(3, 1)
    present = np.flatnonzero(~np.isnan(X).all(axis=1))
    held = kf.object_folds(X.shape[0])
    kept = T[~(T == 5).any(axis=1)]
    seen = []

    def hook(fold, objects, real):
        seen.append((fold, objects.copy(), real.copy()))
        return real[:3], {}  # exactly the minimum: 3 training triplets

    search = cross_validate(TripletProbe(max_iter=3), X, T, lambdas=[0.1], cv=kf, training_set=hook)
    assert [s[0] for s in seen] == [0, 1, 2, None]
    for i, (tr, _te) in enumerate(kf.split(X.shape[0], kept)):
        np.testing.assert_array_equal(seen[i][1], np.setdiff1d(present, held[i]))
        np.testing.assert_array_equal(seen[i][2], kept[tr])
    np.testing.assert_array_equal(seen[3][1], present)
    np.testing.assert_array_equal(seen[3][2], kept)
    assert search.n_train == [3, 3, 3]
    assert search.estimator is not None and search.estimator.n_features_in_ == 3
    final_hand = TripletProbe(reg=0.1, max_iter=3).fit(X, kept[:3])
    np.testing.assert_array_equal(search.estimator.weights_, final_hand.weights_)
    with pytest.raises(InvalidInputError, match="fold 0"):
        cross_validate(
            TripletProbe(max_iter=3),
            X,
            T,
            lambdas=[0.1],
            cv=kf,
            training_set=lambda f, o, r: (r[:2], {}),
        )


@pytest.mark.parametrize("warm_start", [False, True])
def test_training_set_hook_fit_arguments_reach_every_fit(warm_start):
    X, T = cv_data(seed=30)
    tags: list[object] = []

    class Tagged(TripletProbe):
        def fit(self, X, triplets, *args, tag=None, **kw):
            tags.append(tag)
            return super().fit(X, triplets, *args, **kw)

    def hook(fold, objects, real):
        return real, {"tag": "refit" if fold is None else fold}

    cross_validate(
        Tagged(max_iter=2),
        X,
        T,
        lambdas=[0.5, 0.1],
        cv=ObjectKFold(3, 0),
        training_set=hook,
        warm_start=warm_start,
        n_jobs=1,
    )
    assert tags == [0, 0, 1, 1, 2, 2, "refit"]


def test_warm_start_chains_each_fold_from_large_to_small_lambda():
    X, T = cv_data(seed=20)
    log: list[tuple[float, object]] = []

    class Log(TripletProbe):
        def fit(self, X, triplets, *args, init_weights=None, **kw):
            log.append((self.reg, None if init_weights is None else init_weights.copy()))
            out = super().fit(X, triplets, *args, init_weights=init_weights, **kw)
            fits[self.reg, len(log)] = self.weights_.copy()
            return out

    fits: dict = {}
    lambdas = [0.001, 100.0, 0.1]  # order: 100 (collapses W to 0), 0.1, 0.001
    cross_validate(
        Log(max_iter=20, reg_kind="frobenius", init="identity"),
        X,
        T,
        lambdas=lambdas,
        cv=ObjectKFold(3, 0),
        warm_start=True,
        refit=False,
        n_jobs=1,
    )
    assert [r for r, _ in log] == [100.0, 0.1, 0.001] * 3
    for f in range(3):
        (_, w100), (_, w01), (_, w0001) = log[3 * f : 3 * f + 3]
        assert w100 is None  # the first lambda of a fold: the seeded init
        assert w01 is None  # lambda 100 collapsed onto W = 0: not a start
        np.testing.assert_array_equal(w0001, fits[0.1, 3 * f + 2])  # the previous lambda's W
    log.clear()
    cross_validate(Log(max_iter=5), X, T, lambdas=[0.1, 0.01], cv=ObjectKFold(3, 0), refit=False)
    assert all(w is None for _, w in log)  # cold start without warm_start


def test_collapsed_start_bounds_the_similarities_of_the_training_rows():
    X, T = tiny(n=10, p=3, m=30, seed=21)
    X = X.copy()
    X[9] = 1e6  # an object no triplet uses: not in the bound
    T = T[~(T == 9).any(axis=1)]
    est = TripletProbe()
    est.mean_, est.std_ = 0.7, 1.0  # rows standardised by the probe's own mean and std
    Z = X[np.unique(T)] - 0.7
    top = float(np.max((Z * Z).sum(1)))
    est.bias_ = None
    est.weights_ = np.eye(3) * math.sqrt(0.9e-3 / top / 3)  # bound 0.9e-3
    assert collapsed_start(est, X, T)
    est.weights_ = np.eye(3) * math.sqrt(1.1e-3 / top / 3)  # bound 1.1e-3
    assert not collapsed_start(est, X, T)
    # the bias adds 2 sqrt(b2 * bound) + b2
    est.weights_ = np.zeros((3, 3))
    est.bias_ = np.array([0.03, 0.0, 0.0])  # b2 = 0.9e-3
    assert collapsed_start(est, X, T)
    est.bias_ = np.array([0.0, 0.0332, 0.0])  # b2 = 1.1e-3
    assert not collapsed_start(est, X, T)
    est.weights_ = np.eye(3) * math.sqrt(0.2e-3 / top / 3)  # 0.2e-3 + 2 sqrt(0.2 * 0.3)e-3
    est.bias_ = np.array([0.0, 0.0, math.sqrt(0.3e-3)])  # + 0.3e-3 = 0.99e-3 < 1e-3
    assert collapsed_start(est, X, T)
    est.bias_ = np.array([0.0, 0.0, math.sqrt(0.32e-3)])  # 0.2 + 0.506 + 0.32 > 1
    assert not collapsed_start(est, X, T)
    # "below" the threshold: a bound of exactly 1e-3 is not collapsed
    est.weights_, est.bias_ = np.zeros((3, 3)), np.array([0.01, 0.03, 0.0])
    assert float(np.dot(est.bias_, est.bias_)) == core_collapsed_threshold() == 1e-3
    assert not collapsed_start(est, X, T)
    # standardised rows: a large std shrinks the bound
    est.weights_, est.bias_ = np.eye(3) * math.sqrt(1.1e-3 / top / 3), None
    est.std_ = 2.0
    assert collapsed_start(est, X, T)
    # cosine similarities are scale-free: only W = 0 (and no bias) is collapsed
    cos = TripletProbe(normalize=True)
    cos.mean_, cos.std_ = 0.7, 1.0
    cos.weights_, cos.bias_ = np.eye(3) * 1e-9, None
    assert not collapsed_start(cos, X, T)
    cos.weights_ = np.zeros((3, 3))
    assert collapsed_start(cos, X, T)
    cos.bias_ = np.zeros(3)
    assert collapsed_start(cos, X, T)
    cos.bias_ = np.array([0.0, 1e-9, 0.0])
    assert not collapsed_start(cos, X, T)


def core_collapsed_threshold() -> float:
    from align.metrics.probe.cv import COLLAPSED_SIMILARITY

    return COLLAPSED_SIMILARITY


def test_identity_probe_is_the_transform_switched_off():
    X, T = _missing_x()
    est = TripletProbe(normalize=True, bias=True, reg=0.3)
    off = identity_probe(est, X)
    present = X[~np.isnan(X).all(axis=1)]
    assert off.mean_ == pytest.approx(float(present.mean()), rel=1e-12)
    assert off.std_ == pytest.approx(float(present.std()), rel=1e-12)
    np.testing.assert_array_equal(off.weights_, np.eye(3))
    assert off.bias_ is None and off.n_iter_ == 0 and off.n_features_in_ == 3
    assert off.normalize and off.reg == 0.3 and not hasattr(est, "weights_")
    with pytest.raises(InvalidInputError) as err:
        identity_probe(est, X[0])
    assert err.value.field == "X"
    kept = T[~(T == 5).any(axis=1)]
    Z = (X - present.mean()) / present.std()
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    np.testing.assert_array_equal(off.predict(X, kept), odd_rule(sims(Z, kept)))


def test_cross_validate_refuses_bad_arguments():
    X, T = cv_data(seed=22)
    est = TripletProbe(max_iter=2)
    cases = [
        (lambda: cross_validate(object(), X, T), "estimator"),  # type: ignore[arg-type]
        (lambda: cross_validate(est, X, T, cv=3), "cv"),  # type: ignore[arg-type]
        (lambda: cross_validate(est, X, T, warm_start=1), "warm_start"),
        (lambda: cross_validate(est, X, T, refit="no"), "refit"),
        (lambda: cross_validate(est, X, T, lambdas="0.1"), "lambdas"),
        (lambda: cross_validate(est, X, T, lambdas=[]), "lambdas"),
        (lambda: cross_validate(est, X, T, lambdas=0.1), "lambdas"),
        (lambda: cross_validate(est, X, T, lambdas=[0.1, -1.0]), r"lambdas\[1\]"),
        (lambda: cross_validate(est, X, T, n_jobs=0), "n_jobs"),
        (lambda: cross_validate(est, X[0], T), "X"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidInputError, match=field) as err:
            call()
        assert err.value.field == field.replace("\\", "")
    Xm = X.copy()
    Xm[0] = np.nan
    with pytest.raises(InvalidInputError, match="has no triplet over present stimuli"):
        cross_validate(est, Xm, T[(T == 0).any(axis=1)], lambdas=[0.1])
    with pytest.raises(InvalidInputError, match="fold"):  # one triplet left: too few
        one = int(np.flatnonzero(~(T == 0).any(axis=1))[0])  # a triplet over present ones
        cross_validate(est, Xm, T[(T == 0).any(axis=1) | (np.arange(len(T)) == one)])
    assert cross_validate(est, X, T, lambdas=[0.0], refit=False).lambdas == [0.0]


def test_cross_validate_probe_reports_the_search_and_pooled_heldout_numbers(tmp_path):
    X, T = _missing_x()
    lambdas = (0.05, 0.02)  # cold starts (the default): a warm start would differ
    params = {"max_iter": 15, "reg_kind": "squared"}
    kept, splits, ce, acc, iters, hits, best, final = _hand_search(X, T, lambdas, 3, 1, **params)
    res = cross_validate_probe(X, T, lambdas=lambdas, k=3, seed=1, n_bootstrap=200, **params)
    assert res.lambda_ == lambdas[best] and res.k == 3 and res.seed == 1
    assert res.cross_entropy == pytest.approx(float(ce.mean(axis=1)[best]), rel=1e-12)
    assert res.n_triplets == len(kept) and res.n_dropped == len(T) - len(kept)
    assert [f["fold"] for f in res.folds] == [0, 1, 2]
    assert [f["n_train"] for f in res.folds] == [len(tr) for tr, _ in splits]
    assert [f["n_test"] for f in res.folds] == [len(te) for _, te in splits]
    assert [f["accuracy"] for f in res.folds] == acc[best].tolist()
    np.testing.assert_allclose([f["cross_entropy"] for f in res.folds], ce[best], rtol=1e-12)
    assert [f["n_iter"] for f in res.folds] == iters[best].tolist()
    assert [c["lambda"] for c in res.cv] == list(lambdas)
    np.testing.assert_allclose([c["cross_entropy"] for c in res.cv], ce.mean(1), rtol=1e-12)
    assert [c["accuracy"] for c in res.cv] == acc.mean(axis=1).tolist()
    np.testing.assert_allclose([c["fold_cross_entropy"] for c in res.cv], ce, rtol=1e-12)
    assert [c["fold_accuracy"] for c in res.cv] == acc.tolist()
    pooled = np.concatenate([hits[best, i] for i in range(3)])
    assert res.accuracy == pytest.approx(pooled.mean(), rel=1e-12)
    assert res.fold_mean_accuracy == pytest.approx(acc[best].mean(), rel=1e-12)
    assert res.n_heldout == pooled.size == sum(len(te) for _, te in splits)
    test_rows = kept[np.concatenate([te for _, te in splits])]
    assert res.n_heldout_distinct == len({tuple(sorted(r)) for r in test_rows.tolist()})
    assert res.n_heldout_distinct < res.n_heldout  # the intervals resample distinct ones
    present = X[~np.isnan(X).all(axis=1)]
    Z = (X - present.mean()) / present.std()
    base = odd_rule(sims(Z, test_rows)) == 2
    assert res.baseline["accuracy"] == pytest.approx(base.mean(), rel=1e-12)
    assert res.lift["value"] == pytest.approx(pooled.mean() - base.mean(), abs=1e-12)
    assert res.lift["paired"] is True
    assert res.baseline["definition"] == (
        "transform switched off: W = I, same mean/std and similarity"
    )
    for lo_hi, point in ((res.ci, res.accuracy), (res.baseline["ci"], base.mean())):
        assert lo_hi[0] <= point <= lo_hi[1] and lo_hi[0] < lo_hi[1]
    lo, hi = res.lift["ci"]
    assert lo <= res.lift["value"] <= hi
    np.testing.assert_array_equal(res.probe.weights_, final.weights_)
    opts = res.options
    assert "reg" not in opts and "n_threads" not in opts and "seed" not in opts
    assert opts["similarity"] == "dot" and opts["lambdas"] == list(lambdas)
    assert opts["reg_kind"] == "squared" and opts["max_iter"] == 15
    d = res.to_dict()
    assert d["lambda"] == res.lambda_ and "lambda_" not in d and "probe" not in d
    assert d["transform"] == {
        "shape": [3, 3],
        "bias": False,
        "n_iter": res.probe.n_iter_,
        "mean": res.probe.mean_,
        "std": res.probe.std_,
    }
    for key in ("ci", "baseline", "lift", "n_heldout", "n_heldout_distinct", "rank", "estimator"):
        assert key in d  # the fields after the (left out) probe are all there
    assert d["fold_mean_accuracy"] == res.fold_mean_accuracy and d["chance"] == 1 / 3
    loaded = dataclasses.replace(res, probe=TripletProbe.load(res.probe.save(tmp_path / "t.npz")))
    assert loaded.to_dict()["transform"]["n_iter"] is None  # a loaded probe has no n_iter_
    cos = cross_validate_probe(X, T, lambdas=(0.1,), normalize=True, refit=False, max_iter=2)
    assert cos.options["similarity"] == "cosine" and cos.probe is None
    assert "transform" not in cos.to_dict()
    # confidence: a wider interval at 0.99 than at 0.5 from the same resamples
    # the result's intervals come from these statistics with the given options
    res7 = cross_validate_probe(
        X, T, lambdas=lambdas, k=3, seed=1, n_bootstrap=7, confidence=0.8, refit=False, **params
    )
    # heldout_statistics' defaults: 1000 resamples, 95 %, seed 0
    from align.metrics.probe.cv import heldout_statistics

    search = cross_validate(
        TripletProbe(seed=1, **params), X, T, lambdas=lambdas, cv=ObjectKFold(3, 1), refit=False
    )
    from align.metrics.bootstrap import paired_cluster_difference

    few = heldout_statistics(search, n_bootstrap=7, confidence=0.8, seed=2)
    test_idx = np.concatenate([te for _, te in search.splits])
    canon = [tuple(sorted(r)) for r in search.triplets[test_idx].tolist()]
    labels = np.array([sorted(set(canon)).index(c) for c in canon])  # distinct triplets
    ref = paired_cluster_difference(
        np.concatenate(search.correct[search.best]).astype(float),
        np.concatenate(search.baseline).astype(float),
        labels,
        n_bootstrap=7,
        confidence=0.8,
        seed=2,
    )
    assert few["ci"] == ref.ci_a and few["baseline"]["ci"] == ref.ci_b
    assert few["lift"]["ci"] == ref.ci_difference
    seven = heldout_statistics(search, n_bootstrap=7, confidence=0.8, seed=1)
    assert (res7.ci, res7.baseline["ci"], res7.lift["ci"]) == (
        seven["ci"],
        seven["baseline"]["ci"],
        seven["lift"]["ci"],
    )
    default = heldout_statistics(search)
    assert default == heldout_statistics(search, n_bootstrap=1000, confidence=0.95, seed=0)
    assert default["ci"] != heldout_statistics(search, n_bootstrap=1000, seed=1)["ci"]
    narrow = cross_validate_probe(
        X, T, lambdas=lambdas, k=3, seed=1, n_bootstrap=200, confidence=0.5, **params
    )
    assert narrow.ci[1] - narrow.ci[0] < res.ci[1] - res.ci[0]


def test_cross_validate_probe_defaults_and_refusals():
    X, T = cv_data(seed=23)
    res = cross_validate_probe(X, T, lambdas=(0.1,), max_iter=2)
    assert res.k == 3 and res.seed == 0 and len(res.folds) == 3 and res.probe is not None
    # default intervals: 1000 resamples at 95 % with the seed
    from align.metrics.probe.cv import heldout_statistics

    search = cross_validate(
        TripletProbe(seed=0, max_iter=2), X, T, lambdas=(0.1,), cv=ObjectKFold(3, 0)
    )
    stats = heldout_statistics(search, n_bootstrap=1000, confidence=0.95, seed=0)
    assert (res.ci, res.baseline["ci"], res.lift["ci"]) == (
        stats["ci"],
        stats["baseline"]["ci"],
        stats["lift"]["ci"],
    )
    assert res.probe.seed == 0
    assert cross_validate_probe(X, T, lambdas=(0.1,), k=2, seed=3, max_iter=2).probe.seed == 3
    for kw, field in [
        ({"k": 1}, "k"),
        ({"k": 2.5}, "k"),
        ({"seed": 0.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"reg": 0.1}, "reg"),
        ({"seed": 1, "reg": 0.1}, "reg"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"confidence": 1.5}, "confidence"),
        ({"tau": 0.0}, "tau"),
        ({"warm_start": "y"}, "warm_start"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            cross_validate_probe(X, T, lambdas=(0.1,), max_iter=2, **kw)
        assert err.value.field == field
