"""Known answers for the probe's fitting machinery (metrics/probe/core.py) that the
objective tests do not reach: the stall rule, the L-BFGS fit's bias and unreduced
paths, the gLocal fit in the reduced basis, Adam's validation hold-out boundary, the
per-fit thread count, the fold scheduler's order and threads, and the reduction
cache's keys and eviction. Each expected value is computed here (a written-out
objective and torch autograd of it, hand-made sequences, set arithmetic); the tests
are tiny and part of the probe's mutation-testing selection (tools/mutation.py).
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from align.metrics.glocal import GLocalProbe  # noqa: E402
from align.metrics.probe import TripletProbe, core  # noqa: E402

from tests.test_known_answers import _local_loss_np  # noqa: E402  (gLocal's local term)
from tests.test_probe import _one_torch_thread  # noqa: E402, F401  (autouse: one torch thread)
from tests.test_probe_known_answers import objective, penalty, tiny  # noqa: E402

# ----------------------------------------------------------------------------- stall rule


@pytest.mark.parametrize(
    ("values", "window", "stall_tol", "expected"),
    [
        ([1.0, 0.75, 0.5], 2, 0.25, True),  # drop 0.5 == 0.25 * 2 * max(1, 0.5): at the limit
        ([1.0, 0.75, 0.4999], 2, 0.25, False),  # drop just above it
        ([1.0, 0.5], 2, 0.25, False),  # only `window` values: no window yet
        ([1.0, 0.0, 0.5], 2, 0.25, True),  # the drop is first minus LAST (not the one before)
        ([1.0, 0.9, 0.8], 2, 0.125, True),  # 0.2 <= 0.125 * 2: the window multiplies
        ([1.0, 0.9, 0.75], 2, 0.0625, False),  # |f| < 1: the limit uses 1 (0.125 < 0.25)
        ([3.0, 2.9, 2.5], 2, 0.125, True),  # |f| = 2.5 scales the limit: 0.5 <= 0.625
        ([3.2, 4.0, 2.5], 2, 0.125, False),  # |f| of the LAST value: 0.7 > 0.625
        ([-2.0, -2.1, -2.5], 2, 0.125, True),  # |f| of a negative value: 0.5 <= 0.625
        ([0.5, 5.0, 4.0, 3.9], 2, 0.1, False),  # only the last window: 5 - 3.9 > 0.78
    ],
)
def test_stall_rule_is_the_window_drop_against_tol_times_window_times_max_1_f(
    values, window, stall_tol, expected
):
    limit = stall_tol * window * max(1.0, abs(values[-1]))
    written_out = len(values) > window and values[-1 - window] - values[-1] <= limit
    assert written_out == expected  # the table above agrees with the rule's text
    assert core.stalled(values, window, stall_tol) is expected


# ----------------------------------------------------------------------------- L-BFGS fits


def _stated_objective_t(X, T, W, b, reg, reg_kind):
    """The stated objective in torch (autograd), written like test_probe_known_answers'
    numpy `objective`: X' = (X - mean) / std, E = X' W + b, mean CE over responses."""
    Xs = torch.as_tensor((X - X.mean()) / X.std())
    E = Xs @ W if b is None else Xs @ W + b
    t = torch.as_tensor(T)
    a, bb, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack([(a * bb).sum(1), (a * c).sum(1), (bb * c).sum(1)], 1)
    if reg_kind == "frobenius":
        pen = torch.linalg.norm(W)
    elif reg_kind == "squared":
        pen = (W * W).sum()
    else:
        D = W - torch.diagonal(W).mean() * torch.eye(W.shape[0], dtype=W.dtype)
        pen = (D * D).sum()
    return (torch.logsumexp(S, 1) - S[:, 0]).mean() + reg * pen


@pytest.mark.parametrize(
    ("bias", "reduce", "reg_kind"),
    [(True, True, "identity"), (False, False, "squared"), (False, False, "frobenius")],
)
def test_unreduced_lbfgs_fit_is_a_stationary_point_of_the_stated_objective(bias, reduce, reg_kind):
    # a bias, reduce=False or the identity penalty: the fit runs on the full p x p W (no
    # triangular basis); the returned (W, b) has zero gradient of the stated objective
    X, T = tiny(n=12, p=5, m=80, seed=21)
    reg = 0.02
    probe = TripletProbe(
        reg=reg,
        reg_kind=reg_kind,
        bias=bias,
        reduce=reduce,
        init="identity",
        tol=1e-13,
        max_iter=500,
        dtype="float64",
    ).fit(X, T)
    W = torch.tensor(probe.weights_, requires_grad=True)
    b = None if not bias else torch.tensor(probe.bias_, requires_grad=True)
    f = _stated_objective_t(X, T, W, b, reg, reg_kind)
    f.backward()
    assert np.abs(W.grad.numpy()).max() < 1e-5
    if bias:
        assert np.abs(b.grad.numpy()).max() < 1e-5
        assert np.abs(probe.bias_).max() > 1e-3  # a bias was learned, not left at 0
    assert probe.loss_curve_[-1] == pytest.approx(
        objective(X, T, probe.weights_, reg, reg_kind, b=probe.bias_), rel=1e-9
    )


def test_unreduced_fit_with_many_features_multiplies_its_rows_densely():
    # the identity penalty is never reduced: the rows stay as given (not triangular), so
    # even at p = 96 (where triangular products would apply) the first objective is the
    # stated one at W0 = tau I
    X, T = tiny(n=110, p=96, m=700, seed=28)
    assert len(np.unique(T)) >= 96
    probe = TripletProbe(reg=0.1, reg_kind="identity", init="identity", tau=0.5, max_iter=1)
    probe.fit(X, T)
    expected = objective(X, T, 0.5 * np.eye(96), 0.1, "identity")
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)


def _glocal_objective(X, T, L, W, alpha, reg, temp):
    ce = objective(X, T, W)
    Ls = (L - X.mean()) / X.std()  # the probe's standardisation (of the triplet rows)
    return (
        (1 - alpha) * ce + alpha * _local_loss_np(Ls, Ls @ W, temp) + reg * penalty(W, "frobenius")
    )


def test_glocal_lbfgs_in_the_reduced_basis_reaches_the_unreduced_optimum():
    # the exact reduction moves the unlabeled rows into the same basis as the triplet
    # rows; both fits minimise the stated gLocal objective (written out here) to the same
    # value, and the reduced fit's last loss is that objective at its returned W
    X, T = tiny(n=10, p=6, m=70, seed=22)
    L = np.random.default_rng(23).normal(size=(14, 6)) * 1.2
    kw = dict(alpha=0.5, temperature=0.7, local_batch_size=64, reg=0.05, tol=1e-13)
    values = {}
    for reduce in (True, False):
        probe = GLocalProbe(reduce=reduce, init="identity", max_iter=400, **kw)
        probe.fit(X, T, X_local=L)
        values[reduce] = _glocal_objective(X, T, L, probe.weights_, 0.5, 0.05, 0.7)
        if reduce:
            assert probe.loss_curve_[-1] == pytest.approx(values[True], rel=1e-9)
    W0 = np.eye(6) * 1.0
    assert values[True] < _glocal_objective(X, T, L, W0, 0.5, 0.05, 0.7)
    assert values[True] == pytest.approx(values[False], rel=1e-7)


# ----------------------------------------------------------------------------- Adam


def _adam_split(m: int, val_fraction: float):
    X, T = tiny(n=12, p=3, m=m, seed=24)
    T = T[:m]
    W0 = np.random.default_rng(1).normal(size=(3, 3)) * 0.5
    probe = TripletProbe(
        reg=0.0, optimizer="adam", lr=1e-12, batch_size=64, max_iter=1, val_fraction=val_fraction
    ).fit(X, T, init_weights=W0)
    return X, T, W0, probe


def test_adam_holds_back_round_fraction_m_at_least_one_from_ten_responses_on():
    # lr ~ 0: the first epoch's loss is the CE on the kept part, the validation value the
    # CE on the held-back part; they recombine into the CE over all m responses
    X, T, W0, probe = _adam_split(10, 0.01)  # round(0.1) = 0 -> at least 1 held back
    assert len(probe.val_curve_) == 1
    ce_all = objective(X, T, W0)
    assert (9 * probe.loss_curve_[0] + 1 * probe.val_curve_[0]) / 10 == pytest.approx(
        ce_all, rel=1e-7
    )
    X, T, W0, probe = _adam_split(9, 0.5)  # fewer than 10 responses: nothing held back
    assert probe.val_curve_ == []
    assert probe.loss_curve_[0] == pytest.approx(objective(X, T, W0), rel=1e-7)


# ----------------------------------------------------------------------------- threads


def test_a_fit_runs_under_its_n_threads(monkeypatch):
    # which thread count the fit asks core.threads for (recorded, not applied: a torch
    # pool of 2 threads hangs in mutmut's forked workers); threads() itself, setting and
    # restoring torch's count, is test_probe_known_answers' test
    import contextlib

    asked = []

    @contextlib.contextmanager
    def record(n):
        asked.append(n)
        yield

    monkeypatch.setattr(core, "threads", record)
    X, T = tiny(n=6, p=2, m=8, seed=25)
    TripletProbe(reg=0.1, n_threads=3, max_iter=1).fit(X, T)
    TripletProbe(reg=0.1, max_iter=1).fit(X, T)
    assert asked == [3, None]


def test_map_chains_gives_a_free_thread_the_chain_with_most_steps_left():
    # 3 chains of 2 steps on 2 threads. Gates make the order deterministic: (0, 0) ends
    # only after (1, 0) started, and (1, 0) only after (2, 0) started. When (0, 0) ends,
    # chains 0 (1 step left) and 2 (2 steps left) are free: the rule takes chain 2, so
    # (2, 0) starts before (0, 1); lowest-index-first would deadlock-free take (0, 1).
    started: list[tuple[int, int]] = []
    names: set[str] = set()
    events = {key: threading.Event() for key in ((1, 0), (2, 0))}
    lock = threading.Lock()

    def step(i: int, pos: int) -> None:
        with lock:
            started.append((i, pos))
            names.add(threading.current_thread().name)
        if (i, pos) in events:
            events[i, pos].set()
        wait_for = {(0, 0): (1, 0), (1, 0): (2, 0)}.get((i, pos))
        if wait_for is not None:
            events[wait_for].wait(timeout=20)

    core.map_chains(step, 3, 2, 2)
    assert sorted(started) == [(i, p) for i in range(3) for p in range(2)]
    assert started.index((2, 0)) < started.index((0, 1))
    assert names == {"align-fold-0", "align-fold-1"}


def test_map_chains_runs_two_chains_in_two_named_threads():
    names: set[str] = set()
    lock = threading.Lock()

    def step(i: int, pos: int) -> None:
        with lock:
            names.add(threading.current_thread().name)

    core.map_chains(step, 2, 3, 2)
    assert names <= {"align-fold-0", "align-fold-1"} and names
    assert threading.current_thread().name not in names


# ----------------------------------------------------------------------------- cache


def test_reduction_cache_keys_on_shape_and_dtype_not_only_bytes():
    rng = np.random.default_rng(26)
    rows = rng.normal(size=(4, 6))
    cache = core.ReductionCache(size=4)
    cache.reduction(rows, None)
    V2, L2, _, _ = cache.reduction(rows.reshape(6, 4), None)  # the same bytes
    assert V2.shape == (4, 4) and L2.shape == (6, 4)
    np.testing.assert_allclose(L2 @ V2.T, rows.reshape(6, 4), atol=1e-12)
    assert len(cache._bases) == 2


def test_reduction_without_a_start_has_empty_q_and_r():
    V, L, Q, R = core.ReductionCache(size=0).reduction(np.eye(3), None)
    assert Q.shape == (0, 0) and R.shape == (0, 0)
    assert V.shape == (3, 3) and L.shape == (3, 3)


def test_reduction_cache_of_size_one_keeps_the_newest_and_drops_the_oldest():
    rng = np.random.default_rng(27)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    one = core.ReductionCache(size=1)
    Va = one.reduction(a, None)[0]
    assert one.reduction(a, None)[0] is Va  # kept
    Vb = one.reduction(b, None)[0]
    assert one.reduction(b, None)[0] is Vb  # the newest stays
    assert one.reduction(a, None)[0] is not Va  # the oldest went
    two = core.ReductionCache(size=2)
    V = {k: two.reduction(x, None)[0] for k, x in (("a", a), ("b", b))}
    c = rng.normal(size=(3, 5))
    Vc = two.reduction(c, None)[0]  # evicts a (least recently used), keeps b and c
    assert two.reduction(c, None)[0] is Vc and two.reduction(b, None)[0] is V["b"]
    assert two.reduction(a, None)[0] is not V["a"]


# ----------------------------------------------------------------------------- parameters


def test_param_names_of_a_subclass_that_fixes_its_parents_options_are_its_own():
    # scikit-learn's rule: the parameters are the __init__ signature's; a subclass
    # without **kwargs that passes fixed values up does not expose its parent's
    class Fixed(TripletProbe):
        def __init__(self, reg: float = 1.0, seed: int = 0) -> None:
            super().__init__(reg=reg, seed=seed, optimizer="adam")

    class Open(TripletProbe):
        def __init__(self, reg: float = 1.0, **rest) -> None:
            super().__init__(reg=reg, **rest)

    assert Fixed.param_names() == ("reg", "seed")
    assert Fixed().get_params() == {"reg": 1.0, "seed": 0}
    parent = TripletProbe.param_names()
    assert Open.param_names() == ("reg", *(n for n in parent if n != "reg"))


def test_cross_validate_runs_folds_serially_when_the_estimator_pins_its_threads(monkeypatch):
    # n_jobs None: as many folds at once as torch has threads, but one when the estimator
    # pins n_threads (its fits would oversubscribe the cores); recorded, not run
    from align.metrics.probe import cross_validate
    from align.metrics.probe import cv as cv_module
    from align.metrics.splits import ObjectKFold

    class Scheduled(Exception):
        pass

    asked = []

    def record(step, k, length, n_jobs):
        asked.append(n_jobs)
        raise Scheduled

    monkeypatch.setattr(cv_module, "map_chains", record)
    X, T = tiny(n=15, p=3, m=120, seed=29)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n_threads in (1, None):
            with pytest.raises(Scheduled):
                cross_validate(
                    TripletProbe(n_threads=n_threads),
                    X,
                    T,
                    lambdas=(1.0,),
                    cv=ObjectKFold(3, 0),
                    refit=False,
                )
    finally:
        torch.set_num_threads(old)
    assert asked == [1, 2]


# ----------------------------------------------------------------------- L-BFGS history


def _two_loop(pairs: list[tuple[np.ndarray, np.ndarray]], g: np.ndarray) -> np.ndarray:
    """Nocedal & Wright, Algorithm 7.4, written out: -H g from the pairs (oldest first),
    H_0 = (s.y / y.y of the newest pair) I, identity without pairs."""
    q = -g.copy()
    alpha = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        q -= a * y
        alpha.append(a)
    alpha.reverse()
    gamma = 1.0
    if pairs:
        s, y = pairs[-1]
        gamma = (s @ y) / (y @ y)
    r = gamma * q
    for (s, y), a in zip(pairs, alpha, strict=True):
        b = (y @ r) / (y @ s)
        r += (a - b) * s
    return r


def test_lbfgs_history_direction_is_the_two_loop_recursion_past_its_size_and_skips():
    """The direction from inner products equals the written-out two-loop recursion over
    the pairs kept: with no pair (-g), while the ring fills, after it wraps (only the
    newest `size` pairs count, oldest dropped first), and when a pair with s.y <= 1e-10
    is skipped (the history and the scaling kept as they were)."""
    rng = np.random.default_rng(3)
    n, size = 7, 3
    hist = core.LbfgsHistory(size, n, torch.float64, torch.device("cpu"))
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    g = rng.normal(size=n)
    d = hist.direction(torch.from_numpy(g), None)
    np.testing.assert_allclose(d.numpy(), -g, rtol=1e-15)
    for step in range(9):
        s = rng.normal(size=n)
        A = np.diag(rng.uniform(0.5, 2.0, size=n))
        y = A @ s  # positive curvature
        if step in (4, 6):
            y = -y if step == 4 else y * 1e-12 / (y @ s) * 0.5  # s.y < 0, then 5e-13
        else:
            kept.append((s, y))
        kept = kept[-size:]
        g = rng.normal(size=n)
        d = hist.direction(torch.from_numpy(g), (torch.from_numpy(s), torch.from_numpy(y)))
        np.testing.assert_allclose(d.numpy(), _two_loop(kept, g), rtol=1e-12, atol=1e-14)
        assert len(hist.order) == len(kept)


def test_lbfgs_history_keeps_a_pair_with_curvature_just_above_1e_minus_10():
    """torch's rule: a pair is kept when s.y > 1e-10 (here 2e-10), not only when large."""
    hist = core.LbfgsHistory(2, 2, torch.float64, torch.device("cpu"))
    s = torch.tensor([1e-5, 0.0], dtype=torch.float64)
    y = torch.tensor([2e-5, 0.0], dtype=torch.float64)  # s.y = 2e-10
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    d = hist.direction(g, (s, y))
    assert hist.order == [0]
    np.testing.assert_allclose(d.numpy(), _two_loop([(s.numpy(), y.numpy())], g.numpy()))


