"""The L-BFGS objective's closed-form gradient (core.TripletObjective) equals autograd
of the stated objective, written here with torch ops from METHODS.md section 3."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from align.errors import NumericalError  # noqa: E402
from align.metrics.glocal import LocalNeighbourhoodTerm  # noqa: E402
from align.metrics.probe import core  # noqa: E402
from align.metrics.probe.core import FitOptions, TripletObjective, compress, localise  # noqa: E402


def _opts(reg_kind: str, normalize: bool, bias: bool, reg: float = 0.3) -> FitOptions:
    return FitOptions(
        reg=reg, reg_kind=reg_kind, init="normal", tau=1.0, normalize=normalize, bias=bias,
        optimizer="lbfgs", max_iter=None, tol=1e-7, lr=1e-3, batch_size=256, patience=10,
        val_fraction=0.1, dtype="float64", seed=0, device="cpu", n_threads=None, reduce=False,
    )  # fmt: skip


def _autograd(Xs, trip, W, b, reg, reg_kind, normalize, extra=None, Ls=None, tc=None):
    """Objective and gradient from the rule text: mean over RESPONSES (repeats kept) of
    logsumexp(s) - s_ab, E = Xs W + b (rows L2-normalised if asked), plus reg * R(W)."""
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)

    def embed(R):
        E = R @ Wt
        if bt is not None:
            E = E + bt
        if normalize:
            E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return E

    E = embed(torch.tensor(Xs))
    t = torch.as_tensor(trip)
    a, bb, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack([(a * bb).sum(1), (a * c).sum(1), (bb * c).sum(1)], 1)
    ce = (torch.logsumexp(S, 1) - S[:, 0]).mean()
    if extra is not None:
        ce = extra.mix(ce, torch.tensor(Ls), tc[0], tc[1], embed, None)
    if reg_kind == "frobenius":
        pen = torch.sqrt((Wt**2).sum())
    elif reg_kind == "squared":
        pen = (Wt**2).sum()
    else:
        pen = ((Wt - torch.diagonal(Wt).mean() * torch.eye(Wt.shape[0], dtype=Wt.dtype)) ** 2).sum()
    f = ce + reg * pen
    f.backward()
    gb = None if bt is None else np.zeros_like(b) if bt.grad is None else bt.grad.numpy()
    return float(f.detach()), Wt.grad.numpy(), gb


def _data(seed: int = 0, n: int = 25, p: int = 9, m: int = 300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    trip = np.array([rng.choice(n, 3, replace=False) for _ in range(m // 3)])
    trip = np.concatenate([trip, trip[: m // 4], trip[: m // 8, [1, 0, 2]]])  # repeats
    W = rng.normal(size=(p, p)) * 0.4
    return X, trip, W, rng.normal(size=p) * 0.3


@pytest.mark.parametrize("reg_kind", ["frobenius", "squared", "identity"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_gradient_equals_autograd(reg_kind: str, normalize: bool, bias: bool):
    X, trip, W, b = _data()
    uniq, counts = compress(trip)  # distinct triplets with counts: the same mean
    objs, tloc = localise(uniq)
    fit = core._Fit(_opts(reg_kind, normalize, bias), 0.0, 1.0, None)
    obj = TripletObjective(fit, X[objs], tloc, counts, bias)
    x = W.ravel() if not bias else np.concatenate([W.ravel(), b])
    f, g = obj(x)
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W, b if bias else None, 0.3, reg_kind, normalize)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g[: W.size].reshape(W.shape), gW_ref, rtol=1e-10, atol=1e-13)
    if bias:
        np.testing.assert_allclose(g[W.size :], gb_ref, rtol=1e-10, atol=1e-13)
    assert np.abs(gW_ref).max() > 1e-3  # a gradient worth comparing


def test_closed_form_gradient_with_the_glocal_term_equals_autograd():
    X, trip, W, _b = _data(seed=1)
    rng = np.random.default_rng(2)
    L = rng.normal(size=(30, X.shape[1]))
    term = LocalNeighbourhoodTerm(alpha=0.4, temperature=0.5, local_batch_size=16, seed=0)
    uniq, counts = compress(trip)
    objs, tloc = localise(uniq)
    fit = core._Fit(_opts("frobenius", False, False), 0.0, 1.0, term)
    targets, chunks = term.setup(L, True, fit.tensor)
    obj = TripletObjective(fit, X[objs], tloc, counts, False, L, targets, chunks)
    with torch.no_grad():  # as inside the L-BFGS closure: the term's autograd still runs
        f, g = obj(W.ravel())
    f_ref, gW_ref, _ = _autograd(
        X, trip, W, None, 0.3, "frobenius", False, term, L, (targets, chunks)
    )
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g.reshape(W.shape), gW_ref, rtol=1e-10, atol=1e-13)


def test_collapsed_start_refuses_only_a_transform_near_zero():
    # lambda = 10 (unsquared penalty) drives W onto the kink at 0: collapsed. A weak
    # penalty leaves a transform whose norm is BELOW the N(0, 1e-3^2) init's yet far
    # from collapsed (the old "norm below the init's" rule refused it).
    from align.metrics.probe import TripletProbe
    from align.metrics.probe.cv import collapsed_start

    X, trip, _, _ = _data(seed=3, n=40, p=60, m=400)
    strong = TripletProbe(reg=10.0, seed=0).fit(X, trip)
    assert collapsed_start(strong, X, trip)
    weak = TripletProbe(reg=1e-2, seed=0).fit(X, trip)
    init_norm = np.linalg.norm(weak.initial_weights(X.shape[1]))
    Z = (X - weak.mean_) / weak.std_
    S = (Z @ weak.weights_) @ (Z @ weak.weights_).T
    assert np.abs(S).max() > 1e-2  # its similarities are not ~0
    weak.weights_ = weak.weights_ * (0.5 * init_norm / np.linalg.norm(weak.weights_))
    assert not collapsed_start(weak, X, trip)  # half the init's norm: still a start
    weak.weights_ = weak.weights_ * 1e-4
    assert collapsed_start(weak, X, trip)


def _objective(opts, X, trip, extra=None, Ls=None, tc=None, **kw):
    """TripletObjective over the distinct triplets of the responses ``trip`` (rows of
    ``X`` as given: the fit's standardisation is the identity here)."""
    uniq, counts = compress(trip)
    objs, tloc = localise(uniq)
    fit = core._Fit(opts, 0.0, 1.0, extra)
    targets, chunks = tc if tc is not None else (None, None)
    return TripletObjective(fit, X[objs], tloc, counts, opts.bias, Ls, targets, chunks, **kw)


def _f32(opts: FitOptions) -> FitOptions:
    return dataclasses.replace(opts, dtype="float32")


def test_float32_objective_is_that_of_the_float32_weights_with_float64_sums():
    # A float32 fit evaluates at x rounded to float32: W, b, E = Xs W + b in float32 and
    # the penalty of that same W; the per-triplet terms and their sums are float64. The
    # inputs here are exact in float32 (small integers, sixteenths; every product and sum
    # exact), x is off by 2^-29 per entry (below half a float32 ulp: it rounds back), so
    # the objective is exactly the float64 objective at (W32, b32).
    Xs = np.array(
        [[2, 1, 0], [-1, -1, -2], [-2, -2, -2], [2, 1, 2], [0, 1, 2], [1, 1, 0]], dtype=float
    )
    W32 = np.array([[-4, 5, 3], [5, -4, -2], [3, -5, 4]]) / 16
    b32 = np.array([0.25, -0.375, 0.5])
    trip = np.array([[0, 1, 2], [3, 4, 5], [0, 3, 5], [1, 4, 2], [2, 5, 0], [0, 1, 2], [4, 0, 3]])
    obj = _objective(_f32(_opts("squared", False, True, reg=10.0)), Xs, trip)
    x = np.concatenate([W32.ravel(), b32]) + 2.0**-29
    assert np.array_equal(x.astype(np.float32), np.concatenate([W32.ravel(), b32]))
    f, g = obj(x)
    f_ref, gW_ref, gb_ref = _autograd(Xs, trip, W32, b32, 10.0, "squared", False)
    assert f == pytest.approx(f_ref, rel=1e-14)
    np.testing.assert_allclose(g[:9].reshape(3, 3), gW_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g[9:], gb_ref, rtol=1e-6, atol=1e-6)


def test_rows_are_dense_unless_the_objective_is_told_they_are_lower_trapezoidal():
    # lower=False (the default): the rows are multiplied as given; lower=True (the rows
    # of _Fit.lbfgs in the triangular basis) may skip their upper triangle. 100 dense
    # rows of 96 columns: large enough for the triangular row blocks.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 96))
    trip = np.array([[i, (i + 1) % 100, (i + 3) % 100] for i in range(100)])  # every row
    W = rng.normal(size=(96, 96)) * 0.05
    assert core.triangular_blocks(torch.as_tensor(X))  # blocks would apply
    for Xk, kw in ((X, {}), (np.tril(X), {"lower": True})):
        f, g = _objective(_opts("squared", False, False), Xk, trip, **kw)(W.ravel())
        f_ref, gW_ref, _ = _autograd(Xk, trip, W, None, 0.3, "squared", False)
        assert f == pytest.approx(f_ref, rel=1e-12)
        np.testing.assert_allclose(g.reshape(W.shape), gW_ref, rtol=1e-10, atol=1e-13)


def test_an_overflowing_loss_or_gradient_is_refused_by_name():
    X, trip, W, b = _data(seed=4, n=12, p=3, m=30)
    # reg * ||W||_F = 1e300 * 1e9 overflows; every gradient entry stays below reg
    W9 = W / np.linalg.norm(W) * 1e9
    obj = _objective(_opts("frobenius", False, True, reg=1e300), X, trip)
    with pytest.raises(NumericalError, match="probe loss became NaN or infinite"):
        obj(np.concatenate([W9.ravel(), b]))
    # squared penalty at ||W||_F = 1: the loss ~reg is finite, its gradient 2 reg W
    # overflows at reg = 1e308 (b's gradient stays finite) and not at reg = 1e307
    W1 = np.zeros((3, 3))
    W1[0, 0] = 1.0
    x1 = np.concatenate([W1.ravel(), b])
    obj = _objective(_opts("squared", False, True, reg=1e308), X, trip)
    with pytest.raises(NumericalError, match="probe gradient became NaN or infinite"):
        obj(x1)
    f, g = _objective(_opts("squared", False, True, reg=1e307), X, trip)(x1)
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W1, b, 1e307, "squared", False)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g[:9].reshape(3, 3), gW_ref, rtol=1e-12)
    np.testing.assert_allclose(g[9:], gb_ref, rtol=1e-10, atol=1e-13)