# ------------------------------------------------------------------------ pair pattern


def test_pair_pattern_gives_the_triplets_similarities_and_the_gradients_scatter():
    """The similarities read off the sparse pattern are each triplet's three inner
    products, and the pattern's matrix with the pair weights times the rows is the
    per-triplet scatter dE_a = g_ab e_b + g_ac e_c (likewise b, c), written out here,
    including a pair shared by two triplets and a triplet repeated."""
    rng = np.random.default_rng(5)
    n, q = 6, 4
    tloc = np.array([[0, 1, 2], [1, 0, 3], [4, 5, 0], [0, 1, 2], [2, 5, 3]])
    E = torch.from_numpy(rng.normal(size=(n, q)))
    pattern, slot = core.pair_pattern(tloc, n, torch.device("cpu"))
    K = torch.sparse.sampled_addmm(pattern, E, E.T, beta=0.0)
    m = len(tloc)
    S = K.values()[slot[: 3 * m]].view(-1, 3).numpy()
    En = E.numpy()
    for (a, b, c), row in zip(tloc, S, strict=True):
        np.testing.assert_allclose(row, [En[a] @ En[b], En[a] @ En[c], En[b] @ En[c]])
    G = rng.normal(size=(m, 3))
    w = torch.zeros_like(K.values())
    w.index_add_(0, slot, torch.from_numpy(np.concatenate([G.ravel(), G.ravel()])))
    dE = (core.pair_matrix(pattern, w) @ E).numpy()
    expected = np.zeros((n, q))
    for (a, b, c), (gab, gac, gbc) in zip(tloc, G, strict=True):
        expected[a] += gab * En[b] + gac * En[c]
        expected[b] += gab * En[a] + gbc * En[c]
        expected[c] += gac * En[a] + gbc * En[b]
    np.testing.assert_allclose(dE, expected, rtol=1e-12, atol=1e-14)
    assert pattern.values().shape[0] == 2 * len(
        {tuple(sorted(p)) for t in tloc for p in [(t[0], t[1]), (t[0], t[2]), (t[1], t[2])]}
    )


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_seeded_start_is_shared_read_only_and_a_fit_leaves_it_alone(optimizer):
    """The normal start is drawn once per (seed, p) and handed out read-only; a float64
    fit (Adam steps its W in place; L-BFGS with a bias optimises W itself) copies it, so
    the next fit of a grid starts from the same draw, and a caller's warm start is not
    written either."""
    X, T = tiny(n=12, p=5, m=80, seed=21)
    opts = dict(reg=0.02, bias=True, dtype="float64", optimizer=optimizer, max_iter=5)
    W0 = core.initial_weights("normal", 1.0, 7, 5)
    assert not W0.flags.writeable
    assert core.initial_weights("normal", 1.0, 7, 5) is W0  # shared, not redrawn
    before = W0.copy()
    first = TripletProbe(seed=7, **opts).fit(X, T)
    np.testing.assert_array_equal(core.initial_weights("normal", 1.0, 7, 5), before)
    assert not np.array_equal(first.weights_, before)  # the fit moved away from it
    again = TripletProbe(seed=7, **opts).fit(X, T)
    np.testing.assert_array_equal(again.weights_, first.weights_)
    start = np.eye(5)
    TripletProbe(**opts).fit(X, T, init_weights=start)
    np.testing.assert_array_equal(start, np.eye(5))


def _quadratic(target: torch.Tensor, curv: torch.Tensor | float = 1.0):
    def evaluate(W, b):
        D = W - target
        return float(0.5 * (curv * D * D).sum()), curv * D, None

    return evaluate


def test_lbfgs_start_rule_is_the_largest_gradient_entry_against_tol_times_1e_3():
    """Before any iteration: a start whose largest gradient entry is AT tol * 1e-3 is
    already a solution (no iteration, W untouched), though the gradient's 2-norm (3e-3)
    is above it; one at 0.5 (above 1e-3, below tol) is not."""
    W = torch.zeros(3, 3, dtype=torch.float64)
    calls = []

    def at_limit(W_, b_):
        calls.append(1)
        return _quadratic(torch.full((3, 3), 1e-3, dtype=torch.float64))(W_, b_)

    assert core.lbfgs_minimise([W], at_limit, max_iter=50, tol=1.0, stall_tol=0.0) == 0
    assert len(calls) == 1 and torch.equal(W, torch.zeros(3, 3, dtype=torch.float64))
    target = torch.full((3, 3), 0.5, dtype=torch.float64)
    n = core.lbfgs_minimise([W], _quadratic(target), max_iter=50, tol=1.0, stall_tol=0.0)
    assert n >= 1 and bool((W > 0).all())  # it moved toward the target