class _BiasSpike:
    """``ce + scale * sum of the first coordinate of the embedded local rows``: the two
    local rows below are opposite and b_0 = 0, so the term adds exactly 0 to the loss
    and to dW, and ``2 scale`` to d/db_0 (at scale 1e308: an infinite bias gradient
    alone)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def mix(self, ce, Ls, targets, chunks, embed, step):
        return ce + self.scale * embed(Ls)[:, 0].sum()


def test_an_infinite_bias_gradient_alone_is_refused_by_name():
    X, trip, W, b = _data(seed=6, n=12, p=3, m=30)
    b = b.copy()
    b[0] = 0.0
    L = np.array([[1.0, -0.5, 0.25], [-1.0, 0.5, -0.25]])
    x = np.concatenate([W.ravel(), b])
    opts = _opts("squared", False, True)
    with pytest.raises(NumericalError, match="probe gradient became NaN or infinite"):
        _objective(opts, X, trip, _BiasSpike(1e308), L, ([], []))(x)
    f, g = _objective(opts, X, trip, _BiasSpike(1e307), L, ([], []))(x)
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W, b, 0.3, "squared", False)
    assert f == pytest.approx(f_ref, rel=1e-12)  # the term adds 0
    np.testing.assert_allclose(g[:9].reshape(3, 3), gW_ref, rtol=1e-10, atol=1e-13)
    assert g[9] == pytest.approx(gb_ref[0] + 2e307, rel=1e-12)
    np.testing.assert_allclose(g[10:], gb_ref[1:], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_closed_form_gradient_with_the_glocal_term_and_a_bias_equals_autograd(dtype: str):
    # the local term embeds the unlabeled rows with the bias too (E = L W + b), in the
    # fit's dtype; the float32 objective against the float64 reference
    X, trip, W, b = _data(seed=7)
    L = np.random.default_rng(8).normal(size=(30, X.shape[1]))
    term = LocalNeighbourhoodTerm(alpha=0.4, temperature=0.5, local_batch_size=16, seed=0)
    opts = dataclasses.replace(_opts("squared", False, True), dtype=dtype)
    tc = term.setup(L, True, core._Fit(opts, 0.0, 1.0, term).tensor)
    with torch.no_grad():  # as inside the L-BFGS closure: the term's autograd still runs
        f, g = _objective(opts, X, trip, term, L, tc)(np.concatenate([W.ravel(), b]))
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W, b, 0.3, "squared", False, term, L, tc)
    rtol, atol = (1e-12, 1e-13) if dtype == "float64" else (1e-4, 1e-5)
    assert f == pytest.approx(f_ref, rel=rtol)
    np.testing.assert_allclose(g[: W.size].reshape(W.shape), gW_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g[W.size :], gb_ref, rtol=rtol, atol=atol)
    assert np.abs(gb_ref).max() > 1e-3


class _Twice:
    """``2 ce``: no local graph (nothing reaches W or b through ``embed``)."""

    def mix(self, ce, Ls, targets, chunks, embed, step):
        return 2.0 * ce


class _LocalOnly:
    """``0.5 ||L W + b||^2``: the triplet term left out (``d mix / d ce = 0``)."""

    def mix(self, ce, Ls, targets, chunks, embed, step):
        return 0.5 * (embed(Ls) ** 2).sum()


class _Constant:
    """A constant: neither the triplet term nor W or b (no graph at all)."""

    def mix(self, ce, Ls, targets, chunks, embed, step):
        return torch.tensor(1.5, dtype=torch.float64)


@pytest.mark.parametrize("term", [_Twice(), _LocalOnly(), _Constant()], ids=type)
def test_extra_terms_without_a_local_graph_or_without_the_triplet_term(term):
    # d mix / d ce scales the closed-form gradient only when mix uses ce; W and b get
    # the local term's gradient only when mix embeds: autograd of the same mix
    X, trip, W, b = _data(seed=9, n=12, p=3, m=30)
    L = np.random.default_rng(10).normal(size=(5, 3))
    obj = _objective(_opts("squared", False, True), X, trip, term, L, ([], []))
    with torch.no_grad():
        f, g = obj(np.concatenate([W.ravel(), b]))
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W, b, 0.3, "squared", False, term, L, ([], []))
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g[:9].reshape(3, 3), gW_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g[9:], gb_ref, rtol=1e-10, atol=1e-13)


def test_unlabeled_rows_without_an_extra_term_leave_the_triplet_objective():
    X, trip, W, _ = _data(seed=11, n=12, p=3, m=30)
    L = np.random.default_rng(12).normal(size=(5, 3))
    f, g = _objective(_opts("squared", False, False), X, trip, None, L)(W.ravel())
    f_ref, gW_ref, _ = _autograd(X, trip, W, None, 0.3, "squared", False)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g.reshape(3, 3), gW_ref, rtol=1e-10, atol=1e-13)


def test_cosine_gradient_at_a_row_norm_of_exactly_the_clamp():
    # E / max(||E||, 1e-12): at ||E|| = 1e-12 exactly the clamp is the active branch,
    # as in autograd of clamp_min (the gradient of E / 1e-12, no radial projection)
    X, trip, W, _ = _data(seed=13, n=12, p=3, m=30)
    X = X.copy()
    X[0] = [1.0, 0.0, 0.0]
    W = W.copy()
    W[0] = [1e-12, 0.0, 0.0]  # row 0 of E = X W is (1e-12, 0, 0): norm exactly 1e-12
    assert float(torch.linalg.vector_norm(torch.tensor(X[0] @ W))) == 1e-12
    assert (trip == 0).any()
    f, g = _objective(_opts("squared", True, False), X, trip)(W.ravel())
    f_ref, gW_ref, _ = _autograd(X, trip, W, None, 0.3, "squared", True)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g.reshape(3, 3), gW_ref, rtol=1e-10, atol=1e-13)