def test_lbfgs_descent_test_ends_only_when_g_d_is_above_minus_tol():
    """torch's rule: no descent left when g.d > -tol. One parameter, f = (w - 0.5)^2 / 2
    from w = 0: g = -0.5, d = 0.5, g.d = -0.25 = -tol exactly, which still descends: the
    first step (t = min(1, 1/|g|_1) = 1) lands on the optimum."""
    W = torch.zeros(1, 1, dtype=torch.float64)
    target = torch.full((1, 1), 0.5, dtype=torch.float64)
    core.lbfgs_minimise([W], _quadratic(target), max_iter=5, tol=0.25, stall_tol=0.0)
    assert float(W) == 0.5


def test_lbfgs_step_rule_stops_at_the_first_step_whose_largest_entry_is_at_most_tol():
    """A steep quadratic (curvatures 1e6 .. 1e8, 400 entries): the gradient and the loss
    change stay far above their limits while the steps shrink, so the step rule (largest
    entry of t d <= tol, not the step's 2-norm, up to 20 times larger) ends the fit,
    at the first such step; replayed by capping the iterations."""
    p, tol = 20, 1e-7
    curv = torch.from_numpy(np.logspace(6, 8, p * p).reshape(p, p))
    target = torch.from_numpy(np.linspace(-1.0, 1.0, p * p).reshape(p, p))
    evaluate = _quadratic(target, curv)
    W = torch.zeros(p, p, dtype=torch.float64)
    n = core.lbfgs_minimise([W], evaluate, max_iter=300, tol=tol, stall_tol=0.0)
    iterates = []
    for k in range(n + 1):
        Wk = torch.zeros(p, p, dtype=torch.float64)
        if k:
            core.lbfgs_minimise([Wk], evaluate, max_iter=k, tol=tol, stall_tol=0.0)
        iterates.append(Wk)
    assert torch.equal(iterates[-1], W)
    steps = [float((b - a).abs().max()) for a, b in itertools.pairwise(iterates)]
    assert steps[-1] <= tol and all(s > tol for s in steps[:-1])
    f_last, g_last, _ = evaluate(W, None)
    assert float(g_last.abs().max()) > tol * 1e-3  # not the gradient rule
    assert abs(evaluate(iterates[-2], None)[0] - f_last) >= tol  # nor the loss change


def test_lbfgs_history_skips_a_pair_with_curvature_exactly_1e_minus_10():
    """torch's rule keeps a pair only when s.y > 1e-10: at exactly 1e-10 it is skipped."""
    hist = core.LbfgsHistory(2, 2, torch.float64, torch.device("cpu"))
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    y = torch.tensor([1e-10, 0.0], dtype=torch.float64)  # s.y == 1e-10 exactly
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    d = hist.direction(g, (s, y))
    assert hist.order == []
    assert torch.equal(d, -g)


def test_pair_pattern_with_an_unused_last_row_and_int64_indices():
    """Rows no pair touches (here the last two) are empty rows of the n x n pattern; the
    pattern's indices are int64 (a float index would stop addressing entries past 2^24,
    about 2.8 M distinct triplets)."""
    tloc = np.array([[0, 1, 2], [2, 3, 1]])
    pattern, slot = core.pair_pattern(tloc, 6, torch.device("cpu"))
    assert pattern.shape == (6, 6)
    assert (
        pattern.crow_indices().dtype == torch.int64 and pattern.col_indices().dtype == torch.int64
    )
    assert pattern.crow_indices().tolist() == [0, 2, 5, 8, 10, 10, 10]
    E = torch.from_numpy(np.random.default_rng(1).normal(size=(6, 3)))
    K = torch.sparse.sampled_addmm(pattern, E, E.T, beta=0.0)
    np.testing.assert_allclose(K.values()[slot[:3]].numpy(), (E[[0, 0, 1]] * E[[1, 2, 2]]).sum(1))


def test_a_probe_fit_in_a_fresh_process_raises_no_warning():
    """torch warns on the first sparse CSR tensor of a process (beta support; invariant
    checks not chosen): the probe builds its pattern without either warning reaching the
    user. A fresh interpreter, since torch warns once per process."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from align.metrics.probe import TripletProbe\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.normal(size=(8, 3))\n"
        "T = np.array([[0, 1, 2], [3, 4, 5], [5, 6, 7], [1, 3, 7]])\n"
        "TripletProbe(max_iter=3).fit(X, T)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_abs_is_the_infinity_norm_whichever_sign_is_largest(dtype):
    """max_abs, which decides L-BFGS's gradient and step rules, is vector_norm(v, inf)
    exactly: the largest entry negative, positive, a single entry, all equal, zeros."""
    rng = np.random.default_rng(11)
    v = torch.from_numpy(rng.normal(size=1001)).to(dtype)
    cases = [v, v.neg(), torch.tensor([-3.5], dtype=dtype), torch.full((4,), 2.0, dtype=dtype)]
    cases.append(torch.zeros(3, dtype=dtype))
    w = v.clone()
    w[17] = -50.0
    w[900] = 49.0
    cases.append(w)
    for c in cases:
        assert core.max_abs(c) == float(torch.linalg.vector_norm(c, math.inf))
    assert core.max_abs(w) == 50.0
